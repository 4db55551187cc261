//! Agent secrets: an authenticator app for agents. Every operation is scoped to the
//! owning entity, so another entity's id behaves exactly like an unknown one.

use rusqlite::params;

use super::{otp_secrets, Store, StoreError};
use crate::otp::{Algorithm, Params};

/// What an owner may see of a stored agent secret (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSecretInfo {
    pub id: String,
    pub label: String,
    pub issuer: Option<String>,
    pub params: Params,
    pub created_at: i64,
}

impl Store {
    /// Stores a new agent secret for `entity_id`.
    pub async fn agent_create(
        &self,
        entity_id: String,
        info: AgentSecretInfo,
        secret: Vec<u8>,
    ) -> Result<(), StoreError> {
        let sealer = self.inner.sealer.clone();
        self.write(move |c| {
            otp_secrets::insert(c, &sealer, &info.id, &secret, &info.params, info.created_at)?;
            c.execute(
                "INSERT INTO agent_secrets (id, entity_id, label, issuer, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![info.id, entity_id, info.label, info.issuer, info.created_at],
            )?;
            Ok(())
        })
        .await
    }

    /// The entity's secrets, oldest first.
    pub async fn agent_list(&self, entity_id: String) -> Result<Vec<AgentSecretInfo>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT a.id, a.label, a.issuer, s.algorithm, s.digits, s.period, a.created_at
                 FROM agent_secrets a JOIN otp_secrets s ON s.id = a.id
                 WHERE a.entity_id = ?1 ORDER BY a.created_at, a.id",
            )?;
            let rows = stmt.query_map([entity_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, i64>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, label, issuer, alg, digits, period, created_at) = row?;
                let algorithm = Algorithm::parse(&alg).ok_or_else(|| {
                    StoreError::Corrupt(format!("otp_secrets {id}: algorithm {alg:?}"))
                })?;
                out.push(AgentSecretInfo {
                    id,
                    label,
                    issuer,
                    params: Params {
                        algorithm,
                        digits: digits as u32,
                        period: period.max(1) as u64,
                    },
                    created_at,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Deletes the entity's secret `id`; false if it has none by that id.
    pub async fn agent_delete(&self, entity_id: String, id: String) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c.execute(
                "DELETE FROM otp_secrets WHERE id = ?1
                 AND id IN (SELECT id FROM agent_secrets WHERE id = ?1 AND entity_id = ?2)",
                params![id, entity_id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    /// The opened secret `id` of the entity, with its parameters.
    pub async fn agent_secret(
        &self,
        entity_id: String,
        id: String,
    ) -> Result<Option<(Vec<u8>, Params)>, StoreError> {
        let sealer = self.inner.sealer.clone();
        self.read(move |c| {
            let owned = c
                .prepare_cached("SELECT 1 FROM agent_secrets WHERE id = ?1 AND entity_id = ?2")?
                .exists(params![id, entity_id])?;
            if !owned {
                return Ok(None);
            }
            otp_secrets::open(c, &sealer, &id)
        })
        .await
    }
}
