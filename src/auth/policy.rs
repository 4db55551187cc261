//! ACL policies in Vault's model: `{"path": {"<glob>": {"capabilities": [...]}}}`, written
//! as JSON or as Vault's HCL (`path "<glob>" { capabilities = [...] }`).
//! A trailing `*` makes a prefix match. For a request path the exact rule wins, else the
//! longest matching prefix; rules for the same path from several policies are merged.
//! `deny` in the chosen rule refuses everything.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One capability. Stored as a bit in [`Caps`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    Create,
    Read,
    Update,
    Delete,
    List,
    Sudo,
    Deny,
}

impl Capability {
    fn bit(self) -> u8 {
        match self {
            Capability::Create => 1,
            Capability::Read => 2,
            Capability::Update => 4,
            Capability::Delete => 8,
            Capability::List => 16,
            Capability::Sudo => 32,
            Capability::Deny => 64,
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "create" => Capability::Create,
            "read" => Capability::Read,
            "update" => Capability::Update,
            "delete" => Capability::Delete,
            "list" => Capability::List,
            "sudo" => Capability::Sudo,
            "deny" => Capability::Deny,
            _ => return None,
        })
    }
}

/// A set of capabilities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps(u8);

impl Caps {
    pub fn has(self, c: Capability) -> bool {
        self.0 & Capability::Deny.bit() == 0 && self.0 & c.bit() != 0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy is not valid JSON of the form {{\"path\": {{\"<glob>\": {{\"capabilities\": [...]}}}}}}: {0}")]
    Shape(String),
    #[error("policy path {path:?}: unknown capability {cap:?}")]
    Capability { path: String, cap: String },
    #[error("policy path {0:?}: '*' may only end a path")]
    Glob(String),
    #[error("policy path {0:?}: '+' segment wildcards are not supported")]
    Plus(String),
    #[error("policy nests brackets more than {MAX_NESTING} deep")]
    TooDeep,
    #[error("policy is not valid HCL: line {line}, column {column}: {message}")]
    Hcl {
        line: usize,
        column: usize,
        message: String,
    },
}

/// A policy name as stored: lower-cased, as Vault does, and 1..=128 letters, digits,
/// '-', '_', '.' or '@'. `None` if `raw` cannot be one.
pub fn name(raw: &str) -> Option<String> {
    let name = raw.to_ascii_lowercase();
    // `.` and `..` would read as path steps wherever a name meets a path.
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    ok.then_some(name)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    /// One rule per path, or a list of them: HCL gives a list where a path's block is
    /// repeated, and their capabilities add up.
    path: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    capabilities: Vec<String>,
}

/// A parsed policy document, ready to merge into an [`Acl`].
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<(String, bool, Caps)>, // (path or prefix, is_prefix, caps)
}

impl Policy {
    /// Parses and checks a policy document.
    pub fn parse(doc: &serde_json::Value) -> Result<Self, PolicyError> {
        let doc: Doc =
            serde_json::from_value(doc.clone()).map_err(|e| PolicyError::Shape(e.to_string()))?;
        let mut rules = Vec::new();
        for (path, rule) in doc.path {
            let blocks = match rule {
                serde_json::Value::Array(many) => many,
                one => vec![one],
            };
            let mut caps = 0u8;
            for block in blocks {
                let rule: Rule = serde_json::from_value(block)
                    .map_err(|e| PolicyError::Shape(format!("path {path:?}: {e}")))?;
                for c in &rule.capabilities {
                    caps |= Capability::parse(c)
                        .ok_or_else(|| PolicyError::Capability {
                            path: path.clone(),
                            cap: c.clone(),
                        })?
                        .bit();
                }
            }
            let (p, prefix) = match path.strip_suffix('*') {
                Some(p) => (p.to_string(), true),
                None => (path.clone(), false),
            };
            if p.contains('*') {
                return Err(PolicyError::Glob(path));
            }
            // Vault reads `+` as "any one segment"; taken literally it would grant
            // something other than what its author meant, so it is refused.
            if p.split('/').any(|seg| seg == "+") {
                return Err(PolicyError::Plus(path));
            }
            rules.push((p.trim_start_matches('/').to_string(), prefix, Caps(caps)));
        }
        Ok(Policy { rules })
    }

    /// Parses a policy as written: JSON when it starts with `{`, HCL otherwise (Vault
    /// accepts both, and its operators mostly write HCL). Refused before any parsing
    /// when its brackets nest deeper than [`MAX_NESTING`]: the HCL parser backtracks on
    /// nested objects and expressions, and its time grows exponentially with the depth
    /// (the fuzzer found 521 bytes that took 12 s; anyone holding a Nitride token, or
    /// merely claiming one, has a policy parsed).
    pub fn from_text(text: &str) -> Result<Self, PolicyError> {
        if nesting(text) > MAX_NESTING {
            return Err(PolicyError::TooDeep);
        }
        let doc: serde_json::Value = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| PolicyError::Shape(e.to_string()))?
        } else {
            hcl::from_str(text).map_err(|e| match e {
                hcl::Error::Parse(p) => PolicyError::Hcl {
                    line: p.location().line(),
                    column: p.location().column(),
                    message: p.message().to_string(),
                },
                other => PolicyError::Hcl {
                    line: 0,
                    column: 0,
                    message: other.to_string(),
                },
            })?
        };
        Self::parse(&doc)
    }
}

/// The deepest bracket nesting a policy may have. A policy is `path "…" { … }` (1) with
/// lists (2), `allowed_parameters` objects of lists (3 to 4), and templated paths
/// (`{{identity.entity.id}}`, 2 more inside the string): 10 leaves room for any real
/// policy and bounds the parser's backtracking.
pub const MAX_NESTING: usize = 10;

/// How deep `{`, `[` and `(` nest in `text`, strings included (brackets in a string are
/// rare in a policy, and HCL's `${…}` interpolation nests expressions inside strings).
fn nesting(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'{' | b'[' | b'(' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// The merged rules of every policy a caller holds.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    root: bool,
    exact: BTreeMap<String, Caps>,
    prefix: BTreeMap<String, Caps>,
}

impl Acl {
    /// The ACL of the built-in `root` policy: everything, sudo included.
    pub fn root() -> Self {
        Acl {
            root: true,
            ..Default::default()
        }
    }

    /// Whether this is the `root` ACL.
    pub fn is_root(&self) -> bool {
        self.root
    }

    /// Adds a policy's rules: capabilities for the same path are combined, so a `deny`
    /// from any policy wins on that path.
    pub fn merge(&mut self, p: &Policy) {
        for (path, is_prefix, caps) in &p.rules {
            let map = if *is_prefix {
                &mut self.prefix
            } else {
                &mut self.exact
            };
            map.entry(path.clone()).or_default().0 |= caps.0;
        }
    }

    /// The capabilities this ACL grants on `path` (no leading slash, e.g. `sys/health`).
    pub fn capabilities(&self, path: &str) -> Caps {
        if self.root {
            return Caps(!Capability::Deny.bit());
        }
        if let Some(c) = self.exact.get(path) {
            return *c;
        }
        self.prefix
            .iter()
            .filter(|(p, _)| path.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    pub fn allows(&self, path: &str, cap: Capability) -> bool {
        self.capabilities(path).has(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn acl(docs: &[serde_json::Value]) -> Acl {
        let mut a = Acl::default();
        for d in docs {
            a.merge(&Policy::parse(d).unwrap());
        }
        a
    }

    #[test]
    fn exact_beats_glob_and_longest_prefix_wins() {
        let a = acl(&[json!({"path": {
            "secret/*": {"capabilities": ["read"]},
            "secret/admin/*": {"capabilities": ["deny"]},
            "secret/admin/open": {"capabilities": ["read", "update"]},
        }})]);
        assert!(a.allows("secret/x", Capability::Read));
        assert!(!a.allows("secret/x", Capability::Update));
        assert!(!a.allows("secret/admin/x", Capability::Read));
        assert!(a.allows("secret/admin/open", Capability::Update));
        assert!(!a.allows("other", Capability::Read));
        // A prefix glob matches the bare prefix too, as in Vault.
        assert!(a.allows("secret/", Capability::Read));
        assert!(!a.allows("secret", Capability::Read));
    }

    #[test]
    fn policies_merge_and_deny_wins_within_a_path() {
        let a = acl(&[
            json!({"path": {"a/*": {"capabilities": ["read"]}}}),
            json!({"path": {"a/*": {"capabilities": ["list"]}}}),
        ]);
        assert!(a.allows("a/b", Capability::Read) && a.allows("a/b", Capability::List));
        let d = acl(&[
            json!({"path": {"a/*": {"capabilities": ["read"]}}}),
            json!({"path": {"a/*": {"capabilities": ["deny"]}}}),
        ]);
        assert!(!d.allows("a/b", Capability::Read));
    }

    #[test]
    fn root_allows_all_and_empty_allows_nothing() {
        assert!(Acl::root().allows("anything/at/all", Capability::Sudo));
        assert!(!Acl::default().allows("sys/policies/acl/x", Capability::Read));
    }

    #[test]
    fn bad_documents_are_refused() {
        assert!(matches!(
            Policy::parse(&json!({"path": {"a": {"capabilities": ["fly"]}}})),
            Err(PolicyError::Capability { .. })
        ));
        assert!(matches!(
            Policy::parse(&json!({"path": {"a*b": {"capabilities": ["read"]}}})),
            Err(PolicyError::Glob(_))
        ));
        assert!(matches!(
            Policy::parse(&json!({"path": {"secret/+/x": {"capabilities": ["read"]}}})),
            Err(PolicyError::Plus(_))
        ));
        assert!(matches!(
            Policy::parse(&json!({"paths": {}})),
            Err(PolicyError::Shape(_))
        ));
        assert!(matches!(
            Policy::parse(&json!({"path": {"a": {"capabilities": "read"}}})),
            Err(PolicyError::Shape(_))
        ));
    }

    /// An HCL policy and its JSON twin: the same capabilities on every path of the table.
    #[test]
    fn hcl_and_its_json_twin_grant_the_same() {
        let hcl = r#"
# Deploy jobs read their secrets and rotate their codes.
path "api/v2/totp/*" {
  capabilities = ["create", "read", "delete", "list"]
}
path "api/v2/totp/admin/*" {
  capabilities = ["deny"]
}
path "sys/policies/acl/app" { capabilities = ["read", "update"] }
path "identity/mfa/method/totp/generate" {
  capabilities = ["update"]
}
path "identity/mfa/method/totp/generate" {
  capabilities = ["sudo"]
}
"#;
        let json = r#"{"path": {
            "api/v2/totp/*": {"capabilities": ["create", "read", "delete", "list"]},
            "api/v2/totp/admin/*": {"capabilities": ["deny"]},
            "sys/policies/acl/app": {"capabilities": ["read", "update"]},
            "identity/mfa/method/totp/generate": {"capabilities": ["update", "sudo"]}
        }}"#;
        let (mut h, mut j) = (Acl::default(), Acl::default());
        h.merge(&Policy::from_text(hcl).unwrap());
        j.merge(&Policy::from_text(json).unwrap());
        use Capability::*;
        let table: &[(&str, Capability, bool)] = &[
            ("api/v2/totp/secrets", Create, true),
            ("api/v2/totp/secrets", Update, false),
            ("api/v2/totp/code/x", Read, true),
            ("api/v2/totp/", List, true),
            ("api/v2/totp", Read, false),
            ("api/v2/totp/admin/x", Read, false),
            ("api/v2/totp/admin/", Delete, false),
            ("sys/policies/acl/app", Update, true),
            ("sys/policies/acl/app", Delete, false),
            ("sys/policies/acl/app2", Read, false),
            ("identity/mfa/method/totp/generate", Update, true),
            ("identity/mfa/method/totp/generate", Sudo, true),
            ("identity/mfa/method/totp/generate/x", Update, false),
            ("elsewhere", Read, false),
        ];
        for (path, cap, want) in table {
            assert_eq!(h.allows(path, *cap), *want, "HCL: {cap:?} on {path}");
            assert_eq!(j.allows(path, *cap), *want, "JSON: {cap:?} on {path}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_before_the_parser_sees_it() {
        // What the fuzzer found: 521 bytes of HCL objects nested in sums, which took the
        // parser 12 s (a debug build; a further 130 bytes, 0.2 s). Refused at once now.
        let found = include_str!("../../fuzz/corpus/policy/slow-unit-nested-hcl-sums");
        assert!(nesting(found) > MAX_NESTING);
        assert!(matches!(
            Policy::from_text(found),
            Err(PolicyError::TooDeep)
        ));
        let deep = format!("s = {}", "{2+".repeat(40));
        assert!(matches!(
            Policy::from_text(&deep),
            Err(PolicyError::TooDeep)
        ));
        let json = format!("{}{}", "[".repeat(11), "]".repeat(11));
        assert!(matches!(
            Policy::from_text(&json),
            Err(PolicyError::TooDeep)
        ));
        assert_eq!(err_text(&deep), "policy nests brackets more than 10 deep");
        // Real policies are far from the bound: a templated path, parameters, lists.
        let real = r#"path "secret/data/{{identity.entity.id}}/*" {
  capabilities = ["create", "read"]
  allowed_parameters = { "ttl" = ["1h", "2h"], "tags" = [] }
}"#;
        assert_eq!(nesting(real), 3);
        // Depth counts what is open at once, not how many brackets there are.
        assert_eq!(nesting(&"[]".repeat(1000)), 1);
        assert_eq!(
            nesting(&format!("{}{}", "(".repeat(10), ")".repeat(10))),
            10
        );
        // A policy at the bound still parses (and is judged on its shape).
        let ok = "path \"a\" {\n  capabilities = [\"read\"]\n}\n";
        assert!(Policy::from_text(ok).is_ok());
    }

    #[test]
    fn malformed_hcl_names_the_line() {
        let err = Policy::from_text("path \"a\" {\n  capabilities = [\"read\"\n}\n").unwrap_err();
        match err {
            PolicyError::Hcl { line, .. } => assert_eq!(line, 3),
            other => panic!("{other:?}"),
        }
        assert!(err_text("path \"a\" {\n  capabilities = [\"read\"\n}\n").contains("line 3"));
        // Well-formed HCL of the wrong shape is refused as a policy.
        assert!(matches!(
            Policy::from_text("path \"a\" {\n  capabilities = [\"fly\"]\n}\n"),
            Err(PolicyError::Capability { .. })
        ));
        assert!(matches!(
            Policy::from_text("path \"a\" {\n  caps = [\"read\"]\n}\n"),
            Err(PolicyError::Shape(_))
        ));
        assert!(matches!(
            Policy::from_text("{\"path\": "),
            Err(PolicyError::Shape(_))
        ));
    }

    fn err_text(text: &str) -> String {
        Policy::from_text(text).unwrap_err().to_string()
    }
}
