use std::io::Write as _;

use super::holdings::{self, CsvSnapshot, Token};
use super::*;
use crate::config::Config;
use crate::points::{PointsConfig, Work};

const WALLET: &str = "0x5aeda56215b167893e80b4fe645ba6d5bab767de";

async fn db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::connect(&Config::with_data_dir(dir.path()).database_url())
        .await
        .expect("db");
    db.migrate().await.expect("migrate");
    (dir, db)
}

fn credit(job: Uuid, amount: MicroPoints) -> Credit {
    Credit {
        job_id: job,
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
            base: amount,
            multiplier_millionths: 1_000_000,
            latency_ms: 10,
            latency_factor_millionths: 1_000_000,
            boost_millionths: 1_000_000,
            amount,
        },
        boost: BoostDetail::default(),
    }
}

async fn credit_once(db: &Db, credit: &Credit) -> u64 {
    let mut tx = db.begin().await.expect("begin");
    let written = insert_credits(&mut tx, &[credit]).await.expect("insert");
    tx.commit().await.expect("commit");
    written
}

#[tokio::test]
async fn a_job_is_credited_once_however_often_its_credit_is_written() {
    let (_dir, db) = db().await;
    let job = Uuid::now_v7();
    assert_eq!(credit_once(&db, &credit(job, 1_000_000)).await, 1);
    assert_eq!(credit_once(&db, &credit(job, 1_000_000)).await, 0);
    // Racing writers: still one row.
    let racing: Vec<_> = (0..16)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { credit_once(&db, &credit(job, 1_000_000)).await })
        })
        .collect();
    let mut written = 0;
    for task in racing {
        written += task.await.expect("task");
    }
    assert_eq!(written, 0);
    assert_eq!(
        balances(&db, WALLET).await.expect("balances").waifu,
        1_000_000
    );
    let row = for_job(&db, job).await.expect("read").expect("the credit");
    let detail: serde_json::Value = serde_json::from_str(&row.detail).expect("json");
    assert_eq!(detail["work"]["steps"], 20);
    assert_eq!(detail["latency_factor"], 1.0);
}

#[tokio::test]
async fn slashes_debit_at_most_the_balance_and_once_per_case() {
    let (_dir, db) = db().await;
    credit_once(&db, &credit(Uuid::now_v7(), 10_000_000)).await;
    let mut slash_half = Slash {
        wallet: WALLET.to_owned(),
        kind: PointsKind::Waifu,
        amount: SlashAmount::Fraction(0.5),
        reason: "canned images".to_owned(),
        case_id: Some(Uuid::now_v7()),
        scope: SlashScope::Wallet,
        season: crate::points::season::season_at(&[], now_ms()),
        by: "admin".to_owned(),
    };
    let first = slash(&db, &slash_half).await.expect("slash");
    assert_eq!((first.amount, first.recorded), (5_000_000, true));
    assert_eq!(first.balance_after, 5_000_000);
    let again = slash(&db, &slash_half).await.expect("repeat");
    assert_eq!(
        (again.amount, again.recorded),
        (0, false),
        "same case twice"
    );
    slash_half.case_id = None;
    slash_half.amount = SlashAmount::Micro(99_000_000);
    let all = slash(&db, &slash_half)
        .await
        .expect("more than the balance");
    assert_eq!((all.amount, all.balance_after), (5_000_000, 0));
    assert_eq!(
        balances(&db, WALLET).await.expect("balances"),
        Balances { waifu: 0, llama: 0 }
    );
    let slashes = entries(
        &db,
        &EntryFilter {
            wallet: Some(WALLET.to_owned()),
            entry: Some(EntryKind::Slash),
            limit: 10,
            ..EntryFilter::default()
        },
    )
    .await
    .expect("entries");
    assert_eq!(slashes.len(), 2);
    assert!(slashes.iter().all(|s| s.amount < 0));
    assert_eq!(slashes[1].reason.as_deref(), Some("canned images"));
}

#[tokio::test]
async fn history_pages_and_leaderboard_read_back_what_was_written() {
    let (_dir, db) = db().await;
    for micro in [1_000_000, 2_000_000, 3_000_000] {
        credit_once(&db, &credit(Uuid::now_v7(), micro)).await;
    }
    let page = |before_id| EntryFilter {
        wallet: Some(WALLET.to_owned()),
        before_id,
        limit: 2,
        ..EntryFilter::default()
    };
    let first = entries(&db, &page(None)).await.expect("page 1");
    assert_eq!(
        first.iter().map(|e| e.amount).collect::<Vec<_>>(),
        [3_000_000, 2_000_000]
    );
    let second = entries(&db, &page(first.last().map(|e| e.id)))
        .await
        .expect("page 2");
    assert_eq!(
        second.iter().map(|e| e.amount).collect::<Vec<_>>(),
        [1_000_000]
    );
    let days = daily(&db, WALLET, None, 0).await.expect("daily");
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].2, 6_000_000);
    assert_eq!(days[0].0 % DAY_MS, 0);
    let board = leaderboard(&db, PointsKind::Waifu, None, 10)
        .await
        .expect("leaderboard");
    assert_eq!(board, [(WALLET.to_owned(), 6_000_000)]);
    assert!(
        leaderboard(&db, PointsKind::Llama, None, 10)
            .await
            .expect("leaderboard")
            .is_empty()
    );
}

fn csv_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write");
    file
}

#[tokio::test]
async fn holdings_import_replaces_the_snapshot_and_refuses_bad_files_whole() {
    let (_dir, db) = db().await;
    let good = csv_file(&format!(
        "address,count\n{}, 2\n# a comment\n0x0000000000000000000000000000000000000001,1\n",
        WALLET.to_uppercase().replace("0X", "0x")
    ));
    let source = CsvSnapshot {
        path: good.path().to_owned(),
    };
    assert_eq!(
        holdings::import(&db, Token::Nft, &source)
            .await
            .expect("import"),
        2
    );
    assert_eq!(holdings::held(&db, WALLET).await.expect("held"), (2, 0));

    for (text, expected) in [
        ("0x12,1\n", "line 1"),
        (&format!("{WALLET},many\n") as &str, "not a whole number"),
        (&format!("{WALLET},1\n{WALLET},2\n"), "listed twice"),
        (&format!("{WALLET},1,extra\n"), "expected `address,count`"),
    ] {
        let bad = csv_file(text);
        let err = holdings::import(
            &db,
            Token::Nft,
            &CsvSnapshot {
                path: bad.path().to_owned(),
            },
        )
        .await
        .expect_err("a bad file");
        assert!(err.to_string().contains(expected), "{err}");
    }
    assert_eq!(
        holdings::held(&db, WALLET).await.expect("held"),
        (2, 0),
        "a refused file changes nothing"
    );

    let replaced = csv_file("0x0000000000000000000000000000000000000001,3\n");
    holdings::import(
        &db,
        Token::Nft,
        &CsvSnapshot {
            path: replaced.path().to_owned(),
        },
    )
    .await
    .expect("import");
    assert_eq!(
        holdings::held(&db, WALLET).await.expect("held"),
        (0, 0),
        "holders missing from a new snapshot hold nothing"
    );
}

#[tokio::test]
async fn a_boost_covers_at_most_three_gpus_per_nft_oldest_first() {
    let (_dir, db) = db().await;
    let gpus: Vec<infermine_protocol::GpuInfo> = (0..4)
        .map(|index| infermine_protocol::GpuInfo {
            index,
            kind: infermine_protocol::DeviceKind::Cuda,
            uuid: format!("GPU-{index}"),
            name: "NVIDIA GeForce RTX 4090".to_owned(),
            vram_mb: 24_564,
        })
        .collect();
    let identity = crate::auth::MinerIdentity {
        wallet: WALLET.to_owned(),
        name: "rig".to_owned(),
        token_id: Uuid::now_v7(),
    };
    // Registered one by one so their first-seen times (the seniority rule) differ.
    for gpu in &gpus {
        crate::miners::register(&db, &identity, std::slice::from_ref(gpu))
            .await
            .expect("register");
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let config = PointsConfig::default();
    let boost = |gpu: u32| {
        let db = db.clone();
        let config = config.clone();
        async move {
            holdings::boost_for(&db, &config, WALLET, &format!("{WALLET}-rig-gpu{gpu}"))
                .await
                .expect("boost")
        }
    };
    assert!(!boost(0).await.applies, "no NFT, no boost");
    let one = csv_file(&format!("{WALLET},1\n"));
    holdings::import(
        &db,
        Token::Nft,
        &CsvSnapshot {
            path: one.path().to_owned(),
        },
    )
    .await
    .expect("import");
    for gpu in 0..3 {
        let b = boost(gpu).await;
        assert!(b.applies, "gpu{gpu} is among the 3 oldest");
        assert_eq!(b.multiplier_millionths, 1_100_000);
    }
    let fourth = boost(3).await;
    assert!(!fourth.applies, "one NFT boosts 3 GPUs, not 4");
    assert_eq!(fourth.multiplier_millionths, 1_000_000);
    assert_eq!(fourth.nft_held, 1);
}
