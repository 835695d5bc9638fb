//! `[review]` in the coordinator's config: how often the reviewer audits, where honest results
//! end and cheats begin, and what happens to a GPU that keeps failing.

use serde::{Deserialize, Serialize};

use super::similarity::Thresholds;
use crate::ledger::Scope;

/// `[review]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewConfig {
    /// Runs the reviewer. Off, completed jobs are not audited (admins can still slash).
    pub enabled: bool,
    /// How often the reviewer looks for finished jobs and finished re-executions, in ms.
    pub interval_ms: u64,
    /// A GPU's every job is audited until it has this many valid results in a row.
    pub warm_up: u32,
    /// A GPU in its warm-up may have at most this many jobs running or awaiting review at
    /// once (while a validator is online to review them), so a cheat cannot race ahead of
    /// its audits. 0 turns the cap off.
    pub probation_jobs: u32,
    /// After the warm-up a job is audited with probability 1 / (valid results in a row), but
    /// never less than this.
    pub audit_floor: f64,
    /// Probe jobs per consumer job: copies of a recent job with a fresh seed, queued like any
    /// job (any agent may get one, and it pays like one) and always re-executed on a
    /// validator. 0 turns probes off.
    pub probe_rate: f64,
    /// Challenge each GPU (not validators) with a model-file hash when it connects.
    pub challenge_on_connect: bool,
    /// Model-file challenges per reviewed job, on top of those at connection and after
    /// failed checks. 0 turns them off.
    pub challenge_rate: f64,
    /// A re-execution still unfinished after this many seconds leaves its review unverified.
    pub validation_timeout_s: u64,
    /// Reported timings may exceed the time the coordinator measured between handing out the
    /// job and receiving its result by this many milliseconds (clock granularity) …
    pub latency_slack_ms: u64,
    /// … plus this share of the measured time.
    pub latency_slack_share: f64,
    /// A GPU of the tier table must do a job at least this many times faster than the median
    /// CPU validator did the same model's work (per pixel-step or per generated token), or
    /// its claim to be that GPU is implausible. 0 turns the check off.
    pub min_gpu_speedup_over_cpu: f64,
    /// Image re-executions: where an honest re-render ends.
    pub image: Thresholds,
    /// LLM re-executions (teacher forcing): where honest sampling ends.
    pub llm: LlmThresholds,
    /// What failed checks lead to.
    pub policy: Policy,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_ms: 500,
            warm_up: 10,
            probation_jobs: 4,
            audit_floor: 0.05,
            probe_rate: 0.01,
            challenge_on_connect: true,
            challenge_rate: 0.01,
            validation_timeout_s: 600,
            latency_slack_ms: 50,
            latency_slack_share: 0.02,
            min_gpu_speedup_over_cpu: 3.0,
            image: Thresholds::default(),
            llm: LlmThresholds::default(),
            policy: Policy::default(),
        }
    }
}

/// Limits on a teacher-forced completion: the per-token rates honest agents reach at least,
/// and how unlikely a shortfall must be before it counts (see [`LlmThresholds::judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmThresholds {
    /// The least per-token probability that an honest agent draws the same token as the
    /// validator's seeded sampler. Replaying the seed on the same model gives nearly every
    /// token; bf16 against f32 (or another thread count) moves some draws across a
    /// boundary, so this stays well below 1.
    pub honest_seeded_rate: f64,
    /// The least per-token probability that an honest agent's token is one the request's
    /// sampling could draw under the validator's probabilities.
    pub honest_support_rate: f64,
    /// A completion fails when honest sampling would fall that short with at most this
    /// probability: the false-alarm rate of one audit (the policy wants several failures
    /// before it acts). With the defaults a completion needs 11 tokens or more before even
    /// a total disagreement with the seeded draws can fail it.
    pub false_alarm: f64,
}

impl Default for LlmThresholds {
    fn default() -> Self {
        Self {
            honest_seeded_rate: 0.6,
            honest_support_rate: 0.95,
            false_alarm: 1e-4,
        }
    }
}

/// What the reviewer does with failed checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Slash and suspend without an admin once a GPU has this many failed checks within
    /// `window_s`; 0 leaves every case to an admin.
    pub auto_slash_failures: u32,
    pub window_s: u64,
    /// Share an automatic slash takes of the points (of the case's kind) earned in the
    /// current season by `slash_scope`.
    pub slash_fraction: f64,
    /// `wallet` (all its GPUs' points) or `miner` (only the failing GPU's).
    pub slash_scope: Scope,
    /// Whether an automatic slash also suspends the GPU.
    pub suspend: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            auto_slash_failures: 2,
            window_s: 24 * 3600,
            slash_fraction: 1.0,
            slash_scope: Scope::Wallet,
            suspend: true,
        }
    }
}

impl ReviewConfig {
    pub fn validate(&self) -> Result<(), String> {
        let share = |name: &str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "review.{name} must be between 0 and 1, not {value}"
                ))
            }
        };
        share("audit_floor", self.audit_floor)?;
        share("probe_rate", self.probe_rate)?;
        share("challenge_rate", self.challenge_rate)?;
        share("latency_slack_share", self.latency_slack_share)?;
        share("llm.honest_seeded_rate", self.llm.honest_seeded_rate)?;
        share("llm.honest_support_rate", self.llm.honest_support_rate)?;
        if !(self.llm.false_alarm > 0.0 && self.llm.false_alarm < 0.5) {
            return Err(format!(
                "review.llm.false_alarm must be between 0 and 0.5 (a probability such as \
                 1e-6), not {}",
                self.llm.false_alarm
            ));
        }
        share("image.min_ssim", self.image.min_ssim)?;
        if self.min_gpu_speedup_over_cpu.is_nan() || self.min_gpu_speedup_over_cpu < 0.0 {
            return Err("review.min_gpu_speedup_over_cpu must be 0 (off) or more".to_owned());
        }
        if self.interval_ms == 0 {
            return Err("review.interval_ms must be at least 1".to_owned());
        }
        if self.validation_timeout_s == 0 {
            return Err("review.validation_timeout_s must be at least 1".to_owned());
        }
        if !(self.policy.slash_fraction > 0.0 && self.policy.slash_fraction <= 1.0) {
            return Err(format!(
                "review.policy.slash_fraction must be in (0, 1], not {}",
                self.policy.slash_fraction
            ));
        }
        if self.policy.auto_slash_failures > 0 && self.policy.window_s == 0 {
            return Err(
                "review.policy.window_s must be at least 1 when auto_slash_failures is set"
                    .to_owned(),
            );
        }
        Ok(())
    }
}
