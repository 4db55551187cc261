//! The OpenAPI document and the router agree: every documented operation is served, and
//! every method the document leaves out of a path answers 405.

mod common;

use common::Daemon;
use serde_json::Value;

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
