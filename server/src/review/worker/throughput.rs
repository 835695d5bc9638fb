//! The throughput check: a GPU of the tier table must outrun the CPU validators, whose
//! re-executions the reviewer times as they finish.

use infermine_protocol::{JobOutput, JobParams};
use serde_json::json;

use super::{BASELINE_MIN_SAMPLES, BASELINE_SAMPLES, Failure, Reviewer, evidence};
use crate::db::DbError;
use crate::miners;
use crate::review::cases::Check;
use crate::review::store::Unreviewed;

impl Reviewer {
    /// A GPU of the tier table that works no faster than the CPU validators is not that GPU.
    pub(super) async fn throughput_check(
        &self,
        job: &Unreviewed,
        params: &JobParams,
        output: &JobOutput,
        miner_id: &str,
    ) -> Result<Option<Failure>, DbError> {
        let speedup = self.config.min_gpu_speedup_over_cpu;
        let (Some(units), Some(server_ms), Some(baseline)) = (
            work_units(params, output),
            server_ms(job),
            self.cpu_baseline(&job.model),
        ) else {
            return Ok(None);
        };
        if speedup <= 0.0 {
            return Ok(None);
        }
        let Some(gpu) = miners::gpu_name(&self.state.db, miner_id).await? else {
            return Ok(None);
        };
        if self
            .state
            .jobs
            .registry()
            .gpu_tiers()
            .tier_of(&gpu)
            .is_none()
        {
            // A CPU, or a GPU the table does not know: nothing to hold it to.
            return Ok(None);
        }
        let ms_per_unit = server_ms as f64 / units;
        let slowest_plausible = baseline / speedup;
        Ok((ms_per_unit > slowest_plausible).then(|| Failure {
            check: Check::Throughput,
            evidence: evidence(json!({
                "problem": format!(
                    "the GPU claims to be a {gpu} but took {ms_per_unit:.3} ms per unit of work;                      CPU validators take {baseline:.3}, and a {gpu} is expected to be at least                      {speedup}x faster"
                ),
                "claimed_gpu": gpu,
                "server_ms": server_ms,
                "work_units": units,
                "ms_per_unit": ms_per_unit,
                "cpu_validator_ms_per_unit": baseline,
                "min_speedup": speedup,
            })),
        }))
    }

    /// The median of the CPU validators' recent timings for `model`, once there are enough.
    fn cpu_baseline(&self, model: &str) -> Option<f64> {
        let samples = self.cpu_baselines.get(model)?;
        if samples.len() < BASELINE_MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<f64> = samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        Some(sorted[sorted.len() / 2])
    }

    /// Learns from a finished re-execution how fast a CPU validator runs its model.
    pub(super) async fn learn_speed(&mut self, rerun: &Unreviewed) -> Result<(), DbError> {
        let (Some(validator), Some(server_ms)) = (rerun.miner_id.as_deref(), server_ms(rerun))
        else {
            return Ok(());
        };
        let (Ok(params), Some(Ok(output))) = (
            serde_json::from_str::<JobParams>(&rerun.params),
            rerun
                .output
                .as_deref()
                .map(serde_json::from_str::<JobOutput>),
        ) else {
            return Ok(());
        };
        let Some(units) = work_units(&params, &output) else {
            return Ok(());
        };
        let Some(gpu) = miners::gpu_name(&self.state.db, validator).await? else {
            return Ok(());
        };
        if self
            .state
            .jobs
            .registry()
            .gpu_tiers()
            .tier_of(&gpu)
            .is_some()
        {
            return Ok(());
        }
        let samples = self.cpu_baselines.entry(rerun.model.clone()).or_default();
        if samples.len() == BASELINE_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(server_ms as f64 / units);
        Ok(())
    }
}

/// How much work a job asked for, in the units the throughput check compares: pixel-steps
/// for images, tokens for LLMs (generated ones; scored ones for a validator's teacher
/// forcing, which runs them in one pass and so is the cheaper of the two).
fn work_units(params: &JobParams, output: &JobOutput) -> Option<f64> {
    let units = match (params, output) {
        (JobParams::Image(p), _) => f64::from(p.width) * f64::from(p.height) * f64::from(p.steps),
        (JobParams::Llm(_), JobOutput::Text { usage, .. }) => f64::from(usage.completion_tokens),
        (JobParams::LlmScore(p), _) => p.token_ids.len() as f64,
        _ => return None,
    };
    (units > 0.0).then_some(units)
}

/// The time the coordinator measured between handing out a job and recording its result.
fn server_ms(job: &Unreviewed) -> Option<u64> {
    Some((job.finished_ms? - job.assigned_ms?).max(0) as u64)
}
