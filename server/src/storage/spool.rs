//! The spool: objects S3 could not take yet, one file each, uploaded later by the drainer
//! ([`super::drain`]) in the order they were written.
//!
//! A spool file is named `<sequence>.obj` (20 digits, so names sort in write order) and holds
//! a short text header (key, content type, SHA-256, spooling time) followed by the body. It is
//! written as `<sequence>.part`, fsynced, renamed and the directory fsynced, so after a crash
//! a spool file is whole or absent; stray `.part` files are removed at start-up. The key lives
//! only inside the file, so no key, however odd, can name a path. Damaged files are moved to
//! `damaged/` and logged rather than blocking the queue.
//!
//! The index (and with it [`SpoolStats`]) is kept in memory and rebuilt from the directory at
//! start-up. All file I/O runs on the blocking pool.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::{SpoolStats, StorageError};

const MAGIC: &str = "infermine-spool 1";
/// Longer than any valid header (a 1024-byte key, a 255-byte content type, a hash, a time).
const MAX_HEADER: usize = 2048;

/// One spooled object.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    seq: u64,
    pub(super) key: String,
    pub(super) content_type: String,
    sha256: String,
    pub(super) size: u64,
    created_ms: i64,
}

#[derive(Debug, Default)]
struct Index {
    next_seq: u64,
    entries: BTreeMap<u64, Entry>,
    /// The newest entry of each key: what a read must see.
    newest: HashMap<String, u64>,
    bytes: u64,
}

impl Index {
    fn insert(&mut self, entry: Entry) {
        self.bytes += entry.size;
        let newest = self.newest.entry(entry.key.clone()).or_insert(entry.seq);
        *newest = (*newest).max(entry.seq);
        self.next_seq = self.next_seq.max(entry.seq + 1);
        self.entries.insert(entry.seq, entry);
    }

    fn remove(&mut self, seq: u64) {
        let Some(entry) = self.entries.remove(&seq) else {
            return;
        };
        self.bytes -= entry.size;
        if self.newest.get(&entry.key) == Some(&seq) {
            // Entries leave oldest first, so no older one of this key is left behind.
            self.newest.remove(&entry.key);
        }
    }
}

/// The spool directory and its index.
#[derive(Debug)]
pub(super) struct Spool {
    dir: Arc<PathBuf>,
    index: Mutex<Index>,
}

impl Spool {
    /// Opens (creating) the directory and indexes what a previous run left in it.
    pub(super) async fn open(dir: PathBuf) -> Result<Self, StorageError> {
        let dir = Arc::new(dir);
        let scan_dir = Arc::clone(&dir);
        let index = blocking(move || scan(&scan_dir)).await??;
        Ok(Self {
            dir,
            index: Mutex::new(index),
        })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn stats(&self) -> SpoolStats {
        let index = self.index();
        SpoolStats {
            objects: index.entries.len() as u64,
            bytes: index.bytes,
            oldest_ms: index.entries.values().next().map(|e| e.created_ms),
        }
    }

    /// Up to `n` of the oldest entries, at most one per key: a key's later write waits until
    /// its earlier one is uploaded, so the newest body lands last.
    pub(super) fn oldest_distinct(&self, n: usize) -> Vec<Entry> {
        let index = self.index();
        let mut keys = HashSet::new();
        let mut batch = Vec::with_capacity(n);
        for entry in index.entries.values() {
            if batch.len() == n {
                break;
            }
            if keys.insert(entry.key.as_str()) {
                batch.push(entry.clone());
            }
        }
        batch
    }

    /// Whether some write of `key` still waits in the spool.
    pub(super) fn holds(&self, key: &str) -> bool {
        self.index().newest.contains_key(key)
    }

    pub(super) fn newest(&self, key: &str) -> Option<Entry> {
        let index = self.index();
        let seq = index.newest.get(key)?;
        index.entries.get(seq).cloned()
    }

    /// Writes an object durably, then indexes it.
    pub(super) async fn write(
        &self,
        key: &str,
        content_type: &str,
        sha256: &str,
        body: Bytes,
    ) -> Result<(), StorageError> {
        let entry = {
            let mut index = self.index();
            let seq = index.next_seq;
            index.next_seq += 1;
            Entry {
                seq,
                key: key.to_owned(),
                content_type: content_type.to_owned(),
                sha256: sha256.to_owned(),
                size: body.len() as u64,
                created_ms: chrono::Utc::now().timestamp_millis(),
            }
        };
        let dir = Arc::clone(&self.dir);
        let written = entry.clone();
        blocking(move || write_file(&dir, &written, &body)).await??;
        self.index().insert(entry);
        Ok(())
    }

    /// The entry's body, checked against its SHA-256; `None` when the file is gone (uploaded
    /// in the meantime).
    pub(super) async fn read(&self, entry: &Entry) -> Result<Option<Bytes>, StorageError> {
        let path = self.path(entry.seq, "obj");
        let expected = entry.sha256.clone();
        blocking(move || {
            let data = match fs::read(&path) {
                Ok(data) => data,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(source) => {
                    return Err(StorageError::Io {
                        action: "cannot read spooled object",
                        path,
                        source,
                    });
                }
            };
            let damaged = |reason: &str| StorageError::Damaged {
                path: path.clone(),
                reason: reason.to_owned(),
            };
            let (_, header_len) = parse_header(&data).map_err(damaged)?;
            let body = Bytes::from(data).slice(header_len..);
            if hex::encode(Sha256::digest(&body)) != expected {
                return Err(damaged("the body does not match its SHA-256"));
            }
            Ok(Some(body))
        })
        .await?
    }

    /// Forgets an uploaded entry and deletes its file.
    pub(super) async fn remove(&self, entry: &Entry) -> Result<(), StorageError> {
        let path = self.path(entry.seq, "obj");
        self.index().remove(entry.seq);
        blocking(move || match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StorageError::Io {
                action: "cannot delete uploaded spool file",
                path,
                source,
            }),
        })
        .await?
    }

    /// Moves a damaged entry's file to `damaged/` and forgets it, so it stops blocking the
    /// queue while an operator can still look at it.
    pub(super) async fn quarantine(&self, entry: &Entry) -> Result<PathBuf, StorageError> {
        let from = self.path(entry.seq, "obj");
        let dir = Arc::clone(&self.dir);
        let seq = entry.seq;
        self.index().remove(seq);
        blocking(move || move_aside(&dir, &from, seq)).await?
    }

    fn path(&self, seq: u64, extension: &str) -> PathBuf {
        file_path(&self.dir, seq, extension)
    }
}

fn file_path(dir: &Path, seq: u64, extension: &str) -> PathBuf {
    dir.join(format!("{seq:020}.{extension}"))
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::Task(e.to_string()))
}

fn header(entry: &Entry) -> String {
    format!(
        "{MAGIC}\nkey {}\ncontent-type {}\nsha256 {}\ncreated-ms {}\n\n",
        entry.key, entry.content_type, entry.sha256, entry.created_ms
    )
}

/// Parses a header: the entry fields (without `seq` and `size`) and the header's length.
fn parse_header(data: &[u8]) -> Result<(Entry, usize), &'static str> {
    let window = &data[..data.len().min(MAX_HEADER)];
    let end = window
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or("no complete header")?;
    let text = std::str::from_utf8(&window[..end]).map_err(|_| "the header is not text")?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err("not a spool file (unknown first line)");
    }
    let mut field = |name: &str| {
        lines
            .next()
            .and_then(|line| line.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix(' '))
            .map(str::to_owned)
            .ok_or("a header field is missing")
    };
    let key = field("key")?;
    let content_type = field("content-type")?;
    let sha256 = field("sha256")?;
    let created_ms = field("created-ms")?
        .parse()
        .map_err(|_| "created-ms is not a number")?;
    let entry = Entry {
        seq: 0,
        key,
        content_type,
        sha256,
        size: 0,
        created_ms,
    };
    Ok((entry, end + 2))
}

fn write_file(dir: &Path, entry: &Entry, body: &[u8]) -> Result<(), StorageError> {
    let part = file_path(dir, entry.seq, "part");
    let io_error = |action, path: &Path| {
        let path = path.to_owned();
        move |source| StorageError::Io {
            action,
            path,
            source,
        }
    };
    if let Err(e) = write_part(&part, entry, body) {
        let _ = fs::remove_file(&part);
        return Err(io_error("cannot write spool file", &part)(e));
    }
    let done = file_path(dir, entry.seq, "obj");
    fs::rename(&part, &done).map_err(io_error("cannot rename spool file", &part))?;
    sync_dir(dir).map_err(io_error("cannot sync spool directory", dir))
}

fn write_part(part: &Path, entry: &Entry, body: &[u8]) -> io::Result<()> {
    let mut file = File::create(part)?;
    file.write_all(header(entry).as_bytes())?;
    file.write_all(body)?;
    file.sync_all()
}

/// Makes a rename durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Builds the index from the directory: whole `.obj` files are indexed, `.part` leftovers of
/// a crash removed, damaged files moved aside.
fn scan(dir: &Path) -> Result<Index, StorageError> {
    let io_error = |action, path: &Path| {
        let path = path.to_owned();
        move |source| StorageError::Io {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(dir).map_err(io_error("cannot create spool directory", dir))?;
    let mut index = Index::default();
    let listing = fs::read_dir(dir).map_err(io_error("cannot list spool directory", dir))?;
    for item in listing {
        let item = item.map_err(io_error("cannot list spool directory", dir))?;
        let path = item.path();
        let name = item.file_name();
        let Some((stem, extension)) = name.to_str().and_then(|n| n.split_once('.')) else {
            continue;
        };
        let Ok(seq) = stem.parse::<u64>() else {
            continue;
        };
        match extension {
            "part" => {
                tracing::info!(path = %path.display(), "removing a spool file left half-written by a crash");
                fs::remove_file(&path).map_err(io_error("cannot remove", &path))?;
            }
            "obj" => match read_entry(&path, seq) {
                Ok(entry) => index.insert(entry),
                Err(reason) => {
                    let to = move_aside(dir, &path, seq)?;
                    tracing::error!(path = %path.display(), moved_to = %to.display(), reason = %reason, "damaged spool file; moved aside");
                }
            },
            _ => {}
        }
        index.next_seq = index.next_seq.max(seq + 1);
    }
    Ok(index)
}

/// Moves a damaged file to `damaged/`, named so that no later file can overwrite it.
fn move_aside(dir: &Path, from: &Path, seq: u64) -> Result<PathBuf, StorageError> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let to = dir.join("damaged").join(format!("{seq:020}-{now_ms}.obj"));
    fs::create_dir_all(dir.join("damaged"))
        .and_then(|()| fs::rename(from, &to))
        .map(|()| to)
        .map_err(|source| StorageError::Io {
            action: "cannot move damaged spool file",
            path: from.to_owned(),
            source,
        })
}

fn read_entry(path: &Path, seq: u64) -> Result<Entry, &'static str> {
    let mut file = File::open(path).map_err(|_| "cannot open")?;
    let len = file.metadata().map_err(|_| "cannot stat")?.len();
    let mut head = Vec::with_capacity(MAX_HEADER);
    Read::by_ref(&mut file)
        .take(MAX_HEADER as u64)
        .read_to_end(&mut head)
        .map_err(|_| "cannot read")?;
    let (mut entry, header_len) = parse_header(&head)?;
    entry.seq = seq;
    entry.size = len - header_len as u64;
    Ok(entry)
}
