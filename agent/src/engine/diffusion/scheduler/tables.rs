//! Noise-schedule tables, computed the way diffusers computes them so the sigmas agree bit for
//! bit: the beta/alpha tables through libtorch in f32 (as diffusers does with torch), the
//! per-request tables in f64 (as diffusers does with numpy) and cast to f32 at the end.

use tch::{Device, Kind, Tensor};

use super::{ScheduleConfig, SchedulerError, TimestepSpacing};

/// `alphas_cumprod` of a "scaled_linear" schedule and the matching `sigmas`, both ascending in
/// training timestep (index 0 is the least noisy).
pub(crate) fn alphas_cumprod_and_sigmas(
    config: &ScheduleConfig,
) -> Result<(Vec<f32>, Vec<f32>), SchedulerError> {
    let options = (Kind::Float, Device::Cpu);
    let steps = i64::try_from(config.num_train_timesteps).map_err(|_| SchedulerError::Config {
        reason: format!(
            "num_train_timesteps {} is too large",
            config.num_train_timesteps
        ),
    })?;
    let betas = Tensor::f_linspace(
        config.beta_start.sqrt(),
        config.beta_end.sqrt(),
        steps,
        options,
    )?
    .f_pow_tensor_scalar(2)?;
    let alphas = betas.f_ones_like()?.f_sub(&betas)?;
    let cumprod = alphas.f_cumprod(0, Kind::Float)?;
    let sigmas = cumprod
        .f_ones_like()?
        .f_sub(&cumprod)?
        .f_div(&cumprod)?
        .f_pow_tensor_scalar(0.5)?;
    Ok((
        Vec::<f32>::try_from(&cumprod)?,
        Vec::<f32>::try_from(&sigmas)?,
    ))
}

/// numpy's `linspace(start, stop, num)` in f64, endpoint included.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = values.last_mut() {
        *last = stop;
    }
    values
}

/// Timesteps (descending) for `steps` inference steps, as the Euler family and DDIM space them.
/// `Linspace` keeps numpy's fractional values; DDIM rounds them itself.
pub(crate) fn spaced_timesteps(
    spacing: TimestepSpacing,
    config: &ScheduleConfig,
    steps: usize,
) -> Vec<f64> {
    let train = config.num_train_timesteps;
    let mut timesteps: Vec<f64> = match spacing {
        TimestepSpacing::Linspace => linspace(0.0, (train - 1) as f64, steps)
            .into_iter()
            .map(|t| f64::from(t as f32))
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = train / steps;
            (0..steps)
                .map(|i| (i * ratio + config.steps_offset) as f64)
                .collect()
        }
    };
    timesteps.reverse();
    timesteps
}

/// numpy's `interp(x, arange(len(table)), table)` in f64.
pub(crate) fn interp(x: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if x <= 0.0 {
        return f64::from(table[0]);
    }
    if x >= last as f64 {
        return f64::from(table[last]);
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return f64::from(table[j]);
    }
    let slope = f64::from(table[j + 1]) - f64::from(table[j]);
    slope * (x - j as f64) + f64::from(table[j])
}

/// Karras et al. (2022) sigmas between the table's extremes, rho = 7, descending.
pub(crate) fn karras_sigmas(sigmas: &[f32], steps: usize) -> Vec<f64> {
    let rho = 7.0_f64;
    let sigma_min = f64::from(sigmas[0]);
    let sigma_max = f64::from(sigmas[sigmas.len() - 1]);
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
        .collect()
}

/// The (fractional) training timestep whose sigma is `sigma`, interpolating in log-sigma space
/// like diffusers' `_sigma_to_t`. `log_sigmas` are the f32 logs of the ascending table.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let low_idx = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - f64::from(l) >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let high_idx = low_idx + 1;
    let low = f64::from(log_sigmas[low_idx]);
    let high = f64::from(log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}
