//! Agent secrets: an authenticator app for agents. Every statement is scoped to the
//! owning entity, so another entity's id behaves exactly like an unknown one.

use async_trait::async_trait;
use rusqlite::params;

use super::otp_secrets::{self, params_of_row};
use super::SqliteStore;
use crate::otp::Params;
use crate::store::{AgentSecretInfo, AgentStore, StoreError};

#[async_trait]
impl AgentStore for SqliteStore {
    async fn create_agent_secret(
        &self,
        entity_id: &str,
        info: &AgentSecretInfo,
        secret: &[u8],
    ) -> Result<(), StoreError> {
        let (entity_id, info, secret) = (entity_id.to_string(), info.clone(), secret.to_vec());
        let sealer = self.sealer.clone();
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

    async fn list_agent_secrets(
        &self,
        entity_id: &str,
    ) -> Result<Vec<AgentSecretInfo>, StoreError> {
        let entity_id = entity_id.to_string();
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
                out.push(AgentSecretInfo {
                    params: params_of_row("otp_secrets", &id, &alg, digits, period)?,
                    id,
                    label,
                    issuer,
                    created_at,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn delete_agent_secret(&self, entity_id: &str, id: &str) -> Result<bool, StoreError> {
        let (entity_id, id) = (entity_id.to_string(), id.to_string());
        self.write(move |c| {
            // CASCADE removes the agent_secrets row with it.
            let n = c.execute(
                "DELETE FROM otp_secrets WHERE id = ?1
                 AND id IN (SELECT id FROM agent_secrets WHERE id = ?1 AND entity_id = ?2)",
                params![id, entity_id],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn get_agent_secret(
        &self,
        entity_id: &str,
        id: &str,
    ) -> Result<Option<(Vec<u8>, Params)>, StoreError> {
        let (entity_id, id) = (entity_id.to_string(), id.to_string());
        let sealer = self.sealer.clone();
        self.read_now(move |c| {
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
