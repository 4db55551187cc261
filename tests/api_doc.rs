//! `docs/API.md` is rendered from the OpenAPI document (`src/api/openapi.json`), and this
//! test holds the two together: it renders the document and compares. After changing
//! the document, write the new rendering with
//!
//! ```sh
//! TOTPD_BLESS=1 cargo test --test api_doc
//! ```
//!
//! It also checks that every route the router serves is documented (the router does not
//! expose its paths, so the routes are read from `src/api/*.rs` and from
//! `totpd::api::SURFACES`' prefixes; `tests/openapi.rs` asks the running router), and
//! that every operation is documented completely, its curl example included.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn doc() -> Value {
    serde_json::from_str(totpd::api::OPENAPI).expect("openapi.json is JSON")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ----- reading the document -----

/// `v` with every `$ref` followed.
fn resolve<'a>(root: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        v = root
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    v
}

/// The name of the component schema `v` refers to, if it is a `$ref`.
fn ref_name(v: &Value) -> Option<&str> {
    v.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
}

/// Every operation: (path, method, operation), paths in document order within a tag.
fn operations(root: &Value) -> Vec<(&str, &str, &Value)> {
    let mut out = Vec::new();
    for (path, item) in root["paths"].as_object().expect("paths") {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.push((path.as_str(), m, op));
            }
        }
    }
    out
}

/// An operation's parameters: the path item's, then its own (which win by name).
fn parameters<'a>(root: &'a Value, path: &str, op: &'a Value) -> Vec<&'a Value> {
    let mut out: Vec<&Value> = Vec::new();
    let shared = root["paths"][path]["parameters"].as_array();
    let own = op["parameters"].as_array();
    for p in shared.into_iter().chain(own).flatten() {
        let p = resolve(root, p);
        out.retain(|q| q["name"] != p["name"] || q["in"] != p["in"]);
        out.push(p);
    }
    out
}

/// The JSON request body schema of an operation, resolved.
fn body_schema<'a>(root: &'a Value, op: &'a Value) -> Option<&'a Value> {
    op.pointer("/requestBody/content/application~1json/schema")
        .map(|s| resolve(root, s))
}

// ----- markdown -----

/// A table cell: one line, pipes escaped (GitHub needs that inside code spans too).
fn cell(s: &str) -> String {
    s.replace('\n', " ").replace('|', "\\|")
}

fn code(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`\"{s}\"`"),
        other => format!("`{other}`"),
    }
}

/// GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn schema_link(name: &str) -> String {
    format!("[`{name}`](#{})", anchor(&format!("Schema {name}")))
}

/// Whether a schema is an object shape worth a section of its own (linked to, not inlined).
fn is_object_like(root: &Value, s: &Value) -> bool {
    let s = resolve(root, s);
    s["type"] == "object"
        || s.get("allOf").is_some()
        || s["oneOf"]
            .as_array()
            .is_some_and(|v| v.iter().all(|x| is_object_like(root, x)))
}

/// A schema as a short phrase: its type and every bound it declares.
fn describe(root: &Value, s: &Value) -> String {
    if let Some(name) = ref_name(s) {
        let target = resolve(root, s);
        if is_object_like(root, target) {
            return schema_link(name);
        }
        return format!("{} ({})", describe(root, target), schema_link(name));
    }
    for (key, joiner) in [("oneOf", "; or "), ("anyOf", "; or ")] {
        if let Some(vs) = s[key].as_array() {
            let mut out = vs
                .iter()
                .map(|v| describe(root, v))
                .collect::<Vec<_>>()
                .join(joiner);
            out.push_str(&extras(s));
            return out;
        }
    }
    if let Some(vs) = s["allOf"].as_array() {
        // `Envelope` and an inline object that narrows some of its fields.
        return vs
            .iter()
            .map(|v| match v["properties"].as_object() {
                Some(props) if ref_name(v).is_none() => {
                    let fields: Vec<String> = props
                        .iter()
                        .map(|(k, f)| format!("`{k}` {}", describe(root, f)))
                        .collect();
                    format!("with {}", fields.join(", "))
                }
                _ => describe(root, v),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    let mut out = match s["type"].as_str() {
        Some("array") => format!("array of {}", describe(root, &s["items"])),
        Some(t) => t.to_string(),
        None => "any".to_string(),
    };
    if let Some(f) = s["format"].as_str() {
        let _ = write!(out, " ({f})");
    }
    let mut bounds = Vec::new();
    if let Some(e) = s["enum"].as_array() {
        let vals: Vec<String> = e.iter().map(code).collect();
        bounds.push(if vals.len() == 1 {
            format!("always {}", vals[0])
        } else {
            format!("one of {}", vals.join(", "))
        });
    }
    match (s.get("minimum"), s.get("maximum")) {
        (Some(a), Some(b)) => bounds.push(format!("{a} to {b}")),
        (Some(a), None) => bounds.push(format!("at least {a}")),
        (None, Some(b)) => bounds.push(format!("at most {b}")),
        (None, None) => {}
    }
    match (s.get("minLength"), s.get("maxLength")) {
        (Some(a), Some(b)) => bounds.push(format!("{a} to {b} characters")),
        (Some(a), None) => bounds.push(format!("at least {a} characters")),
        (None, Some(b)) => bounds.push(format!("at most {b} characters")),
        (None, None) => {}
    }
    if let Some(p) = s["pattern"].as_str() {
        bounds.push(format!("matching `{p}`"));
    }
    if s["additionalProperties"] == Value::Bool(false) {
        bounds.push("no other fields".into());
    } else if let Some(extra) = s["additionalProperties"].as_object() {
        let each = describe(root, &Value::Object(extra.clone()));
        bounds.push(if each.contains("; or ") {
            format!("each value ({each})")
        } else {
            format!("each value {each}")
        });
    }
    if !bounds.is_empty() {
        let _ = write!(out, ", {}", bounds.join(", "));
    }
    out.push_str(&extras(s));
    out
}

/// Default and nullability, as a suffix.
fn extras(s: &Value) -> String {
    let mut out = String::new();
    if let Some(d) = s.get("default") {
        let _ = write!(out, "; default {}", code(d));
    }
    if s["nullable"] == true {
        out.push_str("; may be null (as absent)");
    }
    out
}

/// The rows of an object schema's fields: required ones first, then by name.
fn field_rows(root: &Value, s: &Value, out: &mut String) {
    let required: BTreeSet<&str> = s["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut props: Vec<(&String, &Value)> = s["properties"]
        .as_object()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    props.sort_by_key(|(name, _)| (!required.contains(name.as_str()), name.as_str().to_owned()));
    out.push_str(
        "| field | type and bounds | required | description |\n| --- | --- | --- | --- |\n",
    );
    for (name, p) in props {
        let desc = p["description"]
            .as_str()
            .or_else(|| resolve(root, p)["description"].as_str())
            .unwrap_or("");
        let _ = writeln!(
            out,
            "| `{name}` | {} | {} | {} |",
            cell(&describe(root, p)),
            if required.contains(name.as_str()) {
                "yes"
            } else {
                "no"
            },
            cell(desc)
        );
    }
    if let Some(alts) = s["anyOf"].as_array() {
        let sets: Vec<String> = alts
            .iter()
            .filter_map(|a| a["required"].as_array())
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            })
            .collect();
        if !sets.is_empty() {
            let _ = writeln!(out, "\nAt least one of: {}.", sets.join("; or "));
        }
    }
    if s["additionalProperties"] == Value::Bool(false) {
        out.push_str("\nNo other fields are accepted.\n");
    }
}

fn tag_title(root: &Value, tag: &str) -> String {
    root["tags"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == tag))
        .and_then(|t| t["x-displayName"].as_str())
        .unwrap_or(tag)
        .to_string()
}

/// The heading of an operation (and the methods that merely repeat it).
fn op_heading(method: &str, path: &str, aliases: &[&str]) -> String {
    let mut h = format!("`{}` `{path}`", method.to_uppercase());
    if !aliases.is_empty() {
        let a: Vec<String> = aliases
            .iter()
            .map(|m| format!("`{}`", m.to_uppercase()))
            .collect();
        let _ = write!(h, " (also {})", a.join(", "));
    }
    h
}

fn response_cell(root: &Value, r: &Value) -> String {
    let r = resolve(root, r);
    let mut s = r["description"].as_str().unwrap_or("").to_string();
    if let Some(content) = r["content"].as_object() {
        for (mime, c) in content {
            let schema = &c["schema"];
            let shape = match (ref_name(schema), schema["properties"].as_object()) {
                (Some(n), _) => schema_link(n),
                (None, Some(props)) => format!(
                    "`{{{}}}`",
                    props.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                (None, None) => describe(root, schema),
            };
            if mime == "application/json" {
                let _ = write!(s, " — body: {shape}");
            } else {
                let _ = write!(s, " — `{mime}`");
            }
        }
    }
    if let Some(h) = r["headers"].as_object() {
        let names: Vec<String> = h.keys().map(|k| format!("`{k}`")).collect();
        let _ = write!(s, " — headers: {}", names.join(", "));
    }
    cell(&s)
}

/// The whole of `docs/API.md`.
fn render(root: &Value) -> String {
    let mut out = String::new();
    out.push_str("# totpd HTTP API\n\n");
    out.push_str(
        "<!-- Generated from src/api/openapi.json by tests/api_doc.rs. Do not edit: change the \
         document, then run `TOTPD_BLESS=1 cargo test --test api_doc`. -->\n\n",
    );
    let info = &root["info"];
    let _ = writeln!(
        out,
        "Version {}, rendered from the OpenAPI document `src/api/openapi.json`.\n",
        info["version"].as_str().unwrap_or("?")
    );
    // The description's own headings sit one level below the title.
    for line in info["description"].as_str().unwrap_or("").lines() {
        if line.starts_with('#') {
            let _ = writeln!(out, "#{line}");
        } else {
            let _ = writeln!(out, "{line}");
        }
    }
    out.push('\n');

    out.push_str("## Differences from Vault and OpenBao\n\n");
    for d in info["x-differences"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "- **{}**\n  - totpd: {}\n  - Vault and OpenBao: {}\n  - Why: {}",
            d["topic"].as_str().unwrap_or(""),
            d["totpd"].as_str().unwrap_or(""),
            d["vault"].as_str().unwrap_or(""),
            d["why"].as_str().unwrap_or("")
        );
    }
    out.push('\n');

    // Operations by tag, in the tags' order; within a tag, by path then method. A method
    // that only repeats another (`x-same-as`) shares its section.
    let tags: Vec<&str> = root["tags"]
        .as_array()
        .map(|ts| ts.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    let ops = operations(root);
    let mut by_tag: BTreeMap<usize, Vec<(&str, &str, &Value)>> = BTreeMap::new();
    for (path, m, op) in &ops {
        let tag = op["tags"][0].as_str().unwrap_or("");
        let i = tags.iter().position(|t| *t == tag).unwrap_or(tags.len());
        by_tag.entry(i).or_default().push((path, m, op));
    }
    for list in by_tag.values_mut() {
        list.sort_by_key(|(p, m, _)| (p.to_string(), METHODS.iter().position(|x| x == m)));
    }
    let sections = |list: &[(&str, &str, &Value)]| -> Vec<(String, String, Vec<String>)> {
        let mut out = Vec::new();
        for (path, m, op) in list {
            if op.get("x-same-as").is_some() {
                continue;
            }
            let aliases: Vec<&str> = list
                .iter()
                .filter(|(p, _, o)| p == path && o["x-same-as"] == *m)
                .map(|(_, am, _)| *am)
                .collect();
            out.push((
                path.to_string(),
                m.to_string(),
                aliases.iter().map(|a| a.to_string()).collect(),
            ));
        }
        out
    };

    out.push_str("## Operations\n\n");
    for (i, list) in &by_tag {
        let title = tags
            .get(*i)
            .map(|t| tag_title(root, t))
            .unwrap_or_else(|| "Other".into());
        let _ = writeln!(out, "- [{title}](#{})", anchor(&title));
        for (path, m, aliases) in sections(list) {
            let a: Vec<&str> = aliases.iter().map(String::as_str).collect();
            let h = op_heading(&m, &path, &a);
            let _ = writeln!(out, "  - [{h}](#{})", anchor(&h.replace('`', "")));
        }
    }
    out.push_str("- [Schemas](#schemas)\n\n");

    for (i, list) in &by_tag {
        let tag = tags.get(*i).copied().unwrap_or("");
        let _ = writeln!(out, "## {}\n", tag_title(root, tag));
        if let Some(d) = root["tags"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == tag))
            .and_then(|t| t["description"].as_str())
        {
            let _ = writeln!(out, "{d}\n");
        }
        for (path, m, aliases) in sections(list) {
            let op = &root["paths"][&path][&m];
            let a: Vec<&str> = aliases.iter().map(String::as_str).collect();
            render_op(root, &path, &m, op, &a, &mut out);
        }
    }

    out.push_str("## Schemas\n\nThe shapes the operations above refer to.\n\n");
    for (name, s) in root["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let _ = writeln!(out, "### Schema `{name}`\n");
        if let Some(d) = s["description"].as_str() {
            let _ = writeln!(out, "{d}\n");
        }
        if s.get("properties").is_some() {
            field_rows(root, s, &mut out);
            out.push('\n');
        } else if let Some(vs) = s["oneOf"].as_array().filter(|_| is_object_like(root, s)) {
            out.push_str("One of:\n\n");
            for v in vs {
                let fields: Vec<String> = v["properties"]
                    .as_object()
                    .map(|p| p.keys().map(|k| format!("`{k}`")).collect())
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "- {}{}",
                    v["description"]
                        .as_str()
                        .map(|d| format!("{d} "))
                        .unwrap_or_default(),
                    if fields.is_empty() {
                        String::new()
                    } else {
                        format!("Fields: {}.", fields.join(", "))
                    }
                );
            }
            out.push('\n');
        } else {
            let _ = writeln!(out, "{}\n", describe(root, s));
        }
    }
    // One trailing newline, no blank line at the end.
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

fn render_op(
    root: &Value,
    path: &str,
    method: &str,
    op: &Value,
    aliases: &[&str],
    out: &mut String,
) {
    let _ = writeln!(out, "### {}\n", op_heading(method, path, aliases));
    if let Some(s) = op["summary"].as_str() {
        let _ = writeln!(out, "{s}.\n");
    }
    if let Some(d) = op["description"].as_str() {
        let _ = writeln!(out, "{d}\n");
    }
    if !aliases.is_empty() {
        let a: Vec<String> = aliases
            .iter()
            .map(|m| format!("`{}`", m.to_uppercase()))
            .collect();
        let _ = writeln!(out, "{} does the same.\n", a.join(" and "));
    }
    if op["security"].as_array().is_some_and(Vec::is_empty) {
        out.push_str("*No token needed*, over TCP too.\n\n");
    }
    let params = parameters(root, path, op);
    if !params.is_empty() {
        out.push_str("**Parameters**\n\n| name | in | type and bounds | required | description |\n| --- | --- | --- | --- | --- |\n");
        for p in params {
            let desc = p["description"]
                .as_str()
                .or_else(|| resolve(root, &p["schema"])["description"].as_str())
                .unwrap_or("");
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                p["name"].as_str().unwrap_or(""),
                p["in"].as_str().unwrap_or(""),
                cell(&describe(root, &p["schema"])),
                if p["required"] == true { "yes" } else { "no" },
                cell(desc)
            );
        }
        out.push('\n');
    }
    if let Some(rb) = op.get("requestBody") {
        let required = rb["required"] == true;
        let _ = writeln!(
            out,
            "**Request body** (JSON object, {})\n",
            if required {
                "required"
            } else {
                "optional: an empty body is `{}`"
            }
        );
        let raw = &rb["content"]["application/json"]["schema"];
        let s = resolve(root, raw);
        if let Some(name) = ref_name(raw) {
            let _ = writeln!(out, "{}.\n", schema_link(name));
        }
        if let Some(d) = s["description"].as_str() {
            let _ = writeln!(out, "{d}\n");
        }
        field_rows(root, s, out);
        out.push('\n');
    }
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (status, r) in op["responses"].as_object().into_iter().flatten() {
        let row = format!("| `{status}` | {} |", response_cell(root, r));
        if status.starts_with('4') || status.starts_with('5') {
            errors.push((status.clone(), row));
        } else {
            ok.push((status.clone(), row));
        }
    }
    for (title, rows) in [("Responses", ok), ("Errors", errors)] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "**{title}**\n\n| status | meaning |\n| --- | --- |");
        for (_, row) in rows {
            let _ = writeln!(out, "{row}");
        }
        out.push('\n');
    }
    let mut next = String::new();
    for (status, r) in op["responses"].as_object().into_iter().flatten() {
        for (name, l) in resolve(root, r)["links"].as_object().into_iter().flatten() {
            let target = l["operationId"].as_str().unwrap_or("");
            let (tm, tp) = operations(root)
                .into_iter()
                .find(|(_, _, o)| o["operationId"] == target)
                .map(|(p, m, _)| (m.to_uppercase(), p))
                .unwrap_or_default();
            let carried: Vec<String> = l["parameters"]
                .as_object()
                .into_iter()
                .flatten()
                .chain(l["requestBody"].as_object().into_iter().flatten())
                .map(|(k, v)| format!("`{k}` ← {}", code(v)))
                .collect();
            let _ = write!(next, "- after `{status}`, **{name}**: `{tm} {tp}`");
            if let Some(d) = l["description"].as_str() {
                let _ = write!(next, ", {d}");
            }
            if !carried.is_empty() {
                let _ = write!(next, " ({})", carried.join(", "));
            }
            next.push('\n');
        }
    }
    if !next.is_empty() {
        let _ = writeln!(
            out,
            "**Links** (the calls that may follow, as OpenAPI links; stateful fuzzers follow them)\n\n{next}"
        );
    }
    if let Some(c) = op["x-curl"].as_str() {
        let _ = writeln!(out, "**Example**\n\n```sh\n{c}\n```\n");
    }
}

// ----- the rendering is docs/API.md -----

#[test]
fn api_md_is_the_rendering_of_the_openapi_document() {
    let rendered = render(&doc());
    let file = repo().join("docs/API.md");
    if std::env::var("TOTPD_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, &rendered).unwrap();
        return;
    }
    let on_disk = std::fs::read_to_string(&file).unwrap_or_default();
    if on_disk != rendered {
        let line = on_disk
            .lines()
            .zip(rendered.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| on_disk.lines().count().min(rendered.lines().count()));
        panic!(
            "docs/API.md is not the rendering of src/api/openapi.json (first difference at line \
             {}):\n  docs/API.md: {:?}\n  rendering:   {:?}\nRegenerate it with \
             `TOTPD_BLESS=1 cargo test --test api_doc` and commit both files.",
            line + 1,
            on_disk.lines().nth(line).unwrap_or("<end of file>"),
            rendered.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}

// ----- every route is documented -----

/// A route path as compared: no trailing slash, every parameter `{}`.
fn route_key(path: &str) -> String {
    path.trim_end_matches('/')
        .split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The (method, path) of every `.route(...)` in `src/api/*.rs`: a path given as a string
/// literal, as the file's `BASE` constant, or as `&format!("{BASE}/...")`.
fn source_routes() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let dir = repo().join("src/api");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        if file.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let base = text
            .split("const BASE: &str = \"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .map(str::to_string);
        let mut rest = text.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            // The call's arguments, up to its closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(rest.len(), |(j, _)| j);
            let args = rest[..end].trim_start();
            let path = if let Some(lit) = args.strip_prefix('"') {
                lit.split('"').next().map(str::to_string)
            } else if args.starts_with("BASE") {
                base.clone()
            } else if let Some(f) = args.strip_prefix("&format!(\"") {
                let f = f.split('"').next().unwrap_or("");
                base.as_ref()
                    .map(|b| f.replace("{BASE}", b).replace("{{", "{").replace("}}", "}"))
            } else {
                None
            };
            let Some(path) = path else {
                panic!(
                    "{}: a .route(...) whose path this test cannot read: {}",
                    file.display(),
                    &args[..args.len().min(60)]
                );
            };
            let handlers = &args[args.find(',').unwrap_or(0)..];
            for m in METHODS {
                let call = format!("{m}(");
                let found = handlers.match_indices(&call).any(|(k, _)| {
                    k == 0
                        || !handlers[..k]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_alphanumeric() || c == '_')
                });
                if found {
                    out.insert((m.to_string(), path.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn every_served_route_is_documented_and_in_api_md() {
    let root = doc();
    let md = render(&root);
    let documented: BTreeSet<(String, String)> = operations(&root)
        .iter()
        .map(|(p, m, _)| (m.to_string(), route_key(p)))
        .collect();

    // Every operation of the document has its section in API.md.
    for (path, m, op) in operations(&root) {
        let m_up = format!("`{}`", m.to_uppercase());
        let found = md.lines().any(|l| {
            l.starts_with("### ") && l.contains(&format!("`{path}`")) && l.contains(&m_up)
        });
        assert!(
            found,
            "{m} {path} ({}) has no section in API.md",
            op["operationId"]
        );
    }

    // Every route in the router's source is documented.
    let routes = source_routes();
    assert!(
        routes.len() >= 30,
        "read only {} routes from src/api",
        routes.len()
    );
    let missing: Vec<String> = routes
        .iter()
        .filter(|(m, p)| !documented.contains(&(m.clone(), route_key(p))))
        .map(|(m, p)| format!("{} {p}", m.to_uppercase()))
        .collect();
    assert!(
        missing.is_empty(),
        "served but not in src/api/openapi.json (so not in docs/API.md): {missing:?}"
    );

    // Every surface of the router has its paths documented.
    for s in totpd::api::SURFACES {
        for prefix in s.prefixes {
            let covered = operations(&root)
                .iter()
                .any(|(p, _, _)| totpd::api::covers(prefix, p));
            assert!(
                covered,
                "no documented path under the surface prefix {prefix}"
            );
        }
    }
}

// ----- every operation is documented completely -----

/// Splits a shell command line into its words as a POSIX shell would, every expansion
/// (`$VAR`, `$(...)`, `$((...))`) replaced by `1`.
fn shell_words(cmd: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let chars: Vec<char> = cmd.chars().collect();
    let mut i = 0;
    // Skips an expansion starting at chars[i] == '$'; returns the index after it.
    let skip_expansion = |i: usize| -> usize {
        if chars.get(i + 1) == Some(&'(') {
            let mut depth = 0;
            let mut j = i + 1;
            while j < chars.len() {
                match chars[j] {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            return j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            j
        } else {
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            j
        }
    };
    while i < chars.len() {
        match chars[i] {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                i += 1;
            }
            '\'' => {
                in_word = true;
                let end = chars[i + 1..]
                    .iter()
                    .position(|c| *c == '\'')
                    .expect("unclosed single quote");
                cur.extend(&chars[i + 1..i + 1 + end]);
                i += end + 2;
            }
            '"' => {
                in_word = true;
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    match chars[i] {
                        '\\' if matches!(chars.get(i + 1), Some('"' | '\\' | '$')) => {
                            cur.push(chars[i + 1]);
                            i += 2;
                        }
                        '$' => {
                            cur.push('1');
                            i = skip_expansion(i);
                        }
                        c => {
                            cur.push(c);
                            i += 1;
                        }
                    }
                }
                assert!(i < chars.len(), "unclosed double quote in {cmd}");
                i += 1;
            }
            '$' => {
                in_word = true;
                cur.push('1');
                i = skip_expansion(i);
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.get(i + 1) {
                    cur.push(*c);
                }
                i += 2;
            }
            c => {
                in_word = true;
                cur.push(c);
                i += 1;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Whether a request path matches a path template (`{x}` matches one non-empty segment).
fn matches_template(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.trim_end_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(a, b)| a == b || (a.starts_with('{') && !b.is_empty()))
}

#[test]
fn every_operation_is_documented_completely() {
    let root = doc();
    let tags: BTreeSet<&str> = root["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let mut ids = BTreeSet::new();
    let mut problems = Vec::new();
    for (path, m, op) in operations(&root) {
        let at = format!("{} {path}", m.to_uppercase());
        let id = op["operationId"].as_str().unwrap_or_default();
        if id.is_empty() || !ids.insert(id.to_string()) {
            problems.push(format!("{at}: operationId missing or not unique"));
        }
        if op["summary"].as_str().is_none_or(|s| s.is_empty()) {
            problems.push(format!("{at}: no summary"));
        }
        if !op["tags"][0].as_str().is_some_and(|t| tags.contains(t)) {
            problems.push(format!("{at}: no tag among the document's tags"));
        }
        let responses = op["responses"].as_object().cloned().unwrap_or_default();
        if !responses.keys().any(|s| s.starts_with('2')) {
            problems.push(format!("{at}: no 2xx response"));
        }
        if op.get("requestBody").is_some() && !responses.contains_key("400") {
            problems.push(format!("{at}: takes a body but documents no 400"));
        }
        // Every template parameter is declared as a path parameter, and nothing else is.
        let params = parameters(&root, path, op);
        let in_template: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        let declared: BTreeSet<&str> = params
            .iter()
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str())
            .collect();
        if in_template != declared {
            problems.push(format!(
                "{at}: path parameters {declared:?}, the template has {in_template:?}"
            ));
        }
        // The curl example is this operation, over the socket, with a body it takes.
        let Some(curl) = op["x-curl"].as_str() else {
            problems.push(format!("{at}: no x-curl example"));
            continue;
        };
        let words = shell_words(curl);
        if words.first().map(String::as_str) != Some("curl")
            || !curl.starts_with("curl --unix-socket totpd-data/totpd.sock ")
        {
            problems.push(format!(
                "{at}: x-curl is not a curl over the socket: {curl}"
            ));
            continue;
        }
        let mut method = None;
        let mut data = None;
        let mut url = None;
        let mut w = words.iter().skip(1);
        while let Some(word) = w.next() {
            match word.as_str() {
                "-X" => method = w.next().cloned(),
                "-d" => data = w.next().cloned(),
                "-H" | "--unix-socket" | "-o" => {
                    w.next();
                }
                u if u.starts_with("http://localhost/") => url = Some(u.to_string()),
                other => problems.push(format!("{at}: x-curl has an unexpected word {other:?}")),
            }
        }
        let method = method.unwrap_or_else(|| if data.is_some() { "POST" } else { "GET" }.into());
        if !method.eq_ignore_ascii_case(m) {
            problems.push(format!("{at}: x-curl sends {method}"));
        }
        let url = url.unwrap_or_default();
        let url_path = url
            .trim_start_matches("http://localhost")
            .split('?')
            .next()
            .unwrap_or_default();
        if !matches_template(path, url_path) {
            problems.push(format!("{at}: x-curl goes to {url}"));
        }
        if url.contains("?list=")
            != params
                .iter()
                .any(|p| p["name"] == "list" && p["required"] == true)
        {
            problems.push(format!("{at}: x-curl and the list parameter disagree"));
        }
        if let Some(data) = data {
            match (serde_json::from_str::<Value>(&data), body_schema(&root, op)) {
                (Ok(Value::Object(fields)), Some(schema)) => {
                    for k in fields.keys() {
                        if schema["properties"].get(k).is_none() {
                            problems
                                .push(format!("{at}: x-curl sends {k:?}, which is not declared"));
                        }
                    }
                }
                (Ok(_), None) => {
                    problems.push(format!("{at}: x-curl sends a body it takes none of"))
                }
                (other, _) => {
                    problems.push(format!("{at}: x-curl's body is no JSON object: {other:?}"))
                }
            }
        }
        let needs_token_over_socket = ["/v1/auth/token/revoke-self", "/v1/auth/token/renew-self"];
        if needs_token_over_socket.contains(&path) != curl.contains("X-Vault-Token: $TOKEN") {
            problems.push(format!(
                "{at}: x-curl and the token it needs over the socket disagree"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        root["info"]["x-differences"]
            .as_array()
            .is_some_and(|d| d.len() >= 3),
        "info.x-differences lists the differences from Vault and OpenBao"
    );
}

#[test]
fn the_limits_in_the_introduction_are_the_daemons() {
    use totpd::server::http::{MAX_HEADERS, MAX_HEADER_BYTES, MAX_URI_BYTES};
    let root = doc();
    let intro = root["info"]["description"].as_str().unwrap();
    for said in [
        format!("over {} KiB ({MAX_URI_BYTES} bytes)", MAX_URI_BYTES / 1024),
        format!("more than {MAX_HEADERS} header fields"),
        format!(
            "more than {} KiB ({MAX_HEADER_BYTES} bytes) of header",
            MAX_HEADER_BYTES / 1024
        ),
        format!("at most {} KiB (413)", totpd::api::MAX_BODY / 1024),
        format!(
            "`--body-timeout`, {} seconds by default",
            totpd::api::DEFAULT_BODY_TIMEOUT
        ),
    ] {
        assert!(
            intro.contains(&said),
            "info.description should say {said:?}"
        );
    }
}

#[test]
fn shell_words_reads_the_examples_as_a_shell_would() {
    assert_eq!(
        shell_words(r#"curl -d '{"id": "'"$ID"'", "n": '"$((1 + 2))"'}' "http://x/$ID""#),
        ["curl", "-d", r#"{"id": "1", "n": 1}"#, "http://x/1"]
    );
    assert_eq!(shell_words(r#"a 'b c' d\ e"#), ["a", "b c", "d e"]);
    assert!(matches_template(
        "/v1/auth/{mount}/totp",
        "/v1/auth/ratls/totp"
    ));
    assert!(!matches_template("/v1/auth/{mount}/totp", "/v1/auth//totp"));
    assert_eq!(
        route_key("/api/v1/auth/totp/setup/"),
        "/api/v1/auth/totp/setup"
    );
    assert!(Path::new(&repo()).join("src/api/openapi.json").exists());
}
