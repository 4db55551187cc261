-- totpd's PostgreSQL schema, migration 3: keys of Vault's TOTP secrets engine.
--
-- As SQLite's migration 9: each (mount, name) holds one key, sealed in otp_secrets with
-- its replay record, failure count and lock; the codes tried at it stay until no step
-- they could match is in the window any more (a code tried twice is refused as used).
-- Text in byte order (COLLATE "C"), as the tables of migration 1 and as SQLite sorts.
CREATE TABLE engine_keys (
    mount        TEXT COLLATE "C" NOT NULL,
    name         TEXT COLLATE "C" NOT NULL,
    secret_id    TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES otp_secrets(id) ON DELETE CASCADE,
    issuer       TEXT COLLATE "C" NOT NULL,
    account_name TEXT COLLATE "C" NOT NULL,
    skew         INTEGER NOT NULL CHECK (skew IN (0, 1)),
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (mount, name)
);

CREATE TABLE engine_tried_codes (
    secret_id  TEXT COLLATE "C" NOT NULL REFERENCES otp_secrets(id) ON DELETE CASCADE,
    code       TEXT COLLATE "C" NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (secret_id, code)
);

-- The same columns as before, so the views that read it stay as they are.
CREATE OR REPLACE VIEW secrets_view AS
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
LEFT JOIN engine_keys k ON k.secret_id = s.id
ORDER BY surface, entity, s.created_at;
