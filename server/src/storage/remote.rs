//! The S3 client: one `rust-s3` bucket handle, and with it one connection pool, reused for
//! every call, each call bounded by the request timeout. With `fail-on-err` every non-2xx
//! answer is an error; a 404 becomes `None` here.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, BucketConfiguration, Region};

use super::StorageError;

/// A failed S3 call, with the HTTP status and S3 error code when the server answered.
#[derive(Debug)]
pub(super) struct RemoteError {
    status: Option<u16>,
    code: Option<String>,
    detail: String,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl RemoteError {
    fn new(error: S3Error) -> Self {
        match error {
            S3Error::HttpFailWithBody(status, body) => {
                let code = xml_field(&body, "Code");
                let message = xml_field(&body, "Message");
                let detail = match (&code, message) {
                    (Some(code), Some(message)) => format!("HTTP {status} {code}: {message}"),
                    (Some(code), None) => format!("HTTP {status} {code}"),
                    _ => format!("HTTP {status}"),
                };
                Self {
                    status: Some(status),
                    code,
                    detail,
                }
            }
            other => Self {
                status: None,
                code: None,
                detail: other.to_string(),
            },
        }
    }

    fn not_found(&self) -> bool {
        self.status == Some(404)
    }

    /// The server does not know the access key (s3s says `NotSignedUp`) or the secret is
    /// wrong: a configuration error, which retrying cannot fix.
    pub(super) fn is_bad_credentials(&self) -> bool {
        self.status == Some(403)
            && matches!(
                self.code.as_deref(),
                Some("InvalidAccessKeyId" | "NotSignedUp" | "SignatureDoesNotMatch")
            )
    }

    pub(super) fn into_error(self, op: &'static str, key: &str) -> StorageError {
        StorageError::S3 {
            op,
            key: key.to_owned(),
            detail: self.detail,
        }
    }
}

/// The text of the first `<field>…</field>` of an S3 error document.
fn xml_field(body: &str, field: &str) -> Option<String> {
    let start = body.find(&format!("<{field}>"))? + field.len() + 2;
    let len = body[start..].find(&format!("</{field}>"))?;
    let text = body[start..start + len].trim();
    (!text.is_empty()).then(|| text.chars().take(300).collect())
}

/// One bucket on one S3 server.
pub(super) struct Remote {
    bucket: Box<Bucket>,
    /// The same bucket as agents reach it, for presigned URLs.
    public: Box<Bucket>,
    credentials: Credentials,
    endpoint: String,
    timeout: Duration,
}

/// Names the server and bucket only: rust-s3's own `Debug` would print the secret key.
impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket.name())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Remote {
    pub(super) fn new(
        endpoint: &str,
        public_endpoint: Option<&str>,
        region: &str,
        bucket: &str,
        (access_key, secret_key): (&str, &str),
        timeout: Duration,
    ) -> Result<Self, StorageError> {
        // Retries are ours (the spool and its drainer); rust-s3's would only stretch a timeout.
        s3::set_retries(0);
        let invalid =
            |e: S3Error| StorageError::Config(format!("cannot set up the S3 client: {e}"));
        let credentials = Credentials::new(Some(access_key), Some(secret_key), None, None, None)
            .map_err(|e| invalid(e.into()))?;
        let handle = |endpoint: &str| -> Result<Box<Bucket>, StorageError> {
            let region = Region::Custom {
                region: region.to_owned(),
                endpoint: endpoint.to_owned(),
            };
            let mut bucket = Bucket::new(bucket, region, credentials.clone()).map_err(invalid)?;
            bucket.set_path_style();
            bucket.set_request_timeout(Some(timeout));
            Ok(bucket)
        };
        Ok(Self {
            bucket: handle(endpoint)?,
            public: handle(public_endpoint.unwrap_or(endpoint))?,
            credentials,
            endpoint: endpoint.to_owned(),
            timeout,
        })
    }

    pub(super) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Runs one S3 call under the request timeout.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, S3Error>>,
    ) -> Result<T, RemoteError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(RemoteError::new),
            Err(_) => Err(RemoteError {
                status: None,
                code: None,
                detail: format!("no answer within {} ms", self.timeout.as_millis()),
            }),
        }
    }

    pub(super) async fn put(
        &self,
        key: &str,
        body: &[u8],
        content_type: &str,
    ) -> Result<(), RemoteError> {
        self.call(
            self.bucket
                .put_object_with_content_type(key, body, content_type),
        )
        .await
        .map(drop)
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Bytes>, RemoteError> {
        match self.call(self.bucket.get_object(key)).await {
            Ok(response) => Ok(Some(response.into_bytes())),
            Err(e) if e.not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn head(&self, key: &str) -> Result<Option<u64>, RemoteError> {
        match self.call(self.bucket.head_object(key)).await {
            Ok((head, _)) => Ok(Some(
                head.content_length
                    .and_then(|len| u64::try_from(len).ok())
                    .unwrap_or(0),
            )),
            Err(e) if e.not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the bucket unless it exists. A server that refuses listing (a key scoped to
    /// writing) is taken to have the bucket: creating it would be refused as well.
    pub(super) async fn ensure_bucket(&self) -> Result<(), RemoteError> {
        let listed = self
            .call(
                self.bucket
                    .list_page(String::new(), None, None, None, Some(1)),
            )
            .await;
        match listed {
            Ok(_) => return Ok(()),
            Err(e) if e.not_found() => {}
            Err(e) if e.status == Some(403) && !e.is_bad_credentials() => {
                tracing::debug!(error = %e, "cannot list the bucket; assuming it exists");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let config = BucketConfiguration::new(None, false, None, None, None, None, None, None);
        let created = self
            .call(Bucket::create_with_path_style(
                &self.bucket.name(),
                self.bucket.region(),
                self.credentials.clone(),
                config,
            ))
            .await;
        match created {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket.name(), "created the bucket");
                Ok(())
            }
            Err(e) if e.status == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Signing needs no I/O; rust-s3 only makes it `async` because credentials sit behind an
    /// async lock, which static keys never write. So the future completes on its first poll
    /// (run unconstrained, so tokio's cooperative budget cannot postpone it).
    pub(super) fn presign_put(&self, key: &str, expiry_secs: u32) -> Result<String, StorageError> {
        let signing =
            tokio::task::unconstrained(self.public.presign_put(key, expiry_secs, None, None));
        let fail = |detail: String| StorageError::S3 {
            op: "presign",
            key: key.to_owned(),
            detail,
        };
        match signing.now_or_never() {
            Some(Ok(url)) => Ok(url),
            Some(Err(e)) => Err(fail(e.to_string())),
            None => Err(fail(
                "the credentials are being updated; try again".to_owned(),
            )),
        }
    }
}
