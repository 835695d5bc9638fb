//! Rate limits over real sockets: a client past its burst gets 429 with `Retry-After`, while
//! a client from another address and the health check are unaffected.

use std::net::IpAddr;

use infermine_server::limits::Limit;
use infermine_tests::{Backend, TestServer};

fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_address_is_slowed_and_others_are_not() {
    let server = TestServer::start_with(&Backend::Sqlite, |c| {
        c.rate_limits.enabled = true;
        c.rate_limits.per_ip = Limit {
            per_second: 1,
            burst: 3,
        };
    })
    .await;
    let url = format!("{}/v1/models", server.http());
    let flooder = client_from([127, 0, 0, 1]);
    let mut statuses = Vec::new();
    let mut refusal = None;
    for _ in 0..8 {
        let response = flooder.get(&url).send().await.expect("send");
        statuses.push(response.status().as_u16());
        if response.status() == 429 && refusal.is_none() {
            let retry_after: u64 = response.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            let body: serde_json::Value = response.json().await.expect("json");
            refusal = Some((retry_after, body));
        }
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "the burst passes");
    assert!(
        statuses.iter().filter(|s| **s == 429).count() >= 4,
        "the flood is refused: {statuses:?}"
    );
    let (retry_after, body) = refusal.expect("a refusal");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["type"], "rate_limit_error");

    let health = flooder
        .get(format!("{}/healthz", server.http()))
        .send()
        .await
        .expect("send");
    assert_eq!(health.status(), 200, "health checks are never limited");

    let neighbour = client_from([127, 0, 0, 2]);
    let response = neighbour.get(&url).send().await.expect("send");
    assert_eq!(response.status(), 200, "another address has its own bucket");
}
