//! Holder boosts: Heurist Imaginaries NFTs before TGE, stHEU after (rules to be announced, so
//! off by default). A wallet holding n tokens of a kind boosts at most 3·n of its GPUs.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::season::{self, Season, SeasonWindow};

/// GPUs one NFT boosts (the seed: "Each NFT can boost up to 3 GPUs").
pub const GPUS_PER_NFT: u64 = 3;

/// One row of a boost table: holding at least `min_held` gives `multiplier`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BoostTier {
    pub min_held: u32,
    pub multiplier: f64,
}

/// The operator's points settings (`[points]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PointsConfig {
    /// NFT boost by holding. The seed says the multiplier depends on the number held but not
    /// by how much; these defaults are the operator's to set.
    pub nft_boost: Vec<BoostTier>,
    /// stHEU boost by holding; empty (off) until its rules are announced.
    pub stheu_boost: Vec<BoostTier>,
    /// Seasons, oldest first (`[[points.seasons]]`); none means one season, all time.
    pub seasons: Vec<Season>,
}

impl Default for PointsConfig {
    fn default() -> Self {
        let tier = |min_held, multiplier| BoostTier {
            min_held,
            multiplier,
        };
        Self {
            nft_boost: vec![
                tier(1, 1.1),
                tier(2, 1.2),
                tier(3, 1.3),
                tier(5, 1.5),
                tier(10, 2.0),
            ],
            stheu_boost: Vec::new(),
            seasons: Vec::new(),
        }
    }
}

impl PointsConfig {
    /// Checks the tables: multipliers finite and ≥ 1, thresholds rising with multipliers.
    pub fn validate(&self) -> Result<(), String> {
        for (name, table) in [
            ("nft_boost", &self.nft_boost),
            ("stheu_boost", &self.stheu_boost),
        ] {
            for pair in table.windows(2) {
                if pair[1].min_held <= pair[0].min_held || pair[1].multiplier < pair[0].multiplier {
                    return Err(format!(
                        "points.{name}: rows must rise in min_held and not fall in multiplier"
                    ));
                }
            }
            if let Some(bad) = table
                .iter()
                .find(|t| !t.multiplier.is_finite() || t.multiplier < 1.0 || t.min_held == 0)
            {
                return Err(format!(
                    "points.{name}: row min_held={} multiplier={} must have min_held ≥ 1 and a finite multiplier ≥ 1",
                    bad.min_held, bad.multiplier
                ));
            }
        }
        season::validate(&self.seasons)
    }

    /// The season in force at `now_ms`.
    pub fn season_at(&self, now_ms: i64) -> SeasonWindow {
        season::season_at(&self.seasons, now_ms)
    }

    /// The NFT boost for holding `held`, in millionths (1,000,000 when none applies).
    pub fn nft_multiplier(&self, held: u32) -> u64 {
        multiplier(&self.nft_boost, held)
    }

    /// The stHEU boost for holding `held`, in millionths.
    pub fn stheu_multiplier(&self, held: u32) -> u64 {
        multiplier(&self.stheu_boost, held)
    }
}

fn multiplier(table: &[BoostTier], held: u32) -> u64 {
    table
        .iter()
        .rev()
        .find(|tier| held >= tier.min_held)
        .map_or(1_000_000, |tier| super::to_millionths(tier.multiplier))
}

/// Which of a wallet's miners a holding of `held` boosts: at most 3·`held` of them, chosen
/// by seniority — earliest first seen first, ties by miner id — so the choice is stable as
/// GPUs come and go and cannot be gamed by renaming a rig.
pub fn boosted_miners(miners: &[(String, i64)], held: u32) -> HashSet<&str> {
    let mut by_seniority: Vec<&(String, i64)> = miners.iter().collect();
    by_seniority.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let room = usize::try_from(u64::from(held) * GPUS_PER_NFT).unwrap_or(usize::MAX);
    by_seniority
        .into_iter()
        .take(room)
        .map(|(id, _)| id.as_str())
        .collect()
}
