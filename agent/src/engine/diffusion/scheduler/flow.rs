//! Flux's flow-matching Euler sampler (diffusers' `FlowMatchEulerDiscreteScheduler` with
//! `use_dynamic_shifting`, driven the way `FluxPipeline` drives it).

use tch::{Kind, Tensor};

use super::tables::linspace;
use super::{SchedulerError, check_index, check_steps};

/// The shift parameters of a flow-matching model (FLUX.1-dev's scheduler_config.json).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMatchConfig {
    /// Training timesteps (1000); model timesteps are `sigma * num_train_timesteps`.
    pub num_train_timesteps: usize,
    /// `mu` at `base_image_seq_len` tokens (0.5).
    pub base_shift: f64,
    /// `mu` at `max_image_seq_len` tokens (1.15).
    pub max_shift: f64,
    /// Sequence length of the base shift (256 tokens, a 256×256 image).
    pub base_image_seq_len: usize,
    /// Sequence length of the max shift (4096 tokens, a 1024×1024 image).
    pub max_image_seq_len: usize,
}

impl FlowMatchConfig {
    /// black-forest-labs/FLUX.1-dev.
    pub fn flux_dev() -> Self {
        Self {
            num_train_timesteps: 1000,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
        }
    }

    /// The packed latent sequence length of a `width`×`height` image: one token per 2×2 patch
    /// of the 8× downsampled latents, i.e. `(height / 16) * (width / 16)`.
    pub fn image_seq_len(width: usize, height: usize) -> usize {
        (height / 16) * (width / 16)
    }

    /// The time shift `mu` for `image_seq_len` tokens, linear between the base and max shift
    /// (diffusers' `calculate_shift`); not clamped, as in diffusers.
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        let m = (self.max_shift - self.base_shift)
            / (self.max_image_seq_len as f64 - self.base_image_seq_len as f64);
        let b = self.base_shift - m * self.base_image_seq_len as f64;
        image_seq_len as f64 * m + b
    }
}

/// Flow-matching Euler prepared for a fixed number of steps and an image size.
#[derive(Debug, Clone)]
pub struct FlowMatchEuler {
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    mu: f64,
}

impl FlowMatchEuler {
    /// Prepares `steps` steps for an image of `image_seq_len` packed latent tokens.
    pub fn new(
        config: &FlowMatchConfig,
        steps: usize,
        image_seq_len: usize,
    ) -> Result<Self, SchedulerError> {
        Self::with_mu(config, steps, config.mu(image_seq_len))
    }

    /// Prepares `steps` steps with an explicit time shift `mu`.
    pub fn with_mu(
        config: &FlowMatchConfig,
        steps: usize,
        mu: f64,
    ) -> Result<Self, SchedulerError> {
        check_steps(steps, config.num_train_timesteps)?;
        let exp_mu = mu.exp() as f32;
        let sigmas: Vec<f32> = linspace(1.0, 1.0 / steps as f64, steps)
            .into_iter()
            .map(|t| {
                let t = t as f32;
                exp_mu / (exp_mu + (1.0 / t - 1.0))
            })
            .collect();
        let train = config.num_train_timesteps as f32;
        let timesteps = sigmas.iter().map(|&s| s * train).collect();
        Ok(Self {
            timesteps,
            sigmas: sigmas.into_iter().chain([0.0]).collect(),
            mu,
        })
    }

    /// The timestep of each step (`sigma * 1000`); Flux's transformer takes it divided by 1000.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// The sigma of each step followed by the final one (0).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The time shift in use.
    pub fn mu(&self) -> f64 {
        self.mu
    }

    /// One Euler step along the predicted velocity: `sample + (sigma_next - sigma) * velocity`.
    /// The initial latents are plain standard-normal noise (no scaling, no input scaling).
    pub fn step(
        &self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
    ) -> Result<Tensor, SchedulerError> {
        check_index(step, self.timesteps.len())?;
        let dt = self.sigmas[step + 1] - self.sigmas[step];
        let next = sample.to_kind(Kind::Float) + model_output * f64::from(dt);
        Ok(next.to_kind(model_output.kind()))
    }
}
