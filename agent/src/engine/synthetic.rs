//! The synthetic engine (`synthetic-echo`): waits `delay_ms`, streams `stream_tokens` tokens,
//! and returns `output_bytes` bytes derived from `seed` alone, so the coordinator, tests and
//! benchmarks can check a result without a model.

use std::time::{Duration, Instant};

use base64::Engine as _;
use infermine_protocol::{
    JobAssignment, JobOutput, JobParams, MAX_FRAME_BYTES, ModelKind, SyntheticParams,
};
use sha2::{Digest, Sha256};

use super::{CancelToken, Engine, EngineError, EngineEvent};

/// Largest output whose base64 still fits a frame, leaving room for the JSON around it.
const MAX_OUTPUT_BYTES: usize = (MAX_FRAME_BYTES - 1024) / 4 * 3;

/// How often a sleeping job looks at its cancel token.
const CANCEL_POLL: Duration = Duration::from_millis(10);

/// The engine for [`super::SYNTHETIC_ECHO`]. Stateless: any device runs it.
#[derive(Debug, Default)]
pub struct SyntheticEngine;

impl Engine for SyntheticEngine {
    fn run(
        &mut self,
        job: &JobAssignment,
        cancel: &CancelToken,
        events: &mut dyn FnMut(EngineEvent),
    ) -> Result<JobOutput, EngineError> {
        let JobParams::Synthetic(params) = &job.params else {
            return Err(EngineError::wrong_params(job, ModelKind::Synthetic));
        };
        let len = usize::try_from(params.output_bytes).unwrap_or(usize::MAX);
        if len > MAX_OUTPUT_BYTES {
            return Err(EngineError::InvalidParams(format!(
                "output_bytes {len} is over the {MAX_OUTPUT_BYTES} that fit in a frame"
            )));
        }
        stream_over_delay(params, cancel, events)?;
        if params.fail {
            return Err(EngineError::Transient(
                "synthetic failure requested".to_owned(),
            ));
        }
        let data = synthetic_bytes(params.seed, len);
        Ok(JobOutput::Bytes {
            sha256: hex::encode(Sha256::digest(&data)),
            data_b64: base64::engine::general_purpose::STANDARD.encode(&data),
        })
    }
}

/// Spreads the tokens evenly over the delay, as a model decoding at a steady rate would.
fn stream_over_delay(
    params: &SyntheticParams,
    cancel: &CancelToken,
    events: &mut dyn FnMut(EngineEvent),
) -> Result<(), EngineError> {
    let start = Instant::now();
    let delay = Duration::from_millis(params.delay_ms.into());
    let steps = params.stream_tokens + 1;
    for index in 0..params.stream_tokens {
        sleep_until(start + delay * (index + 1) / steps, cancel)?;
        events(EngineEvent::Token {
            index,
            text: format!("tok{index} "),
        });
    }
    sleep_until(start + delay, cancel)
}

fn sleep_until(deadline: Instant, cancel: &CancelToken) -> Result<(), EngineError> {
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(CANCEL_POLL));
    }
}

/// `len` bytes that depend only on `seed`: SHA-256 in counter mode, block `i` being the hash
/// of the seed and `i` (both little-endian u64). Anyone can recompute them to check a result.
pub fn synthetic_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut counter: u64 = 0;
    while out.len() < len {
        let block = Sha256::new()
            .chain_update(seed.to_le_bytes())
            .chain_update(counter.to_le_bytes())
            .finalize();
        let take = (len - out.len()).min(block.len());
        out.extend_from_slice(&block[..take]);
        counter += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn job(params: SyntheticParams) -> JobAssignment {
        JobAssignment {
            id: Uuid::now_v7(),
            model: super::super::SYNTHETIC_ECHO.to_owned(),
            slot: 0,
            params: JobParams::Synthetic(params),
            lease_ms: 10_000,
            attempt: 1,
            upload_url: None,
        }
    }

    fn params() -> SyntheticParams {
        SyntheticParams {
            output_bytes: 100,
            delay_ms: 0,
            stream_tokens: 0,
            seed: 7,
            fail: false,
        }
    }

    fn run(params: SyntheticParams) -> (Result<JobOutput, EngineError>, Vec<EngineEvent>) {
        let mut events = Vec::new();
        let result =
            SyntheticEngine.run(&job(params), &CancelToken::new(), &mut |e| events.push(e));
        (result, events)
    }

    #[test]
    fn bytes_are_deterministic_and_exactly_as_long_as_asked() {
        assert_eq!(synthetic_bytes(7, 100), synthetic_bytes(7, 100));
        assert_ne!(synthetic_bytes(7, 100), synthetic_bytes(8, 100));
        for len in [0, 1, 31, 32, 33, 1000] {
            assert_eq!(synthetic_bytes(1, len).len(), len);
        }
        // A longer output extends a shorter one: the stream depends on the seed alone.
        assert_eq!(synthetic_bytes(7, 100)[..40], synthetic_bytes(7, 40)[..]);
        let first_block = Sha256::new()
            .chain_update(7u64.to_le_bytes())
            .chain_update(0u64.to_le_bytes())
            .finalize();
        assert_eq!(synthetic_bytes(7, 32), first_block.to_vec());
    }

    #[test]
    fn output_carries_the_bytes_and_their_sha256() {
        let (result, _) = run(params());
        let Ok(JobOutput::Bytes { data_b64, sha256 }) = result else {
            panic!("expected bytes, got {result:?}");
        };
        let data = base64::engine::general_purpose::STANDARD
            .decode(data_b64)
            .expect("valid base64");
        assert_eq!(data, synthetic_bytes(7, 100));
        assert_eq!(sha256, hex::encode(Sha256::digest(&data)));
    }

    #[test]
    fn tokens_stream_in_order_within_the_delay() {
        let start = Instant::now();
        let (result, events) = run(SyntheticParams {
            delay_ms: 50,
            stream_tokens: 3,
            ..params()
        });
        assert!(result.is_ok());
        assert!(start.elapsed() >= Duration::from_millis(50));
        let texts: Vec<_> = events
            .iter()
            .map(|EngineEvent::Token { index, text }| (*index, text.as_str()))
            .collect();
        assert_eq!(texts, [(0, "tok0 "), (1, "tok1 "), (2, "tok2 ")]);
    }

    #[test]
    fn requested_failure_is_retryable() {
        let (result, _) = run(SyntheticParams {
            fail: true,
            ..params()
        });
        let err = result.expect_err("fail was requested");
        assert_eq!(err.to_string(), "synthetic failure requested");
        assert!(err.is_retryable());
    }

    #[test]
    fn cancellation_stops_a_long_delay() {
        let cancel = CancelToken::new();
        let canceller = cancel.clone();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            canceller.cancel();
        });
        let start = Instant::now();
        let job = job(SyntheticParams {
            delay_ms: 10_000,
            ..params()
        });
        let result = SyntheticEngine.run(&job, &cancel, &mut |_| {});
        assert_eq!(result, Err(EngineError::Cancelled));
        assert!(start.elapsed() < Duration::from_secs(5));
        thread.join().expect("canceller");
    }

    #[test]
    fn outputs_too_big_for_a_frame_are_refused() {
        let (result, _) = run(SyntheticParams {
            output_bytes: u32::try_from(MAX_OUTPUT_BYTES + 1).expect("fits"),
            ..params()
        });
        assert!(matches!(result, Err(EngineError::InvalidParams(_))));
    }
}
