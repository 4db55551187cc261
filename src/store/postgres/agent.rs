//! Agent secrets on PostgreSQL: an authenticator app for agents. Every statement is
//! scoped to the owning entity, so another entity's id behaves exactly like an unknown
//! one. Nothing here is a read-modify-write: each call is one statement, or (create)
//! one transaction of two inserts.

use async_trait::async_trait;

use super::mfa::{exec, insert_secret, params_of_row};
use super::{col, otp_secret_aad, PgStore};
use crate::otp::Params;
use crate::store::{AgentSecretInfo, AgentStore, StoreError};

#[async_trait]
impl AgentStore for PgStore {
    /// The sealed secret and the owner's row, in one transaction: a taken id (the
    /// primary key of either table, whoever owns it) is a unique violation,
    /// `Conflict(Duplicate)`, and nothing is stored.
    async fn create_agent_secret(
        &self,
        entity_id: &str,
        info: &AgentSecretInfo,
        secret: &[u8],
    ) -> Result<(), StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            insert_secret(
                &tx,
                self.sealer(),
                &info.id,
                secret,
                &info.params,
                info.created_at,
            )
            .await?;
            exec(
                &tx,
                "INSERT INTO agent_secrets (id, entity_id, label, issuer, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &info.id,
                    &entity_id,
                    &info.label,
                    &info.issuer,
                    &info.created_at,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn list_agent_secrets(
        &self,
        entity_id: &str,
    ) -> Result<Vec<AgentSecretInfo>, StoreError> {
        let rows = self
            .query(
                "SELECT a.id, a.label, a.issuer, s.algorithm, s.digits, s.period, a.created_at
                 FROM agent_secrets a JOIN otp_secrets s ON s.id = a.id
                 WHERE a.entity_id = $1 ORDER BY a.created_at, a.id",
                &[&entity_id],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = col(r, 0)?;
                let algorithm: String = col(r, 3)?;
                Ok(AgentSecretInfo {
                    params: params_of_row("otp_secrets", &id, &algorithm, col(r, 4)?, col(r, 5)?)?,
                    label: col(r, 1)?,
                    issuer: col(r, 2)?,
                    created_at: col(r, 6)?,
                    id,
                })
            })
            .collect()
    }

    /// One statement; the `agent_secrets` row cascades with the secret.
    async fn delete_agent_secret(&self, entity_id: &str, id: &str) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "DELETE FROM otp_secrets WHERE id = $1
                 AND id IN (SELECT id FROM agent_secrets WHERE id = $1 AND entity_id = $2)",
                &[&id, &entity_id],
            )
            .await?;
        Ok(n > 0)
    }

    async fn get_agent_secret(
        &self,
        entity_id: &str,
        id: &str,
    ) -> Result<Option<(Vec<u8>, Params)>, StoreError> {
        let rows = self
            .query(
                "SELECT s.sealed, s.algorithm, s.digits, s.period
                 FROM agent_secrets a JOIN otp_secrets s ON s.id = a.id
                 WHERE a.id = $1 AND a.entity_id = $2",
                &[&id, &entity_id],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let sealed: Vec<u8> = col(r, 0)?;
        let algorithm: String = col(r, 1)?;
        let params = params_of_row("otp_secrets", id, &algorithm, col(r, 2)?, col(r, 3)?)?;
        let secret = self.sealer().open(&otp_secret_aad(id), &sealed)?;
        Ok(Some((secret, params)))
    }
}
