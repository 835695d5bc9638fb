//! Samplers (schedulers) for the diffusion engine, ported from Hugging Face diffusers so that
//! a request gives the same latents here as in diffusers for the same model outputs.
//!
//! - [`Scheduler`]: the SD 1.5 / SDXL samplers named by a request ([`SamplerKind`]): Euler
//!   (`EulerDiscreteScheduler`), Euler ancestral (`EulerAncestralDiscreteScheduler`),
//!   DPM++ 2M Karras (`DPMSolverMultistepScheduler`, `use_karras_sigmas=True`) and DDIM
//!   (`DDIMScheduler`, eta 0), configured by a [`ScheduleConfig`].
//! - [`FlowMatchEuler`]: Flux's `FlowMatchEulerDiscreteScheduler` with dynamic shifting.
//!
//! A denoising loop reads [`Scheduler::timesteps`], scales the initial noise by
//! [`Scheduler::init_noise_sigma`], and for each step index feeds the model
//! [`Scheduler::scale_model_input`] and the result to [`Scheduler::step`]. Numerics follow
//! diffusers: sample math in f32, the result cast to the model output's kind.
//!
//! `scripts/fixtures/diffusion_schedulers.py` records diffusers' own outputs;
//! `agent/tests/diffusion_schedulers.rs` checks this module against them.

mod discrete;
mod flow;
mod tables;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

pub use discrete::Scheduler;
pub use flow::{FlowMatchConfig, FlowMatchEuler};

/// The SD samplers a request can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// `euler`: diffusers' `EulerDiscreteScheduler` (deterministic).
    Euler,
    /// `euler_a`: `EulerAncestralDiscreteScheduler`; adds caller-supplied noise every step.
    EulerAncestral,
    /// `dpmpp_2m_karras`: `DPMSolverMultistepScheduler`, DPM-Solver++ order 2, Karras sigmas.
    DpmPp2mKarras,
    /// `ddim`: `DDIMScheduler` with eta 0 (deterministic).
    Ddim,
}

impl SamplerKind {
    /// Every sampler, in the order error messages list them.
    pub const ALL: [SamplerKind; 4] = [
        SamplerKind::Euler,
        SamplerKind::EulerAncestral,
        SamplerKind::DpmPp2mKarras,
        SamplerKind::Ddim,
    ];

    /// The name requests use for this sampler.
    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::Euler => "euler",
            SamplerKind::EulerAncestral => "euler_a",
            SamplerKind::DpmPp2mKarras => "dpmpp_2m_karras",
            SamplerKind::Ddim => "ddim",
        }
    }

    /// Whether [`Scheduler::step`] needs a noise tensor for every step.
    pub fn needs_noise(self) -> bool {
        matches!(self, SamplerKind::EulerAncestral)
    }

    fn accepted_names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamplerKind {
    type Err = SchedulerError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| SchedulerError::UnknownSampler {
                name: name.to_owned(),
                accepted: Self::accepted_names(),
            })
    }
}

/// How inference timesteps are picked from the training timesteps (diffusers'
/// `timestep_spacing`; "trailing" is not used by the supported pipelines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// `linspace(0, T-1, N)` reversed, fractional for the Euler family (999, 666, 333, 0).
    Linspace,
    /// `arange(N) * (T / N) + steps_offset` reversed (751, 501, 251, 1 for N = 4).
    Leading,
}

/// The training noise schedule of an SD model (diffusers' scheduler_config.json), restricted to
/// what SD 1.5 and SDXL use: `beta_schedule = "scaled_linear"`, `prediction_type = "epsilon"`,
/// `set_alpha_to_one = false`, `clip_sample = false`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    /// Training timesteps (1000).
    pub num_train_timesteps: usize,
    /// First beta of the scaled-linear schedule (0.00085).
    pub beta_start: f64,
    /// Last beta of the scaled-linear schedule (0.012).
    pub beta_end: f64,
    /// Added to "leading" timesteps (1).
    pub steps_offset: usize,
    /// The published `timestep_spacing`; `None` when the config does not set it, in which case
    /// each sampler uses diffusers' default for its class, as `from_config` does: linspace for
    /// Euler, Euler ancestral and DPM++, leading for DDIM.
    pub timestep_spacing: Option<TimestepSpacing>,
}

impl ScheduleConfig {
    /// stable-diffusion-v1-5: a PNDMScheduler config without `timestep_spacing`.
    pub fn sd15() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            steps_offset: 1,
            timestep_spacing: None,
        }
    }

    /// stable-diffusion-xl-base-1.0: an EulerDiscreteScheduler config with "leading" spacing.
    pub fn sdxl() -> Self {
        Self {
            timestep_spacing: Some(TimestepSpacing::Leading),
            ..Self::sd15()
        }
    }

    fn spacing_for(&self, kind: SamplerKind) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(match kind {
            SamplerKind::Ddim => TimestepSpacing::Leading,
            _ => TimestepSpacing::Linspace,
        })
    }
}

/// What can go wrong building or driving a sampler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The request named a sampler this engine does not have.
    #[error("unknown sampler `{name}`; use one of: {accepted}")]
    UnknownSampler {
        /// The name as requested.
        name: String,
        /// The accepted names, comma separated.
        accepted: String,
    },
    /// The step count is zero or above the training timesteps.
    #[error("{steps} inference steps requested; use between 1 and {max} steps")]
    InvalidSteps {
        /// Steps requested.
        steps: usize,
        /// The largest accepted count (the training timesteps).
        max: usize,
    },
    /// A step index past the schedule.
    #[error("step index {step} is out of range for a {steps}-step schedule; use 0..{steps}")]
    StepOutOfRange {
        /// The index passed.
        step: usize,
        /// Steps in the schedule.
        steps: usize,
    },
    /// A multistep sampler was stepped out of order.
    #[error(
        "sampler `{sampler}` remembers earlier steps and must be stepped in order: expected step \
         {expected}, got {got}; build a new scheduler to start over"
    )]
    OutOfOrder {
        /// The sampler.
        sampler: SamplerKind,
        /// The next index it can take.
        expected: usize,
        /// The index passed.
        got: usize,
    },
    /// An ancestral step was called without noise.
    #[error(
        "sampler `{sampler}` adds fresh noise at every step; pass a standard-normal tensor shaped \
         like the latents (drawn on the CPU from the request's seeded generator)"
    )]
    NoiseRequired {
        /// The sampler.
        sampler: SamplerKind,
    },
    /// A configuration this module cannot build a schedule for.
    #[error("invalid noise schedule config: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// libtorch failed computing the schedule tables.
    #[error("libtorch failed while computing the noise schedule: {0}")]
    Torch(#[from] tch::TchError),
}

fn check_steps(steps: usize, max: usize) -> Result<(), SchedulerError> {
    if steps == 0 || steps > max {
        return Err(SchedulerError::InvalidSteps { steps, max });
    }
    Ok(())
}

fn check_index(step: usize, steps: usize) -> Result<(), SchedulerError> {
    if step >= steps {
        return Err(SchedulerError::StepOutOfRange { step, steps });
    }
    Ok(())
}
