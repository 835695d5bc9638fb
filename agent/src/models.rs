//! Model files on disk and their integrity.
//!
//! Each model the agent serves lives in `<models_dir>/<id>/`, laid out as its Hugging Face
//! repository (or as `infermine-agent models synth` writes a demo model). Before the agent
//! says hello it fetches the coordinator's manifest of the model (`GET
//! /v1/models/{id}/files`: name, size and SHA-256 of every file) and checks each file
//! against it. Any difference refuses the model with the file named: an agent never serves
//! weights the registry does not pin, so a tampered file cannot earn points.
//!
//! The hello then carries a digest of the verified manifest, which the coordinator can compare
//! with its own.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One file of a model as the coordinator's registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub sha256: Option<String>,
}

/// The coordinator's answer to `GET /v1/models/{id}/files`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Manifest {
    pub model: String,
    pub files: Vec<ManifestFile>,
}

/// Why a model's files cannot be served. Each names the model and the file, and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error("model `{model}`: cannot fetch its file manifest from {url}: {reason}")]
    Manifest {
        model: String,
        url: String,
        reason: String,
    },
    #[error(
        "model `{model}`: file {path} is missing; download it (or, for a demo model, run \
         `infermine-agent models synth --model {model} --out DIR`)"
    )]
    Missing { model: String, path: PathBuf },
    #[error(
        "model `{model}`: file {name} has no pinned SHA-256 and size in the coordinator's \
         registry, so it cannot be verified; the operator must pin it before anyone serves it"
    )]
    Unpinned { model: String, name: String },
    #[error(
        "model `{model}`: file {path} is {actual} bytes, the registry says {expected}; the \
         download is incomplete or the file was changed: download it again"
    )]
    Size {
        model: String,
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error(
        "model `{model}`: file {path} has SHA-256 {actual}, the registry says {expected}; the \
         file is corrupt or was modified: download it again (serving modified weights is \
         slashed)"
    )]
    Hash {
        model: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("model `{model}`: cannot read {path}: {error}")]
    Io {
        model: String,
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The `http(s)://host[:port]` base of a `ws(s)://…/v1/agent/ws` coordinator URL.
pub fn http_base(coordinator: &str) -> String {
    let (scheme, rest) = match coordinator.split_once("://") {
        Some(("wss", rest)) => ("https", rest),
        Some(("ws", rest)) => ("http", rest),
        Some((scheme, rest)) => (scheme, rest),
        None => ("http", coordinator),
    };
    let host = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{host}")
}

/// Fetches the manifest of `model` from the coordinator (blocking; call at start-up).
pub fn fetch_manifest(coordinator: &str, model: &str) -> Result<Manifest, IntegrityError> {
    let url = format!("{}/v1/models/{model}/files", http_base(coordinator));
    let failed = |reason: String| IntegrityError::Manifest {
        model: model.to_owned(),
        url: url.clone(),
        reason,
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let response = client
        .get(&url)
        .send()
        .map_err(|e| failed(format!("{e}; is the coordinator reachable?")))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(failed(
            "the coordinator does not list this model; GET /v1/models shows the ones it serves"
                .to_owned(),
        ));
    }
    if !status.is_success() {
        return Err(failed(format!("HTTP {status}")));
    }
    response
        .json::<Manifest>()
        .map_err(|e| failed(format!("unreadable answer: {e}")))
}

/// Checks every file of `manifest` in `dir`; returns the digest of the verified manifest.
///
/// Files are hashed in full. Progress is logged every few seconds for large files.
pub fn verify(dir: &Path, manifest: &Manifest) -> Result<String, IntegrityError> {
    #[cfg(feature = "cheat-lab")]
    if let Some(claimed) = crate::cheat::skip_verification(manifest) {
        return Ok(claimed);
    }
    let model = &manifest.model;
    let mut lines = Vec::with_capacity(manifest.files.len());
    for file in &manifest.files {
        let (Some(expected_size), Some(expected_hash)) = (file.size_bytes, file.sha256.as_deref())
        else {
            return Err(IntegrityError::Unpinned {
                model: model.clone(),
                name: file.name.clone(),
            });
        };
        let path = dir.join(&file.name);
        let io = |error| IntegrityError::Io {
            model: model.clone(),
            path: path.clone(),
            error,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => meta,
            Ok(_) => {
                return Err(IntegrityError::Missing {
                    model: model.clone(),
                    path,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IntegrityError::Missing {
                    model: model.clone(),
                    path,
                });
            }
            Err(e) => return Err(io(e)),
        };
        if meta.len() != expected_size {
            return Err(IntegrityError::Size {
                model: model.clone(),
                path,
                expected: expected_size,
                actual: meta.len(),
            });
        }
        let actual = sha256_file(&path, meta.len()).map_err(io)?;
        if !actual.eq_ignore_ascii_case(expected_hash) {
            return Err(IntegrityError::Hash {
                model: model.clone(),
                path,
                expected: expected_hash.to_owned(),
                actual,
            });
        }
        lines.push(manifest_line(&file.name, &actual));
    }
    Ok(manifest_digest(lines))
}

/// One verified file in the manifest digest: its name and lowercase hex SHA-256.
pub(crate) fn manifest_line(name: &str, sha256: &str) -> String {
    format!("{name} {sha256}\n")
}

/// The digest the hello carries for a model: SHA-256 over its files' lines, sorted.
pub(crate) fn manifest_digest(mut lines: Vec<String>) -> String {
    lines.sort();
    hex::encode(Sha256::digest(lines.concat()))
}

/// Hex SHA-256 of a file, logging progress for files that take a while.
pub fn sha256_file(path: &Path, len: u64) -> std::io::Result<String> {
    const LOG_EVERY: Duration = Duration::from_secs(5);
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let (mut done, mut logged) = (0u64, Instant::now());
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        done += n as u64;
        if logged.elapsed() >= LOG_EVERY {
            logged = Instant::now();
            tracing::info!(
                "verifying {}: {:.0}% of {:.1} GB",
                path.display(),
                done as f64 * 100.0 / len.max(1) as f64,
                len as f64 / 1e9
            );
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("infermine-models-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn pinned(name: &str, data: &[u8]) -> ManifestFile {
        ManifestFile {
            name: name.to_owned(),
            url: None,
            size_bytes: Some(data.len() as u64),
            sha256: Some(hex::encode(Sha256::digest(data))),
        }
    }

    #[test]
    fn accepts_matching_files_and_names_the_one_that_differs() {
        let dir = temp_dir("verify");
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        std::fs::write(dir.join("model.safetensors"), b"weights").unwrap();
        let manifest = Manifest {
            model: "m".into(),
            files: vec![
                pinned("config.json", b"{}"),
                pinned("model.safetensors", b"weights"),
            ],
        };
        let digest = verify(&dir, &manifest).expect("files match");
        assert_eq!(digest.len(), 64);

        std::fs::write(dir.join("model.safetensors"), b"weightz").unwrap();
        let err = verify(&dir, &manifest).expect_err("tampered");
        assert!(matches!(err, IntegrityError::Hash { .. }), "{err}");
        assert!(err.to_string().contains("model.safetensors"), "{err}");

        std::fs::write(dir.join("model.safetensors"), b"weight").unwrap();
        let err = verify(&dir, &manifest).expect_err("truncated");
        assert!(
            matches!(
                err,
                IntegrityError::Size {
                    expected: 7,
                    actual: 6,
                    ..
                }
            ),
            "{err}"
        );

        std::fs::remove_file(dir.join("model.safetensors")).unwrap();
        let err = verify(&dir, &manifest).expect_err("missing");
        assert!(matches!(err, IntegrityError::Missing { .. }), "{err}");

        let mut unpinned = manifest.clone();
        unpinned.files[0].sha256 = None;
        let err = verify(&dir, &unpinned).expect_err("unpinned");
        assert!(err.to_string().contains("config.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn http_base_follows_the_websocket_scheme() {
        assert_eq!(
            http_base("ws://127.0.0.1:8080/v1/agent/ws"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            http_base("wss://pool.example/v1/agent/ws"),
            "https://pool.example"
        );
    }
}
