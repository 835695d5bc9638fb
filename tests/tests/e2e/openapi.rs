//! The OpenAPI document a running coordinator serves is the one generated from the code (and
//! so the committed `openapi/openapi.json`), its docs UI answers, and every operation it lists
//! reaches a handler.

use infermine_tests::{Backend, TestServer, WALLET};
use reqwest::Method;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_served_document_is_the_generated_one_and_docs_answer() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let response = reqwest::get(format!("{}/openapi.json", server.http()))
        .await
        .expect("GET /openapi.json");
    assert_eq!(response.status(), 200);
    let served: Value = response.json().await.expect("JSON document");
    let generated =
        serde_json::to_value(infermine_server::openapi::spec()).expect("generated document");
    assert_eq!(
        served, generated,
        "GET /openapi.json differs from openapi::spec()"
    );

    for path in ["/docs/", "/docs"] {
        let response = reqwest::get(format!("{}{path}", server.http()))
            .await
            .expect("GET the docs UI");
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .expect("content type")
            .to_owned();
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
        let page = response.text().await.expect("page");
        assert!(page.contains("swagger-ui"), "{path} is not the Swagger UI");
    }
}

/// A documented route the router lacks would fall through to the fallback's 404 (or a 405 for
/// a documented method it lacks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_every_documented_operation_reaches_a_handler() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let spec = serde_json::to_value(infermine_server::openapi::spec()).expect("document");
    let client = reqwest::Client::new();
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() > 20, "only {} paths documented", paths.len());
    for (template, item) in paths {
        let path = template
            .replace("{id}", "0190b3c4-0000-7000-8000-000000000000")
            .replace("{address}", WALLET)
            .replace("{miner_id}", &format!("{WALLET}-rig-gpu0"))
            .replace("{name}", "output.json");
        assert!(!path.contains('{'), "{template}: unknown path parameter");
        for method in item.as_object().expect("path item").keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let response = client
                .request(method.clone(), format!("{}{path}", server.http()))
                .send()
                .await
                .expect("send");
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            assert_ne!(
                status, 405,
                "{method} {template} is documented but not routed"
            );
            assert!(
                !body.contains("no such endpoint"),
                "{method} {template} is documented but fell through to the fallback"
            );
        }
    }
}
