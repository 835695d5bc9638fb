//! Job objects in S3, end to end: every completed job's input, output and meta land in the
//! bucket with the SHA-256 the database records; image PNGs go straight from the agent to a
//! presigned URL and are checked before the job completes; an S3 outage spools objects
//! locally, loses none across a restart, and they reach S3 when it is back.

use std::time::Duration;

use base64::Engine as _;
use futures_util::future::join_all;
use infermine_protocol::{
    AgentMessage, CoordinatorMessage, DeviceKind, GpuInfo, Hello, JobOutput, JobResult, Metrics,
    ModelInfo, PROTOCOL_VERSION,
};
use infermine_tests::raw::{Frame, RawAgent};
use infermine_tests::{AgentProcess, Backend, ObjectStore, TestServer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn admin_token(server: &TestServer) -> String {
    infermine_server::mint_admin_token(&server.config, "e2e", Duration::from_secs(3600))
        .await
        .expect("admin token")
}

/// Fetches a job's objects through the admin API and checks each against the SHA-256 and size
/// recorded for it. Returns `(name, bytes)` by name.
async fn objects_of(server: &TestServer, admin: &str, job: &str) -> Vec<(String, Vec<u8>)> {
    let http = reqwest::Client::new();
    let list: Value = http
        .get(format!("{}/api/v1/admin/jobs/{job}/objects", server.http()))
        .bearer_auth(admin)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let mut objects = Vec::new();
    for object in list["objects"].as_array().expect("objects") {
        let name = object["name"].as_str().expect("name").to_owned();
        let key = object["key"].as_str().expect("key");
        assert!(
            key.starts_with("jobs/") && key.ends_with(&format!("/{job}/{name}")),
            "{key}"
        );
        let response = http
            .get(format!(
                "{}/api/v1/admin/jobs/{job}/objects/{name}",
                server.http()
            ))
            .bearer_auth(admin)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{name}");
        let bytes = response.bytes().await.expect("body").to_vec();
        assert_eq!(object["sha256"], sha256(&bytes), "{job}/{name}");
        assert_eq!(object["size_bytes"], bytes.len(), "{job}/{name}");
        objects.push((name, bytes));
    }
    objects.sort();
    objects
}

fn names(objects: &[(String, Vec<u8>)]) -> Vec<&str> {
    objects.iter().map(|(n, _)| n.as_str()).collect()
}

async fn synthetic_job_objects(backend: Backend, store: ObjectStore) {
    let server = TestServer::start_with(&backend, |c| store.apply(c)).await;
    let admin = admin_token(&server).await;
    let token = server.miner_token("rig").await;
    let _agent = AgentProcess::spawn(&server, &token, &[]).await;
    server.wait_slots(1).await;
    let client = server.client();
    let id = client
        .submit_ok("synthetic-echo", json!({ "output_bytes": 3000, "seed": 9 }))
        .await;
    let job = client.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");

    let objects = objects_of(&server, &admin, &id).await;
    assert_eq!(names(&objects), ["input.json", "meta.json", "output.json"]);
    let input: Value = serde_json::from_slice(&objects[0].1).expect("input json");
    assert_eq!(input["model"], "synthetic-echo");
    assert_eq!(input["params"]["output_bytes"], 3000);
    let output: Value = serde_json::from_slice(&objects[2].1).expect("output json");
    assert_eq!(
        output, job["output"],
        "the stored output is the one returned"
    );
    let meta: Value = serde_json::from_slice(&objects[1].1).expect("meta json");
    assert_eq!(meta["job"], id.as_str());
    assert_eq!(meta["attempt"], 1);
    assert_eq!(
        meta["objects"]["output.json"]["sha256"],
        sha256(&objects[2].1)
    );
    assert_eq!(
        meta["objects"]["input.json"]["sha256"],
        sha256(&objects[0].1)
    );
    assert!(meta["server_latency_ms"].as_u64().is_some());
}

fn image_rig(token: &str) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "raw-test-agent".to_owned(),
        token: token.to_owned(),
        gpus: vec![GpuInfo {
            index: 0,
            kind: DeviceKind::Cuda,
            uuid: "GPU-4090-0".to_owned(),
            name: "NVIDIA GeForce RTX 4090".to_owned(),
            vram_mb: 24_564,
        }],
        models: vec![ModelInfo {
            id: "sdxl-base-1.0".to_owned(),
            sha256: String::new(),
        }],
    }
}

async fn image_uploaded_to_a_presigned_url(backend: Backend, store: ObjectStore) {
    let server = TestServer::start_with(&backend, |c| store.apply(c)).await;
    let admin = admin_token(&server).await;
    let token = server.miner_token("imagerig").await;
    let (mut agent, _) = RawAgent::join_with(&server.ws(), image_rig(&token))
        .await
        .expect("join");
    let client = server.client();
    let id = client
        .submit_ok(
            "sdxl-base-1.0",
            json!({ "prompt": "a red fox", "width": 1024, "height": 1024, "steps": 20 }),
        )
        .await;
    let png = infermine_tests::raw::png_header(1024, 1024, b"pretend this is a 1024x1024 image");
    let http = reqwest::Client::new();
    let mut last_url = String::new();

    // Attempt 1 lies: it claims the SHA-256 of other bytes. The coordinator reads the upload
    // back, refuses the result and the job runs again.
    // Attempt 2 is honest.
    for attempt in 1..=2u32 {
        let job = loop {
            match agent.next(Duration::from_secs(10)).await {
                Frame::Message(CoordinatorMessage::Job(job)) => break job,
                Frame::Message(_) => continue,
                other => panic!("expected the job, got {other:?}"),
            }
        };
        assert_eq!(job.attempt, attempt);
        let url = job
            .upload_url
            .clone()
            .expect("an image job comes with an upload URL");
        last_url.clone_from(&url);
        let claimed = if attempt == 1 {
            sha256(b"some other image")
        } else {
            sha256(&png)
        };
        // What an engine returns, moved to the URL by the agent's own uploader.
        let inline = JobOutput::Image {
            width: 1024,
            height: 1024,
            size_bytes: png.len() as u64,
            sha256: claimed,
            png_b64: Some(base64::engine::general_purpose::STANDARD.encode(&png)),
        };
        let output = tokio::task::spawn_blocking(move || {
            let uploader = infermine_agent::upload::Uploader::new().expect("uploader");
            uploader.offload(inline, &url)
        })
        .await
        .expect("upload task")
        .expect("upload");
        assert!(
            matches!(&output, JobOutput::Image { png_b64: None, .. }),
            "the PNG left the result"
        );
        agent
            .send(&AgentMessage::Result(JobResult {
                job: job.id,
                output,
                metrics: Metrics::default(),
            }))
            .await
            .expect("result");
    }
    let job = client.wait_final(&id, Duration::from_secs(10)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempts"], 2, "the lying attempt did not count: {job}");

    let objects = objects_of(&server, &admin, &id).await;
    assert_eq!(names(&objects), ["input.json", "meta.json", "output.png"]);
    assert_eq!(objects[2].1, png, "the PNG is the agent's upload");

    // A presigned URL is good for its one object: re-aimed at another key, it is refused,
    // and the agent's uploader says so.
    let forged = last_url.replace("/output.png?", "/other.png?");
    assert_ne!(forged, last_url);
    let refused = http
        .put(&forged)
        .body(png.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), 403, "a re-aimed presigned URL");
    let err = tokio::task::spawn_blocking(move || {
        infermine_agent::upload::Uploader::new()
            .expect("uploader")
            .put(&forged, png)
    })
    .await
    .expect("upload task")
    .expect_err("refused");
    assert!(err.to_string().contains("HTTP 403"), "{err}");
}

/// `GET /readyz`: status and body.
async fn readyz(server: &TestServer) -> (u16, Value) {
    let response = reqwest::get(format!("{}/readyz", server.http()))
        .await
        .expect("readyz");
    let code = response.status().as_u16();
    (code, response.json().await.expect("JSON"))
}

async fn an_outage_loses_nothing(backend: Backend, store: ObjectStore) {
    // S3 is down from the start: an endpoint where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_endpoint = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let mut server = TestServer::start_with(&backend, |c| {
        c.storage.endpoint = Some(dead_endpoint);
        c.storage.access_key = Some("nobody".to_owned());
        c.storage.secret_key = Some("nothing-here".to_owned());
    })
    .await;
    let admin = admin_token(&server).await;
    let token = server.miner_token("rig").await;
    let mut agent = AgentProcess::spawn(&server, &token, &[]).await;
    server.wait_slots(1).await;
    let client = server.client();
    let ids = join_all((0..10).map(|i| {
        let client = client.clone();
        async move {
            client
                .submit_ok(
                    "synthetic-echo",
                    json!({ "output_bytes": 100 + i, "seed": i }),
                )
                .await
        }
    }))
    .await;
    for id in &ids {
        let job = client.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(
            job["status"], "completed",
            "jobs complete while S3 is down: {job}"
        );
    }
    let status = server
        .wait_status("30 spooled objects", |s| {
            s["storage"]["spool"]["objects"] == 30
        })
        .await;
    assert!(status["storage"]["spool"]["bytes"].as_u64().expect("bytes") > 0);
    // Spooled objects are readable already (the reviewer need not wait for S3).
    assert_eq!(objects_of(&server, &admin, &ids[0]).await.len(), 3);
    // Alive, but not ready: a load balancer should route around it.
    let (code, ready) = readyz(&server).await;
    assert_eq!((code, &ready["ready"]), (503, &json!(false)), "{ready}");
    assert_eq!(ready["database"], "ok");
    assert_ne!(ready["storage"], "ok", "{ready}");

    // Restart with S3 back: the spool survives and drains.
    agent.kill().await;
    server.stop().await;
    store.apply(&mut server.config);
    server.restart().await;
    server
        .wait_status("the spool to drain", |s| {
            s["storage"]["spool"]["objects"] == 0
        })
        .await;
    let (code, ready) = readyz(&server).await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(
        (&ready["database"], &ready["storage"], &ready["draining"]),
        (&json!("ok"), &json!("ok"), &json!(false))
    );
    for id in &ids {
        let objects = objects_of(&server, &admin, id).await;
        assert_eq!(
            names(&objects),
            ["input.json", "meta.json", "output.json"],
            "{id}"
        );
    }
}

/// Runs `$scenario(backend, store)` on SQLite and PostgreSQL, each with the embedded S3 server
/// and, when configured, an external one.
macro_rules! on_every_store {
    ($scenario:ident) => {
        mod $scenario {
            use infermine_tests::{Backend, ObjectStore};

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_embedded() {
                super::$scenario(Backend::Sqlite, ObjectStore::Embedded).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_external() {
                if let Some(store) = ObjectStore::external() {
                    super::$scenario(Backend::Sqlite, store).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_embedded() {
                if let Some(backend) = Backend::postgres().await {
                    super::$scenario(backend, ObjectStore::Embedded).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_external() {
                if let (Some(store), Some(backend)) =
                    (ObjectStore::external(), Backend::postgres().await)
                {
                    super::$scenario(backend, store).await;
                }
            }
        }
    };
}

on_every_store!(synthetic_job_objects);
on_every_store!(image_uploaded_to_a_presigned_url);
on_every_store!(an_outage_loses_nothing);
