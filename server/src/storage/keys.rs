//! Object keys: how job objects are named, and which keys are accepted at all.
//!
//! The embedded server maps a key to a path under its objects directory, so a key must never
//! be able to climb out of it; and some characters are signed or decoded differently by
//! different S3 servers. Keys are therefore `/`-separated segments of a conservative character
//! set, with no empty, `.` or `..` segment.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::StorageError;

/// The longest key S3 accepts, in bytes.
const MAX_KEY_BYTES: usize = 1024;

/// `jobs/YYYY/MM/DD/<job id>/<name>`, the date (UTC) being the day the job was created, so a
/// lifecycle rule or a listing can work day by day. A `created_ms` out of chrono's range files
/// the job under 1970/01/01.
pub fn job_key(created_ms: i64, job: Uuid, name: &str) -> String {
    let created = DateTime::<Utc>::from_timestamp_millis(created_ms).unwrap_or_default();
    format!("jobs/{}/{job}/{name}", created.format("%Y/%m/%d"))
}

/// Accepts `/`-separated segments of ASCII letters, digits and `-_.~=!*'()@,`, at most 1024
/// bytes, with no empty, `.` or `..` segment (so no leading or trailing `/`).
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let refuse = |reason| {
        Err(StorageError::InvalidKey {
            key: key.chars().take(200).collect(),
            reason,
        })
    };
    if key.is_empty() {
        return refuse("the key is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return refuse("the key is longer than 1024 bytes");
    }
    if let Some(bad) = key.bytes().find(|&b| !allowed(b)) {
        return refuse(if bad.is_ascii_graphic() {
            "use only ASCII letters, digits, '/' and -_.~=!*'()@,"
        } else {
            "the key has a space, a control or a non-ASCII character"
        });
    }
    if key.starts_with('/') {
        return refuse(
            "the key starts with '/'; keys are relative, e.g. jobs/2025/01/31/ID/out.png",
        );
    }
    for segment in key.split('/') {
        match segment {
            "" => return refuse("the key has an empty segment ('//' or a trailing '/')"),
            "." | ".." => return refuse("the key has a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"/-_.~=!*'()@,".contains(&b)
}

/// Content types are stored in spool headers and sent as a header: one printable line.
pub(super) fn validate_content_type(content_type: &str) -> Result<(), StorageError> {
    let printable = content_type
        .bytes()
        .all(|b| b == b' ' || b.is_ascii_graphic());
    if content_type.is_empty() || content_type.len() > 255 || !printable {
        return Err(StorageError::InvalidContentType(
            content_type.chars().take(100).collect(),
        ));
    }
    Ok(())
}
