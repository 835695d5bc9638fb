//! After the storm: reads the database and the S3 bucket directly (the coordinator stopped) and
//! counts what was lost, credited twice, or not stored.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use futures_util::StreamExt as _;
use infermine_server::db::Db;
use infermine_server::storage::{Storage, StorageConfig};
use sea_query::{Alias, Expr, ExprTrait as _, Query};
use uuid::Uuid;

use super::consumers::Seen;
use super::fleet::{COMPLETION_TOKENS, PROMPT_TOKENS};

/// The LLM's points multiplier (models.toml) and so what each completion must earn:
/// (prompt + completion tokens) ÷ 1000 × multiplier, in micro-points.
const LLM_MULTIPLIER_MILLI: i64 = 240;
pub const MICRO_PER_LLM_JOB: i64 =
    (PROMPT_TOKENS + COMPLETION_TOKENS) as i64 * LLM_MULTIPLIER_MILLI;

/// The objects every completed job must have in S3.
const OBJECTS: [&str; 3] = ["input.json", "output.json", "meta.json"];

#[derive(Debug, Default)]
pub struct Figures {
    pub submitted: usize,
    pub completed: usize,
    pub failed: usize,
    /// Accepted jobs that are not in the database, or not final, or that the consumer never
    /// saw end.
    pub lost: usize,
    /// Jobs with more than one accrual, or an accrual though they did not complete.
    pub double_credited: usize,
    pub points_expected: i64,
    pub points_credited: i64,
    pub objects_expected: usize,
    pub objects_stored: usize,
    pub objects_missing: usize,
    /// Jobs the coordinator took whose answer never reached the consumer (its connection
    /// died first); they must still end, and count as lost when they do not.
    pub unacknowledged: usize,
    /// Why jobs failed (the error the coordinator recorded), with how many.
    pub failures: HashMap<String, usize>,
    /// Up to thirty examples of problems, for the failure message.
    pub problems: Vec<String>,
}

impl Figures {
    fn problem(&mut self, what: String) {
        if self.problems.len() < 30 {
            self.problems.push(what);
        }
    }
}

fn table(name: &str) -> Alias {
    Alias::new(name)
}

/// Counts everything; `seen` is what the consumers were told.
pub async fn audit(database_url: &str, storage: &StorageConfig, seen: &[Seen]) -> Figures {
    let db = Db::connect(database_url).await.expect("database");
    let jobs: Vec<(Uuid, String, String, Option<String>)> = db
        .fetch_all(
            Query::select()
                .columns([table("id"), table("status"), table("kind"), table("error")])
                .from(table("jobs")),
        )
        .await
        .expect("jobs");
    let accruals: Vec<(Uuid, i64)> = db
        .fetch_all(
            Query::select()
                .columns([table("job_id"), table("amount")])
                .from(table("ledger"))
                .and_where(Expr::col(table("entry")).eq("accrual")),
        )
        .await
        .expect("ledger");
    let objects: Vec<(Uuid, String, String, i64)> = db
        .fetch_all(
            Query::select()
                .columns([
                    table("job_id"),
                    table("name"),
                    table("key"),
                    table("size_bytes"),
                ])
                .from(table("job_objects")),
        )
        .await
        .expect("job objects");
    db.close().await;

    let mut figures = Figures {
        submitted: seen.len(),
        ..Figures::default()
    };
    for (_, status, _, error) in &jobs {
        if status == "failed" {
            let reason = error.clone().unwrap_or_default();
            *figures.failures.entry(reason).or_default() += 1;
        }
    }
    let status: HashMap<Uuid, (String, String)> = jobs
        .into_iter()
        .map(|(id, status, kind, _)| (id, (status, kind)))
        .collect();
    let accepted: HashSet<Uuid> = seen
        .iter()
        .map(|s| Uuid::parse_str(&s.id).expect("job id"))
        .collect();
    for s in seen {
        let id = Uuid::parse_str(&s.id).expect("job id");
        match (status.get(&id), s.status.as_deref()) {
            (Some((db_status, _)), Some(told)) if db_status == told => match told {
                "completed" => figures.completed += 1,
                "failed" => figures.failed += 1,
                _ => {
                    figures.lost += 1;
                    figures.problem(format!("job {id} ended {told}; no one cancelled it"));
                }
            },
            (db_status, told) => {
                figures.lost += 1;
                figures.problem(format!(
                    "job {id}: the database says {db_status:?}, the consumer was told {told:?}"
                ));
            }
        }
    }
    for (id, (db_status, _)) in &status {
        if !accepted.contains(id) {
            figures.unacknowledged += 1;
            if !matches!(db_status.as_str(), "completed" | "failed") {
                figures.lost += 1;
                figures.problem(format!("unacknowledged job {id} is still {db_status}"));
            }
        }
    }

    // Points: one accrual per completed LLM job, of exactly what the rules give.
    let mut credits: HashMap<Uuid, Vec<i64>> = HashMap::new();
    for (job, amount) in accruals {
        credits.entry(job).or_default().push(amount);
    }
    for (id, (db_status, kind)) in &status {
        let earns = db_status == "completed" && kind == "llm";
        let got = credits.get(id).map_or(&[][..], Vec::as_slice);
        if earns {
            figures.points_expected += MICRO_PER_LLM_JOB;
        }
        figures.points_credited += got.iter().sum::<i64>();
        if got.len() > 1 || (!earns && !got.is_empty()) {
            figures.double_credited += 1;
            figures.problem(format!("job {id} ({db_status} {kind}) credited {got:?}"));
        }
    }

    // Objects: each completed job's three, recorded and really in the bucket, whole.
    let recorded: HashMap<(Uuid, String), (String, i64)> = objects
        .into_iter()
        .map(|(job, name, key, size)| ((job, name), (key, size)))
        .collect();
    let mut wanted = Vec::new();
    for (id, (db_status, _)) in &status {
        if db_status != "completed" {
            continue;
        }
        for name in OBJECTS {
            figures.objects_expected += 1;
            match recorded.get(&(*id, name.to_owned())) {
                Some((key, size)) => wanted.push((key.clone(), *size)),
                None => {
                    figures.objects_missing += 1;
                    figures.problem(format!("job {id} has no {name} recorded"));
                }
            }
        }
    }
    let spool = tempfile::tempdir().expect("tempdir");
    let bucket = open_bucket(storage, spool.path()).await;
    let heads: Vec<(String, i64, Option<u64>)> = futures_util::stream::iter(wanted)
        .map(|(key, size)| {
            let bucket = &bucket;
            async move {
                let found = bucket.head(&key).await.expect("HEAD an object in S3");
                (key, size, found)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (key, size, found) in heads {
        if found == u64::try_from(size).ok() {
            figures.objects_stored += 1;
        } else {
            figures.objects_missing += 1;
            figures.problem(format!("{key}: {size} bytes recorded, S3 has {found:?}"));
        }
    }
    bucket.shutdown().await;
    figures
}

/// The bucket itself, read through a spool of its own that stays empty.
async fn open_bucket(storage: &StorageConfig, spool: &Path) -> Storage {
    let mut config = storage.clone();
    config.spool_dir = Some(spool.join("spool"));
    let storage = Storage::open(&config, spool)
        .await
        .expect("open the bucket");
    assert_eq!(storage.spool().objects, 0);
    storage
}
