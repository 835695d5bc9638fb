//! Every admin route (the list is checked against the OpenAPI document, so a new route cannot
//! be forgotten) without the admin role: no credentials, a wallet session, a consumer API key,
//! a miner token, or a malformed `Authorization` header. Each request is refused (401, or 403
//! for a wallet session) and nothing changes: no slash, no decision, no suspension, no
//! validator, no row anywhere.

use std::collections::BTreeSet;

use infermine_tests::raw::RawAgent;
use infermine_tests::{Backend, TestServer, WALLET};
use serde_json::{Value, json};

use super::{
    Tables, admin_token, call, completed_job, seed_case, send, server, still_connected,
    waifu_balance, wallet_session,
};
use crate::on_both_databases;

/// A server with something behind every admin route: a credited wallet with an open case, a
/// connected GPU and a completed job with its objects.
struct Scene {
    server: TestServer,
    agent: RawAgent,
    /// (method, path, body) of every admin route.
    routes: Vec<(&'static str, String, Option<Value>)>,
}

async fn scene(backend: &Backend) -> Scene {
    let server = server(backend).await;
    let case = seed_case(&server).await;
    let (agent, id) = completed_job(&server).await;
    let gpu = format!("{WALLET}-rig-gpu0");
    let admin = "/api/v1/admin";
    let slash = json!({ "address": WALLET, "fraction": 1.0, "reason": "x" });
    let routes = vec![
        ("GET", format!("{admin}/whoami"), None),
        ("GET", format!("{admin}/cases?status=open"), None),
        ("GET", format!("{admin}/cases/{case}"), None),
        (
            "POST",
            format!("{admin}/cases/{case}/slash"),
            Some(json!({ "fraction": 1.0, "note": "x", "suspend": true })),
        ),
        (
            "POST",
            format!("{admin}/cases/{case}/dismiss"),
            Some(json!({ "note": "x" })),
        ),
        ("GET", format!("{admin}/jobs/{id}/objects"), None),
        ("GET", format!("{admin}/jobs/{id}/objects/input.json"), None),
        (
            "POST",
            format!("{admin}/miners/{gpu}/suspend"),
            Some(json!({ "reason": "x" })),
        ),
        ("POST", format!("{admin}/miners/{gpu}/unsuspend"), None),
        ("GET", format!("{admin}/miners/{gpu}/trust"), None),
        ("GET", format!("{admin}/review/stats"), None),
        ("POST", format!("{admin}/slashes"), Some(slash)),
        ("GET", format!("{admin}/validators"), None),
        ("PUT", format!("{admin}/validators/{gpu}"), None),
        ("DELETE", format!("{admin}/validators/{gpu}"), None),
    ];
    Scene {
        server,
        agent,
        routes,
    }
}

/// `/api/v1/admin/{id}/…` with the ids put back as the document's `{param}`s.
fn template(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    path.split('/')
        .enumerate()
        .map(|(i, segment)| {
            let previous = path.split('/').nth(i.wrapping_sub(1)).unwrap_or_default();
            match previous {
                "cases" if segment != "cases" => "{id}".to_owned(),
                "jobs" => "{id}".to_owned(),
                "objects" => "{name}".to_owned(),
                "miners" | "validators" => "{miner_id}".to_owned(),
                _ => segment.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Sends every admin route with `authorization` (a whole header value, or none) and checks
/// each refusal, then that nothing changed.
async fn all_refused(mut scene: Scene, authorization: &[Option<String>], status: u16, code: &str) {
    let server = &scene.server;
    let documented: Value = server.get_json("/openapi.json").await;
    let documented: BTreeSet<(String, String)> = documented["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .filter(|(path, _)| path.starts_with("/api/v1/admin/"))
        .flat_map(|(path, ops)| {
            let methods = ops.as_object().expect("operations").keys();
            methods.map(|m| (m.to_ascii_uppercase(), path.clone()))
        })
        .collect();
    let covered: BTreeSet<(String, String)> = scene
        .routes
        .iter()
        .map(|(method, path, _)| ((*method).to_owned(), template(path)))
        .collect();
    assert_eq!(covered, documented, "every admin route is tried");

    let tables = Tables::open(server).await;
    let before = tables.snapshot().await;
    let http = reqwest::Client::new();
    for value in authorization {
        for (method, path, body) in &scene.routes {
            let url = format!("{}{path}", server.http());
            let mut request = http.request(method.parse().expect("method"), &url);
            if let Some(value) = value {
                request = request.header("authorization", value);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let reply = send(request).await;
            assert_eq!(
                (reply.status, reply.code()),
                (status, code),
                "{method} {path} with {value:?}: {}",
                reply.text
            );
        }
    }

    assert_eq!(tables.snapshot().await, before, "nothing stored");
    assert_eq!(waifu_balance(server).await, 10_000_000, "nothing slashed");
    let admin = admin_token(server).await;
    let open = call(
        "GET",
        &format!("{}/api/v1/admin/cases?status=open", server.http()),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        open.body["cases"].as_array().map(Vec::len),
        Some(1),
        "{}",
        open.text
    );
    let gpu = format!("/api/v1/miners/{WALLET}-rig-gpu0");
    assert_eq!(server.get_json(&gpu).await["suspension"], Value::Null);
    let validators = call(
        "GET",
        &format!("{}/api/v1/admin/validators", server.http()),
        Some(&admin),
        None,
    )
    .await;
    assert!(!validators.text.contains("rig-gpu0"), "{}", validators.text);
    still_connected(&mut scene.agent).await;
}

async fn admin_routes_without_credentials(backend: Backend) {
    all_refused(scene(&backend).await, &[None], 401, "unauthorized").await;
}
on_both_databases!(admin_routes_without_credentials);

async fn admin_routes_with_a_wallet_session(backend: Backend) {
    let scene = scene(&backend).await;
    let session = format!("Bearer {}", wallet_session(&scene.server, WALLET));
    all_refused(scene, &[Some(session)], 403, "forbidden").await;
}
on_both_databases!(admin_routes_with_a_wallet_session);

async fn admin_routes_with_an_api_key(backend: Backend) {
    let scene = scene(&backend).await;
    let key = format!("Bearer {}", scene.server.api_key);
    all_refused(scene, &[Some(key)], 401, "unauthorized").await;
}
on_both_databases!(admin_routes_with_an_api_key);

async fn admin_routes_with_a_miner_token(backend: Backend) {
    let scene = scene(&backend).await;
    let token = format!("Bearer {}", scene.server.miner_token("rig").await);
    all_refused(scene, &[Some(token)], 401, "unauthorized").await;
}
on_both_databases!(admin_routes_with_a_miner_token);

/// An admin token, but not as `Bearer <token>`: another scheme, nothing after `Bearer`, junk
/// after the token, two tokens.
async fn admin_routes_with_a_malformed_authorization(backend: Backend) {
    let scene = scene(&backend).await;
    let admin = admin_token(&scene.server).await;
    let values = [
        "Basic YWRtaW46YWRtaW4=".to_owned(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        format!("Token {admin}"),
        format!("Bearer {admin}.x"),
        format!("Bearer {admin} {admin}"),
        admin.clone(),
    ];
    let values: Vec<Option<String>> = values.into_iter().map(Some).collect();
    all_refused(scene, &values, 401, "unauthorized").await;
}
on_both_databases!(admin_routes_with_a_malformed_authorization);
