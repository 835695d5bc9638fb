//! Points rules from the seed, as pure functions over the model registry and the config.
//!
//! - Image jobs earn **Waifu points**: `width × height × steps ÷ (512 × 512 × 20) × multiplier`.
//! - LLM jobs earn **Llama points**: `(prompt + completion tokens) ÷ 1000 × multiplier`.
//! - Latency, as the coordinator measured it: full points up to the model's target latency,
//!   falling linearly to nothing at its deadline; late results earn nothing.
//! - NFT boost: a wallet holding n NFTs boosts at most 3·n of its GPUs (see [`boosted_miners`]
//!   for which ones), by the multiplier the config's table gives for n.
//!
//! Amounts are integer micro-points (1 point = 1,000,000), computed with exact integer
//! arithmetic and rounded down once per factor, so a ledger of them sums exactly.

mod boost;
pub mod rules;
pub mod season;
#[cfg(test)]
mod tests;

use infermine_protocol::ModelKind;
use serde::{Deserialize, Serialize};

use crate::registry::ModelSpec;

pub use boost::{BoostTier, GPUS_PER_NFT, PointsConfig, boosted_miners};
pub use season::{Season, SeasonWindow};

/// Millionths of a point: the unit of every amount in the ledger.
pub type MicroPoints = i64;

/// One point in micro-points.
pub const POINT: MicroPoints = 1_000_000;

/// The two currencies of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PointsKind {
    /// For image generation.
    Waifu,
    /// For LLM inference.
    Llama,
}

impl PointsKind {
    /// The kind a model earns, or `None` for models that earn nothing (synthetic).
    pub fn of(kind: ModelKind) -> Option<Self> {
        match kind {
            ModelKind::Image => Some(Self::Waifu),
            ModelKind::Llm => Some(Self::Llama),
            ModelKind::Synthetic => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waifu => "waifu",
            Self::Llama => "llama",
        }
    }
}

/// What a job did, as far as points are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    Image {
        width: u32,
        height: u32,
        steps: u32,
    },
    Llm {
        prompt_tokens: u32,
        completion_tokens: u32,
    },
}

/// The reference image job: 512 × 512 pixels, 20 steps, earns `multiplier` points.
const REFERENCE_PIXEL_STEPS: u128 = 512 * 512 * 20;
/// Tokens per multiplier's worth of Llama points.
const REFERENCE_TOKENS: u128 = 1000;

/// A multiplier as exact millionths (multipliers in the registry have at most 6 decimals).
pub fn to_millionths(multiplier: f64) -> u64 {
    // Finite and ≥ 0 by registry validation; the cast saturates anything else to a bound.
    (multiplier * 1e6).round() as u64
}

/// Points for the work before latency and boost, or `None` if the model earns none or the
/// work does not fit the model's kind.
pub fn base(model: &ModelSpec, work: Work) -> Option<(PointsKind, MicroPoints)> {
    let kind = PointsKind::of(model.kind)?;
    let multiplier = u128::from(to_millionths(model.points_multiplier));
    let micro = match (kind, work) {
        (
            PointsKind::Waifu,
            Work::Image {
                width,
                height,
                steps,
            },
        ) => {
            u128::from(width) * u128::from(height) * u128::from(steps) * multiplier
                / REFERENCE_PIXEL_STEPS
        }
        (
            PointsKind::Llama,
            Work::Llm {
                prompt_tokens,
                completion_tokens,
            },
        ) => {
            (u128::from(prompt_tokens) + u128::from(completion_tokens)) * multiplier
                / REFERENCE_TOKENS
        }
        _ => return None,
    };
    Some((
        kind,
        MicroPoints::try_from(micro).unwrap_or(MicroPoints::MAX),
    ))
}

/// The latency factor in millionths: 1,000,000 up to the target, falling linearly to 0 at
/// the deadline, 0 after it.
pub fn latency_factor(latency_ms: u64, target_ms: u64, deadline_ms: u64) -> u64 {
    if latency_ms <= target_ms {
        1_000_000
    } else if latency_ms >= deadline_ms || deadline_ms <= target_ms {
        0
    } else {
        (deadline_ms - latency_ms) * 1_000_000 / (deadline_ms - target_ms)
    }
}

/// How one job's points were reached; stored with its ledger entry so every amount explains
/// itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accrual {
    pub kind: PointsKind,
    /// Before latency and boost.
    pub base: MicroPoints,
    pub multiplier_millionths: u64,
    pub latency_ms: u64,
    pub latency_factor_millionths: u64,
    /// 1,000,000 when no boost applies.
    pub boost_millionths: u64,
    pub amount: MicroPoints,
}

/// The points a job earns: base × latency factor × boost. `None` for models that earn none.
pub fn accrue(
    model: &ModelSpec,
    work: Work,
    latency_ms: u64,
    boost_millionths: u64,
) -> Option<Accrual> {
    let (kind, base) = base(model, work)?;
    let latency = latency_factor(latency_ms, model.target_latency_ms, model.deadline_ms);
    let after_latency = i128::from(base) * i128::from(latency) / 1_000_000;
    let amount = after_latency * i128::from(boost_millionths) / 1_000_000;
    Some(Accrual {
        kind,
        base,
        multiplier_millionths: to_millionths(model.points_multiplier),
        latency_ms,
        latency_factor_millionths: latency,
        boost_millionths,
        amount: MicroPoints::try_from(amount).unwrap_or(MicroPoints::MAX),
    })
}
