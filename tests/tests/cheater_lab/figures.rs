//! What the cheater lab reads back from the coordinator's database and ledger: jobs per
//! GPU, suspensions, cases with their evidence, and the audits behind the figures.

use std::collections::HashMap;

use serde_json::Value;

use super::Miner;

pub type Pool = sqlx::SqlitePool;

/// Rows of a query on the coordinator's SQLite database.
async fn query<T>(db: &Pool, sql: &str) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(db)
        .await
}

/// Completed jobs (consumer and probe) per GPU.
pub async fn completed_by_miner(db: &Pool) -> HashMap<String, i64> {
    let rows: Vec<(String, i64)> = query(
        db,
        "SELECT miner_id, COUNT(*) FROM jobs WHERE status = 'completed' \
             AND purpose <> 'validation' GROUP BY miner_id",
    )
    .await
    .expect("count jobs");
    rows.into_iter().collect()
}

pub async fn suspended(db: &Pool) -> Vec<String> {
    let rows: Vec<(String,)> = query(
        db,
        "SELECT miner_id FROM miners WHERE suspended_ms IS NOT NULL",
    )
    .await
    .expect("suspended");
    rows.into_iter().map(|(id,)| id).collect()
}

pub struct Cases {
    pub checks: Vec<String>,
    /// Each case's evidence, less bulky per-token scores.
    pub figures: Vec<Value>,
    pub slashed_at: Option<i64>,
}

pub async fn cases_by_miner(db: &Pool) -> HashMap<String, Cases> {
    let rows: Vec<(String, String, String, Option<i64>, String)> = query(
        db,
        "SELECT miner_id, check_name, status, decided_ms, evidence FROM review_cases ORDER BY id",
    )
    .await
    .expect("cases");
    let mut by_miner: HashMap<String, Cases> = HashMap::new();
    for (miner, check, status, decided, evidence) in rows {
        let entry = by_miner.entry(miner).or_insert(Cases {
            checks: Vec::new(),
            figures: Vec::new(),
            slashed_at: None,
        });
        entry.checks.push(check);
        let mut evidence: Value = serde_json::from_str(&evidence).unwrap_or(Value::Null);
        if let Some(map) = evidence.as_object_mut() {
            map.remove("token_scores");
        }
        entry.figures.push(evidence);
        if status == "slashed" && entry.slashed_at.is_none() {
            entry.slashed_at = decided;
        }
    }
    by_miner
}

/// Jobs a GPU completed before `at_ms`.
pub async fn jobs_before(db: &Pool, miner_id: &str, at_ms: i64) -> i64 {
    let rows: Vec<(i64,)> = query(
        db,
        &format!(
            "SELECT COUNT(*) FROM jobs WHERE miner_id = '{miner_id}' AND status = 'completed' \
             AND purpose <> 'validation' AND finished_ms <= {at_ms}"
        ),
    )
    .await
    .expect("jobs before");
    rows.first().map_or(0, |(n,)| *n)
}

/// Micro-points slashed from a wallet.
pub async fn ledger_balance(db: &infermine_server::db::Db, wallet: &str) -> i64 {
    let filter = infermine_server::ledger::EntryFilter {
        wallet: Some(wallet.to_owned()),
        entry: Some(infermine_server::ledger::EntryKind::Slash),
        limit: 1000,
        ..Default::default()
    };
    infermine_server::ledger::entries(db, &filter)
        .await
        .expect("ledger entries")
        .iter()
        .map(|e| e.amount.abs())
        .sum()
}

/// Honest jobs past each GPU's warm-up, and how many of them were re-executed.
pub async fn steady_state(db: &Pool, honest: &[&Miner]) -> (i64, i64) {
    let (mut jobs, mut audits) = (0, 0);
    for m in honest {
        let rows: Vec<(String,)> = query(
            db,
            &format!(
                "SELECT r.status FROM reviews r JOIN jobs j ON j.id = r.job_id \
                 WHERE r.miner_id = '{}' ORDER BY j.finished_ms",
                m.miner_id
            ),
        )
        .await
        .expect("reviews");
        for (status,) in rows.iter().skip(super::WARM_UP_JOBS as usize) {
            jobs += 1;
            if status != "skipped" {
                audits += 1;
            }
        }
    }
    (jobs, audits)
}

/// The seeded share of each of a GPU's teacher-forced audits.
pub async fn seeded_shares(db: &Pool, miner_id: &str) -> Vec<f64> {
    let rows: Vec<(Option<String>,)> = query(
        db,
        &format!(
            "SELECT verdict FROM reviews WHERE miner_id = '{miner_id}' \
             AND status IN ('passed', 'failed')"
        ),
    )
    .await
    .expect("verdicts");
    rows.into_iter()
        .filter_map(|(verdict,)| serde_json::from_str::<Value>(&verdict?).ok())
        .filter_map(|v| v["score"]["seeded_share"].as_f64())
        .collect()
}
