//! `GET /api/v1/rules`: the points rules in force, from the registry and the config, so the
//! portal shows them without hard-coding any number.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::season::{self, SeasonWindow};
use super::{BoostTier, PointsKind, boost::GPUS_PER_NFT};
use crate::AppState;
use crate::db::now_ms;

#[derive(Debug, Serialize, ToSchema)]
pub struct Rules {
    pub formulas: Formulas,
    pub models: Vec<ModelRule>,
    /// GPUs by tier, lowest first; a model's minimum is the lowest tier of its `min_gpu` list.
    pub gpu_tiers: Vec<GpuTier>,
    pub boosts: Boosts,
    pub seasons: Seasons,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Seasons {
    /// The season in force (`all time` when the operator configured none).
    pub current: SeasonWindow,
    /// Every configured season, oldest first.
    pub all: Vec<SeasonWindow>,
    /// How a slash is measured against seasons.
    pub slashing: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Formulas {
    pub waifu: &'static str,
    pub llama: &'static str,
    pub latency: &'static str,
    pub unit: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelRule {
    pub id: String,
    /// `waifu` or `llama`; absent for models that earn nothing.
    pub points_kind: Option<PointsKind>,
    pub multiplier: f64,
    pub discontinued: bool,
    pub min_gpu: Vec<String>,
    pub min_gpu_tier: u32,
    pub min_vram_mb: u64,
    pub target_latency_ms: u64,
    pub deadline_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GpuTier {
    pub name: String,
    pub tier: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Boosts {
    pub gpus_per_nft: u64,
    pub nft: Vec<BoostTier>,
    /// Empty while stHEU boosts are off.
    pub stheu: Vec<BoostTier>,
}

/// The points rules in force: formulas, each model's multiplier and minimum GPU, the GPU
/// tiers and the boost tables.
#[utoipa::path(get, path = "/api/v1/rules", tag = "portal",
    responses((status = 200, description = "the rules in force", body = Rules)))]
pub async fn rules(State(state): State<AppState>) -> Json<Rules> {
    let registry = state.jobs.registry();
    let points = &state.config.points;
    Json(Rules {
        formulas: Formulas {
            waifu: "width × height × steps ÷ (512 × 512 × 20) × multiplier",
            llama: "(prompt tokens + completion tokens) ÷ 1000 × multiplier",
            latency: "× 1 up to the model's target latency, falling linearly to 0 at its deadline (as the coordinator measures it)",
            unit: "amounts are kept in micro-points (1 point = 1,000,000)",
        },
        models: registry
            .models()
            .map(|m| ModelRule {
                id: m.id.clone(),
                points_kind: PointsKind::of(m.kind),
                multiplier: m.points_multiplier,
                discontinued: m.discontinued,
                min_gpu: m.min_gpu.clone(),
                min_gpu_tier: m.min_gpu_tier,
                min_vram_mb: m.min_vram_mb,
                target_latency_ms: m.target_latency_ms,
                deadline_ms: m.deadline_ms,
            })
            .collect(),
        gpu_tiers: registry
            .gpu_tiers()
            .iter()
            .map(|(name, tier)| GpuTier {
                name: name.to_owned(),
                tier,
            })
            .collect(),
        boosts: Boosts {
            gpus_per_nft: GPUS_PER_NFT,
            nft: points.nft_boost.clone(),
            stheu: points.stheu_boost.clone(),
        },
        seasons: Seasons {
            current: points.season_at(now_ms()),
            all: season::windows(&points.seasons),
            slashing: "a slash takes a share of the points earned in the current season, by the wallet or by one of its GPUs",
        },
    })
}
