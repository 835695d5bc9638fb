//! Bad consumer requests get a JSON error with the right status and a stable code, and
//! leave nothing behind.

use infermine_tests::{Backend, Client, TestServer};
use serde_json::{Value, json};

async fn raw(
    server: &TestServer,
    method: &str,
    path: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let http = reqwest::Client::new();
    let mut request = http.request(
        method.parse().expect("method"),
        format!("{}{path}", server.http()),
    );
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.body(body).send().await.expect("send");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn assert_error(got: &(u16, Value), status: u16, code: &str, mentions: &str) {
    let (got_status, body) = got;
    assert_eq!(*got_status, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    // OpenAI's shape: a class of error, and the parameter at fault (or null), always present.
    let kind = body["error"]["type"].as_str().unwrap_or_default();
    assert!(kind.ends_with("_error"), "{body}");
    assert!(
        body["error"]
            .as_object()
            .is_some_and(|e| e.contains_key("param")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "message should mention `{mentions}`: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_store_nothing() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let client = server.client();
    let key = server.api_key.clone();

    assert_error(
        &client.submit("no-such-model", json!({})).await,
        404,
        "model_not_found",
        "no-such-model",
    );
    let image = |params: Value| client.submit("sdxl-base-1.0", params);
    let base = json!({ "prompt": "a lighthouse", "width": 1024, "height": 1024, "steps": 30 });
    let mut bad_width = base.clone();
    bad_width["width"] = json!(1004);
    assert_error(
        &image(bad_width).await,
        422,
        "param_out_of_range",
        "multiple of 8",
    );
    let mut too_many_steps = base.clone();
    too_many_steps["steps"] = json!(500);
    assert_error(
        &image(too_many_steps).await,
        422,
        "param_out_of_range",
        "steps",
    );
    assert_error(
        &image(json!({ "prompt": "x" })).await,
        422,
        "invalid_params",
        "width",
    );
    assert_error(
        &client
            .submit("synthetic-echo", json!({ "output_bytes": 1 << 30 }))
            .await,
        422,
        "param_out_of_range",
        "output_bytes",
    );
    assert_error(
        &client
            .submit("synthetic-echo", json!({ "colour": "red" }))
            .await,
        422,
        "invalid_params",
        "colour",
    );

    let body = br#"{"model":"synthetic-echo"}"#.to_vec();
    assert_error(
        &raw(
            &server,
            "POST",
            "/v1/jobs",
            None,
            Some("application/json"),
            body.clone(),
        )
        .await,
        401,
        "unauthorized",
        "Authorization",
    );
    assert_error(
        &raw(
            &server,
            "POST",
            "/v1/jobs",
            Some("imk_forged"),
            Some("application/json"),
            body.clone(),
        )
        .await,
        401,
        "unauthorized",
        "invalid",
    );
    assert_error(
        &raw(&server, "POST", "/v1/jobs", Some(&key), None, body).await,
        415,
        "unsupported_media_type",
        "application/json",
    );
    assert_error(
        &raw(
            &server,
            "POST",
            "/v1/jobs",
            Some(&key),
            Some("application/json"),
            b"{not json".to_vec(),
        )
        .await,
        400,
        "invalid_request",
        "JSON",
    );
    let huge = format!(
        r#"{{"model":"synthetic-echo","params":{{"pad":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    assert_error(
        &raw(
            &server,
            "POST",
            "/v1/jobs",
            Some(&key),
            Some("application/json"),
            huge.into_bytes(),
        )
        .await,
        413,
        "payload_too_large",
        "max_body_bytes",
    );

    assert_error(
        &client.get("not-a-uuid", 0.0).await,
        404,
        "not_found",
        "not-a-uuid",
    );
    assert_error(
        &client
            .get("0193a6f0-7c1e-7cc0-9d2a-5f1c3b2a1e00", 0.0)
            .await,
        404,
        "not_found",
        "no job",
    );
    assert_error(
        &raw(&server, "GET", "/v2/nothing", Some(&key), None, vec![]).await,
        404,
        "not_found",
        "endpoint",
    );

    // None of the refused requests became a job.
    let status = server.wait_status("status", |_| true).await;
    assert_eq!(status["queued"], 0, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_visible_only_to_the_key_that_submitted_it() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let id = server.client().submit_ok("synthetic-echo", json!({})).await;
    let other_key = infermine_server::create_api_key(&server.config, "other")
        .await
        .expect("key");
    let other = Client::new(&server.http(), &other_key);
    assert_error(&other.get(&id, 0.0).await, 404, "not_found", "no job");
    assert_error(&other.cancel(&id).await, 404, "not_found", "no job");
    let (status, view) = server.client().get(&id, 0.0).await;
    assert_eq!(
        (status, view["status"].as_str()),
        (200, Some("queued")),
        "{view}"
    );
}

/// Regression (found by scripts/schemathesis.sh): a `?wait=` too large for a `Duration`
/// (`3.4e112`) panicked the handler, so the connection closed without an answer. It is cut to
/// `max_wait_s` like any other long wait; a negative or non-finite one is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_beyond_any_duration_is_cut_to_the_limit() {
    let server = TestServer::start_with(&Backend::Sqlite, |config| config.max_wait_s = 1).await;
    let key = server.api_key.clone();
    let id = server.client().submit_ok("synthetic-echo", json!({})).await;
    for wait in [
        "3.4451231740982003e%2B112",
        "1e300",
        "1.7976931348623157e308",
    ] {
        let started = std::time::Instant::now();
        let path = format!("/v1/jobs/{id}?wait={wait}");
        let (status, view) = raw(&server, "GET", &path, Some(&key), None, vec![]).await;
        assert_eq!(
            (status, view["status"].as_str()),
            (200, Some("queued")),
            "wait={wait}: {view}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "wait={wait} should be cut to max_wait_s (1 s)"
        );
    }
    for wait in ["-1", "NaN", "inf"] {
        let path = format!("/v1/jobs/{id}?wait={wait}");
        assert_error(
            &raw(&server, "GET", &path, Some(&key), None, vec![]).await,
            400,
            "invalid_request",
            "wait",
        );
    }
}

/// Regression (found by scripts/schemathesis.sh): a query string that does not parse was
/// answered in axum's plain text; every route answers in the API's JSON error shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_query_strings_get_the_json_error_shape() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let key = server.api_key.clone();
    let id = server.client().submit_ok("synthetic-echo", json!({})).await;
    for (path, key, mentions) in [
        (
            format!("/v1/jobs/{id}?wait=soon"),
            Some(key.as_str()),
            "wait",
        ),
        ("/api/v1/leaderboard?limit=many".to_owned(), None, "limit"),
        ("/api/v1/slashes?limit=-3".to_owned(), None, "limit"),
    ] {
        let got = raw(&server, "GET", &path, key, None, vec![]).await;
        assert_error(&got, 400, "invalid_request", mentions);
    }
}
