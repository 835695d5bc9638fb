//! The seed's formulas for each of its seven models, with hand-computed values.

use super::*;
use crate::registry::Registry;

fn model(id: &str) -> ModelSpec {
    Registry::builtin()
        .get(id)
        .unwrap_or_else(|| panic!("{id} in the registry"))
        .clone()
}

fn image(width: u32, height: u32, steps: u32) -> Work {
    Work::Image {
        width,
        height,
        steps,
    }
}

fn llm(prompt_tokens: u32, completion_tokens: u32) -> Work {
    Work::Llm {
        prompt_tokens,
        completion_tokens,
    }
}

#[test]
fn base_points_follow_the_seed_for_every_model() {
    // (model, work, kind, points in micro-points), each worked out by hand:
    let cases = [
        // 512·512·20 / (512·512·20) = 1 reference image × 0.3
        (
            "stable-diffusion-1.5",
            image(512, 512, 20),
            PointsKind::Waifu,
            300_000,
        ),
        // 768·768·25 / 5,242,880 = 2.8125 × 0.3 = 0.84375
        (
            "stable-diffusion-1.5",
            image(768, 768, 25),
            PointsKind::Waifu,
            843_750,
        ),
        // 1024·1024·30 / 5,242,880 = 6 × 1
        (
            "sdxl-base-1.0",
            image(1024, 1024, 30),
            PointsKind::Waifu,
            6_000_000,
        ),
        // 6 × 1.2
        (
            "sdxl-base-1.0-offset-lora",
            image(1024, 1024, 30),
            PointsKind::Waifu,
            7_200_000,
        ),
        // 1024·1024·20 / 5,242,880 = 4 × 10
        (
            "flux.1-dev-nf4",
            image(1024, 1024, 20),
            PointsKind::Waifu,
            40_000_000,
        ),
        // (1000 + 500) / 1000 = 1.5 × 0.24
        (
            "dolphin-2.9-llama3-8b",
            llm(1000, 500),
            PointsKind::Llama,
            360_000,
        ),
        // (250 + 250) / 1000 = 0.5 × 0.2
        (
            "openhermes-2-pro-mistral-7b",
            llm(250, 250),
            PointsKind::Llama,
            100_000,
        ),
        // (3000 + 1000) / 1000 = 4 × 1
        (
            "openhermes-mixtral-8x7b-gptq",
            llm(3000, 1000),
            PointsKind::Llama,
            4_000_000,
        ),
        // 7 tokens × 0.24 / 1000 = 0.00168
        ("dolphin-2.9-llama3-8b", llm(5, 2), PointsKind::Llama, 1_680),
    ];
    for (id, work, kind, expected) in cases {
        assert_eq!(
            base(&model(id), work),
            Some((kind, expected)),
            "{id} {work:?}"
        );
    }
}

#[test]
fn synthetic_jobs_and_mismatched_work_earn_nothing() {
    assert_eq!(base(&model("synthetic-echo"), image(512, 512, 20)), None);
    assert_eq!(base(&model("sdxl-base-1.0"), llm(100, 100)), None);
    assert_eq!(
        base(&model("dolphin-2.9-llama3-8b"), image(512, 512, 20)),
        None
    );
}

#[test]
fn latency_factor_is_full_to_the_target_and_zero_at_the_deadline() {
    // SDXL: target 10 s, deadline 18 s.
    assert_eq!(latency_factor(0, 10_000, 18_000), 1_000_000);
    assert_eq!(latency_factor(10_000, 10_000, 18_000), 1_000_000);
    assert_eq!(latency_factor(14_000, 10_000, 18_000), 500_000);
    assert_eq!(latency_factor(16_000, 10_000, 18_000), 250_000);
    assert_eq!(latency_factor(18_000, 10_000, 18_000), 0);
    assert_eq!(latency_factor(60_000, 10_000, 18_000), 0);
}

#[test]
fn accrual_multiplies_base_latency_and_boost() {
    let sdxl = model("sdxl-base-1.0");
    let on_time = accrue(&sdxl, image(1024, 1024, 30), 9_000, 1_000_000).expect("earns");
    assert_eq!(on_time.amount, 6 * POINT);
    // Half the latency window gone, 2 NFTs (1.2×): 6 × 0.5 × 1.2 = 3.6
    let late_boosted = accrue(&sdxl, image(1024, 1024, 30), 14_000, 1_200_000).expect("earns");
    assert_eq!(late_boosted.amount, 3_600_000);
    assert_eq!(
        (late_boosted.base, late_boosted.latency_factor_millionths),
        (6 * POINT, 500_000)
    );
    let missed = accrue(&sdxl, image(1024, 1024, 30), 18_000, 2_000_000).expect("earns");
    assert_eq!(
        missed.amount, 0,
        "a late result earns nothing, boost or not"
    );
}

#[test]
fn nft_boost_table_and_which_gpus_it_reaches() {
    let config = PointsConfig::default();
    config.validate().expect("defaults are valid");
    assert_eq!(config.nft_multiplier(0), 1_000_000);
    assert_eq!(config.nft_multiplier(1), 1_100_000);
    assert_eq!(config.nft_multiplier(4), 1_300_000);
    assert_eq!(config.nft_multiplier(50), 2_000_000);
    assert_eq!(
        config.stheu_multiplier(100),
        1_000_000,
        "stHEU boost is off by default"
    );

    let miners: Vec<(String, i64)> = [
        ("w-c-gpu0", 30),
        ("w-a-gpu0", 10),
        ("w-b-gpu1", 20),
        ("w-b-gpu0", 20),
        ("w-d-gpu0", 40),
    ]
    .into_iter()
    .map(|(id, seen)| (id.to_owned(), seen))
    .collect();
    let one = boosted_miners(&miners, 1);
    assert_eq!(one.len(), 3, "one NFT boosts at most 3 GPUs");
    assert!(
        one.contains("w-a-gpu0") && one.contains("w-b-gpu0") && one.contains("w-b-gpu1"),
        "{one:?}"
    );
    assert_eq!(boosted_miners(&miners, 2).len(), 5, "6 allowed, 5 held");
    assert!(boosted_miners(&miners, 0).is_empty());
}

#[test]
fn bad_boost_tables_are_refused() {
    let tier = |min_held, multiplier| BoostTier {
        min_held,
        multiplier,
    };
    let falling = PointsConfig {
        nft_boost: vec![tier(1, 1.5), tier(2, 1.2)],
        stheu_boost: vec![],
        seasons: vec![],
    };
    assert!(
        falling
            .validate()
            .expect_err("falling")
            .contains("nft_boost")
    );
    let shrinking = PointsConfig {
        nft_boost: vec![tier(1, 0.5)],
        stheu_boost: vec![],
        seasons: vec![],
    };
    assert!(
        shrinking
            .validate()
            .expect_err("below 1")
            .contains("multiplier")
    );
}
