//! Storage against real servers: the embedded one always, and the external S3-compatible server
//! named by `INFERMINE_TEST_S3_ENDPOINT` (with `INFERMINE_TEST_S3_ACCESS_KEY` and
//! `INFERMINE_TEST_S3_SECRET_KEY`; `scripts/s3-test.sh` starts one) when it is set, each test
//! in a bucket of its own there.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::Instant;

use uuid::Uuid;

use super::*;
use crate::config::{Config, Overrides};

mod spool;

/// An S3 server a test runs against.
#[derive(Debug, Clone)]
enum Target {
    Embedded,
    External {
        endpoint: String,
        access_key: String,
        secret_key: String,
    },
}

impl Target {
    /// The embedded server, plus the external one when configured (with a note when not).
    fn all() -> Vec<Target> {
        let mut targets = vec![Target::Embedded];
        let Ok(endpoint) = std::env::var("INFERMINE_TEST_S3_ENDPOINT") else {
            eprintln!(
                "INFERMINE_TEST_S3_ENDPOINT is not set: skipping the external S3 run (start a server with scripts/s3-test.sh)"
            );
            return targets;
        };
        let var = |name: &str| {
            std::env::var(name)
                .unwrap_or_else(|_| panic!("{name} must be set with INFERMINE_TEST_S3_ENDPOINT"))
        };
        targets.push(Target::External {
            endpoint,
            access_key: var("INFERMINE_TEST_S3_ACCESS_KEY"),
            secret_key: var("INFERMINE_TEST_S3_SECRET_KEY"),
        });
        targets
    }

    fn name(&self) -> &'static str {
        match self {
            Target::Embedded => "embedded",
            Target::External { .. } => "external",
        }
    }

    /// Settings reaching this target; on the external server, a fresh bucket.
    fn config(&self) -> StorageConfig {
        match self {
            Target::Embedded => fast(),
            Target::External {
                endpoint,
                access_key,
                secret_key,
            } => StorageConfig {
                endpoint: Some(endpoint.clone()),
                access_key: Some(access_key.clone()),
                secret_key: Some(secret_key.clone()),
                bucket: format!("im-test-{}", Uuid::now_v7().simple()),
                ..fast()
            },
        }
    }
}

/// Defaults with short timeouts and retries, so outages resolve within a test.
fn fast() -> StorageConfig {
    StorageConfig {
        request_timeout_ms: 2_000,
        retry_max_ms: 200,
        ..StorageConfig::default()
    }
}

fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A loopback address nothing listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// Settings for an external server at `addr`, with fixed keys.
fn pointing_at(addr: SocketAddr) -> StorageConfig {
    StorageConfig {
        endpoint: Some(format!("http://{addr}")),
        access_key: Some("outage-test".into()),
        secret_key: Some("outage-test-secret".into()),
        ..fast()
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn open(config: &StorageConfig, dir: &Path) -> Storage {
    Storage::open(config, dir).await.expect("open storage")
}

async fn with_each_target<F, Fut>(test: F)
where
    F: Fn(Target) -> Fut,
    Fut: Future<Output = ()>,
{
    init();
    for target in Target::all() {
        eprintln!("-- against the {} server", target.name());
        test(target).await;
    }
}

fn sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[tokio::test]
async fn put_get_head_round_trip_and_missing_keys_are_none() {
    with_each_target(|target| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&target.config(), dir.path()).await;
        let body: Bytes = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let key = job_key(1_735_689_600_000, Uuid::now_v7(), "out.bin");
        let stored = storage
            .put(&key, body.clone(), "application/octet-stream")
            .await
            .expect("put");
        let expected = StoredObject {
            key: key.clone(),
            size_bytes: 100_000,
            sha256: sha256_hex(&body),
            spooled: false,
        };
        assert_eq!(stored, expected, "{target:?}");
        assert_eq!(storage.get(&key).await.expect("get"), Some(body));
        assert_eq!(storage.head(&key).await.expect("head"), Some(100_000));

        storage
            .put(&key, Bytes::from_static(b"second"), "text/plain")
            .await
            .expect("overwrite");
        assert_eq!(
            storage.get(&key).await.expect("get"),
            Some(Bytes::from_static(b"second"))
        );

        let odd = "jobs/odd/a-b_c.d~e=f!g*h'i(j)k@l,m";
        storage
            .put(odd, Bytes::from_static(b"odd"), "text/plain; charset=utf-8")
            .await
            .expect("put with every allowed character");
        assert_eq!(
            storage.get(odd).await.expect("get"),
            Some(Bytes::from_static(b"odd"))
        );
        assert_eq!(storage.get("jobs/missing").await.expect("get"), None);
        assert_eq!(storage.head("jobs/missing").await.expect("head"), None);
        assert_eq!(storage.spool(), SpoolStats::default());
        storage.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn presigned_put_uploads_without_credentials_until_it_expires() {
    with_each_target(|target| async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = open(&target.config(), dir.path()).await;
        let http = reqwest::Client::new();
        let put = |url: String, body: &'static str| {
            let request = http.put(url).body(body);
            async move { request.send().await.expect("send PUT").status().as_u16() }
        };

        let key = "jobs/presigned/out.png";
        let url = storage
            .presign_put(key, Duration::from_secs(60))
            .expect("presign");
        assert!(url.starts_with(storage.endpoint()), "{url}");
        assert_eq!(put(url.clone(), "png bytes").await, 200);
        assert_eq!(
            storage.get(key).await.expect("get"),
            Some(Bytes::from_static(b"png bytes"))
        );

        let other_key = url.replacen("out.png", "evil.png", 1);
        assert_eq!(put(other_key, "evil").await, 403);
        assert_eq!(
            storage.get("jobs/presigned/evil.png").await.expect("get"),
            None
        );
        let longer = url.replacen("X-Amz-Expires=60", "X-Amz-Expires=600", 1);
        assert_ne!(longer, url);
        assert_eq!(put(longer, "evil").await, 403);

        let late = "jobs/presigned/late.png";
        let short = storage
            .presign_put(late, Duration::from_secs(1))
            .expect("presign");
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        // Refused: 403 from AWS and s3s, 400 from Garage.
        let status = put(short, "late").await;
        assert!(matches!(status, 400 | 403), "an expired URL got {status}");
        assert_eq!(storage.get(late).await.expect("get"), None);

        for bad in [Duration::ZERO, Duration::from_secs(8 * 24 * 3600)] {
            let err = storage.presign_put(key, bad).expect_err("bad lifetime");
            assert!(
                err.to_string().contains("between 1 second and 7 days"),
                "{err}"
            );
        }
        storage.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn the_embedded_server_keeps_objects_and_its_key_pair_across_restarts() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&fast(), dir.path()).await;
    assert!(storage.endpoint().starts_with("http://127.0.0.1:"));
    storage
        .put("jobs/kept", Bytes::from_static(b"kept"), "text/plain")
        .await
        .expect("put");
    storage.shutdown().await;
    let endpoint = storage.endpoint().to_owned();
    let refused = reqwest::Client::new().get(&endpoint).send().await;
    assert!(refused.is_err(), "the server stops on shutdown");

    let credentials = dir.path().join("s3.credentials");
    let text = std::fs::read_to_string(&credentials).expect("credentials file");
    assert!(text.contains("access_key") && text.contains("secret_key"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&credentials)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let again = open(&fast(), dir.path()).await;
    assert_eq!(
        again.get("jobs/kept").await.expect("get"),
        Some(Bytes::from_static(b"kept"))
    );
    assert_eq!(std::fs::read_to_string(&credentials).expect("read"), text);
    again.shutdown().await;
}

#[tokio::test]
async fn wrong_credentials_fail_at_open_and_secret_files_are_read() {
    init();
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded_with_known_keys = StorageConfig {
        endpoint: None,
        ..pointing_at(dead_addr())
    };
    let s3 = open(&embedded_with_known_keys, &dir.path().join("s3")).await;
    for (access_key, secret_key) in [("nobody", "outage-test-secret"), ("outage-test", "wrong")] {
        let config = StorageConfig {
            endpoint: Some(s3.endpoint().to_owned()),
            access_key: Some(access_key.into()),
            secret_key: Some(secret_key.into()),
            ..fast()
        };
        let err = Storage::open(&config, &dir.path().join("client"))
            .await
            .expect_err("bad keys");
        assert!(matches!(err, StorageError::Credentials { .. }), "{err}");
        assert!(err.to_string().contains("storage.access_key"), "{err}");
    }

    let secret_file = dir.path().join("s3.secret");
    std::fs::write(&secret_file, "outage-test-secret\n").expect("write");
    let from_file = StorageConfig {
        endpoint: Some(s3.endpoint().to_owned()),
        access_key: Some("outage-test".into()),
        secret_key_file: Some(secret_file),
        ..fast()
    };
    let client = open(&from_file, &dir.path().join("client")).await;
    let stored = client
        .put("jobs/from-file", Bytes::from_static(b"ok"), "text/plain")
        .await
        .expect("put");
    assert!(!stored.spooled);
    client.shutdown().await;
    s3.shutdown().await;
}

#[tokio::test]
async fn keys_that_could_escape_or_be_mangled_are_refused() {
    init();
    let long = "a".repeat(1025);
    let cases = [
        ("", "empty"),
        ("/etc/passwd", "starts with '/'"),
        ("..", "'..'"),
        ("jobs/../../etc", "'..'"),
        ("jobs/./x", "'.'"),
        ("jobs//x", "empty segment"),
        ("jobs/x/", "empty segment"),
        ("jobs/a b", "space"),
        ("jobs/a\nb", "control"),
        ("jobs/é", "non-ASCII"),
        ("jobs\\x", "use only"),
        ("jobs/x?y", "use only"),
        ("jobs/x#y", "use only"),
        ("jobs/%2e%2e", "use only"),
        (long.as_str(), "longer than 1024"),
    ];
    for (key, reason) in cases {
        let err = validate_key(key).expect_err(key);
        assert!(matches!(err, StorageError::InvalidKey { .. }), "{err}");
        assert!(err.to_string().contains(reason), "{key:?}: {err}");
    }
    validate_key(&job_key(0, Uuid::nil(), "out.png")).expect("job keys are valid");

    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open(&fast(), dir.path()).await;
    let body = Bytes::from_static(b"x");
    let refused = [
        storage
            .put("../x", body.clone(), "text/plain")
            .await
            .map(drop),
        storage.get("../x").await.map(drop),
        storage.head("../x").await.map(drop),
        storage
            .presign_put("../x", Duration::from_secs(60))
            .map(drop),
    ];
    for result in refused {
        assert!(
            matches!(result, Err(StorageError::InvalidKey { .. })),
            "{result:?}"
        );
    }
    let err = storage
        .put("jobs/x", body, "text/plain\r\nx-evil: 1")
        .await
        .expect_err("content type");
    assert!(err.to_string().contains("invalid content type"), "{err}");
    storage.shutdown().await;
}

#[test]
fn job_keys_are_filed_by_utc_creation_day() {
    let job = Uuid::nil();
    assert_eq!(
        job_key(1_735_689_599_999, job, "out.png"),
        format!("jobs/2024/12/31/{job}/out.png")
    );
    assert_eq!(
        job_key(1_735_689_600_000, job, "out.png"),
        format!("jobs/2025/01/01/{job}/out.png")
    );
    assert_eq!(
        job_key(i64::MAX, job, "x"),
        format!("jobs/1970/01/01/{job}/x")
    );
}

#[test]
fn storage_settings_are_checked_with_clear_messages() {
    StorageConfig::default()
        .validate()
        .expect("defaults are valid");
    let keys = StorageConfig {
        access_key: Some("key".into()),
        secret_key: Some("secret".into()),
        ..StorageConfig::default()
    };
    let cases = [
        (
            StorageConfig {
                endpoint: Some("ftp://s3".into()),
                ..keys.clone()
            },
            "storage.endpoint \"ftp://s3\" must start with http:// or https://",
        ),
        (
            StorageConfig {
                endpoint: Some("http://s3:9000/bucket".into()),
                ..keys.clone()
            },
            "must have no path",
        ),
        (
            StorageConfig {
                public_endpoint: Some("not a url".into()),
                ..keys.clone()
            },
            "storage.public_endpoint",
        ),
        (
            StorageConfig {
                endpoint: Some("http://s3:9000".into()),
                ..StorageConfig::default()
            },
            "storage.endpoint needs storage.access_key",
        ),
        (
            StorageConfig {
                secret_key: None,
                ..keys.clone()
            },
            "storage.access_key needs storage.secret_key",
        ),
        (
            StorageConfig {
                access_key: None,
                ..keys.clone()
            },
            "storage.secret_key needs storage.access_key",
        ),
        (
            StorageConfig {
                secret_key_file: Some("/run/secrets/s3".into()),
                ..keys.clone()
            },
            "not both",
        ),
        (
            StorageConfig {
                bucket: "Results_2025".into(),
                ..StorageConfig::default()
            },
            "storage.bucket \"Results_2025\" is not a valid bucket name",
        ),
        (
            StorageConfig {
                bucket: "ab".into(),
                ..StorageConfig::default()
            },
            "storage.bucket",
        ),
        (
            StorageConfig {
                region: String::new(),
                ..StorageConfig::default()
            },
            "storage.region",
        ),
        (
            StorageConfig {
                request_timeout_ms: 0,
                ..StorageConfig::default()
            },
            "storage.request_timeout_ms",
        ),
        (
            StorageConfig {
                retry_max_ms: 0,
                ..StorageConfig::default()
            },
            "storage.retry_max_ms",
        ),
    ];
    for (config, message) in cases {
        let err = config.validate().expect_err(message);
        assert!(err.contains(message), "{err}");
    }
    assert!(!format!("{keys:?}").contains("secret\""), "{keys:?}");
}

#[test]
fn the_storage_table_is_read_from_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("infermine.toml");
    std::fs::write(
        &path,
        "[storage]\nendpoint = \"https://s3.example.com\"\nregion = \"auto\"\nbucket = \"results\"\naccess_key = \"AK\"\nsecret_key_file = \"/run/secrets/s3\"\n",
    )
    .expect("write");
    let config = Config::load(Some(&path), &Overrides::default()).expect("valid");
    assert_eq!(
        config.storage.endpoint.as_deref(),
        Some("https://s3.example.com")
    );
    assert_eq!(config.storage.region, "auto");
    assert_eq!(config.storage.bucket, "results");
    assert_eq!(config.storage.request_timeout_ms, 5_000);

    std::fs::write(&path, "[storage]\nendpont = \"https://s3.example.com\"\n").expect("write");
    let err = Config::load(Some(&path), &Overrides::default()).expect_err("unknown key");
    assert!(err.to_string().contains("endpont"), "{err}");

    std::fs::write(&path, "[storage]\nbucket = \"No\"\n").expect("write");
    let err = Config::load(Some(&path), &Overrides::default()).expect_err("bad bucket");
    assert!(err.to_string().contains("storage.bucket"), "{err}");
}
