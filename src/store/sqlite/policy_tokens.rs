//! Nitride one-time policy tokens. Spending is one write operation: the writer runs
//! operations one after another, so two spends of one token cannot both find it unspent.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::store::{PolicyTokenRecord, PolicyTokenStore, Spend, SpendRefusal, StoreError, Thing};

#[async_trait]
impl PolicyTokenStore for SqliteStore {
    async fn create_policy_token(&self, t: &PolicyTokenRecord) -> Result<(), StoreError> {
        let t = t.clone();
        self.write(move |c| {
            let exists = c
                .prepare_cached("SELECT 1 FROM policies WHERE name = ?1")?
                .exists([&t.policy])?;
            if !exists {
                return Err(StoreError::NotFound(Thing::Policy));
            }
            c.execute(
                "INSERT INTO policy_tokens (hash, prefix, mount, policy, created_at, expires_at, spent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![t.hash, t.prefix, t.mount, t.policy, t.created_at, t.expires_at, t.spent_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn list_policy_tokens(&self, mount: &str) -> Result<Vec<PolicyTokenRecord>, StoreError> {
        let mount = mount.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT hash, prefix, mount, policy, created_at, expires_at, spent_at
                 FROM policy_tokens WHERE mount = ?1 ORDER BY created_at, prefix",
            )?;
            let rows = stmt.query_map([mount], |r| {
                Ok(PolicyTokenRecord {
                    hash: r.get(0)?,
                    prefix: r.get(1)?,
                    mount: r.get(2)?,
                    policy: r.get(3)?,
                    created_at: r.get(4)?,
                    expires_at: r.get(5)?,
                    spent_at: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn delete_policy_token(&self, mount: &str, hash: &str) -> Result<bool, StoreError> {
        let (mount, hash) = (mount.to_string(), hash.to_string());
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM policy_tokens WHERE hash = ?1 AND mount = ?2",
                params![hash, mount],
            )? > 0)
        })
        .await
    }

    async fn delete_policy_token_by_prefix(
        &self,
        mount: &str,
        prefix: &str,
    ) -> Result<usize, StoreError> {
        let (mount, prefix) = (mount.to_string(), prefix.to_string());
        self.write(move |c| {
            let n: usize = c.query_row(
                "SELECT count(*) FROM policy_tokens WHERE mount = ?1 AND prefix = ?2",
                params![mount, prefix],
                |r| r.get(0),
            )?;
            if n == 1 {
                c.execute(
                    "DELETE FROM policy_tokens WHERE mount = ?1 AND prefix = ?2",
                    params![mount, prefix],
                )?;
            }
            Ok(n)
        })
        .await
    }

    async fn spend_policy_token_and_update(
        &self,
        hash: &str,
        policy: &str,
        document: &str,
        now: i64,
    ) -> Result<Spend, StoreError> {
        let (hash, policy, document) = (hash.to_string(), policy.to_string(), document.to_string());
        self.auth_write(move |c| {
            let row: Option<(String, i64, Option<i64>)> = c
                .prepare_cached(
                    "SELECT policy, expires_at, spent_at FROM policy_tokens WHERE hash = ?1",
                )?
                .query_row([&hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let refusal = match row {
                None => Some(SpendRefusal::Unknown),
                Some((_, _, Some(_))) => Some(SpendRefusal::Spent),
                Some((_, expires_at, None)) if now >= expires_at => Some(SpendRefusal::Expired),
                Some((p, _, None)) if p != policy => Some(SpendRefusal::OtherPolicy),
                Some(_) => None,
            };
            if let Some(r) = refusal {
                return Ok(Spend::Refused(r));
            }
            // An update, never a create: a token does not bring back a deleted policy.
            let updated = c.execute(
                "UPDATE policies SET document = ?2, updated_at = ?3 WHERE name = ?1",
                params![policy, document, now],
            )?;
            if updated == 0 {
                return Ok(Spend::Refused(SpendRefusal::PolicyGone));
            }
            c.execute(
                "UPDATE policy_tokens SET spent_at = ?2 WHERE hash = ?1",
                params![hash, now],
            )?;
            Ok(Spend::Spent)
        })
        .await
    }

    async fn purge_policy_tokens(&self, now: i64) -> Result<usize, StoreError> {
        self.write(move |c| {
            Ok(c.execute(
                "DELETE FROM policy_tokens WHERE spent_at IS NOT NULL OR expires_at <= ?1",
                [now],
            )?)
        })
        .await
    }
}
