//! The embedded S3 server: s3s with its file-system backend (s3s-fs) over the objects
//! directory, with signature checking, on a loopback port by default. The coordinator reaches
//! it over HTTP with the same client as an external server, so both paths are one.
//!
//! Its key pair is generated once into `DATA_DIR/s3.credentials` (mode 0600) unless the config
//! names one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use hyper_util::server::graceful::GracefulShutdown;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::StorageError;
use crate::auth::write_private;

/// How long open requests may take to finish once the server is told to stop.
const GRACE: Duration = Duration::from_secs(5);

/// A running embedded server.
#[derive(Debug)]
pub(super) struct Embedded {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Embedded {
    /// The URL the coordinator's client uses: a wildcard listen address is reached over the
    /// loopback interface.
    pub(super) fn endpoint(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Waits until the server has stopped (after its shutdown signal).
    pub(super) async fn stopped(self) {
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the embedded S3 server ended abnormally");
        }
    }
}

/// Starts serving `root` on `listen` until `shutdown` turns true or its sender is dropped.
pub(super) async fn start(
    listen: SocketAddr,
    root: &Path,
    (access_key, secret_key): &(String, String),
    shutdown: watch::Receiver<bool>,
) -> Result<Embedded, StorageError> {
    let root = root.to_owned();
    let fs = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&root).map_err(|source| StorageError::Io {
            action: "cannot create the objects directory",
            path: root.clone(),
            source,
        })?;
        s3s_fs::FileSystem::new(&root).map_err(|e| {
            StorageError::Embedded(format!("objects directory {}: {e:?}", root.display()))
        })
    })
    .await
    .map_err(|e| StorageError::Task(e.to_string()))??;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(
        access_key.clone(),
        secret_key.clone(),
    ));
    let service = builder.build();
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StorageError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StorageError::Listen {
            addr: listen,
            source,
        })?;
    let task = tokio::spawn(serve(listener, service, shutdown));
    Ok(Embedded { addr, task })
}

async fn serve(listener: TcpListener, service: S3Service, mut shutdown: watch::Receiver<bool>) {
    let http = ConnBuilder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    while !*shutdown.borrow() {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections close.
                    tracing::warn!(error = %e, "embedded S3 server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        if let Err(e) = socket.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let connection = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "embedded S3 connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("embedded S3 server: requests still open after the grace period");
    }
}

/// The embedded server's key pair, as kept in the credentials file.
#[derive(Serialize, Deserialize)]
struct KeyPair {
    access_key: String,
    secret_key: String,
}

/// Reads the key pair from `path`, generating it on first use.
pub(super) async fn credentials(path: &Path) -> Result<(String, String), StorageError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || load_or_generate(&path))
        .await
        .map_err(|e| StorageError::Task(e.to_string()))?
}

fn load_or_generate(path: &Path) -> Result<(String, String), StorageError> {
    let io_error = |action| {
        let path = path.to_owned();
        move |source| StorageError::Io {
            action,
            path,
            source,
        }
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let pair: KeyPair = toml::from_str(&text).map_err(|e| {
                StorageError::Config(format!(
                    "{} is damaged ({e}); delete it to generate new credentials (stored objects are kept)",
                    path.display()
                ))
            })?;
            return Ok((pair.access_key, pair.secret_key));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("cannot read the S3 credentials")(e)),
    }
    let random = |len| -> String {
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(len)
            .map(char::from)
            .collect()
    };
    let pair = KeyPair {
        access_key: format!("IM{}", random(18).to_ascii_uppercase()),
        secret_key: random(40),
    };
    let text = format!(
        "# Key pair of the coordinator's embedded S3 server, generated once. Keep it private.\n{}",
        toml::to_string(&pair).map_err(|e| StorageError::Task(e.to_string()))?
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_error("cannot create the data directory"))?;
    }
    // Written under a temporary name and renamed, so a crash never leaves half a key pair.
    let tmp: PathBuf = path.with_extension("credentials.tmp");
    write_private(&tmp, text.as_bytes()).map_err(io_error("cannot write the S3 credentials"))?;
    std::fs::rename(&tmp, path).map_err(io_error("cannot write the S3 credentials"))?;
    tracing::info!(path = %path.display(), "generated the embedded S3 server's key pair");
    Ok((pair.access_key, pair.secret_key))
}
