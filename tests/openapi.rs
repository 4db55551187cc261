//! The OpenAPI document and the router agree: every documented operation is served, and
//! every method the document leaves out of a path answers 405. And the document's bounds
//! are the handlers': for a sample of the constraints it declares (enums, minimum and
//! maximum, lengths, uuid formats), read from the document itself, a value just outside
//! is refused with the surface's validation status and a value just inside is not.

mod common;

use common::app::TestApp;
use common::Daemon;
use serde_json::{json, Value};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

#[tokio::test]
async fn every_documented_operation_exists_and_nothing_else_does() {
    let d = Daemon::start();
    let doc: Value = serde_json::from_str(totpd::api::OPENAPI).unwrap();
    // The served document is the one in the repository.
    assert_eq!(d.req("GET", "/v1/sys/openapi", None, None).await.json, doc);
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{} paths", paths.len());
    let id = uuid::Uuid::new_v4().to_string();
    for (template, item) in paths {
        // Any path parameter: a well-formed id that does not exist; a mount that does.
        let path = template
            .split('/')
            .map(|seg| {
                if seg == "{mount}" {
                    "ratls"
                } else if seg.starts_with('{') {
                    id.as_str()
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for m in METHODS {
            let op = &item[m.to_ascii_lowercase()];
            let lists = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "list"));
            let url = if lists {
                format!("{path}?list=true")
            } else {
                path.clone()
            };
            let body = matches!(m, "POST" | "PUT" | "PATCH").then(|| serde_json::json!({}));
            let r = d.req(m, &url, body, None).await;
            if op.is_object() {
                assert_ne!(
                    r.status, 405,
                    "{m} {template} is documented but not served: {}",
                    r.text
                );
                assert!(
                    !(r.status == 404 && r.text.contains("unsupported path")),
                    "{m} {template} is documented but not routed"
                );
            } else {
                assert_eq!(
                    r.status, 405,
                    "{m} {template} is served but not documented: {}",
                    r.text
                );
            }
        }
    }
}

// ----- the declared bounds are the handlers' bounds -----

/// The kind of constraint a sample takes from the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kw {
    Minimum,
    Maximum,
    MinLength,
    MaxLength,
    Enum,
    Uuid,
}

/// Follows a JSON pointer into the document, following every `$ref` on the way.
fn at<'a>(doc: &'a Value, pointer: &str) -> &'a Value {
    let deref = |mut v: &'a Value| {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            v = doc
                .pointer(r.trim_start_matches('#'))
                .expect("dangling $ref");
        }
        v
    };
    let mut v = deref(doc);
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        v = match v {
            Value::Array(a) => a.get(token.parse::<usize>().unwrap()),
            other => other.get(&token),
        }
        .unwrap_or_else(|| panic!("the document has nothing at {pointer} ({token})"));
        v = deref(v);
    }
    v
}

/// The values just outside and just inside the constraint `kw` of `schema`, as the
/// document declares it. Strings are made of `filler`.
fn samples(schema: &Value, kw: Kw, filler: char) -> (Vec<Value>, Vec<Value>) {
    let num = |k: &str| {
        schema[k]
            .as_i64()
            .unwrap_or_else(|| panic!("no {k} in {schema}"))
    };
    let text = |n: i64| Value::String(filler.to_string().repeat(n as usize));
    match kw {
        Kw::Minimum => (vec![json!(num("minimum") - 1)], vec![json!(num("minimum"))]),
        Kw::Maximum => (vec![json!(num("maximum") + 1)], vec![json!(num("maximum"))]),
        Kw::MinLength => (
            vec![text(num("minLength") - 1)],
            vec![text(num("minLength"))],
        ),
        Kw::MaxLength => (
            vec![text(num("maxLength") + 1)],
            vec![text(num("maxLength"))],
        ),
        Kw::Enum => {
            let values = schema["enum"].as_array().expect("an enum").clone();
            let outside = match &values[0] {
                Value::String(s) => json!(format!("{s}X")),
                _ => {
                    let ints: Vec<i64> = values.iter().filter_map(Value::as_i64).collect();
                    let (lo, hi) = (ints.iter().min().unwrap(), ints.iter().max().unwrap());
                    json!((*lo..=hi + 1).find(|n| !ints.contains(n)).unwrap())
                }
            };
            (vec![outside], values)
        }
        Kw::Uuid => {
            assert_eq!(schema["format"], "uuid", "{schema}");
            let id = uuid::Uuid::new_v4().to_string();
            (vec![json!(id[..id.len() - 1])], vec![json!(id)])
        }
    }
}

/// Where a sampled value goes.
enum Target {
    /// Into this field of this body.
    Body {
        method: &'static str,
        path: String,
        base: Value,
        field: &'static str,
    },
    /// Into the path, in place of `{}`.
    Path {
        method: &'static str,
        template: String,
        body: Option<Value>,
    },
    /// As this query parameter.
    Query { path: String, name: &'static str },
}

struct Sample {
    what: &'static str,
    /// The schema holding the constraint, as a pointer into the document.
    schema: String,
    kw: Kw,
    filler: char,
    target: Target,
    token: Option<String>,
    /// The surface's answer to a value the document forbids.
    refused: u16,
    /// What a value the document allows may get (never 400).
    allowed: &'static [u16],
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn send_sample(app: &TestApp, s: &Sample, v: &Value) -> common::Resp {
    match &s.target {
        Target::Body {
            method,
            path,
            base,
            field,
        } => {
            let mut body = base.clone();
            body[*field] = v.clone();
            app.req(method, path, Some(body), s.token.as_deref()).await
        }
        Target::Path {
            method,
            template,
            body,
        } => {
            let path = template.replace("{}", &as_text(v));
            app.req(method, &path, body.clone(), s.token.as_deref())
                .await
        }
        Target::Query { path, name } => {
            let url = format!("{path}?{name}={}", as_text(v));
            app.req("GET", &url, None, s.token.as_deref()).await
        }
    }
}

/// A pointer to a property of an operation's JSON request body.
fn body_field(path: &str, method: &str, field: &str) -> String {
    format!(
        "/paths/{}/{method}/requestBody/content/application~1json/schema/properties/{field}",
        path.replace('/', "~1")
    )
}

/// A pointer to the schema of an operation's `i`th parameter.
fn param(path: &str, method: &str, i: usize) -> String {
    format!(
        "/paths/{}/{method}/parameters/{i}/schema",
        path.replace('/', "~1")
    )
}

#[tokio::test]
async fn values_just_outside_the_declared_bounds_are_refused_and_just_inside_accepted() {
    let doc: Value = serde_json::from_str(totpd::api::OPENAPI).unwrap();
    let app = TestApp::new().await;
    let now = common::unix_now() as i64;

    // Prerequisites: a method, a long-named policy, a token, an agent secret with a long
    // period, and a user with an active device whose entity id is as long as allowed.
    let r = app
        .req(
            "POST",
            "/v1/identity/mfa/method/totp",
            Some(json!({"issuer": "Acme"})),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let method_id = r.json["data"]["method_id"].as_str().unwrap().to_string();
    let long_policy = "p".repeat(128);
    let r = app
        .req(
            "PUT",
            &format!("/v1/sys/policies/acl/{long_policy}"),
            Some(json!({"policy": {"path": {"secret/x": {"capabilities": ["read"]}}}})),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let token = common::make_token(&app, json!({"policies": ["default"], "ttl": "1h"})).await;
    let r = app
        .req(
            "POST",
            "/api/v2/totp/secrets",
            Some(json!({"label": "long", "period": 86400})),
            None,
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let secret_id = r.json["totp_secret"]["id"].as_str().unwrap().to_string();
    let user = "u".repeat(128);
    let user_token = common::make_token(&app, json!({"entity_id": user})).await;
    let auth = [("x-vault-token", user_token.clone())];
    let r = app
        .tcp_req("POST", "/api/v1/auth/totp/setup/", &auth, None)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let key = common::raw(r.json["secret_key"].as_str().unwrap());
    let code = common::reference_totp(&key, "SHA1", 6, 30, common::unix_now());
    let r = app
        .tcp_req(
            "POST",
            "/api/v1/auth/totp/activate/",
            &auth,
            Some(json!({"token": code})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    let methods = "/v1/identity/mfa/method/totp";
    let config = "/components/schemas/MfaMethodConfig/properties";
    // The least qr_size that fits every issuer the document allows.
    let fits_any_issuer = at(&doc, &format!("{config}/qr_size/anyOf/1"))["minimum"].clone();
    let method_body = |field: &'static str| Target::Body {
        method: "POST",
        path: methods.into(),
        base: json!({"issuer": "Acme"}),
        field,
    };
    let agent_body = |field: &'static str| Target::Body {
        method: "POST",
        path: "/api/v2/totp/secrets".into(),
        base: json!({"label": "bot"}),
        field,
    };
    let agent = |f: &str| body_field("/api/v2/totp/secrets", "post", f);
    let create = |f: &str| body_field("/v1/auth/token/create", "post", f);
    let token_body = |field: &'static str| Target::Body {
        method: "POST",
        path: "/v1/auth/token/create".into(),
        base: json!({}),
        field,
    };
    const OK: &[u16] = &[200, 201, 204];
    let sample = |what, schema: String, kw, target| Sample {
        what,
        schema,
        kw,
        filler: 'a',
        target,
        token: None,
        refused: 400,
        allowed: OK,
    };
    // The code endpoint may wait up to min_validity seconds: sample its maximum only
    // when the secret's day-long step has more than that left.
    let left = 86_400 - now.rem_euclid(86_400);

    let mut samples_list = vec![
        // Vault identity MFA
        sample(
            "MFA key_size maximum",
            format!("{config}/key_size/oneOf/0"),
            Kw::Maximum,
            method_body("key_size"),
        ),
        sample(
            "MFA key_size minimum",
            format!("{config}/key_size/oneOf/0"),
            Kw::Minimum,
            method_body("key_size"),
        ),
        sample(
            "MFA digits",
            format!("{config}/digits/oneOf/0"),
            Kw::Enum,
            method_body("digits"),
        ),
        sample(
            "MFA digits as strings",
            format!("{config}/digits/oneOf/1"),
            Kw::Enum,
            method_body("digits"),
        ),
        sample(
            "MFA algorithm",
            format!("{config}/algorithm"),
            Kw::Enum,
            method_body("algorithm"),
        ),
        sample(
            "MFA skew",
            format!("{config}/skew/oneOf/0"),
            Kw::Enum,
            method_body("skew"),
        ),
        sample(
            "MFA period maximum",
            format!("{config}/period/oneOf/0"),
            Kw::Maximum,
            method_body("period"),
        ),
        sample(
            "MFA period minimum",
            format!("{config}/period/oneOf/0"),
            Kw::Minimum,
            method_body("period"),
        ),
        sample(
            "MFA qr_size maximum",
            format!("{config}/qr_size/anyOf/1"),
            Kw::Maximum,
            method_body("qr_size"),
        ),
        sample(
            "MFA max_validation_attempts maximum",
            format!("{config}/max_validation_attempts/oneOf/0"),
            Kw::Maximum,
            method_body("max_validation_attempts"),
        ),
        sample(
            "MFA max_validation_attempts minimum",
            format!("{config}/max_validation_attempts/oneOf/0"),
            Kw::Minimum,
            method_body("max_validation_attempts"),
        ),
        sample(
            "MFA issuer maxLength",
            format!("{config}/issuer"),
            Kw::MaxLength,
            Target::Body {
                method: "POST",
                path: methods.into(),
                base: json!({"qr_size": fits_any_issuer}),
                field: "issuer",
            },
        ),
        Sample {
            allowed: &[404],
            ..sample(
                "MFA method_id path uuid",
                param(&format!("{methods}/{{method_id}}"), "get", 0),
                Kw::Uuid,
                Target::Path {
                    method: "GET",
                    template: format!("{methods}/{{}}"),
                    body: None,
                },
            )
        },
        Sample {
            allowed: &[404],
            ..sample(
                "MFA generate method_id uuid",
                body_field(&format!("{methods}/generate"), "post", "method_id"),
                Kw::Uuid,
                Target::Body {
                    method: "POST",
                    path: format!("{methods}/generate"),
                    base: json!({}),
                    field: "method_id",
                },
            )
        },
        sample(
            "MFA admin-generate entity_id maxLength",
            body_field(&format!("{methods}/admin-generate"), "post", "entity_id"),
            Kw::MaxLength,
            Target::Body {
                method: "POST",
                path: format!("{methods}/admin-generate"),
                base: json!({"method_id": method_id}),
                field: "entity_id",
            },
        ),
        // System: tokens and policies
        sample(
            "token ttl minimum",
            format!("{}/oneOf/0", create("ttl")),
            Kw::Minimum,
            token_body("ttl"),
        ),
        sample(
            "token explicit_max_ttl minimum",
            format!("{}/oneOf/0", create("explicit_max_ttl")),
            Kw::Minimum,
            token_body("explicit_max_ttl"),
        ),
        sample(
            "token entity_id maxLength",
            create("entity_id"),
            Kw::MaxLength,
            token_body("entity_id"),
        ),
        Sample {
            token: Some(token.clone()),
            ..sample(
                "renew-self increment minimum",
                format!(
                    "{}/oneOf/0",
                    body_field("/v1/auth/token/renew-self", "post", "increment")
                ),
                Kw::Minimum,
                Target::Body {
                    method: "POST",
                    path: "/v1/auth/token/renew-self".into(),
                    base: json!({}),
                    field: "increment",
                },
            )
        },
        sample(
            "policy name maxLength",
            param("/v1/sys/policies/acl/{name}", "put", 0),
            Kw::MaxLength,
            Target::Path {
                method: "PUT",
                template: "/v1/sys/policies/acl/{}".into(),
                body: Some(json!({"policy": "path \"secret/y\" { capabilities = [\"read\"] }"})),
            },
        ),
        sample(
            "policy LIST list values",
            param("/v1/sys/policies/acl", "get", 0),
            Kw::Enum,
            Target::Query {
                path: "/v1/sys/policies/acl".into(),
                name: "list",
            },
        ),
        // Agent authenticator
        sample(
            "agent digits",
            format!("{}/oneOf/0", agent("digits")),
            Kw::Enum,
            agent_body("digits"),
        ),
        sample(
            "agent algorithm",
            agent("algorithm"),
            Kw::Enum,
            agent_body("algorithm"),
        ),
        sample(
            "agent period maximum",
            format!("{}/oneOf/0", agent("period")),
            Kw::Maximum,
            agent_body("period"),
        ),
        sample(
            "agent period minimum",
            format!("{}/oneOf/0", agent("period")),
            Kw::Minimum,
            agent_body("period"),
        ),
        sample(
            "agent label maxLength",
            agent("label"),
            Kw::MaxLength,
            agent_body("label"),
        ),
        sample(
            "agent issuer maxLength",
            agent("issuer"),
            Kw::MaxLength,
            agent_body("issuer"),
        ),
        Sample {
            filler: 'A',
            ..sample(
                "agent secret minLength",
                agent("secret"),
                Kw::MinLength,
                agent_body("secret"),
            )
        },
        Sample {
            filler: 'A',
            ..sample(
                "agent secret maxLength",
                agent("secret"),
                Kw::MaxLength,
                agent_body("secret"),
            )
        },
        sample(
            "agent min_validity minimum",
            param("/api/v2/totp/code/{id}", "get", 1),
            Kw::Minimum,
            Target::Query {
                path: format!("/api/v2/totp/code/{secret_id}"),
                name: "min_validity",
            },
        ),
        // Nitride
        sample(
            "Nitride delete uuid",
            format!(
                "{}/anyOf/0",
                param("/v1/auth/{mount}/totp/{uuid}", "delete", 1)
            ),
            Kw::Uuid,
            Target::Path {
                method: "DELETE",
                template: "/v1/auth/ratls/totp/{}".into(),
                body: None,
            },
        ),
        Sample {
            filler: 'p',
            ..sample(
                "Nitride policy maxLength",
                body_field("/v1/auth/{mount}/totp", "put", "policy"),
                Kw::MaxLength,
                Target::Body {
                    method: "PUT",
                    path: "/v1/auth/ratls/totp".into(),
                    base: json!({"expiration": now + 600}),
                    field: "policy",
                },
            )
        },
        // User login step
        sample(
            "login setup name maxLength",
            body_field("/api/v1/auth/totp/setup/", "post", "name"),
            Kw::MaxLength,
            Target::Body {
                method: "POST",
                path: "/api/v1/auth/totp/setup/".into(),
                base: json!({}),
                field: "name",
            },
        ),
        Sample {
            filler: 'u',
            ..sample(
                "login challenge user maxLength",
                body_field("/api/v1/auth/totp/challenge/", "post", "user"),
                Kw::MaxLength,
                Target::Body {
                    method: "POST",
                    path: "/api/v1/auth/totp/challenge/".into(),
                    base: json!({}),
                    field: "user",
                },
            )
        },
    ];
    if left > 130 {
        samples_list.push(sample(
            "agent min_validity maximum",
            param("/api/v2/totp/code/{id}", "get", 1),
            Kw::Maximum,
            Target::Query {
                path: format!("/api/v2/totp/code/{secret_id}"),
                name: "min_validity",
            },
        ));
    }

    let mut failures = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for s in &samples_list {
        let (outside, inside) = samples(at(&doc, &s.schema), s.kw, s.filler);
        kinds.insert(format!("{:?}", s.kw));
        for v in &outside {
            let r = send_sample(&app, s, v).await;
            if r.status != s.refused {
                failures.push(format!(
                    "{}: {v} is outside the document's bounds but got {}: {:.300}",
                    s.what, r.status, r.text
                ));
            }
        }
        for v in &inside {
            let r = send_sample(&app, s, v).await;
            if r.status == 400 || !s.allowed.contains(&r.status) {
                failures.push(format!(
                    "{}: {v} is inside the document's bounds but got {}: {:.300}",
                    s.what, r.status, r.text
                ));
            }
        }
    }
    assert!(samples_list.len() >= 10 && kinds.len() >= 5, "{kinds:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ----- the links schemathesis' stateful phase follows -----

/// `schema`, its `$ref` followed.
fn deref<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        v = doc
            .pointer(r.trim_start_matches('#'))
            .expect("dangling $ref");
    }
    v
}

/// Every schema that property `name` of `schema` may have, looking through
/// allOf/oneOf/anyOf (an envelope's generic `data` and the operation's own).
fn properties<'a>(doc: &'a Value, schema: &'a Value, name: &str) -> Vec<&'a Value> {
    let s = deref(doc, schema);
    let mut found: Vec<&Value> = s["properties"].get(name).into_iter().collect();
    for k in ["allOf", "oneOf", "anyOf"] {
        for sub in s[k].as_array().into_iter().flatten() {
            found.extend(properties(doc, sub, name));
        }
    }
    found
}

fn property<'a>(doc: &'a Value, schema: &'a Value, name: &str) -> Option<&'a Value> {
    properties(doc, schema, name).into_iter().next()
}

/// Whether `pointer` (`/data/uuid`) names a declared field of `schema`.
fn resolves(doc: &Value, schema: &Value, pointer: &str) -> bool {
    let Some(rest) = pointer.strip_prefix('/') else {
        return pointer.is_empty();
    };
    let (token, tail) = rest.split_once('/').map_or((rest, ""), |(t, r)| (t, r));
    let tail = if tail.is_empty() {
        String::new()
    } else {
        format!("/{tail}")
    };
    properties(doc, schema, token)
        .into_iter()
        .any(|p| resolves(doc, p, &tail))
}

/// An operation's parameters (its own and its path's) as `in.name`.
fn parameters(doc: &Value, path_item: &Value, op: &Value) -> Vec<String> {
    [&path_item["parameters"], &op["parameters"]]
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .map(|p| deref(doc, p))
        .map(|p| {
            format!(
                "{}.{}",
                p["in"].as_str().unwrap(),
                p["name"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn every_link_names_a_real_operation_parameter_and_field() {
    let doc: Value = serde_json::from_str(totpd::api::OPENAPI).unwrap();
    let mut ops = std::collections::HashMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if let Some(id) = op["operationId"].as_str() {
                ops.insert(id.to_string(), (path.clone(), method.clone(), item, op));
            }
        }
    }
    let mut links = 0;
    for (path, method, item, op) in ops.values() {
        for (status, resp) in op["responses"].as_object().unwrap() {
            let resp = deref(&doc, resp);
            let Some(ls) = resp["links"].as_object() else {
                continue;
            };
            let source = format!("{method} {path} {status}");
            let body_schema = &resp["content"]["application/json"]["schema"];
            let own = parameters(&doc, item, op);
            // A runtime expression must name what the source declares.
            let check = |what: &str, v: &Value| {
                let Some(e) = v.as_str().filter(|e| e.starts_with('$')) else {
                    return;
                };
                if let Some(ptr) = e.strip_prefix("$response.body#") {
                    assert!(
                        resolves(&doc, body_schema, ptr),
                        "{source}: {what}: {e} is not a field of the response"
                    );
                } else if let Some(p) = e.strip_prefix("$request.") {
                    assert!(
                        own.iter().any(|o| o == p),
                        "{source}: {what}: {e} is not a parameter"
                    );
                } else {
                    panic!("{source}: {what}: unexpected expression {e}");
                }
            };
            for (name, link) in ls {
                links += 1;
                let target = link["operationId"].as_str().unwrap();
                let (tpath, tmethod, titem, top) = ops
                    .get(target)
                    .unwrap_or_else(|| panic!("{source}: link {name}: no operation {target}"));
                let theirs = parameters(&doc, titem, top);
                for (p, v) in link["parameters"].as_object().into_iter().flatten() {
                    assert!(
                        theirs.contains(p),
                        "{source}: link {name}: {tmethod} {tpath} has no parameter {p}"
                    );
                    check(&format!("link {name} {p}"), v);
                }
                if let Some(body) = link["requestBody"].as_object() {
                    let tbody = &top["requestBody"]["content"]["application/json"]["schema"];
                    for (field, v) in body {
                        assert!(
                            property(&doc, tbody, field).is_some(),
                            "{source}: link {name}: {tmethod} {tpath} has no body field {field}"
                        );
                        check(&format!("link {name} body {field}"), v);
                    }
                }
            }
        }
    }
    // The Nitride flow (policy, token, spend) and the user login flow are linked.
    assert!(links >= 10, "{links} links");
    for (op, status, link) in [
        ("createPolicyToken", "200", "SpendOnPolicy"),
        ("writePolicy", "204", "CreateOneTimeToken"),
        ("setup", "201", "Activate"),
        ("activate", "200", "Challenge"),
        ("challenge", "201", "Verify"),
    ] {
        let (_, _, _, o) = &ops[op];
        assert!(
            o["responses"][status]["links"][link].is_object(),
            "{op} {status}: no link {link}"
        );
    }
}
