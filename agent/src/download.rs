//! `infermine-agent models pull`: downloads a model's files from the URLs in the
//! coordinator's manifest into `<models_dir>/<id>/`, the way the agent will verify them.
//!
//! - **Resumable**: bytes land in `<file>.part`; a later run (or a retry after a dropped
//!   connection) asks for the rest with an HTTP `Range` request. A server that ignores `Range`
//!   sends the whole file again, which is written from the start.
//! - **Checked**: the SHA-256 and size must match the registry's pin before the `.part` file
//!   takes its final name; a mismatch deletes it and says so.
//! - **Disk space first**: what is still to download is compared with the free space of the
//!   target's file system before the first byte.
//! - **Progress**: a bar on a terminal, a log line every few seconds otherwise.
//!
//! `HF_TOKEN` (when set) is sent to huggingface.co for gated repositories.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::models::{Manifest, ManifestFile, sha256_file};

/// Attempts per file before giving up, each resuming where the last one stopped.
const ATTEMPTS: u32 = 5;
/// Free space kept beyond what the files need, for the file system's own use.
const SPARE_BYTES: u64 = 256 << 20;

/// Why a download could not finish. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "model `{model}`: file {name} has no pinned SHA-256 and size, so a download could not \
         be checked; the operator must pin it in the registry"
    )]
    Unpinned { model: String, name: String },
    #[error("model `{model}`: the registry lists no URL for {name}; fetch it by hand into {path}")]
    NoUrl {
        model: String,
        name: String,
        path: PathBuf,
    },
    #[error(
        "not enough disk space in {dir}: the download needs {needed} more, {available} is free; \
         free some space or pass another --out"
    )]
    DiskSpace {
        dir: PathBuf,
        needed: String,
        available: String,
    },
    #[error("{url}: {reason} (after {attempts} attempts; run the command again to resume)")]
    Http {
        url: String,
        reason: String,
        attempts: u32,
    },
    #[error(
        "{path}: downloaded {actual}, expected {expected} by the registry; the server sent \
         something else (the partial file was removed: run again to download it afresh)"
    )]
    Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |error| DownloadError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Bytes for people: `1.5 GiB`.
fn human(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

/// What `pull` did with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// Already present with the pinned size and hash.
    Present,
    /// Downloaded; `resumed_from` bytes were already in the `.part` file.
    Downloaded { resumed_from: u64 },
}

/// One file to fetch, with what the registry pins.
struct Wanted<'a> {
    file: &'a ManifestFile,
    url: &'a str,
    size: u64,
    sha256: &'a str,
    path: PathBuf,
}

impl Wanted<'_> {
    fn part(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".part");
        PathBuf::from(name)
    }
}

/// Downloads every file of `manifest` missing from `dir` (the model's own folder).
pub fn pull(dir: &Path, manifest: &Manifest) -> Result<Vec<(String, Fetched)>, DownloadError> {
    let model = &manifest.model;
    let mut wanted = Vec::with_capacity(manifest.files.len());
    for file in &manifest.files {
        let (Some(size), Some(sha256)) = (file.size_bytes, file.sha256.as_deref()) else {
            return Err(DownloadError::Unpinned {
                model: model.clone(),
                name: file.name.clone(),
            });
        };
        let path = dir.join(&file.name);
        let Some(url) = file.url.as_deref() else {
            return Err(DownloadError::NoUrl {
                model: model.clone(),
                name: file.name.clone(),
                path,
            });
        };
        wanted.push(Wanted {
            file,
            url,
            size,
            sha256,
            path,
        });
    }

    // Present files are verified once here; the rest are counted against the free space.
    let mut outcomes = Vec::with_capacity(wanted.len());
    let mut to_fetch = Vec::new();
    let mut needed = 0u64;
    for w in wanted {
        let complete = fs::metadata(&w.path).is_ok_and(|m| m.len() == w.size)
            && sha256_file(&w.path, w.size).map_err(io(&w.path))? == w.sha256;
        if complete {
            outcomes.push((w.file.name.clone(), Fetched::Present));
            continue;
        }
        let partial = fs::metadata(w.part()).map_or(0, |m| m.len()).min(w.size);
        needed += w.size - partial;
        to_fetch.push(w);
    }
    if !to_fetch.is_empty() {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let available = fs4::available_space(dir).map_err(io(dir))?;
        if available < needed.saturating_add(SPARE_BYTES) {
            return Err(DownloadError::DiskSpace {
                dir: dir.to_owned(),
                needed: human(needed.saturating_add(SPARE_BYTES)),
                available: human(available),
            });
        }
    }
    // TLS needs a crypto provider; the command line installs one, a library caller may not
    // have (installing twice is harmless).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        // The blocking client applies this to each read of the body, not to the whole file:
        // large files take as long as they take, a stalled connection fails in a minute.
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| DownloadError::Http {
            url: String::new(),
            reason: e.to_string(),
            attempts: 0,
        })?;
    for w in &to_fetch {
        let resumed_from = fetch(&client, w)?;
        outcomes.push((w.file.name.clone(), Fetched::Downloaded { resumed_from }));
    }
    Ok(outcomes)
}

/// Fetches one file, resuming its `.part`, retrying dropped connections; returns the bytes
/// that were already there.
fn fetch(client: &reqwest::blocking::Client, w: &Wanted<'_>) -> Result<u64, DownloadError> {
    let part = w.part();
    if let Some(parent) = part.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let initial = fs::metadata(&part).map_or(0, |m| m.len());
    let progress = progress_bar(&w.file.name, w.size);
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        let have = fs::metadata(&part).map_or(0, |m| m.len());
        if have > w.size {
            // Longer than the file can be: start over.
            fs::remove_file(&part).map_err(io(&part))?;
            continue;
        }
        if have == w.size {
            break;
        }
        progress.set_position(have);
        match fetch_range(client, w, &part, have, &progress) {
            Ok(()) => {
                if fs::metadata(&part).map_or(0, |m| m.len()) >= w.size {
                    break;
                }
                last_error = "the server closed the connection early".to_owned();
            }
            Err(RangeError::Io(e)) => return Err(e),
            Err(RangeError::Http(reason)) => last_error = reason,
        }
        tracing::warn!(
            "{}: attempt {attempt} of {ATTEMPTS} stopped: {last_error}; resuming",
            w.file.name
        );
        std::thread::sleep(Duration::from_millis(500) * attempt);
    }
    let have = fs::metadata(&part).map_or(0, |m| m.len());
    if have != w.size {
        progress.abandon();
        return Err(DownloadError::Http {
            url: w.url.to_owned(),
            reason: last_error,
            attempts: ATTEMPTS,
        });
    }
    progress.finish_and_clear();
    let actual = sha256_file(&part, w.size).map_err(io(&part))?;
    if actual != w.sha256 {
        fs::remove_file(&part).map_err(io(&part))?;
        return Err(DownloadError::Mismatch {
            path: w.path.clone(),
            expected: format!("SHA-256 {}", w.sha256),
            actual: format!("SHA-256 {actual}"),
        });
    }
    fs::rename(&part, &w.path).map_err(io(&w.path))?;
    tracing::info!(
        "{}: {} downloaded and verified",
        w.path.display(),
        human(w.size)
    );
    Ok(initial.min(w.size))
}

enum RangeError {
    /// Worth another attempt.
    Http(String),
    /// A local failure: stop.
    Io(DownloadError),
}

/// One request from byte `from` to the end, appended to `part`.
fn fetch_range(
    client: &reqwest::blocking::Client,
    w: &Wanted<'_>,
    part: &Path,
    from: u64,
    progress: &ProgressBar,
) -> Result<(), RangeError> {
    let mut request = client.get(w.url);
    if from > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
    }
    if let Ok(token) = std::env::var("HF_TOKEN")
        && reqwest::Url::parse(w.url)
            .is_ok_and(|u| u.host_str().is_some_and(|h| h.ends_with("huggingface.co")))
    {
        request = request.bearer_auth(token);
    }
    let mut response = request
        .send()
        .map_err(|e| RangeError::Http(e.to_string()))?;
    let status = response.status();
    let append = match status {
        reqwest::StatusCode::PARTIAL_CONTENT => true,
        reqwest::StatusCode::OK => false,
        reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN => {
            return Err(RangeError::Http(format!(
                "HTTP {status}: the file needs credentials (for Hugging Face, accept the \
                 model's licence and set HF_TOKEN)"
            )));
        }
        _ => return Err(RangeError::Http(format!("HTTP {status}"))),
    };
    if !append && from > 0 {
        tracing::info!(
            "{}: the server does not resume; downloading from the start",
            w.file.name
        );
        progress.set_position(0);
    }
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .map_err(|e| RangeError::Io(io(part)(e)))?;
    let mut buffer = vec![0u8; 1 << 20];
    let (mut logged, log_every) = (Instant::now(), Duration::from_secs(5));
    loop {
        let n = match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(RangeError::Http(e.to_string())),
        };
        out.write_all(&buffer[..n])
            .map_err(|e| RangeError::Io(io(part)(e)))?;
        progress.inc(n as u64);
        if progress.is_hidden() && logged.elapsed() >= log_every {
            logged = Instant::now();
            tracing::info!(
                "{}: {} of {}",
                w.file.name,
                human(progress.position()),
                human(w.size)
            );
        }
    }
    out.sync_all().map_err(|e| RangeError::Io(io(part)(e)))?;
    Ok(())
}

fn progress_bar(name: &str, size: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(name.to_owned());
    bar
}
