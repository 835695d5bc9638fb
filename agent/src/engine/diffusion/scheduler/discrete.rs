//! The SD samplers over a discrete (1000-step) training schedule.

use tch::{Kind, Tensor};

use super::tables::{
    alphas_cumprod_and_sigmas, interp, karras_sigmas, linspace, sigma_to_t, spaced_timesteps,
};
use super::{
    SamplerKind, ScheduleConfig, SchedulerError, TimestepSpacing, check_index, check_steps,
};

/// One sampler prepared for a fixed number of inference steps. Build one per request.
#[derive(Debug)]
pub struct Scheduler {
    kind: SamplerKind,
    timesteps: Vec<f32>,
    /// Per-step sigmas plus the final one (0); empty for DDIM, which has none.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    /// DDIM only: the training table and how far one step moves in it.
    alphas_cumprod: Vec<f32>,
    step_ratio: usize,
    /// DPM++ only: the data prediction of the previous step and the next step index.
    previous_x0: Option<Tensor>,
    next_step: usize,
}

impl Scheduler {
    /// Prepares `kind` for `steps` inference steps of a model trained with `config`.
    pub fn new(
        kind: SamplerKind,
        config: &ScheduleConfig,
        steps: usize,
    ) -> Result<Self, SchedulerError> {
        check_steps(steps, config.num_train_timesteps)?;
        let (alphas_cumprod, train_sigmas) = alphas_cumprod_and_sigmas(config)?;
        let spacing = config.spacing_for(kind);
        let mut scheduler = Self {
            kind,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            init_noise_sigma: 1.0,
            alphas_cumprod: Vec::new(),
            step_ratio: config.num_train_timesteps / steps,
            previous_x0: None,
            next_step: 0,
        };
        match kind {
            SamplerKind::Euler | SamplerKind::EulerAncestral => {
                let timesteps = spaced_timesteps(spacing, config, steps);
                scheduler.sigmas = timesteps
                    .iter()
                    .map(|&t| interp(t, &train_sigmas) as f32)
                    .chain([0.0])
                    .collect();
                scheduler.timesteps = timesteps.into_iter().map(|t| t as f32).collect();
                let max = scheduler.sigmas.iter().copied().fold(0.0_f32, f32::max);
                scheduler.init_noise_sigma = match spacing {
                    TimestepSpacing::Linspace => max,
                    TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
                };
            }
            SamplerKind::DpmPp2mKarras => {
                let sigmas = karras_sigmas(&train_sigmas, steps);
                let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
                scheduler.timesteps = sigmas
                    .iter()
                    .map(|&s| sigma_to_t(s, &log_sigmas).round_ties_even() as f32)
                    .collect();
                scheduler.sigmas = sigmas.iter().map(|&s| s as f32).chain([0.0]).collect();
            }
            SamplerKind::Ddim => {
                scheduler.timesteps = match spacing {
                    TimestepSpacing::Linspace => {
                        linspace(0.0, (config.num_train_timesteps - 1) as f64, steps)
                            .into_iter()
                            .rev()
                            .map(|t| t.round_ties_even() as f32)
                            .collect()
                    }
                    TimestepSpacing::Leading => spaced_timesteps(spacing, config, steps)
                        .into_iter()
                        .map(|t| t as f32)
                        .collect(),
                };
                scheduler.alphas_cumprod = alphas_cumprod;
            }
        }
        Ok(scheduler)
    }

    /// The sampler.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The timestep the model is conditioned on at each step (whole numbers except for Euler
    /// with linspace spacing, e.g. SD 1.5 at 25 steps: 999, 957.375, ...).
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// The noise level of each step followed by the final one (0); empty for DDIM.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The initial latents are standard-normal noise times this.
    pub fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    /// The model input for step `step`: the sample divided by `sqrt(sigma^2 + 1)` for the
    /// Euler family, unchanged for DPM++ and DDIM.
    pub fn scale_model_input(
        &self,
        sample: &Tensor,
        step: usize,
    ) -> Result<Tensor, SchedulerError> {
        check_index(step, self.timesteps.len())?;
        Ok(match self.kind {
            SamplerKind::Euler | SamplerKind::EulerAncestral => {
                let sigma = self.sigmas[step];
                sample / f64::from((sigma * sigma + 1.0).sqrt())
            }
            SamplerKind::DpmPp2mKarras | SamplerKind::Ddim => sample.shallow_clone(),
        })
    }

    /// Moves `sample` from step `step` to the next noise level given the model's noise
    /// prediction. `noise` is required by [`SamplerKind::EulerAncestral`] (one standard-normal
    /// tensor per step, the last step included, as diffusers draws them) and ignored otherwise.
    /// DPM++ keeps the previous step's prediction, so it must be stepped in order.
    pub fn step(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor, SchedulerError> {
        check_index(step, self.timesteps.len())?;
        let sample = sample.to_kind(Kind::Float);
        let next = match self.kind {
            SamplerKind::Euler => self.euler(model_output, step, &sample),
            SamplerKind::EulerAncestral => {
                let noise = noise.ok_or(SchedulerError::NoiseRequired { sampler: self.kind })?;
                self.euler_ancestral(model_output, step, &sample, noise)
            }
            SamplerKind::DpmPp2mKarras => self.dpm_solver_pp(model_output, step, &sample)?,
            SamplerKind::Ddim => self.ddim(model_output, step, &sample),
        };
        Ok(next.to_kind(model_output.kind()))
    }

    fn euler(&self, model_output: &Tensor, step: usize, sample: &Tensor) -> Tensor {
        let sigma = self.sigmas[step];
        let pred_original = sample - model_output * f64::from(sigma);
        let derivative = (sample - pred_original) / f64::from(sigma);
        let dt = self.sigmas[step + 1] - sigma;
        sample + derivative * f64::from(dt)
    }

    fn euler_ancestral(
        &self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
        noise: &Tensor,
    ) -> Tensor {
        let sigma_from = self.sigmas[step];
        let sigma_to = self.sigmas[step + 1];
        let pred_original = sample - model_output * f64::from(sigma_from);
        let sigma_up = (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).sqrt();
        let derivative = (sample - pred_original) / f64::from(sigma_from);
        let dt = sigma_down - sigma_from;
        let noise = noise
            .to_device(model_output.device())
            .to_kind(model_output.kind());
        sample + derivative * f64::from(dt) + noise * f64::from(sigma_up)
    }

    fn dpm_solver_pp(
        &mut self,
        model_output: &Tensor,
        step: usize,
        sample: &Tensor,
    ) -> Result<Tensor, SchedulerError> {
        if step != self.next_step {
            return Err(SchedulerError::OutOfOrder {
                sampler: self.kind,
                expected: self.next_step,
                got: step,
            });
        }
        let s0 = VpPoint::new(self.sigmas[step]);
        let t = VpPoint::new(self.sigmas[step + 1]);
        let x0 = (sample - model_output * f64::from(s0.sigma)) / f64::from(s0.alpha);
        let h = t.lambda - s0.lambda;
        let coefficient = t.alpha * ((-h).exp() - 1.0);
        // The last step (final sigma 0) is first order, like diffusers' `lower_order_final`.
        let last = step + 1 == self.timesteps.len();
        let next = match self.previous_x0.as_ref().filter(|_| !last) {
            None => sample * f64::from(t.sigma / s0.sigma) - &x0 * f64::from(coefficient),
            Some(previous_x0) => {
                let s1 = VpPoint::new(self.sigmas[step - 1]);
                let r0 = (s0.lambda - s1.lambda) / h;
                let d1 = (&x0 - previous_x0) * f64::from(1.0 / r0);
                sample * f64::from(t.sigma / s0.sigma)
                    - &x0 * f64::from(coefficient)
                    - d1 * f64::from(0.5 * coefficient)
            }
        };
        self.previous_x0 = Some(x0);
        self.next_step = step + 1;
        Ok(next)
    }

    fn ddim(&self, model_output: &Tensor, step: usize, sample: &Tensor) -> Tensor {
        let timestep = self.timesteps[step] as usize;
        let alpha_prod = self.alphas_cumprod[timestep];
        // Past the start of the table diffusers uses `alphas_cumprod[0]` (set_alpha_to_one false).
        let alpha_prod_prev = timestep
            .checked_sub(self.step_ratio)
            .map_or(self.alphas_cumprod[0], |prev| self.alphas_cumprod[prev]);
        let beta_prod = 1.0 - alpha_prod;
        let pred_original =
            (sample - model_output * f64::from(beta_prod.sqrt())) / f64::from(alpha_prod.sqrt());
        // eta = 0: no variance term, so the direction takes all of `1 - alpha_prod_prev`.
        let direction = model_output * f64::from((1.0 - alpha_prod_prev).sqrt());
        pred_original * f64::from(alpha_prod_prev.sqrt()) + direction
    }
}

/// A noise level in the variance-preserving parameterisation DPM-Solver works in.
struct VpPoint {
    alpha: f32,
    sigma: f32,
    lambda: f32,
}

impl VpPoint {
    fn new(sigma: f32) -> Self {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        let sigma = sigma * alpha;
        Self {
            alpha,
            sigma,
            lambda: alpha.ln() - sigma.ln(),
        }
    }
}
