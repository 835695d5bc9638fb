//! Object storage: every object the coordinator keeps (job inputs and outputs) lives in one S3
//! bucket, reached through one code path, the `rust-s3` client ([`remote`]).
//!
//! - With no endpoint configured, [`Storage::open`] starts an [`embedded`] S3-compatible server
//!   (s3s over `DATA_DIR/objects`) on a loopback port and talks to it over HTTP like to any other
//!   server; with an endpoint it uses that one (AWS, R2, MinIO, Garage). Either way the bucket
//!   is created when missing.
//! - [`Storage::put`] never loses an object to an S3 outage: when S3 fails, the object is written
//!   durably to the [`spool`] and the [`drain`]er uploads it later, oldest first. While S3 is
//!   failing, or older objects still wait in the spool, puts go straight to the spool: a circuit
//!   breaker that spares each put a timeout and keeps the writes of one key in order.
//! - Agents upload results to presigned PUT URLs ([`Storage::presign_put`]), without credentials.

mod drain;
mod embedded;
mod keys;
mod remote;
mod spool;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use keys::{job_key, validate_key};

use self::embedded::Embedded;
use self::remote::{Remote, RemoteError};
use self::spool::Spool;

/// Where objects are stored (`[storage]` in the config file; `INFERMINE_STORAGE_ENDPOINT`,
/// `…_REGION`, `…_BUCKET`, `…_ACCESS_KEY`, `…_SECRET_KEY` and `…_SECRET_KEY_FILE` override the
/// file). With no `endpoint`, an embedded server keeps objects under `DATA_DIR/objects`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// URL of an external S3-compatible server, e.g. `https://s3.eu-west-1.amazonaws.com`,
    /// `https://ACCOUNT.r2.cloudflarestorage.com` or `http://minio:9000`. Requests are
    /// path-style. Unset: the embedded server.
    pub endpoint: Option<String>,
    /// URL agents reach the same server at, used in presigned URLs (e.g. a reverse proxy in
    /// front of the embedded server that keeps the `Host` header); defaults to the endpoint.
    pub public_endpoint: Option<String>,
    /// Region requests are signed for (`auto` on R2, `garage` on a default Garage).
    pub region: String,
    /// Bucket holding every object; created when missing.
    pub bucket: String,
    /// Access key. Required with `endpoint`; for the embedded server, a key pair is generated
    /// once into `DATA_DIR/s3.credentials` when unset.
    pub access_key: Option<String>,
    /// Secret key matching `access_key`. Prefer `secret_key_file`.
    pub secret_key: Option<String>,
    /// File holding the secret key.
    pub secret_key_file: Option<PathBuf>,
    /// Address the embedded server listens on; port 0 picks a free one.
    pub embedded_listen: SocketAddr,
    /// Directory the embedded server keeps objects in; defaults to `DATA_DIR/objects`.
    pub objects_dir: Option<PathBuf>,
    /// Directory of objects waiting for S3 to come back; defaults to `DATA_DIR/spool`.
    pub spool_dir: Option<PathBuf>,
    /// Time limit of every S3 request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Longest pause between two attempts to upload spooled objects, in milliseconds.
    pub retry_max_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            public_endpoint: None,
            region: "us-east-1".to_owned(),
            bucket: "infermine".to_owned(),
            access_key: None,
            secret_key: None,
            secret_key_file: None,
            embedded_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            objects_dir: None,
            spool_dir: None,
            request_timeout_ms: 5_000,
            retry_max_ms: 30_000,
        }
    }
}

/// Keeps the secret key out of logs and panic messages.
impl fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorageConfig")
            .field("endpoint", &self.endpoint)
            .field("public_endpoint", &self.public_endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "***"))
            .field("secret_key_file", &self.secret_key_file)
            .field("embedded_listen", &self.embedded_listen)
            .field("objects_dir", &self.objects_dir)
            .field("spool_dir", &self.spool_dir)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("retry_max_ms", &self.retry_max_ms)
            .finish()
    }
}

impl StorageConfig {
    /// Checks the settings; the message names the offending `storage.*` key.
    pub fn validate(&self) -> Result<(), String> {
        for (name, url) in [
            ("endpoint", &self.endpoint),
            ("public_endpoint", &self.public_endpoint),
        ] {
            if let Some(url) = url {
                check_endpoint(url).map_err(|why| format!("storage.{name} {url:?} {why}"))?;
            }
        }
        if self.region.is_empty() || !self.region.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("storage.region must be a region name such as us-east-1 or auto".into());
        }
        check_bucket(&self.bucket)?;
        if self.secret_key.is_some() && self.secret_key_file.is_some() {
            return Err("set storage.secret_key or storage.secret_key_file, not both".into());
        }
        let has_secret = self.secret_key.is_some() || self.secret_key_file.is_some();
        match (&self.access_key, has_secret) {
            (Some(key), _) if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err("storage.access_key must be printable ASCII without spaces".into());
            }
            (Some(_), false) => {
                return Err(
                    "storage.access_key needs storage.secret_key or storage.secret_key_file".into(),
                );
            }
            (None, true) => {
                return Err("storage.secret_key needs storage.access_key".into());
            }
            (None, false) if self.endpoint.is_some() => {
                return Err(
                    "storage.endpoint needs storage.access_key and storage.secret_key (or secret_key_file)"
                        .into(),
                );
            }
            _ => {}
        }
        if !(100..=600_000).contains(&self.request_timeout_ms) {
            return Err("storage.request_timeout_ms must be between 100 and 600000".into());
        }
        if !(10..=3_600_000).contains(&self.retry_max_ms) {
            return Err("storage.retry_max_ms must be between 10 and 3600000".into());
        }
        Ok(())
    }

    /// The configured key pair, reading the secret from its file; `None` when unset.
    async fn credentials(&self) -> Result<Option<(String, String)>, StorageError> {
        let Some(access_key) = &self.access_key else {
            return Ok(None);
        };
        let secret = match (&self.secret_key, &self.secret_key_file) {
            (Some(secret), _) => secret.trim().to_owned(),
            (None, Some(path)) => tokio::fs::read_to_string(path)
                .await
                .map_err(|source| StorageError::Io {
                    action: "cannot read storage.secret_key_file",
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(StorageError::Config(
                    "storage.access_key needs storage.secret_key or storage.secret_key_file".into(),
                ));
            }
        };
        if secret.is_empty() {
            return Err(StorageError::Config(
                "the storage secret key is empty".into(),
            ));
        }
        Ok(Some((access_key.clone(), secret)))
    }
}

/// `http(s)://host[:port]`, nothing after the authority but an optional `/`.
fn check_endpoint(url: &str) -> Result<(), &'static str> {
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|_| "is not a URL; use http(s)://HOST[:PORT]")?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err("must start with http:// or https://");
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must have no path or query (requests are path-style: ENDPOINT/BUCKET/KEY)");
    }
    Ok(())
}

/// S3 bucket naming rules (3–63 of `a-z0-9.-`, alphanumeric at both ends).
fn check_bucket(bucket: &str) -> Result<(), String> {
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let bytes = bucket.as_bytes();
    if (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
    {
        Ok(())
    } else {
        Err(format!(
            "storage.bucket {bucket:?} is not a valid bucket name: use 3 to 63 of a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
        ))
    }
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error(
        "invalid content type {0:?}: use at most 255 printable ASCII characters, e.g. application/octet-stream"
    )]
    InvalidContentType(String),
    #[error("invalid presigned URL lifetime {0:?}: use between 1 second and 7 days")]
    InvalidExpiry(Duration),
    #[error("invalid storage setting: {0}")]
    Config(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} for the embedded S3 server: {source}; set storage.embedded_listen to a free address"
    )]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the embedded S3 server: {0}")]
    Embedded(String),
    #[error(
        "S3 at {endpoint} refused the credentials ({detail}); check storage.access_key and storage.secret_key"
    )]
    Credentials { endpoint: String, detail: String },
    #[error("S3 {op} of {key:?} failed: {detail}")]
    S3 {
        op: &'static str,
        key: String,
        detail: String,
    },
    #[error("spooled object {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("a storage task stopped unexpectedly: {0}")]
    Task(String),
}

/// What [`Storage::put`] stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredObject {
    pub key: String,
    pub size_bytes: u64,
    /// SHA-256 of the body, lowercase hex.
    pub sha256: String,
    /// True when S3 was failing and the object waits in the spool (it is readable all along).
    pub spooled: bool,
}

/// What waits in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
pub struct SpoolStats {
    pub objects: u64,
    pub bytes: u64,
    /// When the oldest waiting object was spooled, in Unix milliseconds.
    pub oldest_ms: Option<i64>,
}

/// The object store. Cheap to clone; [`Storage::shutdown`] stops its background work.
#[derive(Clone, Debug)]
pub struct Storage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    core: Arc<Core>,
    endpoint: String,
    /// Dropping it (with the last `Storage`) stops the drainer and the embedded server too.
    shutdown: watch::Sender<bool>,
    drainer: Mutex<Option<JoinHandle<()>>>,
    embedded: Mutex<Option<Embedded>>,
}

/// What `Storage` shares with its drainer.
#[derive(Debug)]
struct Core {
    remote: Remote,
    spool: Spool,
    /// Open while S3 is known to be failing: puts then go straight to the spool.
    breaker_open: AtomicBool,
    /// Whether the bucket is known to exist (a failed start-up check is retried by the drainer).
    bucket_ready: AtomicBool,
    /// Wakes the drainer when something is spooled.
    wake: Notify,
    retry_max: Duration,
}

impl Core {
    /// Closes the breaker (S3 took an object): puts go to S3 directly again.
    fn close_breaker(&self) {
        if self.breaker_open.swap(false, Ordering::AcqRel) {
            tracing::info!(
                endpoint = %self.remote.endpoint(),
                spooled = self.spool.stats().objects,
                "S3 is working again; new objects go to it directly while the spool drains"
            );
        }
    }

    /// Opens the breaker; logs once per outage, not once per object.
    fn trip(&self, error: &RemoteError) {
        if !self.breaker_open.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                endpoint = %self.remote.endpoint(),
                spool = %self.spool.dir().display(),
                error = %error,
                "S3 is failing; spooling objects until it recovers"
            );
        }
    }
}

impl Storage {
    /// Starts the embedded server when no endpoint is configured, connects, ensures the bucket
    /// and starts the spool drainer. An unreachable S3 is no error (objects are spooled until it
    /// comes back); refused credentials, an unusable directory or address are.
    pub async fn open(config: &StorageConfig, data_dir: &Path) -> Result<Storage, StorageError> {
        config.validate().map_err(StorageError::Config)?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (endpoint, (access_key, secret_key), embedded) =
            server(config, data_dir, shutdown_rx.clone()).await?;
        let public = config
            .public_endpoint
            .as_deref()
            .map(|url| url.trim_end_matches('/'));
        let remote = Remote::new(
            &endpoint,
            public,
            &config.region,
            &config.bucket,
            (access_key.as_str(), secret_key.as_str()),
            Duration::from_millis(config.request_timeout_ms),
        )?;
        let spool_dir = config
            .spool_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("spool"));
        let spool = Spool::open(spool_dir).await?;
        let core = Arc::new(Core {
            remote,
            spool,
            breaker_open: AtomicBool::new(false),
            bucket_ready: AtomicBool::new(false),
            wake: Notify::new(),
            retry_max: Duration::from_millis(config.retry_max_ms),
        });
        match core.remote.ensure_bucket().await {
            Ok(()) => core.bucket_ready.store(true, Ordering::Release),
            Err(e) if e.is_bad_credentials() => {
                return Err(StorageError::Credentials {
                    endpoint,
                    detail: e.to_string(),
                });
            }
            Err(e) => core.trip(&e),
        }
        let drainer = tokio::spawn(drain::run(Arc::clone(&core), shutdown_rx));
        let spooled = core.spool.stats();
        tracing::info!(
            endpoint = %endpoint,
            bucket = %config.bucket,
            embedded = embedded.is_some(),
            spooled = spooled.objects,
            "storage ready"
        );
        Ok(Storage {
            inner: Arc::new(Inner {
                core,
                endpoint,
                shutdown,
                drainer: Mutex::new(Some(drainer)),
                embedded: Mutex::new(embedded),
            }),
        })
    }

    /// Stores an object: uploads it to S3, or, when S3 is unreachable or errs, writes it durably
    /// to the spool and returns `Ok` with `spooled: true` (the drainer uploads it later).
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<StoredObject, StorageError> {
        validate_key(key)?;
        keys::validate_content_type(content_type)?;
        let hashed = body.clone();
        let sha256 = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&hashed)))
            .await
            .map_err(|e| StorageError::Task(e.to_string()))?;
        let core = &self.inner.core;
        let mut stored = StoredObject {
            key: key.to_owned(),
            size_bytes: body.len() as u64,
            sha256,
            spooled: false,
        };
        // A key with an older write still spooled goes to the spool too, behind it, so the key
        // ends with its newest body; other keys go straight to S3 while the backlog drains.
        let direct = !core.breaker_open.load(Ordering::Acquire)
            && core.bucket_ready.load(Ordering::Acquire)
            && !core.spool.holds(key);
        if direct {
            match core.remote.put(key, &body, content_type).await {
                Ok(()) => return Ok(stored),
                Err(e) => core.trip(&e),
            }
        }
        core.spool
            .write(key, content_type, &stored.sha256, body)
            .await?;
        core.wake.notify_one();
        stored.spooled = true;
        Ok(stored)
    }

    /// The object's body, `None` when there is no such object. Finds objects still spooled.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        validate_key(key)?;
        let core = &self.inner.core;
        if let Some(entry) = core.spool.newest(key)
            && let Some(body) = core.spool.read(&entry).await?
        {
            return Ok(Some(body));
        }
        core.remote
            .get(key)
            .await
            .map_err(|e| e.into_error("get", key))
    }

    /// The object's size in bytes, `None` when there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        validate_key(key)?;
        let core = &self.inner.core;
        if let Some(entry) = core.spool.newest(key) {
            return Ok(Some(entry.size));
        }
        core.remote
            .head(key)
            .await
            .map_err(|e| e.into_error("head", key))
    }

    /// A presigned URL an agent can upload one object to with a plain HTTP `PUT`, without
    /// credentials, until `expires` (1 second to 7 days) has passed.
    pub fn presign_put(&self, key: &str, expires: Duration) -> Result<String, StorageError> {
        validate_key(key)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600)).contains(&expires) {
            return Err(StorageError::InvalidExpiry(expires));
        }
        let secs =
            u32::try_from(expires.as_secs()).map_err(|_| StorageError::InvalidExpiry(expires))?;
        self.inner.core.remote.presign_put(key, secs)
    }

    /// What waits in the spool (kept in memory; cheap).
    pub fn spool(&self) -> SpoolStats {
        self.inner.core.spool.stats()
    }

    /// The S3 endpoint in use (for logs).
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Stops the drainer (after the upload in flight, if any) and the embedded server (after
    /// its open requests, at most 5 s). Spooled objects stay for the next start.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let drainer = take(&self.inner.drainer);
        if let Some(task) = drainer
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "the spool drainer ended abnormally");
        }
        let embedded = take(&self.inner.embedded);
        if let Some(server) = embedded {
            server.stopped().await;
        }
    }
}

/// The S3 server to use, its key pair, and the embedded server when it is that one.
async fn server(
    config: &StorageConfig,
    data_dir: &Path,
    shutdown: watch::Receiver<bool>,
) -> Result<(String, (String, String), Option<Embedded>), StorageError> {
    let configured = config.credentials().await?;
    if let Some(endpoint) = &config.endpoint {
        let credentials = configured.ok_or_else(|| {
            StorageError::Config("storage.endpoint needs storage.access_key".into())
        })?;
        return Ok((endpoint.trim_end_matches('/').to_owned(), credentials, None));
    }
    let credentials = match configured {
        Some(credentials) => credentials,
        None => embedded::credentials(&data_dir.join("s3.credentials")).await?,
    };
    let root = config
        .objects_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("objects"));
    let server = embedded::start(config.embedded_listen, &root, &credentials, shutdown).await?;
    Ok((server.endpoint(), credentials, Some(server)))
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}
