//! Cheap checks every result passes before it completes a job: the output is of the kind the
//! job asked for and consistent with its params. Deeper review happens asynchronously.

use base64::Engine as _;
use infermine_protocol::{JobOutput, JobParams};

use crate::auth::sha256_hex;

/// Why an output was rejected, in words for the log and the job's error.
pub(crate) fn output(params: &JobParams, output: &JobOutput) -> Result<(), String> {
    match (params, output) {
        (JobParams::Synthetic(p), JobOutput::Bytes { data_b64, sha256 }) => {
            let data = base64::engine::general_purpose::STANDARD
                .decode(data_b64)
                .map_err(|e| format!("data_b64 is not base64: {e}"))?;
            if data.len() != p.output_bytes as usize {
                return Err(format!(
                    "{} bytes returned, {} requested",
                    data.len(),
                    p.output_bytes
                ));
            }
            if sha256_hex(&data) != *sha256 {
                return Err("sha256 does not match the data".to_owned());
            }
            Ok(())
        }
        (JobParams::Llm(_), JobOutput::Text { .. }) => Ok(()),
        (JobParams::Image(p), JobOutput::Image { width, height, .. }) => {
            if (*width, *height) != (p.width, p.height) {
                return Err(format!(
                    "{width}x{height} image returned, {}x{} requested",
                    p.width, p.height
                ));
            }
            Ok(())
        }
        (params, _) => Err(format!(
            "output kind does not match a {} job",
            params.kind().as_str()
        )),
    }
}

#[cfg(test)]
mod tests {
    use infermine_protocol::SyntheticParams;

    use super::*;

    fn synthetic(bytes: u32) -> JobParams {
        JobParams::Synthetic(SyntheticParams {
            output_bytes: bytes,
            delay_ms: 0,
            stream_tokens: 0,
            seed: 0,
            fail: false,
        })
    }

    fn bytes_output(data: &[u8]) -> JobOutput {
        JobOutput::Bytes {
            data_b64: base64::engine::general_purpose::STANDARD.encode(data),
            sha256: sha256_hex(data),
        }
    }

    #[test]
    fn synthetic_output_must_match_size_and_hash() {
        assert_eq!(output(&synthetic(3), &bytes_output(b"abc")), Ok(()));
        assert!(
            output(&synthetic(4), &bytes_output(b"abc"))
                .expect_err("short")
                .contains("3 bytes returned")
        );
        let JobOutput::Bytes { data_b64, .. } = bytes_output(b"abc") else {
            unreachable!()
        };
        let forged = JobOutput::Bytes {
            data_b64,
            sha256: sha256_hex(b"abd"),
        };
        assert!(
            output(&synthetic(3), &forged)
                .expect_err("hash")
                .contains("sha256")
        );
    }

    #[test]
    fn output_kind_must_match_job_kind() {
        let text = JobOutput::Text {
            text: "hi".into(),
            usage: Default::default(),
            finish_reason: "stop".into(),
        };
        assert!(
            output(&synthetic(2), &text)
                .expect_err("kind")
                .contains("synthetic")
        );
    }
}
