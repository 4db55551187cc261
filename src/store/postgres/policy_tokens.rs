//! Nitride one-time policy tokens on PostgreSQL. Spending is one short transaction
//! whose first statement is the conditional `UPDATE` that spends the token: its row
//! lock is what makes two spends, on one daemon or on several, take turns.

use async_trait::async_trait;

use super::{col, PgStore};
use crate::store::{PolicyTokenRecord, PolicyTokenStore, Spend, SpendRefusal, StoreError, Thing};

const COLS: &str = "hash, prefix, mount, policy, created_at, expires_at, spent_at";

#[async_trait]
impl PolicyTokenStore for PgStore {
    /// One statement: the insert happens only if the policy exists, and the row it
    /// found is locked `FOR KEY SHARE` until the insert commits, so a concurrent
    /// `delete_policy` waits and deletes after: the same outcome as the two running one
    /// after the other (a token whose policy is then gone, which a spend refuses as
    /// `PolicyGone`). A taken hash is a unique violation: `Conflict(Duplicate)`.
    async fn create_policy_token(&self, t: &PolicyTokenRecord) -> Result<(), StoreError> {
        let n = self
            .execute(
                &format!(
                    "INSERT INTO policy_tokens ({COLS})
                     SELECT $1::text, $2::text, $3::text, name, $5::bigint, $6::bigint, $7::bigint
                     FROM policies WHERE name = $4
                     FOR KEY SHARE"
                ),
                &[
                    &t.hash,
                    &t.prefix,
                    &t.mount,
                    &t.policy,
                    &t.created_at,
                    &t.expires_at,
                    &t.spent_at,
                ],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(Thing::Policy));
        }
        Ok(())
    }

    async fn list_policy_tokens(&self, mount: &str) -> Result<Vec<PolicyTokenRecord>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLS} FROM policy_tokens WHERE mount = $1 ORDER BY created_at, prefix"
                ),
                &[&mount],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PolicyTokenRecord {
                    hash: col(r, 0)?,
                    prefix: col(r, 1)?,
                    mount: col(r, 2)?,
                    policy: col(r, 3)?,
                    created_at: col(r, 4)?,
                    expires_at: col(r, 5)?,
                    spent_at: col(r, 6)?,
                })
            })
            .collect()
    }

    async fn delete_policy_token(&self, mount: &str, hash: &str) -> Result<bool, StoreError> {
        Ok(self
            .execute(
                "DELETE FROM policy_tokens WHERE hash = $1 AND mount = $2",
                &[&hash, &mount],
            )
            .await?
            > 0)
    }

    /// One statement: it locks the matching rows (`FOR UPDATE`), counts them, and
    /// deletes them only if there is exactly one. Under `READ COMMITTED` a row another
    /// transaction deletes first is skipped once its lock is released, and a twin
    /// inserted after the statement began is not seen: either way the outcome is one the
    /// calls would have had one after the other.
    async fn delete_policy_token_by_prefix(
        &self,
        mount: &str,
        prefix: &str,
    ) -> Result<usize, StoreError> {
        let rows = self
            .query(
                "WITH matched AS (
                     SELECT hash FROM policy_tokens WHERE mount = $1 AND prefix = $2 FOR UPDATE
                 ),
                 deleted AS (
                     DELETE FROM policy_tokens
                     WHERE hash IN (SELECT hash FROM matched) AND (SELECT count(*) FROM matched) = 1
                 )
                 SELECT count(*) FROM matched",
                &[&mount, &prefix],
            )
            .await?;
        let n: i64 = match rows.first() {
            Some(r) => col(r, 0)?,
            None => 0,
        };
        Ok(n.max(0) as usize)
    }

    /// One transaction of two statements:
    ///
    /// 1. `UPDATE policy_tokens SET spent_at = $now WHERE hash = $1 AND spent_at IS NULL
    ///    AND expires_at > $now AND policy = $2 RETURNING hash` spends the token, if it
    ///    is spendable, and holds its row lock until the transaction ends.
    /// 2. `UPDATE policies SET document = ... WHERE name = $2` writes the policy; no row
    ///    (the policy is gone) rolls the whole transaction back, the token unspent.
    ///
    /// Why exactly one of any number of concurrent spends writes, under `READ
    /// COMMITTED`: the first `UPDATE` to reach the row locks it; every other one waits
    /// for that transaction to end and then evaluates its `WHERE` again on the row as it
    /// is then (PostgreSQL's re-check of an updated row). If the first committed, they
    /// find `spent_at` set and change nothing; if it rolled back (policy gone), the next
    /// one proceeds as if the first had never run. A spend that changed no row reads the
    /// row once more to say why, in SQLite's order (unknown, spent, expired, other
    /// policy); that read changes nothing, so a race there can only change the reason.
    async fn spend_policy_token_and_update(
        &self,
        hash: &str,
        policy: &str,
        document: &str,
        now: i64,
    ) -> Result<Spend, StoreError> {
        self.bounded(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let spend = tx
                .prepare_cached(
                    "UPDATE policy_tokens SET spent_at = $3
                     WHERE hash = $1 AND policy = $2 AND spent_at IS NULL AND expires_at > $3
                     RETURNING hash",
                )
                .await?;
            if tx
                .query_opt(&spend, &[&hash, &policy, &now])
                .await?
                .is_none()
            {
                let why = tx
                    .prepare_cached(
                        "SELECT policy, expires_at, spent_at FROM policy_tokens WHERE hash = $1",
                    )
                    .await?;
                let refusal = match tx.query_opt(&why, &[&hash]).await? {
                    None => SpendRefusal::Unknown,
                    Some(r) => {
                        let (p, expires_at, spent_at): (String, i64, Option<i64>) =
                            (col(&r, 0)?, col(&r, 1)?, col(&r, 2)?);
                        if spent_at.is_some() {
                            SpendRefusal::Spent
                        } else if now >= expires_at {
                            SpendRefusal::Expired
                        } else if p != policy {
                            SpendRefusal::OtherPolicy
                        } else {
                            // Made (or given back) after the UPDATE looked: it did not
                            // exist for this spend.
                            SpendRefusal::Unknown
                        }
                    }
                };
                tx.rollback().await?;
                return Ok(Spend::Refused(refusal));
            }
            // An update, never a create: a token does not bring back a deleted policy.
            let write = tx
                .prepare_cached(
                    "UPDATE policies SET document = $2, updated_at = $3 WHERE name = $1",
                )
                .await?;
            if tx.execute(&write, &[&policy, &document, &now]).await? == 0 {
                tx.rollback().await?;
                return Ok(Spend::Refused(SpendRefusal::PolicyGone));
            }
            tx.commit().await?;
            Ok(Spend::Spent)
        })
        .await
    }

    /// One `DELETE`: a token being spent meanwhile is either deleted after the spend
    /// commits (spent) or left for the next purge; nothing is made good again.
    async fn purge_policy_tokens(&self, now: i64) -> Result<usize, StoreError> {
        let n = self
            .execute(
                "DELETE FROM policy_tokens WHERE spent_at IS NOT NULL OR expires_at <= $1",
                &[&now],
            )
            .await?;
        Ok(n as usize)
    }
}
