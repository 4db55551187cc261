-- totpd's SQLite schema.
--
-- Read top to bottom this is the whole schema. It is applied as forward migrations:
-- each "-- migrate: N" section runs once, in order, and PRAGMA user_version records the
-- last one applied, so a database made by an older totpd opens in a newer one.
-- Never edit a section that has shipped; add a new one.
--
-- Nothing here holds a secret in clear: TOTP secrets are sealed (XChaCha20-Poly1305, the
-- key lives outside the database), tokens are stored as SHA-256 hashes.

-- migrate: 1

-- Daemon-wide facts. 'key_check' holds a sealed known value: if it does not open with
-- the configured key, the daemon refuses to start rather than serve garbage.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) STRICT;

-- ACL policies written by operators (the built-in 'root' and 'default' are not stored).
-- document: {"path": {"<glob>": {"capabilities": [...]}}} as JSON text.
CREATE TABLE policies (
    name       TEXT PRIMARY KEY,
    document   TEXT NOT NULL,
    updated_at INTEGER NOT NULL            -- unix seconds
) STRICT;

-- API tokens. Only the SHA-256 of a token is kept; the token itself is shown once.
CREATE TABLE tokens (
    hash         TEXT PRIMARY KEY,         -- hex SHA-256 of the token
    accessor     TEXT NOT NULL UNIQUE,     -- public handle, safe to log and list
    entity_id    TEXT NOT NULL,
    display_name TEXT NOT NULL,
    policies     TEXT NOT NULL,            -- JSON array of policy names
    created_at   INTEGER NOT NULL,         -- unix seconds
    expires_at   INTEGER                   -- unix seconds; NULL never expires
) STRICT;
CREATE INDEX tokens_expires_at ON tokens(expires_at) WHERE expires_at IS NOT NULL;
