//! `GET /api/v1/rules` serves the rules in force: the registry's models and the operator's
//! boost tables, never numbers baked into a page.

use infermine_server::points::BoostTier;
use infermine_tests::{Backend, TestServer};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_show_the_registry_and_the_configured_boosts() {
    let custom = vec![
        BoostTier {
            min_held: 1,
            multiplier: 1.25,
        },
        BoostTier {
            min_held: 4,
            multiplier: 1.75,
        },
    ];
    let boosts = custom.clone();
    let server =
        TestServer::start_with(&Backend::Sqlite, move |c| c.points.nft_boost = boosts).await;
    let rules = server.get_json("/api/v1/rules").await;
    let models = server.get_json("/v1/models").await;

    let listed = models["data"].as_array().expect("models");
    let ruled = rules["models"].as_array().expect("rule models");
    assert_eq!(ruled.len(), listed.len());
    for (rule, model) in ruled.iter().zip(listed) {
        assert_eq!(rule["id"], model["id"]);
        assert_eq!(
            rule["multiplier"], model["points_multiplier"],
            "{}",
            rule["id"]
        );
    }
    let by_id = |id: &str| {
        ruled
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id}"))
            .clone()
    };
    assert_eq!(by_id("flux.1-dev-nf4")["points_kind"], "waifu");
    assert_eq!(
        by_id("openhermes-mixtral-8x7b-gptq")["points_kind"],
        "llama"
    );
    assert_eq!(by_id("synthetic-echo")["points_kind"], Value::Null);
    let tier = |id: &str| by_id(id)["min_gpu_tier"].as_u64().expect("tier");
    assert!(
        tier("stable-diffusion-1.5") < tier("sdxl-base-1.0")
            && tier("sdxl-base-1.0") < tier("flux.1-dev-nf4")
    );

    let tiers: Vec<u64> = rules["gpu_tiers"]
        .as_array()
        .expect("tiers")
        .iter()
        .map(|t| t["tier"].as_u64().expect("n"))
        .collect();
    assert!(tiers.windows(2).all(|w| w[0] <= w[1]), "lowest tier first");

    assert_eq!(rules["boosts"]["gpus_per_nft"], 3);
    let served: Vec<BoostTier> =
        serde_json::from_value(rules["boosts"]["nft"].clone()).expect("boost table");
    assert_eq!(served, custom);
    assert_eq!(rules["boosts"]["stheu"], Value::Array(vec![]));
}
