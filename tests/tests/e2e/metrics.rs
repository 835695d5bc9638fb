//! `GET /metrics` scraped after real work: a real agent runs jobs, and the scrape parses as
//! Prometheus text with the counts that work implies.

use std::time::Duration;

use infermine_tests::{AgentProcess, Backend, TestServer};
use prometheus_parse::{Sample, Scrape, Value as Metric};
use serde_json::json;

async fn scrape(server: &TestServer) -> Scrape {
    let response = reqwest::get(format!("{}/metrics", server.http()))
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses as Prometheus text")
}

fn samples<'a>(scrape: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    scrape.samples.iter().filter(|s| s.metric == name).collect()
}

/// The value of the one sample of `name` whose labels include `labels`.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples(scrape, name)
        .into_iter()
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    match &found[0].value {
        Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
        other => panic!("{name} is not a number: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_work_done_and_parse_as_prometheus_text() {
    let server = TestServer::start(&Backend::Sqlite).await;
    let before = scrape(&server).await;
    assert_eq!(value(&before, "infermine_agents_connected", &[]), 0.0);
    assert_eq!(value(&before, "infermine_draining", &[]), 0.0);

    let token = server.miner_token("rig").await;
    let _agent = AgentProcess::spawn(&server, &token, &[]).await;
    server.wait_slots(1).await;
    let client = server.client();
    for seed in 0..3 {
        let id = client
            .submit_ok(
                "synthetic-echo",
                json!({ "output_bytes": 64, "seed": seed }),
            )
            .await;
        let done = client.wait_final(&id, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed", "{done}");
    }

    let after = scrape(&server).await;
    let model = [("model", "synthetic-echo")];
    assert_eq!(value(&after, "infermine_jobs_submitted_total", &model), 3.0);
    assert_eq!(
        value(
            &after,
            "infermine_jobs_finished_total",
            &[("model", "synthetic-echo"), ("state", "completed")]
        ),
        3.0
    );
    assert_eq!(value(&after, "infermine_agents_connected", &[]), 1.0);
    assert!(value(&after, "infermine_gpus_connected", &[]) >= 1.0);
    assert_eq!(value(&after, "infermine_jobs_leased", &[]), 0.0);
    assert_eq!(value(&after, "infermine_storage_spool_objects", &[]), 0.0);
    // Three dispatches observed, each within the histogram's buckets.
    let latency = samples(&after, "infermine_dispatch_latency_seconds");
    let Some(Metric::Histogram(buckets)) = latency.first().map(|s| &s.value) else {
        panic!("infermine_dispatch_latency_seconds is not a histogram: {latency:?}");
    };
    let total = buckets.last().map(|b| b.count).unwrap_or_default();
    assert_eq!(total, 3.0, "{buckets:?}");
    assert_eq!(
        value(&after, "infermine_dispatch_latency_seconds_count", &[]),
        3.0
    );
    // Every metric with samples has its help text.
    for name in [
        "infermine_jobs_submitted",
        "infermine_jobs_finished",
        "infermine_dispatch_latency_seconds",
        "infermine_agents_connected",
        "infermine_storage_spool_bytes",
    ] {
        assert!(
            after.docs.contains_key(name),
            "no HELP for {name}: {:?}",
            after.docs.keys()
        );
    }
}
