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
-- document: the policy as written, in HCL or JSON (see migration 7).
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

-- migrate: 2

-- Every TOTP secret, whichever surface owns it, with the state its verification keeps.
-- sealed: key id (1 byte) || 24-byte nonce || XChaCha20-Poly1305 ciphertext, with
-- associated data "totpd/v1/otp_secrets/<id>", so it opens only in this row.
CREATE TABLE otp_secrets (
    id           TEXT PRIMARY KEY,
    sealed       BLOB NOT NULL,
    algorithm    TEXT NOT NULL CHECK (algorithm IN ('SHA1', 'SHA256', 'SHA512')),
    digits       INTEGER NOT NULL CHECK (digits IN (6, 8)),
    period       INTEGER NOT NULL CHECK (period > 0),
    last_step    INTEGER,                  -- last accepted time step: replays are refused
    failures     INTEGER NOT NULL DEFAULT 0, -- consecutive failed attempts
    locked_until INTEGER,                  -- unix seconds; every code refused until then
    last_attempt INTEGER,                  -- unix seconds of the last verification attempt
    created_at   INTEGER NOT NULL
) STRICT;

-- Vault identity MFA TOTP methods (/v1/identity/mfa/method/totp).
CREATE TABLE mfa_methods (
    id                      TEXT PRIMARY KEY,   -- uuid
    name                    TEXT UNIQUE,        -- method_name, optional
    issuer                  TEXT NOT NULL,
    period                  INTEGER NOT NULL CHECK (period > 0),
    key_size                INTEGER NOT NULL CHECK (key_size > 0),
    qr_size                 INTEGER NOT NULL CHECK (qr_size >= 0),
    algorithm               TEXT NOT NULL CHECK (algorithm IN ('SHA1', 'SHA256', 'SHA512')),
    digits                  INTEGER NOT NULL CHECK (digits IN (6, 8)),
    skew                    INTEGER NOT NULL CHECK (skew IN (0, 1)),
    max_validation_attempts INTEGER NOT NULL CHECK (max_validation_attempts > 0),
    created_at              INTEGER NOT NULL
) STRICT;

-- Which entity holds a secret for which method. A method cannot be deleted while
-- any entity still holds one (RESTRICT); destroying the secret removes the row (CASCADE).
CREATE TABLE mfa_secrets (
    method_id  TEXT NOT NULL REFERENCES mfa_methods(id) ON DELETE RESTRICT,
    entity_id  TEXT NOT NULL,
    secret_id  TEXT NOT NULL UNIQUE REFERENCES otp_secrets(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (method_id, entity_id)
) STRICT;

-- migrate: 3

-- Agent secrets (/api/v2/totp): an authenticator app for agents. The seed itself is
-- sealed in otp_secrets under the same id; this row holds what its owner may list.
-- Deleting the otp_secrets row removes this one (CASCADE).
CREATE TABLE agent_secrets (
    id         TEXT PRIMARY KEY REFERENCES otp_secrets(id) ON DELETE CASCADE,
    entity_id  TEXT NOT NULL,              -- the owner: uid:<N> or a token's entity
    label      TEXT NOT NULL,
    issuer     TEXT,
    created_at INTEGER NOT NULL            -- unix seconds
) STRICT;
CREATE INDEX agent_secrets_entity ON agent_secrets(entity_id, created_at);

-- migrate: 4

-- Which token made which: revoking a token revokes every token made from it, as in
-- Vault, so a child cannot outlive a revoked parent.
ALTER TABLE tokens ADD COLUMN parent TEXT;  -- accessor of the creating token; NULL if made by a socket peer
CREATE INDEX tokens_parent ON tokens(parent) WHERE parent IS NOT NULL;

-- migrate: 5

-- Nitride one-time policy tokens (/v1/auth/<mount>/totp): each allows exactly one update
-- of one ACL policy before it expires. The uuid is a bearer credential, so only its
-- SHA-256 is kept, with its first 8 characters for people and logs. Spent and expired
-- rows are purged by a periodic sweep; a uuid not found is refused like a spent one.
CREATE TABLE policy_tokens (
    hash       TEXT PRIMARY KEY,           -- hex SHA-256 of the lower-case hyphenated uuid
    prefix     TEXT NOT NULL,              -- the uuid's first 8 characters
    mount      TEXT NOT NULL,              -- auth mount it was made under: ratls, ...
    policy     TEXT NOT NULL,              -- the one policy it may update
    created_at INTEGER NOT NULL,           -- unix seconds
    expires_at INTEGER NOT NULL,           -- unix seconds; good strictly before this
    spent_at   INTEGER                     -- unix seconds; NULL while unspent
) STRICT;
CREATE INDEX policy_tokens_mount ON policy_tokens(mount, created_at);
CREATE INDEX policy_tokens_purge ON policy_tokens(expires_at);

-- For operators: `SELECT * FROM policy_tokens_view;` shows every token with readable
-- times and its state (unspent, spent, expired).
CREATE VIEW policy_tokens_view AS
SELECT mount,
       prefix,
       policy,
       datetime(created_at, 'unixepoch') AS created,
       datetime(expires_at, 'unixepoch') AS expires,
       CASE
           WHEN spent_at IS NOT NULL THEN 'spent'
           WHEN expires_at <= CAST(strftime('%s', 'now') AS INTEGER) THEN 'expired'
           ELSE 'unspent'
       END AS state,
       datetime(spent_at, 'unixepoch') AS spent
FROM policy_tokens
ORDER BY mount, created_at;

-- migrate: 6

-- The user login step (/api/v1/auth/totp/): a web application keeps its users and
-- passwords, totpd keeps their second factor. A user is an entity id.

-- A user's devices: each is a TOTP secret (sealed in otp_secrets, whose last_step keeps
-- replays out) that logs in once activated with a valid code.
CREATE TABLE user_devices (
    entity_id    TEXT NOT NULL,
    name         TEXT NOT NULL,           -- 'default' for the first
    secret_id    TEXT NOT NULL UNIQUE REFERENCES otp_secrets(id) ON DELETE CASCADE,
    active       INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
    created_at   INTEGER NOT NULL,        -- unix seconds
    activated_at INTEGER,
    last_used_at INTEGER,                 -- last login with this device
    PRIMARY KEY (entity_id, name)
) STRICT;

-- One failure count per user, across every device and recovery code, so guesses spread
-- over several devices lock as fast as guesses at one.
CREATE TABLE user_locks (
    entity_id    TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER                  -- unix seconds; every attempt refused until then
) STRICT;

-- Recovery codes: the selector (first group) in clear, the other 80 bits as an argon2id
-- PHC string. Single use: spent_at is set by a conditional update.
CREATE TABLE recovery_codes (
    entity_id  TEXT NOT NULL,
    selector   TEXT NOT NULL,
    hash       TEXT NOT NULL CHECK (hash LIKE '$argon2id$%'),
    created_at INTEGER NOT NULL,
    spent_at   INTEGER,
    PRIMARY KEY (entity_id, selector)
) STRICT;

-- temp_tokens from challenge/: single use, short-lived, stored as SHA-256.
CREATE TABLE temp_tokens (
    hash       TEXT PRIMARY KEY,
    entity_id  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
) STRICT;
CREATE INDEX temp_tokens_expires_at ON temp_tokens(expires_at);

-- For operators: `SELECT * FROM user_totp_view;` shows each user's devices, their state,
-- the recovery codes left and whether the user is locked.
CREATE VIEW user_totp_view AS
SELECT d.entity_id AS user,
       d.name AS device,
       CASE d.active WHEN 1 THEN 'active' ELSE 'pending' END AS state,
       datetime(d.created_at, 'unixepoch') AS created,
       datetime(d.last_used_at, 'unixepoch') AS last_used,
       (SELECT count(*) FROM recovery_codes r
         WHERE r.entity_id = d.entity_id AND r.spent_at IS NULL) AS recovery_codes_left,
       CASE WHEN l.locked_until > CAST(strftime('%s', 'now') AS INTEGER)
            THEN 'locked' ELSE 'open' END AS lock
FROM user_devices d LEFT JOIN user_locks l ON l.entity_id = d.entity_id
ORDER BY d.entity_id, d.created_at;

-- migrate: 7

-- Renewable tokens, as Vault's: a renewal extends a token by its creation TTL (or the
-- increment asked for), never past creation + explicit_max_ttl (0: the daemon's max
-- TTL), nor past its parent. Tokens made before this were not renewable.
-- policies.document now holds a policy as written, HCL or JSON text: JSON documents
-- stored before stay valid as they are.
ALTER TABLE tokens ADD COLUMN renewable INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN creation_ttl INTEGER NOT NULL DEFAULT 0;      -- seconds; 0 for none
ALTER TABLE tokens ADD COLUMN explicit_max_ttl INTEGER NOT NULL DEFAULT 0;  -- seconds; 0 for none
ALTER TABLE tokens ADD COLUMN last_renewal INTEGER;                         -- unix seconds; NULL if never renewed
UPDATE tokens SET creation_ttl = expires_at - created_at WHERE expires_at IS NOT NULL;

-- migrate: 8

-- Views for operators at a `sqlite3` prompt. None shows secret material: no sealed
-- column, no token or temp_token hash, no recovery-code hash. (policy_tokens_view and
-- user_totp_view above show policy tokens and users.)

-- Every TOTP secret with its owner, whichever surface holds it: surface, entity, the
-- method (Vault MFA), label (agent) or device (user login), parameters and state.
CREATE VIEW secrets_view AS
SELECT CASE
           WHEN m.secret_id IS NOT NULL THEN 'vault_mfa'
           WHEN a.id IS NOT NULL THEN 'agent'
           WHEN d.secret_id IS NOT NULL THEN 'user_totp'
           ELSE 'orphan'
       END AS surface,
       coalesce(m.entity_id, a.entity_id, d.entity_id) AS entity,
       coalesce(mm.name, m.method_id, a.label, d.name) AS method_or_label,
       s.id AS secret_id,
       s.algorithm,
       s.digits,
       s.period,
       datetime(s.created_at, 'unixepoch') AS created,
       datetime(s.last_step * s.period, 'unixepoch') AS last_accepted,
       s.failures,
       CASE WHEN s.locked_until > CAST(strftime('%s', 'now') AS INTEGER)
            THEN 'locked' ELSE 'open' END AS lock
FROM otp_secrets s
LEFT JOIN mfa_secrets m ON m.secret_id = s.id
LEFT JOIN mfa_methods mm ON mm.id = m.method_id
LEFT JOIN agent_secrets a ON a.id = s.id
LEFT JOIN user_devices d ON d.secret_id = s.id
ORDER BY surface, entity, s.created_at;

-- Current lockouts: secrets locked after too many failures, and login-step users locked
-- across their devices, with when the lock ends.
CREATE VIEW lockouts_view AS
SELECT v.surface, v.entity, v.method_or_label AS what, v.failures,
       datetime(s.locked_until, 'unixepoch') AS locked_until
FROM secrets_view v JOIN otp_secrets s ON s.id = v.secret_id
WHERE s.locked_until > CAST(strftime('%s', 'now') AS INTEGER)
UNION ALL
SELECT 'user_totp', entity_id, '(every device)', failures,
       datetime(locked_until, 'unixepoch')
FROM user_locks
WHERE locked_until > CAST(strftime('%s', 'now') AS INTEGER)
ORDER BY 5;

-- Secrets per entity and method (or surface, for agents and login users).
CREATE VIEW secrets_per_entity_view AS
SELECT surface, entity, method_or_label, count(*) AS secrets
FROM secrets_view
GROUP BY surface, entity, method_or_label
ORDER BY surface, entity, method_or_label;

-- API tokens by policy and expiry: one row per (token, policy), never the token or its
-- hash; the accessor is the public handle `auth/token/lookup-accessor` takes.
CREATE VIEW tokens_view AS
SELECT p.value AS policy,
       t.accessor,
       t.display_name,
       t.entity_id AS entity,
       datetime(t.created_at, 'unixepoch') AS created,
       coalesce(datetime(t.expires_at, 'unixepoch'), 'never') AS expires,
       CASE WHEN t.renewable = 1 THEN 'yes' ELSE 'no' END AS renewable,
       coalesce(t.parent, '-') AS parent
FROM tokens t, json_each(t.policies) p
WHERE t.expires_at IS NULL OR t.expires_at > CAST(strftime('%s', 'now') AS INTEGER)
ORDER BY p.value, t.expires_at IS NULL, t.expires_at;

-- migrate: 9

-- Keys of Vault's TOTP secrets engine (/v1/<mount>/keys/<name>), each mount its own
-- namespace. The key itself is sealed in otp_secrets under secret_id, with its replay
-- record, failure count and lock; this row holds what `read` shows.
CREATE TABLE engine_keys (
    mount        TEXT NOT NULL,
    name         TEXT NOT NULL,
    secret_id    TEXT NOT NULL UNIQUE REFERENCES otp_secrets(id) ON DELETE CASCADE,
    issuer       TEXT NOT NULL,
    account_name TEXT NOT NULL,
    skew         INTEGER NOT NULL CHECK (skew IN (0, 1)),
    created_at   INTEGER NOT NULL,         -- unix seconds
    PRIMARY KEY (mount, name)
) STRICT;

-- Codes tried at an engine key, right or wrong, kept until no step they could match is
-- in the window any more: as Vault's engine does, a code tried twice is refused the
-- second time as used. A code here is spent or wrong, so it tells nobody a code to use.
CREATE TABLE engine_tried_codes (
    secret_id  TEXT NOT NULL REFERENCES otp_secrets(id) ON DELETE CASCADE,
    code       TEXT NOT NULL,
    expires_at INTEGER NOT NULL,           -- unix seconds
    PRIMARY KEY (secret_id, code)
) STRICT;

-- The operators' views learn of engine keys: surface 'vault_totp', the mount as entity,
-- the key's name as label. SQLite cannot replace a view another view reads, so the two
-- that read secrets_view go and come back unchanged.
DROP VIEW secrets_per_entity_view;
DROP VIEW lockouts_view;
DROP VIEW secrets_view;

CREATE VIEW secrets_view AS
SELECT CASE
           WHEN m.secret_id IS NOT NULL THEN 'vault_mfa'
           WHEN a.id IS NOT NULL THEN 'agent'
           WHEN d.secret_id IS NOT NULL THEN 'user_totp'
           WHEN k.secret_id IS NOT NULL THEN 'vault_totp'
           ELSE 'orphan'
       END AS surface,
       coalesce(m.entity_id, a.entity_id, d.entity_id, k.mount) AS entity,
       coalesce(mm.name, m.method_id, a.label, d.name, k.name) AS method_or_label,
       s.id AS secret_id,
       s.algorithm,
       s.digits,
       s.period,
       datetime(s.created_at, 'unixepoch') AS created,
       datetime(s.last_step * s.period, 'unixepoch') AS last_accepted,
       s.failures,
       CASE WHEN s.locked_until > CAST(strftime('%s', 'now') AS INTEGER)
            THEN 'locked' ELSE 'open' END AS lock
FROM otp_secrets s
LEFT JOIN mfa_secrets m ON m.secret_id = s.id
LEFT JOIN mfa_methods mm ON mm.id = m.method_id
LEFT JOIN agent_secrets a ON a.id = s.id
LEFT JOIN user_devices d ON d.secret_id = s.id
LEFT JOIN engine_keys k ON k.secret_id = s.id
ORDER BY surface, entity, s.created_at;

CREATE VIEW lockouts_view AS
SELECT v.surface, v.entity, v.method_or_label AS what, v.failures,
       datetime(s.locked_until, 'unixepoch') AS locked_until
FROM secrets_view v JOIN otp_secrets s ON s.id = v.secret_id
WHERE s.locked_until > CAST(strftime('%s', 'now') AS INTEGER)
UNION ALL
SELECT 'user_totp', entity_id, '(every device)', failures,
       datetime(locked_until, 'unixepoch')
FROM user_locks
WHERE locked_until > CAST(strftime('%s', 'now') AS INTEGER)
ORDER BY 5;

CREATE VIEW secrets_per_entity_view AS
SELECT surface, entity, method_or_label, count(*) AS secrets
FROM secrets_view
GROUP BY surface, entity, method_or_label
ORDER BY surface, entity, method_or_label;
