//! Callers resolved from tokens, kept in memory so a request with a known token costs no
//! database read and no policy parse.
//!
//! Why it is never stale: the store gives a generation ([`Store::auth_generation`]) that
//! changes, after the commit and before the writer is answered, whenever a token is
//! revoked or renewed or a policy is written or deleted. An entry remembers the
//! generation read *before* its token and policies were read; it is used only while the
//! generation is still that one. A write that commits after that read moves the
//! generation on, so the entry is never used again: the very next request reads the
//! database. Expiry is checked on every use. Unknown tokens are never cached (a new
//! token is simply read on first use). A store that cannot tell when another process
//! writes (PostgreSQL, shared by several daemons) gives no generation, and then nothing
//! is cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Caller;

/// Entries at most; the map is emptied when it is full (a hit costs a read again, never
/// more memory).
const MAX_ENTRIES: usize = 4096;

struct Entry {
    generation: u64,
    caller: Arc<Caller>,
}

/// Callers by token hash (see the module's documentation).
#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Cache {
    /// The caller of token `hash` if it was cached at `generation` and has not expired at
    /// `now`.
    pub fn get(&self, hash: &str, generation: u64, now: i64) -> Option<Arc<Caller>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = entries.get(hash)?;
        let live = e
            .caller
            .token
            .as_ref()
            .is_some_and(|t| t.expires_at.is_none_or(|x| x > now));
        (e.generation == generation && live).then(|| e.caller.clone())
    }

    /// Remembers `caller` for token `hash`, as read at `generation` (read before the
    /// token and its policies were).
    pub fn put(&self, hash: String, generation: u64, caller: Arc<Caller>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&hash) {
            entries.clear();
        }
        entries.insert(hash, Entry { generation, caller });
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Acl, TokenInfo};
    use super::*;

    fn caller(expires_at: Option<i64>) -> Arc<Caller> {
        Arc::new(Caller {
            entity_id: "e".into(),
            policies: vec!["p".into()],
            token: Some(TokenInfo {
                hash: "h".into(),
                accessor: "a".into(),
                display_name: "token".into(),
                created_at: 0,
                expires_at,
            }),
            acl: Arc::new(Acl::default()),
        })
    }

    #[test]
    fn an_entry_holds_only_at_its_generation_and_before_its_expiry() {
        let c = Cache::default();
        c.put("h".into(), 7, caller(Some(100)));
        assert!(c.get("h", 7, 99).is_some());
        assert!(
            c.get("h", 8, 99).is_none(),
            "a later write moved the generation"
        );
        assert!(c.get("h", 7, 100).is_none(), "expired");
        assert!(c.get("other", 7, 0).is_none());
        c.put("h".into(), 8, caller(None));
        assert!(c.get("h", 8, i64::MAX).is_some(), "no expiry");
    }

    #[test]
    fn the_map_never_grows_past_its_bound() {
        let c = Cache::default();
        for i in 0..MAX_ENTRIES * 2 + 3 {
            c.put(format!("h{i}"), 1, caller(None));
            assert!(c.len() <= MAX_ENTRIES);
        }
    }
}
