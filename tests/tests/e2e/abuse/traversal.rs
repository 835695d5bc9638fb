//! Path traversal wherever a request names an object, a key or a file: the admin object routes,
//! image links, presigned upload URLs, the embedded S3 server, the portal's static files and
//! the model routes. `../`, its URL-encodings (single and double) and absolute paths are
//! refused (403, 404 or 400); no byte of what lies outside is served, nothing is written.

use std::path::Path;

use infermine_protocol::{DeviceKind, GpuInfo, Hello, ModelInfo, PROTOCOL_VERSION};
use infermine_tests::raw::RawAgent;
use infermine_tests::{Backend, TestServer};
use serde_json::json;

use super::{Tables, WAIT, admin_token, call, completed_job, next_job, raw_http, secret, server};
use crate::on_both_databases;

/// Ways to spell "climb out to the signing secret" or "an absolute path" in one path segment.
const CLIMBS: [&str; 9] = [
    "..%2F..%2F..%2Fjwt.secret",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fjwt.secret",
    "%2E%2E%2F%2E%2E%2Fjwt.secret",
    "..%5C..%5C..%5Cjwt.secret",
    "%252e%252e%252fjwt.secret",
    "%2Fetc%2Fpasswd",
    "input.json%2F..%2F..%2F..%2Fjwt.secret",
    "..",
    "%2e%2e",
];

/// Nothing of the secret (or of /etc/passwd) in a response.
fn leaks_nothing(server: &TestServer, what: &str, text: &str) {
    let secret = String::from_utf8(secret(server)).expect("hex");
    assert!(!text.contains(&secret), "{what} leaked the signing secret");
    assert!(!text.contains("root:"), "{what} leaked /etc/passwd: {text}");
}

async fn admin_object_names_climbing_out(backend: Backend) {
    let server = server(&backend).await;
    let id = completed_job(&server).await.1;
    let admin = admin_token(&server).await;
    let objects = format!("{}/api/v1/admin/jobs/{id}/objects", server.http());
    let genuine = call("GET", &format!("{objects}/input.json"), Some(&admin), None).await;
    assert_eq!(genuine.status, 200, "{}", genuine.text);
    for climb in CLIMBS {
        let reply = call("GET", &format!("{objects}/{climb}"), Some(&admin), None).await;
        assert_eq!(reply.status, 404, "{climb}: {}", reply.text);
        assert_eq!(reply.code(), "not_found", "{climb}");
        leaks_nothing(&server, climb, &reply.text);
    }
    // Dot segments as sent, not as a client would normalize them away.
    let raw = format!(
        "GET /api/v1/admin/jobs/{id}/objects/../../../../../jwt.secret HTTP/1.1\r\n\
         Host: abuse\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n"
    );
    let response = raw_http(&server, raw.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    leaks_nothing(&server, "raw dot segments", &response);
}
on_both_databases!(admin_object_names_climbing_out);

async fn admin_object_job_ids_climbing_out(backend: Backend) {
    let server = server(&backend).await;
    completed_job(&server).await;
    let admin = admin_token(&server).await;
    for climb in CLIMBS {
        let url = format!("{}/api/v1/admin/jobs/{climb}/objects", server.http());
        let reply = call("GET", &url, Some(&admin), None).await;
        assert!(
            reply.status == 400 || reply.status == 404,
            "{climb}: {} {}",
            reply.status,
            reply.text
        );
        if reply.status == 400 {
            assert!(reply.message().contains("not a job id"), "{}", reply.text);
        }
        leaks_nothing(&server, climb, &reply.text);
    }
}
on_both_databases!(admin_object_job_ids_climbing_out);

async fn image_link_names_climbing_out(backend: Backend) {
    let server = server(&backend).await;
    completed_job(&server).await;
    for climb in CLIMBS {
        for name in [climb.to_owned(), format!("{climb}.png")] {
            let url = format!(
                "{}/v1/images/{name}?expires=9999999999&sig=x",
                server.http()
            );
            let reply = call("GET", &url, None, None).await;
            assert_eq!(reply.status, 404, "{name}: {}", reply.text);
            leaks_nothing(&server, &name, &reply.text);
        }
    }
    let raw =
        "GET /v1/images/../../../jwt.secret HTTP/1.1\r\nHost: abuse\r\nConnection: close\r\n\r\n";
    let response = raw_http(&server, raw.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    leaks_nothing(&server, "raw dot segments", &response);
}
on_both_databases!(image_link_names_climbing_out);

/// An image job's presigned upload URL (it points at the embedded S3 server).
async fn upload_url(server: &TestServer) -> String {
    let token = server.miner_token("imagerig").await;
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "raw-test-agent".to_owned(),
        token,
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
    };
    let (mut agent, _) = RawAgent::join_with(&server.ws(), hello)
        .await
        .expect("join");
    let params = json!({ "prompt": "a fox", "width": 1024, "height": 1024, "steps": 20 });
    server.client().submit_ok("sdxl-base-1.0", params).await;
    next_job(&mut agent).await.upload_url.expect("upload URL")
}

/// Every file under `dir`, with its contents.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(files(&path));
        } else if !path.to_string_lossy().contains("infermine.db") {
            found.push((
                path.display().to_string(),
                std::fs::read(&path).unwrap_or_default(),
            ));
        }
    }
    found.sort();
    found
}

/// `host:port` and the path and query of a URL.
fn split_url(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("http://").expect("http URL");
    rest.split_at(rest.find('/').expect("path"))
}

async fn presigned_url_aimed_elsewhere(backend: Backend) {
    let server = server(&backend).await;
    let url = upload_url(&server).await;
    let before = files(server.data_dir());
    let http = reqwest::Client::new();
    for climb in CLIMBS {
        let forged = url.replace("/output.png?", &format!("/{climb}?"));
        assert_ne!(forged, url);
        let status = http
            .put(&forged)
            .body("pwned")
            .send()
            .await
            .expect("send")
            .status();
        assert!(
            status == 403 || status == 400,
            "{climb}: a re-aimed URL got {status}"
        );
    }
    let (host, path) = split_url(&url);
    let dots = path.replace("/output.png?", "/../../../../../jwt.secret?");
    let raw = format!(
        "PUT {dots} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nConnection: close\r\n\r\npwned"
    );
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, raw.as_bytes())
        .await
        .expect("write");
    let response = super::read_response(&mut stream, WAIT).await;
    assert!(
        response.starts_with("HTTP/1.1 403") || response.starts_with("HTTP/1.1 400"),
        "{response}"
    );
    assert_eq!(files(server.data_dir()), before, "nothing written");
    let tables = Tables::open(&server).await;
    assert_eq!(tables.count("job_objects").await, 0);
}
on_both_databases!(presigned_url_aimed_elsewhere);

/// Requests straight to the embedded S3 server without a signature, climbing out of the
/// bucket: refused, nothing served or written.
async fn unsigned_object_store_requests(backend: Backend) {
    let server = server(&backend).await;
    let url = upload_url(&server).await;
    let (host, path) = split_url(&url);
    let bucket = path.split('/').nth(1).expect("bucket");
    let before = files(server.data_dir());
    let http = reqwest::Client::new();
    for climb in CLIMBS {
        let target = format!("http://{host}/{bucket}/{climb}");
        // 403 (no signature); a path a client normalizes to the bucket itself may get 501 for
        // an operation the store does not do. Never a success.
        let get = http.get(&target).send().await.expect("send");
        assert!(
            [403, 501].contains(&get.status().as_u16()),
            "GET {target}: {}",
            get.status()
        );
        leaks_nothing(&server, &target, &get.text().await.expect("body"));
        let put = http.put(&target).body("pwned").send().await.expect("send");
        assert!(
            [403, 501].contains(&put.status().as_u16()),
            "PUT {target}: {}",
            put.status()
        );
    }
    for dots in ["/../../jwt.secret", &format!("/{bucket}/../../jwt.secret")] {
        let raw = format!("GET {dots} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut stream, raw.as_bytes())
            .await
            .expect("write");
        let response = super::read_response(&mut stream, WAIT).await;
        assert!(
            response.starts_with("HTTP/1.1 403") || response.starts_with("HTTP/1.1 400"),
            "{dots}: {response}"
        );
        leaks_nothing(&server, dots, &response);
    }
    assert_eq!(files(server.data_dir()), before, "nothing written");
}
on_both_databases!(unsigned_object_store_requests);

/// The portal's files come from `web-portal/dist`; nothing above it is served, the workspace's
/// Cargo.toml two levels up included.
async fn portal_files_climbing_out(backend: Backend) {
    let server = server(&backend).await;
    let data_dir = server.data_dir().display().to_string();
    let absolute = format!("/{}/jwt.secret", data_dir.trim_start_matches('/')).replace('/', "%2F");
    let paths = [
        "/../../Cargo.toml".to_owned(),
        "/%2e%2e/%2e%2e/Cargo.toml".to_owned(),
        "/..%2f..%2fCargo.toml".to_owned(),
        "/assets/../../../Cargo.toml".to_owned(),
        "/assets/..%2f..%2f..%2fCargo.toml".to_owned(),
        "/%252e%252e/%252e%252e/Cargo.toml".to_owned(),
        "//etc/passwd".to_owned(),
        "/%2Fetc%2Fpasswd".to_owned(),
        format!("/{absolute}"),
        format!("/..{data_dir}/jwt.secret"),
    ];
    for path in paths {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: abuse\r\nConnection: close\r\n\r\n");
        let response = raw_http(&server, raw.as_bytes()).await;
        let status = response.get(9..12).unwrap_or_default();
        assert!(
            ["200", "400", "404", "503"].contains(&status),
            "{path}: {response}"
        );
        assert!(
            !response.contains("[workspace]"),
            "{path} served Cargo.toml"
        );
        leaks_nothing(&server, &path, &response);
    }
}
on_both_databases!(portal_files_climbing_out);

async fn model_ids_climbing_out(backend: Backend) {
    let server = server(&backend).await;
    for climb in CLIMBS {
        for path in [
            format!("/v1/models/{climb}"),
            format!("/v1/models/{climb}/files"),
        ] {
            let reply = call("GET", &format!("{}{path}", server.http()), None, None).await;
            assert_eq!(reply.status, 404, "{path}: {}", reply.text);
            leaks_nothing(&server, &path, &reply.text);
        }
    }
}
on_both_databases!(model_ids_climbing_out);
