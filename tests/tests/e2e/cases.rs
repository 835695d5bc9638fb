//! Anti-cheat cases end to end: a case opened through the server's library (the reviewer's
//! own cases are exercised by the cheater lab, tests/tests/cheater_lab.rs) is listed to admins with its evidence, slashing it lowers the
//! wallet's balance as the portal shows it, with the case as the slash's reason, and a
//! decided case cannot be decided again. Only admins reach any of it.

use std::time::Duration;

use infermine_server::ledger::{self, BoostDetail, Credit};
use infermine_server::points::{Accrual, PointsKind, Season, Work};
use infermine_server::review::cases::{self, Check, NewCase};
use infermine_tests::{Backend, TestServer, WALLET};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::on_both_databases;

/// Credits the wallet 10 Waifu points and opens an image-similarity case against its GPU.
pub(crate) async fn seed(server: &TestServer) -> Uuid {
    let db = infermine_server::open_db(&server.config)
        .await
        .expect("open db");
    let credit = Credit {
        job_id: Uuid::now_v7(),
        wallet: WALLET.to_owned(),
        miner_id: format!("{WALLET}-rig-gpu0"),
        model: "sdxl-base-1.0".to_owned(),
        work: Work::Image {
            width: 512,
            height: 512,
            steps: 20,
        },
        accrual: Accrual {
            kind: PointsKind::Waifu,
            base: 10_000_000,
            multiplier_millionths: 1_000_000,
            latency_ms: 10,
            latency_factor_millionths: 1_000_000,
            boost_millionths: 1_000_000,
            amount: 10_000_000,
        },
        boost: BoostDetail::default(),
    };
    let mut tx = db.begin().await.expect("begin");
    ledger::insert_credits(&mut tx, &[&credit])
        .await
        .expect("credit");
    tx.commit().await.expect("commit");
    let evidence =
        json!({ "similarity": 0.31, "threshold": 0.85, "output_key": "jobs/x/output.png" });
    let id = cases::open_case(
        &db,
        &NewCase {
            job_id: Some(credit.job_id),
            wallet: WALLET.to_owned(),
            miner_id: Some(credit.miner_id.clone()),
            kind: PointsKind::Waifu,
            check: Check::ImageSimilarity,
            evidence: evidence.as_object().expect("object").clone(),
        },
    )
    .await
    .expect("open case");
    db.close().await;
    id
}

async fn slashing_a_case_debits_the_wallet_once(backend: Backend) {
    // Two seasons, the second begun today: the slash is measured against it.
    let today = chrono::Utc::now().date_naive();
    let server = TestServer::start_with(&backend, |config| {
        config.points.seasons = vec![
            Season {
                name: "Season 1".to_owned(),
                starts: today - chrono::Days::new(30),
            },
            Season {
                name: "Season 2".to_owned(),
                starts: today,
            },
        ];
    })
    .await;
    let admin = infermine_server::mint_admin_token(&server.config, "e2e", Duration::from_secs(600))
        .await
        .expect("admin token");
    let miner = server.miner_token("rig").await;
    let id = seed(&server).await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, token: Option<&str>, body: Option<Value>| {
        let mut request = http.request(method, format!("{}{path}", server.http()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.expect("send");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (get, post) = (reqwest::Method::GET, reqwest::Method::POST);
    let open = "/api/v1/admin/cases?status=open".to_owned();
    let slash = format!("/api/v1/admin/cases/{id}/slash");
    let dismiss = format!("/api/v1/admin/cases/{id}/dismiss");
    let body = json!({
        "fraction": 0.5,
        "scope": "miner",
        "note": "images unlike the re-run",
        "suspend": true,
    });

    let (status, error) = call(get.clone(), open.clone(), None, None).await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (401, &json!("unauthorized"))
    );
    let (status, _) = call(get.clone(), open.clone(), Some(&miner), None).await;
    assert_eq!(status, 401, "a miner token is not an admin token");
    let (status, _) = call(post.clone(), slash.clone(), None, Some(body.clone())).await;
    assert_eq!(status, 401);
    let (status, _) = call(post.clone(), dismiss.clone(), Some(&miner), Some(json!({}))).await;
    assert_eq!(status, 401);

    let (status, page) = call(get.clone(), open.clone(), Some(&admin), None).await;
    assert_eq!(status, 200, "{page}");
    let listed = page["cases"].as_array().expect("cases");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], json!(id));
    assert_eq!(listed[0]["check"], "image_similarity");
    assert_eq!(listed[0]["evidence"]["threshold"], 0.85);
    let (status, case) = call(
        get.clone(),
        format!("/api/v1/admin/cases/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!((status, &case["status"]), (200, &json!("open")), "{case}");
    let (status, _) = call(
        get.clone(),
        format!("/api/v1/admin/cases/{}", Uuid::now_v7()),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, 404);

    let (status, slashed) = call(
        post.clone(),
        slash.clone(),
        Some(&admin),
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 200, "{slashed}");
    assert_eq!(slashed["amount"]["micro"], 5_000_000);
    assert_eq!(slashed["balance_after"]["micro"], 5_000_000);
    assert_eq!(slashed["case"]["status"], "slashed");
    assert_eq!(slashed["case"]["decided_by"], "e2e");
    assert_eq!(slashed["suspended"], false, "the GPU never connected");
    assert_eq!(slashed["season"]["name"], "Season 2");
    assert_eq!(slashed["season_earned"]["micro"], 10_000_000);
    assert_eq!(slashed["case"]["slash"]["scope"], "miner");
    assert_eq!(slashed["case"]["slash"]["season"], "Season 2");

    let wallet = server.get_json(&format!("/api/v1/wallets/{WALLET}")).await;
    assert_eq!(wallet["balances"]["waifu"]["micro"], 5_000_000);
    assert_eq!(wallet["season"]["name"], "Season 2");
    assert_eq!(wallet["season"]["waifu"]["micro"], 5_000_000);
    let rules = server.get_json("/api/v1/rules").await;
    assert_eq!(rules["seasons"]["current"]["name"], "Season 2");
    assert_eq!(rules["seasons"]["all"].as_array().map(Vec::len), Some(2));
    let public = server
        .get_json(&format!("/api/v1/slashes?address={WALLET}"))
        .await;
    let entries = public["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["case_id"], json!(id));
    assert_eq!(entries[0]["miner_id"], json!(format!("{WALLET}-rig-gpu0")));
    assert_eq!(
        entries[0]["id"],
        slashed["case"]["slash"]["ledger_entry_id"]
    );
    let reason = entries[0]["reason"].as_str().expect("reason");
    assert!(
        reason.contains(&id.to_string()) && reason.contains("images unlike the re-run"),
        "{reason}"
    );

    let (status, error) = call(post.clone(), slash, Some(&admin), Some(body)).await;
    assert_eq!((status, &error["error"]["code"]), (409, &json!("conflict")));
    let (status, error) = call(
        post.clone(),
        dismiss,
        Some(&admin),
        Some(json!({ "note": "on second thought" })),
    )
    .await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (409, &json!("conflict")),
        "{error}"
    );
    let wallet = server.get_json(&format!("/api/v1/wallets/{WALLET}")).await;
    assert_eq!(
        wallet["balances"]["waifu"]["micro"], 5_000_000,
        "slashed once"
    );
    let (_, page) = call(get, open, Some(&admin), None).await;
    assert_eq!(page["cases"], json!([]));

    // Direct slashes name their scope; a GPU of another wallet is refused, nothing taken.
    let direct = "/api/v1/admin/slashes".to_owned();
    let other_gpu = "0x1111111111111111111111111111111111111111-rig-gpu0";
    for (bad, hint) in [
        (
            json!({ "scope": "miner", "miner_id": other_gpu }),
            "is not one of",
        ),
        (json!({ "scope": "miner" }), "needs `miner_id`"),
        (
            json!({ "miner_id": format!("{WALLET}-rig-gpu0") }),
            "narrows a slash",
        ),
    ] {
        let mut body = json!({ "address": WALLET, "fraction": 1.0, "reason": "test" });
        body.as_object_mut()
            .expect("object")
            .extend(bad.as_object().expect("object").clone());
        let (status, error) = call(post.clone(), direct.clone(), Some(&admin), Some(body)).await;
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(status, 400, "{error}");
        assert!(message.contains(hint), "{message}");
    }
    let wallet = server.get_json(&format!("/api/v1/wallets/{WALLET}")).await;
    assert_eq!(
        wallet["balances"]["waifu"]["micro"], 5_000_000,
        "nothing taken"
    );
    let body = json!({
        "address": WALLET,
        "kind": "waifu",
        "fraction": 1.0,
        "reason": "everything this season",
    });
    let (status, slashed) = call(post, direct, Some(&admin), Some(body)).await;
    assert_eq!(status, 200, "{slashed}");
    assert_eq!(slashed["scope"], "wallet");
    assert_eq!(slashed["season"]["name"], "Season 2");
    assert_eq!(slashed["slashes"][0]["season_earned"]["micro"], 5_000_000);
    assert_eq!(slashed["slashes"][0]["balance_after"]["micro"], 0);
}

on_both_databases!(slashing_a_case_debits_the_wallet_once);
