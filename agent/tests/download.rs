//! `models pull` against a real HTTP server on loopback (axum with tower-http's `ServeDir`,
//! which answers `Range` requests): fresh downloads, a resumed `.part` file, files already
//! present, a corrupt partial download, too little disk space, a file without a URL, and a
//! connection that drops halfway (a route that stops sending: the one fault a real server
//! does not produce on demand).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use infermine_agent::download::{DownloadError, Fetched, pull};
use infermine_agent::models::{Manifest, ManifestFile, fetch_manifest};
use sha2::{Digest, Sha256};

/// Range headers the server saw, per path.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct Server {
    addr: SocketAddr,
    seen: Seen,
    _files: tempfile::TempDir,
    _runtime: std::thread::JoinHandle<()>,
}

fn content(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

const BIG: usize = 3 << 20;
const SMALL: usize = 1000;

/// Serves `files/` (two files) and `/flaky.bin`, which sends half of its body and then drops
/// the connection unless asked for a range; records every request's `Range` header.
fn serve() -> Server {
    let files = tempfile::tempdir().expect("tempdir");
    std::fs::write(files.path().join("weights.bin"), content(BIG, 1)).expect("write");
    std::fs::create_dir_all(files.path().join("unet")).expect("mkdir");
    std::fs::write(files.path().join("unet/config.json"), content(SMALL, 2)).expect("write");
    let seen: Seen = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = files.path().to_owned();
    let record = Arc::clone(&seen);
    let runtime = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            let app = Router::new()
                .route("/flaky.bin", get(flaky))
                .nest_service("/files", tower_http::services::ServeDir::new(dir))
                .layer(middleware::from_fn_with_state(record, remember));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    Server {
        addr: rx.recv().expect("address"),
        seen,
        _files: files,
        _runtime: runtime,
    }
}

async fn remember(State(seen): State<Seen>, request: Request, next: Next) -> Response {
    let range = request
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.lock()
        .expect("lock")
        .push((request.uri().path().to_owned(), range));
    next.run(request).await
}

async fn flaky(headers: HeaderMap) -> Response {
    let data = content(BIG, 3);
    let from = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    match from {
        Some(from) => (
            StatusCode::PARTIAL_CONTENT,
            [(
                header::CONTENT_RANGE,
                format!("bytes {from}-{}/{BIG}", BIG - 1),
            )],
            data[from..].to_vec(),
        )
            .into_response(),
        None => {
            // Promise the whole file, send half, then fail the body: the connection drops.
            let half = data[..BIG / 2].to_vec();
            let stream = futures_util::stream::iter([
                Ok::<_, std::io::Error>(half),
                Err(std::io::Error::other("connection dropped")),
            ]);
            Response::builder()
                .header(header::CONTENT_LENGTH, BIG)
                .body(Body::from_stream(stream))
                .expect("response")
        }
    }
}

fn pinned(server: &Server, name: &str, url_path: &str, data: &[u8]) -> ManifestFile {
    ManifestFile {
        name: name.to_owned(),
        url: Some(format!("http://{}{url_path}", server.addr)),
        size_bytes: Some(data.len() as u64),
        sha256: Some(hex::encode(Sha256::digest(data))),
    }
}

fn manifest(files: Vec<ManifestFile>) -> Manifest {
    Manifest {
        model: "test-model".to_owned(),
        files,
    }
}

fn ranges(server: &Server, path: &str) -> Vec<Option<String>> {
    server
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, r)| r.clone())
        .collect()
}

fn part(path: &Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".part");
    name.into()
}

#[test]
fn downloads_resume_and_are_checked() {
    let server = serve();
    let out = tempfile::tempdir().expect("out");
    let dir = out.path().join("test-model");
    let big = content(BIG, 1);
    let small = content(SMALL, 2);
    let files = manifest(vec![
        pinned(&server, "weights.bin", "/files/weights.bin", &big),
        pinned(
            &server,
            "unet/config.json",
            "/files/unet/config.json",
            &small,
        ),
    ]);

    // An earlier run stopped after 40% of the weights.
    std::fs::create_dir_all(&dir).expect("mkdir");
    let had = BIG * 2 / 5;
    std::fs::write(part(&dir.join("weights.bin")), &big[..had]).expect("write part");

    let outcome = pull(&dir, &files).expect("pull");
    assert_eq!(
        outcome,
        [
            (
                "weights.bin".to_owned(),
                Fetched::Downloaded {
                    resumed_from: had as u64
                }
            ),
            (
                "unet/config.json".to_owned(),
                Fetched::Downloaded { resumed_from: 0 }
            ),
        ]
    );
    assert_eq!(
        ranges(&server, "/files/weights.bin"),
        [Some(format!("bytes={had}-"))],
        "only the missing bytes were asked for"
    );
    assert_eq!(std::fs::read(dir.join("weights.bin")).expect("read"), big);
    assert_eq!(
        std::fs::read(dir.join("unet/config.json")).expect("read"),
        small
    );
    assert!(!part(&dir.join("weights.bin")).exists());

    // Again: everything is present and verified, nothing is fetched.
    let requests = server.seen.lock().expect("lock").len();
    let again = pull(&dir, &files).expect("pull again");
    assert!(
        again.iter().all(|(_, f)| *f == Fetched::Present),
        "{again:?}"
    );
    assert_eq!(server.seen.lock().expect("lock").len(), requests);
}

#[test]
fn a_dropped_connection_is_resumed_where_it_stopped() {
    let server = serve();
    let out = tempfile::tempdir().expect("out");
    let dir = out.path().join("test-model");
    let data = content(BIG, 3);
    let files = manifest(vec![pinned(&server, "flaky.bin", "/flaky.bin", &data)]);
    let outcome = pull(&dir, &files).expect("pull");
    assert_eq!(outcome.len(), 1);
    let seen = ranges(&server, "/flaky.bin");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], None);
    let resumed_at: usize = seen[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .expect("a Range request");
    assert!(resumed_at > 0 && resumed_at <= BIG / 2, "{resumed_at}");
    assert_eq!(std::fs::read(dir.join("flaky.bin")).expect("read"), data);
}

#[test]
fn bad_downloads_and_bad_manifests_are_refused_with_the_fix() {
    let server = serve();
    let out = tempfile::tempdir().expect("out");
    let dir = out.path().join("test-model");
    let big = content(BIG, 1);

    // A partial file of the right length but the wrong bytes: the hash catches it, the part
    // is removed, and the next run downloads afresh.
    let files = manifest(vec![pinned(
        &server,
        "weights.bin",
        "/files/weights.bin",
        &big,
    )]);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(part(&dir.join("weights.bin")), vec![0u8; BIG]).expect("write");
    let err = pull(&dir, &files).expect_err("corrupt");
    assert!(matches!(err, DownloadError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("run again"), "{err}");
    assert!(!part(&dir.join("weights.bin")).exists());
    pull(&dir, &files).expect("the next run downloads it");
    assert_eq!(std::fs::read(dir.join("weights.bin")).expect("read"), big);

    // More than the disk holds: refused before any request.
    let requests = server.seen.lock().expect("lock").len();
    let mut huge = pinned(&server, "huge.bin", "/files/weights.bin", &big);
    huge.size_bytes = Some(1 << 60);
    let err = pull(&dir, &manifest(vec![huge])).expect_err("no space");
    assert!(matches!(err, DownloadError::DiskSpace { .. }), "{err}");
    assert!(err.to_string().contains("free some space"), "{err}");
    assert_eq!(server.seen.lock().expect("lock").len(), requests);

    // A file the registry gives no URL for, and one it does not pin.
    let mut no_url = pinned(&server, "tokenizer.json", "/x", b"{}");
    no_url.url = None;
    let err = pull(&dir, &manifest(vec![no_url])).expect_err("no url");
    assert!(
        err.to_string().contains("no URL for tokenizer.json"),
        "{err}"
    );
    let mut unpinned = pinned(&server, "extra.bin", "/files/weights.bin", &big);
    unpinned.sha256 = None;
    let err = pull(&dir, &manifest(vec![unpinned])).expect_err("unpinned");
    assert!(matches!(err, DownloadError::Unpinned { .. }), "{err}");

    // A coordinator that is not there: the manifest fetch says so.
    let err = fetch_manifest("ws://127.0.0.1:9", "tiny-llama").expect_err("nobody");
    assert!(err.to_string().contains("reachable"), "{err}");
}
