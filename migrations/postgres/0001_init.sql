-- totpd's PostgreSQL schema, migration 1: the state SQLite's schema.sql reaches at its
-- migration 8, in PostgreSQL's types. Column names are SQLite's, so each store operation
-- reads and writes the same columns on both backends.
--
-- Applied by the daemon at start, in one transaction holding an advisory lock (see
-- src/store/postgres/migrate.rs); totpd_schema_version records it. Never edit a file
-- that has shipped: add the next one (0002_....sql) and list it in migrate.rs.
--
-- Types: unix seconds, time steps and TTLs are BIGINT (Rust i64); small counts and code
-- parameters are INTEGER (Rust i32); flags are BOOLEAN; sealed values are BYTEA. Every
-- TEXT column collates as "C": totpd compares and sorts bytes, as SQLite does, whatever
-- the database's locale.
--
-- Nothing here holds a secret in clear: TOTP secrets are sealed (XChaCha20-Poly1305, the
-- key lives outside the database), tokens are stored as SHA-256 hashes.

-- Daemon-wide facts. 'key_check' holds a sealed known value: if it does not open with
-- the configured key ring, the daemon refuses to start rather than serve garbage.
-- 'last_backup' holds when the last recorded backup was taken.
CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value BYTEA NOT NULL
);

-- ACL policies written by operators (the built-in 'root' and 'default' are not stored).
-- document: the policy as written, in HCL or JSON.
CREATE TABLE policies (
    name       TEXT COLLATE "C" PRIMARY KEY,
    document   TEXT COLLATE "C" NOT NULL,
    updated_at BIGINT NOT NULL                    -- unix seconds
);

-- API tokens. Only the SHA-256 of a token is kept; the token itself is shown once.
-- Revoking a token revokes every token made from it (parent), as in Vault.
CREATE TABLE tokens (
    hash             TEXT COLLATE "C" PRIMARY KEY,      -- hex SHA-256 of the token
    accessor         TEXT COLLATE "C" NOT NULL UNIQUE,  -- public handle, safe to log and list
    entity_id        TEXT COLLATE "C" NOT NULL,
    display_name     TEXT COLLATE "C" NOT NULL,
    policies         TEXT COLLATE "C" NOT NULL,         -- JSON array of policy names
    created_at       BIGINT NOT NULL,                   -- unix seconds
    expires_at       BIGINT,                            -- unix seconds; NULL never expires
    parent           TEXT COLLATE "C",                  -- accessor of the creating token; NULL if made by a socket peer
    renewable        BOOLEAN NOT NULL DEFAULT false,
    creation_ttl     BIGINT NOT NULL DEFAULT 0,         -- seconds; 0 for none
    explicit_max_ttl BIGINT NOT NULL DEFAULT 0,         -- seconds; 0 for none
    last_renewal     BIGINT                             -- unix seconds; NULL if never renewed
);
CREATE INDEX tokens_expires_at ON tokens (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX tokens_parent ON tokens (parent) WHERE parent IS NOT NULL;

-- Every TOTP secret, whichever surface owns it, with the state its verification keeps.
-- sealed: key id (1 byte) || 24-byte nonce || XChaCha20-Poly1305 ciphertext, with
-- associated data "totpd/v1/otp_secrets/<id>", so it opens only in this row.
CREATE TABLE otp_secrets (
    id           TEXT COLLATE "C" PRIMARY KEY,
    sealed       BYTEA NOT NULL,
    algorithm    TEXT COLLATE "C" NOT NULL CHECK (algorithm IN ('SHA1', 'SHA256', 'SHA512')),
    digits       INTEGER NOT NULL CHECK (digits IN (6, 8)),
    period       INTEGER NOT NULL CHECK (period > 0),
    last_step    BIGINT,                       -- last accepted time step: replays are refused
    failures     INTEGER NOT NULL DEFAULT 0,   -- consecutive failed attempts
    locked_until BIGINT,                       -- unix seconds; every code refused until then
    last_attempt BIGINT,                       -- unix seconds of the last verification attempt
    created_at   BIGINT NOT NULL
);

-- Vault identity MFA TOTP methods (/v1/identity/mfa/method/totp).
CREATE TABLE mfa_methods (
    id                      TEXT COLLATE "C" PRIMARY KEY,   -- uuid
    name                    TEXT COLLATE "C" UNIQUE,        -- method_name, optional
    issuer                  TEXT COLLATE "C" NOT NULL,
    period                  INTEGER NOT NULL CHECK (period > 0),
    key_size                INTEGER NOT NULL CHECK (key_size > 0),
    qr_size                 INTEGER NOT NULL CHECK (qr_size >= 0),
    algorithm               TEXT COLLATE "C" NOT NULL CHECK (algorithm IN ('SHA1', 'SHA256', 'SHA512')),
    digits                  INTEGER NOT NULL CHECK (digits IN (6, 8)),
    skew                    INTEGER NOT NULL CHECK (skew IN (0, 1)),
    max_validation_attempts INTEGER NOT NULL CHECK (max_validation_attempts > 0),
    created_at              BIGINT NOT NULL
);

-- Which entity holds a secret for which method. A method cannot be deleted while
-- any entity still holds one (RESTRICT); destroying the secret removes the row (CASCADE).
CREATE TABLE mfa_secrets (
    method_id  TEXT COLLATE "C" NOT NULL REFERENCES mfa_methods (id) ON DELETE RESTRICT,
    entity_id  TEXT COLLATE "C" NOT NULL,
    secret_id  TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES otp_secrets (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (method_id, entity_id)
);

-- Agent secrets (/api/v2/totp): an authenticator app for agents. The seed itself is
-- sealed in otp_secrets under the same id; this row holds what its owner may list.
-- Deleting the otp_secrets row removes this one (CASCADE).
CREATE TABLE agent_secrets (
    id         TEXT COLLATE "C" PRIMARY KEY REFERENCES otp_secrets (id) ON DELETE CASCADE,
    entity_id  TEXT COLLATE "C" NOT NULL,      -- the owner: uid:<N> or a token's entity
    label      TEXT COLLATE "C" NOT NULL,
    issuer     TEXT COLLATE "C",
    created_at BIGINT NOT NULL                 -- unix seconds
);
CREATE INDEX agent_secrets_entity ON agent_secrets (entity_id, created_at);

-- Nitride one-time policy tokens (/v1/auth/<mount>/totp): each allows exactly one update
-- of one ACL policy before it expires. The uuid is a bearer credential, so only its
-- SHA-256 is kept, with its first 8 characters for people and logs. Spent and expired
-- rows are purged by a periodic sweep; a uuid not found is refused like a spent one.
CREATE TABLE policy_tokens (
    hash       TEXT COLLATE "C" PRIMARY KEY,   -- hex SHA-256 of the lower-case hyphenated uuid
    prefix     TEXT COLLATE "C" NOT NULL,      -- the uuid's first 8 characters
    mount      TEXT COLLATE "C" NOT NULL,      -- auth mount it was made under: ratls, ...
    policy     TEXT COLLATE "C" NOT NULL,      -- the one policy it may update
    created_at BIGINT NOT NULL,                -- unix seconds
    expires_at BIGINT NOT NULL,                -- unix seconds; good strictly before this
    spent_at   BIGINT                          -- unix seconds; NULL while unspent
);
CREATE INDEX policy_tokens_mount ON policy_tokens (mount, created_at);
CREATE INDEX policy_tokens_purge ON policy_tokens (expires_at);

-- The user login step (/api/v1/auth/totp/): a web application keeps its users and
-- passwords, totpd keeps their second factor. A user is an entity id.

-- A user's devices: each is a TOTP secret (sealed in otp_secrets, whose last_step keeps
-- replays out) that logs in once activated with a valid code.
CREATE TABLE user_devices (
    entity_id    TEXT COLLATE "C" NOT NULL,
    name         TEXT COLLATE "C" NOT NULL,    -- 'default' for the first
    secret_id    TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES otp_secrets (id) ON DELETE CASCADE,
    active       BOOLEAN NOT NULL DEFAULT false,
    created_at   BIGINT NOT NULL,              -- unix seconds
    activated_at BIGINT,
    last_used_at BIGINT,                       -- last login with this device
    PRIMARY KEY (entity_id, name)
);

-- One failure count per user, across every device and recovery code, so guesses spread
-- over several devices lock as fast as guesses at one.
CREATE TABLE user_locks (
    entity_id    TEXT COLLATE "C" PRIMARY KEY,
    failures     INTEGER NOT NULL DEFAULT 0,
    locked_until BIGINT                        -- unix seconds; every attempt refused until then
);

-- Recovery codes: the selector (first group) in clear, the other 80 bits as an argon2id
-- PHC string. Single use: spent_at is set by a conditional update.
CREATE TABLE recovery_codes (
    entity_id  TEXT COLLATE "C" NOT NULL,
    selector   TEXT COLLATE "C" NOT NULL,
    hash       TEXT COLLATE "C" NOT NULL CHECK (hash LIKE '$argon2id$%'),
    created_at BIGINT NOT NULL,
    spent_at   BIGINT,
    PRIMARY KEY (entity_id, selector)
);

-- temp_tokens from challenge/: single use, short-lived, stored as SHA-256.
CREATE TABLE temp_tokens (
    hash       TEXT COLLATE "C" PRIMARY KEY,
    entity_id  TEXT COLLATE "C" NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX temp_tokens_expires_at ON temp_tokens (expires_at);

-- Views for operators at a `psql` prompt, as in the SQLite schema. None shows secret
-- material: no sealed column, no token or temp_token hash, no recovery-code hash. Times
-- are timestamptz, shown in the session's time zone.

-- Every policy token with readable times and its state (unspent, spent, expired).
CREATE VIEW policy_tokens_view AS
SELECT mount,
       prefix,
       policy,
       to_timestamp(created_at) AS created,
       to_timestamp(expires_at) AS expires,
       CASE
           WHEN spent_at IS NOT NULL THEN 'spent'
           WHEN expires_at <= extract(epoch FROM now())::bigint THEN 'expired'
           ELSE 'unspent'
       END AS state,
       to_timestamp(spent_at) AS spent
FROM policy_tokens
ORDER BY mount, created_at;

-- Each login-step user's devices, their state, the recovery codes left and whether the
-- user is locked.
CREATE VIEW user_totp_view AS
SELECT d.entity_id AS "user",
       d.name AS device,
       CASE WHEN d.active THEN 'active' ELSE 'pending' END AS state,
       to_timestamp(d.created_at) AS created,
       to_timestamp(d.last_used_at) AS last_used,
       (SELECT count(*) FROM recovery_codes r
         WHERE r.entity_id = d.entity_id AND r.spent_at IS NULL) AS recovery_codes_left,
       CASE WHEN l.locked_until > extract(epoch FROM now())::bigint
            THEN 'locked' ELSE 'open' END AS lock
FROM user_devices d LEFT JOIN user_locks l ON l.entity_id = d.entity_id
ORDER BY d.entity_id, d.created_at;

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
       to_timestamp(s.created_at) AS created,
       to_timestamp(s.last_step * s.period) AS last_accepted,
       s.failures,
       CASE WHEN s.locked_until > extract(epoch FROM now())::bigint
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
       to_timestamp(s.locked_until) AS locked_until
FROM secrets_view v JOIN otp_secrets s ON s.id = v.secret_id
WHERE s.locked_until > extract(epoch FROM now())::bigint
UNION ALL
SELECT 'user_totp', entity_id, '(every device)', failures,
       to_timestamp(locked_until)
FROM user_locks
WHERE locked_until > extract(epoch FROM now())::bigint
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
       to_timestamp(t.created_at) AS created,
       coalesce(to_timestamp(t.expires_at)::text, 'never') AS expires,
       CASE WHEN t.renewable THEN 'yes' ELSE 'no' END AS renewable,
       coalesce(t.parent, '-') AS parent
FROM tokens t, jsonb_array_elements_text(t.policies::jsonb) AS p(value)
WHERE t.expires_at IS NULL OR t.expires_at > extract(epoch FROM now())::bigint
ORDER BY p.value, t.expires_at IS NULL, t.expires_at;
