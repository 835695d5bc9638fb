use super::*;
use crate::config::Config;
use crate::ledger::{BoostDetail, Credit, insert_credits};
use crate::points::{Accrual, Work};

const WALLET: &str = "0x5aeda56215b167893e80b4fe645ba6d5bab767de";
const OTHER: &str = "0x1111111111111111111111111111111111111111";

/// SQLite always; PostgreSQL too when `INFERMINE_TEST_POSTGRES_URL` names a server (each
/// run gets a fresh database there).
async fn databases() -> Vec<(Option<tempfile::TempDir>, Db)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Db::connect(&Config::with_data_dir(dir.path()).database_url())
        .await
        .expect("sqlite");
    let mut dbs = vec![(Some(dir), sqlite)];
    if let Ok(base) = std::env::var("INFERMINE_TEST_POSTGRES_URL") {
        let name = format!("im_cases_{}", Uuid::now_v7().simple());
        let pool = sqlx::PgPool::connect(&base).await.expect("postgres");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await
            .expect("create database");
        pool.close().await;
        let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
        let db = Db::connect(&format!("{prefix}/{name}"))
            .await
            .expect("postgres database");
        dbs.push((None, db));
    }
    for (_, db) in &dbs {
        db.migrate().await.expect("migrate");
    }
    dbs
}

fn new_case(wallet: &str, check: Check) -> NewCase {
    let evidence =
        serde_json::json!({ "score": 0.42, "threshold": 0.9, "key": "jobs/x/output.png" });
    NewCase {
        job_id: Some(Uuid::now_v7()),
        wallet: wallet.to_owned(),
        miner_id: Some(format!("{wallet}-rig-gpu0")),
        kind: PointsKind::Waifu,
        check,
        evidence: evidence.as_object().expect("object").clone(),
    }
}

async fn credit(db: &Db, wallet: &str, amount: MicroPoints) {
    credit_gpu(db, wallet, 0, amount).await;
}

async fn credit_gpu(db: &Db, wallet: &str, gpu: u32, amount: MicroPoints) {
    let credit = Credit {
        job_id: Uuid::now_v7(),
        wallet: wallet.to_owned(),
        miner_id: format!("{wallet}-rig-gpu{gpu}"),
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
    };
    let mut tx = db.begin().await.expect("begin");
    insert_credits(&mut tx, &[&credit]).await.expect("credit");
    tx.commit().await.expect("commit");
}

/// The demo wallet's slash rows, newest first.
async fn slashes_of_wallet(db: &Db) -> Vec<ledger::EntryRow> {
    let filter = ledger::EntryFilter {
        wallet: Some(WALLET.to_owned()),
        entry: Some(ledger::EntryKind::Slash),
        limit: 10,
        ..ledger::EntryFilter::default()
    };
    ledger::entries(db, &filter).await.expect("ledger")
}

fn by_fraction(f: f64) -> SlashDecision {
    SlashDecision {
        amount: SlashAmount::Fraction(f),
        scope: Scope::Wallet,
        season: crate::points::season::season_at(&[], now_ms()),
        note: "output is noise".to_owned(),
        by: "alice".to_owned(),
    }
}

#[tokio::test]
async fn cases_open_list_and_read_back_with_their_evidence() {
    for (_dir, db) in databases().await {
        let first = open_case(&db, &new_case(WALLET, Check::ImageSimilarity))
            .await
            .expect("open");
        let second = open_case(&db, &new_case(OTHER, Check::Latency))
            .await
            .expect("open");
        let third = open_case(&db, &new_case(WALLET, Check::Probe))
            .await
            .expect("open");
        let case = get(&db, first).await.expect("get").expect("the case");
        assert_eq!(
            (case.status.as_str(), case.check.as_str()),
            ("open", "image_similarity")
        );
        let evidence: serde_json::Value = serde_json::from_str(&case.evidence).expect("json");
        assert_eq!(evidence["threshold"], 0.9);
        assert!(get(&db, Uuid::now_v7()).await.expect("get").is_none());

        let ids = |rows: Vec<CaseRow>| rows.into_iter().map(|c| c.id).collect::<Vec<_>>();
        let all = CaseFilter {
            limit: 10,
            ..CaseFilter::default()
        };
        assert_eq!(
            ids(list(&db, &all).await.expect("list")),
            [third, second, first]
        );
        let wallets = CaseFilter {
            wallet: Some(WALLET.to_owned()),
            limit: 1,
            ..CaseFilter::default()
        };
        assert_eq!(ids(list(&db, &wallets).await.expect("list")), [third]);
        let next = CaseFilter {
            before: Some(third),
            ..wallets
        };
        assert_eq!(ids(list(&db, &next).await.expect("list")), [first]);

        dismiss(&db, second, Some("clock skew"), "alice")
            .await
            .expect("dismiss");
        let open = CaseFilter {
            status: Some(Status::Open),
            limit: 10,
            ..CaseFilter::default()
        };
        assert_eq!(ids(list(&db, &open).await.expect("list")), [third, first]);
        let dismissed = get(&db, second).await.expect("get").expect("case");
        assert_eq!(dismissed.status, "dismissed");
        assert_eq!(dismissed.decided_by.as_deref(), Some("alice"));
        assert_eq!(dismissed.note.as_deref(), Some("clock skew"));
        assert!(dismissed.decided_ms.is_some());
    }
}

#[tokio::test]
async fn a_slash_takes_the_fraction_and_records_its_ledger_entry() {
    for (_dir, db) in databases().await {
        credit(&db, WALLET, 10_000_000).await;
        let id = open_case(&db, &new_case(WALLET, Check::ImageSimilarity))
            .await
            .expect("open");
        let outcome = slash(&db, id, &by_fraction(0.25)).await.expect("slash");
        assert_eq!(outcome.slashed.amount, 2_500_000);
        assert!(outcome.slashed.recorded);
        assert_eq!(outcome.slashed.balance_after, 7_500_000);
        let case = get(&db, id).await.expect("get").expect("case");
        assert_eq!(case, outcome.case);
        assert_eq!(case.status, "slashed");
        assert_eq!(case.slash_fraction, Some(0.25));
        assert_eq!(case.slashed_micro, Some(2_500_000));
        let entries = slashes_of_wallet(&db).await;
        assert_eq!(entries.len(), 1);
        assert_eq!(Some(entries[0].id), case.ledger_entry_id);
        assert_eq!(entries[0].case_id, Some(id));
        assert_eq!(
            entries[0].miner_id, None,
            "a wallet-wide slash names no GPU"
        );
        assert_eq!(
            (case.slash_scope.as_deref(), case.slash_season.as_deref()),
            (Some("wallet"), Some("all time"))
        );
        let reason = entries[0].reason.as_deref().expect("reason");
        assert!(reason.contains(&id.to_string()), "{reason}");
        assert!(reason.contains("output is noise"), "{reason}");
    }
}

#[tokio::test]
async fn a_case_is_decided_once_and_never_slashes_twice() {
    for (_dir, db) in databases().await {
        credit(&db, WALLET, 8_000_000).await;
        let id = open_case(&db, &new_case(WALLET, Check::Challenge))
            .await
            .expect("open");
        let points = SlashDecision {
            amount: SlashAmount::Micro(3_000_000),
            ..by_fraction(1.0)
        };
        slash(&db, id, &points).await.expect("slash");
        let again = slash(&db, id, &by_fraction(1.0)).await;
        assert!(
            matches!(again, Err(DecideError::AlreadyDecided { ref status, .. }) if status == "slashed"),
            "{again:?}"
        );
        let dismissed = dismiss(&db, id, None, "bob").await;
        assert!(matches!(dismissed, Err(DecideError::AlreadyDecided { .. })));
        assert!(matches!(
            dismiss(&db, Uuid::now_v7(), None, "bob").await,
            Err(DecideError::NotFound(_))
        ));
        let balances = ledger::balances(&db, WALLET).await.expect("balances");
        assert_eq!(balances.waifu, 5_000_000, "slashed once, by points");
        let case = get(&db, id).await.expect("get").expect("case");
        assert_eq!(
            (case.slash_points, case.decided_by.as_deref()),
            (Some(3_000_000), Some("alice"))
        );

        // Racing decisions: exactly one wins.
        let racing = open_case(&db, &new_case(WALLET, Check::Probe))
            .await
            .expect("open");
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        slash(&db, racing, &by_fraction(0.5)).await.is_ok()
                    } else {
                        dismiss(&db, racing, None, "bob").await.is_ok()
                    }
                })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            won += usize::from(task.await.expect("task"));
        }
        assert_eq!(won, 1);
        let slashes = slashes_of_wallet(&db).await;
        assert!(slashes.len() <= 2);
    }
}

#[tokio::test]
async fn a_case_already_slashed_through_the_ledger_is_not_debited_again() {
    for (_dir, db) in databases().await {
        credit(&db, WALLET, 4_000_000).await;
        let id = open_case(&db, &new_case(WALLET, Check::UsageMismatch))
            .await
            .expect("open");
        let direct = ledger::slash(
            &db,
            &Slash {
                wallet: WALLET.to_owned(),
                kind: PointsKind::Waifu,
                amount: SlashAmount::Micro(1_000_000),
                reason: "by hand".to_owned(),
                case_id: Some(id),
                scope: SlashScope::Wallet,
                season: crate::points::season::season_at(&[], now_ms()),
                by: "alice".to_owned(),
            },
        )
        .await
        .expect("slash");
        assert!(direct.recorded);
        let outcome = slash(&db, id, &by_fraction(1.0)).await.expect("slash");
        assert!(!outcome.slashed.recorded);
        assert_eq!(outcome.slashed.balance_after, 3_000_000);
        assert_eq!(outcome.case.slashed_micro, Some(1_000_000));
        assert!(outcome.case.ledger_entry_id.is_some());
    }
}

#[tokio::test]
async fn a_miner_scoped_slash_takes_only_that_gpus_season_points() {
    for (_dir, db) in databases().await {
        credit_gpu(&db, WALLET, 0, 2_000_000).await;
        // Earned before the season began: out of reach of this season's slashes.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        let season = SeasonWindow {
            name: "S2".to_owned(),
            starts_ms: now_ms(),
            ends_ms: None,
        };
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        credit_gpu(&db, WALLET, 0, 4_000_000).await;
        credit_gpu(&db, WALLET, 1, 10_000_000).await;

        let id = open_case(&db, &new_case(WALLET, Check::Probe))
            .await
            .expect("open");
        let decision = SlashDecision {
            scope: Scope::Miner,
            season: season.clone(),
            ..by_fraction(0.5)
        };
        let outcome = slash(&db, id, &decision).await.expect("slash");
        assert_eq!(
            outcome.slashed.basis, 4_000_000,
            "gpu0's points this season"
        );
        assert_eq!(outcome.slashed.amount, 2_000_000);
        assert_eq!(outcome.slashed.balance_after, 14_000_000);
        assert_eq!(
            (
                outcome.case.slash_scope.as_deref(),
                outcome.case.slash_season.as_deref()
            ),
            (Some("miner"), Some("S2"))
        );
        let entries = slashes_of_wallet(&db).await;
        assert_eq!(
            entries[0].miner_id.as_deref(),
            Some(&*format!("{WALLET}-rig-gpu0"))
        );
        let detail: serde_json::Value = serde_json::from_str(&entries[0].detail).expect("json");
        assert_eq!(
            (
                &detail["scope"],
                &detail["season"],
                &detail["season_earned"]
            ),
            (
                &serde_json::json!("miner"),
                &serde_json::json!("S2"),
                &serde_json::json!(4.0)
            )
        );

        // The wallet scope reaches every GPU's season points, never the earlier season's.
        let wallet_case = open_case(&db, &new_case(WALLET, Check::Probe))
            .await
            .expect("open");
        let decision = SlashDecision {
            season,
            ..by_fraction(1.0)
        };
        let outcome = slash(&db, wallet_case, &decision).await.expect("slash");
        assert_eq!(outcome.slashed.basis, 12_000_000, "4 + 10 - 2 this season");
        assert_eq!(
            outcome.slashed.balance_after, 2_000_000,
            "last season's points stay"
        );

        // A case about no GPU has no miner points to take; it stays open.
        let no_gpu = open_case(
            &db,
            &NewCase {
                miner_id: None,
                ..new_case(WALLET, Check::Latency)
            },
        )
        .await
        .expect("open");
        let refused = slash(
            &db,
            no_gpu,
            &SlashDecision {
                scope: Scope::Miner,
                ..by_fraction(1.0)
            },
        )
        .await;
        assert!(
            matches!(refused, Err(DecideError::NoMiner(_))),
            "{refused:?}"
        );
        let case = get(&db, no_gpu).await.expect("get").expect("case");
        assert_eq!(case.status, "open");
    }
}
