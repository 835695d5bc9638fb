//! Uploads of image results to the presigned URL the coordinator hands out with an image job,
//! so the PNG never rides the WebSocket and the agent never holds storage credentials.

use std::time::Duration;

use base64::Engine as _;
use infermine_protocol::JobOutput;

/// Most time one upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot reach the upload URL: {0}")]
    Send(String),
    #[error("the storage server refused the upload with HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the engine's PNG is not valid base64: {0}")]
    Encoding(String),
}

/// A blocking HTTP client for uploads, made once per slot thread.
#[derive(Debug, Clone)]
pub struct Uploader {
    client: reqwest::blocking::Client,
}

impl Uploader {
    pub fn new() -> Result<Self, UploadError> {
        let client = reqwest::blocking::Client::builder()
            .timeout(UPLOAD_TIMEOUT)
            .use_rustls_tls()
            .build()
            .map_err(|e| UploadError::Send(e.to_string()))?;
        Ok(Self { client })
    }

    /// PUTs `body` to a presigned `url`.
    pub fn put(&self, url: &str, body: Vec<u8>) -> Result<(), UploadError> {
        let response = self
            .client
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, "image/png")
            .body(body)
            .send()
            .map_err(|e| UploadError::Send(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let mut body = response.text().unwrap_or_default();
        body.truncate(300);
        Err(UploadError::Refused {
            status: status.as_u16(),
            body,
        })
    }

    /// Moves an image output's inline PNG to `url`: on success the output no longer carries
    /// it (the coordinator reads it from storage and checks its size and SHA-256). Other
    /// outputs pass through untouched.
    pub fn offload(&self, output: JobOutput, url: &str) -> Result<JobOutput, UploadError> {
        let JobOutput::Image {
            width,
            height,
            size_bytes,
            sha256,
            png_b64: Some(b64),
        } = output
        else {
            return Ok(output);
        };
        let png = base64::engine::general_purpose::STANDARD
            .decode(&b64)
            .map_err(|e| UploadError::Encoding(e.to_string()))?;
        self.put(url, png)?;
        Ok(JobOutput::Image {
            width,
            height,
            size_bytes,
            sha256,
            png_b64: None,
        })
    }
}
