//! Answers to the coordinator's file challenges.
//!
//! The coordinator asks for the SHA-256 of a byte range of one file of a model the agent
//! serves; only an agent that holds the file the registry pins can answer right. The range
//! is streamed through the hasher in chunks, so a large range costs time but not memory, and
//! the path is confined to the model's folder so a challenge can never read anything else.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use infermine_protocol::AgentMessage;
use sha2::{Digest, Sha256};

use crate::engine;

/// The longest range a challenge may ask for.
pub(crate) const MAX_CHALLENGE_BYTES: u64 = 256 * 1024 * 1024;

/// Bytes read and hashed at a time.
const CHUNK_BYTES: usize = 1 << 20;

/// One challenge, as the coordinator's frame states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) model: String,
    pub(crate) file: String,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// Why a challenge cannot be answered; the text goes back to the coordinator in the proof.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChallengeError {
    #[error("model `{0}` is not served by this agent")]
    NotServed(String),
    #[error("{len} bytes asked; a challenge covers at most {MAX_CHALLENGE_BYTES} bytes (256 MiB)")]
    TooLong { len: u64 },
    #[error("`{file}` is not a file path inside the model's folder: {why}")]
    BadPath { file: String, why: &'static str },
    #[error(
        "file `{file}` is {size} bytes; the range at offset {offset} of {len} bytes goes past its end"
    )]
    OutOfRange {
        file: String,
        size: u64,
        offset: u64,
        len: u64,
    },
    #[error("cannot read `{file}` of model `{model}`: {error}")]
    Io {
        model: String,
        file: String,
        error: io::Error,
    },
}

/// The proof frame answering challenge `id`: the range's hash, or why there is none. Hashes
/// on a blocking thread.
pub(crate) async fn answer(
    id: u64,
    challenge: Challenge,
    models_dir: Arc<Path>,
    served: Arc<[String]>,
) -> AgentMessage {
    let proved = tokio::task::spawn_blocking(move || {
        prove(&models_dir, &served, &challenge).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("hashing failed: {e}")));
    match proved {
        Ok(sha256) => AgentMessage::Proof {
            id,
            sha256,
            error: None,
        },
        Err(error) => {
            tracing::warn!(id, "cannot answer a file challenge: {error}");
            AgentMessage::Proof {
                id,
                sha256: String::new(),
                error: Some(error),
            }
        }
    }
}

/// The lowercase hex SHA-256 of the challenged range of `<models_dir>/<model>/<file>`, for a
/// model in `served`. Blocking: call it off the async runtime.
pub(crate) fn prove(
    models_dir: &Path,
    served: &[String],
    challenge: &Challenge,
) -> Result<String, ChallengeError> {
    let Challenge {
        model,
        file,
        offset,
        len,
    } = challenge;
    if !served.contains(model) {
        return Err(ChallengeError::NotServed(model.clone()));
    }
    if *len > MAX_CHALLENGE_BYTES {
        return Err(ChallengeError::TooLong { len: *len });
    }
    let io = |error| ChallengeError::Io {
        model: model.clone(),
        file: file.clone(),
        error,
    };
    let path = confined_path(models_dir, model, file)?;
    let mut reader = File::open(&path).map_err(io)?;
    let size = reader.metadata().map_err(io)?.len();
    if offset.checked_add(*len).is_none_or(|end| end > size) {
        return Err(ChallengeError::OutOfRange {
            file: file.clone(),
            size,
            offset: *offset,
            len: *len,
        });
    }
    reader.seek(SeekFrom::Start(*offset)).map_err(io)?;
    hash_exactly(reader.take(*len), *len).map_err(io)
}

/// `file` resolved inside the folder of `model`, refusing anything that could land outside
/// it: absolute paths, `..`, and symbolic links that point out of the folder.
fn confined_path(models_dir: &Path, model: &str, file: &str) -> Result<PathBuf, ChallengeError> {
    let bad = |why| ChallengeError::BadPath {
        file: file.to_owned(),
        why,
    };
    let relative = Path::new(file);
    if file.is_empty() {
        return Err(bad("the path is empty"));
    }
    for component in relative.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(bad("it climbs out with `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("it is absolute")),
        }
    }
    let io = |error| ChallengeError::Io {
        model: model.to_owned(),
        file: file.to_owned(),
        error,
    };
    let root = engine::model_dir(models_dir, model)
        .canonicalize()
        .map_err(io)?;
    let resolved = root.join(relative).canonicalize().map_err(io)?;
    if !resolved.starts_with(&root) {
        return Err(bad("it is a link to outside the folder"));
    }
    if !resolved.is_file() {
        return Err(bad("it is not a regular file"));
    }
    Ok(resolved)
}

/// Hashes exactly `len` bytes of `reader`; fewer means the file shrank under us.
fn hash_exactly(mut reader: impl Read, len: u64) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK_BYTES.min(usize::try_from(len).unwrap_or(CHUNK_BYTES))];
    let mut done = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        done += n as u64;
    }
    if done != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file ended after {done} of {len} bytes; it changed while being read"),
        ));
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "tiny-model";

    /// A models folder holding `tiny-model/weights.bin` (3 MiB and a bit, so ranges span
    /// several chunks) and a secret next to it.
    fn models_dir() -> (tempfile::TempDir, Vec<u8>) {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join(MODEL);
        std::fs::create_dir_all(dir.join("sub")).expect("model dir");
        let data: Vec<u8> = (0..3 * CHUNK_BYTES + 12_345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        std::fs::write(dir.join("weights.bin"), &data).expect("weights");
        std::fs::write(dir.join("sub/config.json"), b"{}").expect("config");
        std::fs::write(root.path().join("secret.txt"), b"not yours").expect("secret");
        (root, data)
    }

    fn served() -> Vec<String> {
        vec![MODEL.to_owned()]
    }

    fn challenge(file: &str, offset: u64, len: u64) -> Challenge {
        Challenge {
            model: MODEL.to_owned(),
            file: file.to_owned(),
            offset,
            len,
        }
    }

    #[test]
    fn a_range_hashes_like_the_slice() {
        let (root, data) = models_dir();
        for (offset, len) in [
            (0, data.len()),
            (1000, 2 * CHUNK_BYTES + 7),
            (data.len(), 0),
        ] {
            let got = prove(
                root.path(),
                &served(),
                &challenge("weights.bin", offset as u64, len as u64),
            )
            .expect("in range");
            assert_eq!(
                got,
                hex::encode(Sha256::digest(&data[offset..offset + len]))
            );
        }
        let nested = prove(
            root.path(),
            &served(),
            &challenge("./sub/config.json", 0, 2),
        );
        assert_eq!(
            nested.expect("nested file"),
            hex::encode(Sha256::digest(b"{}"))
        );
    }

    #[test]
    fn paths_out_of_the_model_folder_are_refused() {
        let (root, _) = models_dir();
        let secret = root.path().join("secret.txt");
        let absolute = secret.to_string_lossy().into_owned();
        for file in [
            "../secret.txt",
            "sub/../../secret.txt",
            absolute.as_str(),
            "",
        ] {
            let err = prove(root.path(), &served(), &challenge(file, 0, 1)).expect_err(file);
            assert!(
                matches!(err, ChallengeError::BadPath { .. }),
                "{file}: {err}"
            );
        }
        #[cfg(unix)]
        {
            let link = root.path().join(MODEL).join("escape.txt");
            std::os::unix::fs::symlink(&secret, &link).expect("symlink");
            let err = prove(root.path(), &served(), &challenge("escape.txt", 0, 1))
                .expect_err("a link out of the folder");
            assert!(err.to_string().contains("outside the folder"), "{err}");
        }
    }

    #[test]
    fn ranges_past_the_end_or_too_long_are_refused_with_the_figures() {
        let (root, data) = models_dir();
        let size = data.len() as u64;
        let err = prove(
            root.path(),
            &served(),
            &challenge("weights.bin", size - 10, 11),
        )
        .expect_err("one byte past the end");
        assert!(
            err.to_string().contains(&format!("is {size} bytes")),
            "{err}"
        );
        let err = prove(
            root.path(),
            &served(),
            &challenge("weights.bin", u64::MAX, 2),
        )
        .expect_err("an offset that overflows");
        assert!(matches!(err, ChallengeError::OutOfRange { .. }), "{err}");
        let err = prove(
            root.path(),
            &served(),
            &challenge("weights.bin", 0, MAX_CHALLENGE_BYTES + 1),
        )
        .expect_err("too long");
        assert!(err.to_string().contains("256 MiB"), "{err}");
    }

    #[test]
    fn models_not_served_and_missing_files_are_refused() {
        let (root, _) = models_dir();
        let mut other = challenge("weights.bin", 0, 1);
        other.model = "other-model".to_owned();
        let err = prove(root.path(), &served(), &other).expect_err("not served");
        assert!(matches!(err, ChallengeError::NotServed(_)), "{err}");
        let err =
            prove(root.path(), &served(), &challenge("missing.bin", 0, 1)).expect_err("missing");
        assert!(matches!(err, ChallengeError::Io { .. }), "{err}");
        let err = prove(root.path(), &served(), &challenge("sub", 0, 1)).expect_err("a folder");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
