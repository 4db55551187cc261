//! Mounts, as Vault has them: names under which one surface serves its paths, each
//! holding its own data. A surface has a default mount and takes more from the
//! configuration; [`MountKind`] says where its mounts live, so a name that would put
//! them under another surface's paths is refused at start.

use super::{covers, SURFACES};

/// Where one surface's mounts live.
pub struct MountKind {
    /// The mount every daemon has (`ratls`, `totp`).
    pub default: &'static str,
    /// The request path a mount's routes start with.
    pub path: fn(&str) -> String,
    /// The surface's own prefixes, which its mounts may of course share.
    pub own: &'static [&'static str],
}

/// The mounts of one surface: its default, then the configured ones, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounts(Vec<String>);

impl Mounts {
    /// The default alone.
    pub fn only(kind: &MountKind) -> Mounts {
        Mounts(vec![kind.default.to_string()])
    }

    /// The default plus `extra`. Refuses a name that is not one plain path segment, or
    /// that would put the mount's paths under another surface's.
    pub fn new(kind: &MountKind, extra: &[String]) -> Result<Mounts, String> {
        let mut all = Self::only(kind).0;
        for name in extra {
            check(kind, name)?;
            if !all.contains(name) {
                all.push(name.clone());
            }
        }
        Ok(Mounts(all))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|m| m == name)
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }
}

/// A mount name: 1..=64 of lower-case letters, digits, '-' and '_', starting with a
/// letter or digit, and not a path another surface already serves.
fn check(kind: &MountKind, name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
    if !ok {
        return Err(format!(
            "mount {name:?}: a mount name is 1 to 64 lower-case letters, digits, '-' or '_'"
        ));
    }
    let path = (kind.path)(name);
    let taken = SURFACES
        .iter()
        .filter(|s| s.prefixes != kind.own)
        .flat_map(|s| s.prefixes.iter())
        .find(|p| covers(p, &path) || covers(&path, p));
    match taken {
        Some(p) => Err(format!(
            "mount {name:?}: {path} collides with the existing route {p}"
        )),
        None => Ok(()),
    }
}
