//! The jobs table. Every transition is one conditional statement (`… WHERE status =
//! expected`), so two writers racing over a job (a result and a lease expiry, say) cannot
//! both win: the loser touches no row and learns it lost.

use sea_query::{
    CaseStatement, Expr, ExprTrait, Func, Iden, OnConflict, Query, SelectStatement, UpdateStatement,
};
use uuid::Uuid;

use super::objects::JobObject;
use crate::cluster::Replicas;
use crate::db::{Db, DbError, Tx, now_ms};
use crate::ledger::{self, Credit};

#[derive(Iden)]
pub(crate) enum Jobs {
    Table,
    Id,
    Model,
    Kind,
    Params,
    Status,
    Attempts,
    ApiKeyId,
    AgentSession,
    MinerId,
    Wallet,
    LeaseExpiresMs,
    Output,
    Metrics,
    Error,
    CreatedMs,
    AssignedMs,
    FinishedMs,
    UpdatedMs,
    Purpose,
    ReviewOf,
    Replica,
    Streamed,
}

/// Why a job exists, as stored in `jobs.purpose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// A consumer asked for it.
    Consumer,
    /// The reviewer mixed it into traffic to test whoever runs it; it looks and pays like a
    /// consumer's job.
    Probe,
    /// The reviewer re-executes another job on a validator; only validators run it, and it
    /// earns nothing.
    Validation,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Consumer => "consumer",
            Self::Probe => "probe",
            Self::Validation => "validation",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "consumer" => Self::Consumer,
            "probe" => Self::Probe,
            "validation" => Self::Validation,
            _ => return None,
        })
    }
}

/// A job's lifecycle states, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Assigned,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => Self::Queued,
            "assigned" => Self::Assigned,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job can change no more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// A job as read back for its owner.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub model: String,
    pub status: String,
    pub attempts: i32,
    pub api_key_id: Option<Uuid>,
    pub miner_id: Option<String>,
    pub output: Option<String>,
    pub metrics: Option<String>,
    pub error: Option<String>,
    pub created_ms: i64,
    pub assigned_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

/// What the dispatcher needs to queue a job again.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct QueueRow {
    pub id: Uuid,
    pub model: String,
    pub params: String,
    pub created_ms: i64,
    pub api_key_id: Option<Uuid>,
    pub purpose: String,
    /// Its consumer streams its tokens.
    pub streamed: bool,
}

impl QueueRow {
    /// Whether only validators may run it.
    pub fn validators_only(&self) -> bool {
        Purpose::parse(&self.purpose) == Some(Purpose::Validation)
    }
}

/// A new job, as the consumer API (or the reviewer) persists it.
#[derive(Debug)]
pub struct NewJob {
    pub id: Uuid,
    pub model: String,
    pub kind: &'static str,
    pub params: String,
    /// The consumer's key; none for the reviewer's jobs.
    pub api_key_id: Option<Uuid>,
    pub created_ms: i64,
    pub purpose: Purpose,
    /// For a validation job, the job it re-executes.
    pub review_of: Option<Uuid>,
    /// The consumer streams its tokens (they may have to cross replicas).
    pub streamed: bool,
}

/// A lease the dispatcher handed out.
#[derive(Debug)]
pub struct NewLease {
    pub id: Uuid,
    pub session: Uuid,
    /// The replica whose agent holds the lease.
    pub replica: Uuid,
    pub miner_id: String,
    pub wallet: String,
    pub lease_expires_ms: i64,
    pub assigned_ms: i64,
}

/// A result to record.
#[derive(Debug)]
pub struct Completion {
    pub id: Uuid,
    pub session: Uuid,
    pub output: String,
    pub metrics: String,
    pub finished_ms: i64,
    /// The points the result earns, credited with the completion (none for synthetic jobs).
    pub credit: Option<Credit>,
    /// The job's objects in S3 (or the spool), recorded with the completion.
    pub objects: Vec<JobObject>,
}

/// The outcome of ending an attempt without a result.
#[derive(Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    Requeued(QueueRow),
    Failed,
    /// The job was not (or no longer) leased to that session.
    NotLeased,
}

/// The columns of a [`QueueRow`].
const QUEUE_COLUMNS: [Jobs; 7] = [
    Jobs::Id,
    Jobs::Model,
    Jobs::Params,
    Jobs::CreatedMs,
    Jobs::ApiKeyId,
    Jobs::Purpose,
    Jobs::Streamed,
];

const JOB_COLUMNS: [Jobs; 12] = [
    Jobs::Id,
    Jobs::Model,
    Jobs::Status,
    Jobs::Attempts,
    Jobs::ApiKeyId,
    Jobs::MinerId,
    Jobs::Output,
    Jobs::Metrics,
    Jobs::Error,
    Jobs::CreatedMs,
    Jobs::AssignedMs,
    Jobs::FinishedMs,
];

/// Writes new queued jobs, all in one statement.
pub async fn insert_many(db: &Db, jobs: &[NewJob]) -> Result<(), DbError> {
    let mut insert = Query::insert();
    insert.into_table(Jobs::Table).columns([
        Jobs::Id,
        Jobs::Model,
        Jobs::Kind,
        Jobs::Params,
        Jobs::Status,
        Jobs::ApiKeyId,
        Jobs::CreatedMs,
        Jobs::UpdatedMs,
        Jobs::Purpose,
        Jobs::ReviewOf,
        Jobs::Streamed,
    ]);
    for job in jobs {
        insert.values_panic([
            job.id.into(),
            job.model.as_str().into(),
            job.kind.into(),
            job.params.as_str().into(),
            Status::Queued.as_str().into(),
            job.api_key_id.into(),
            job.created_ms.into(),
            job.created_ms.into(),
            job.purpose.as_str().into(),
            job.review_of.into(),
            job.streamed.into(),
        ]);
    }
    db.execute(&insert).await?;
    Ok(())
}

pub async fn get(db: &Db, id: Uuid) -> Result<Option<JobRow>, DbError> {
    let select = Query::select()
        .columns(JOB_COLUMNS)
        .from(Jobs::Table)
        .and_where(Expr::col(Jobs::Id).eq(id))
        .to_owned();
    db.fetch_optional(&select).await
}

/// `CASE WHEN id = … THEN … END` over a batch: one column's per-job values in one statement.
fn per_job<T>(
    items: &[T],
    id: impl Fn(&T) -> Uuid,
    value: impl Fn(&T) -> sea_query::Value,
    column: Jobs,
) -> Expr {
    let mut case = CaseStatement::new();
    for item in items {
        case = case.case(Expr::col(Jobs::Id).eq(id(item)), Expr::Value(value(item)));
    }
    Expr::Case(Box::new(case.finally(Expr::col(column))))
}

/// queued → assigned for each lease, in one statement. Returns the jobs that moved, with
/// their attempt numbers; a job missing from the answer was no longer queued (cancelled, or
/// claimed by another replica). On PostgreSQL the rows are locked with `SKIP LOCKED`, so a
/// replica never waits on another's claim of the same job: it just loses it.
pub async fn assign_many(db: &Db, leases: &[NewLease]) -> Result<Vec<(Uuid, u32)>, DbError> {
    let claimable = Query::select()
        .column(Jobs::Id)
        .from(Jobs::Table)
        .and_where(Expr::col(Jobs::Id).is_in(leases.iter().map(|l| l.id)))
        .and_where(Expr::col(Jobs::Status).eq(Status::Queued.as_str()))
        .lock_with_behavior(
            sea_query::LockType::Update,
            sea_query::LockBehavior::SkipLocked,
        )
        .to_owned();
    let update = Query::update()
        .table(Jobs::Table)
        .value(Jobs::Status, Status::Assigned.as_str())
        .value(
            Jobs::AgentSession,
            per_job(leases, |l| l.id, |l| l.session.into(), Jobs::AgentSession),
        )
        .value(
            Jobs::Replica,
            per_job(leases, |l| l.id, |l| l.replica.into(), Jobs::Replica),
        )
        .value(
            Jobs::MinerId,
            per_job(
                leases,
                |l| l.id,
                |l| l.miner_id.as_str().into(),
                Jobs::MinerId,
            ),
        )
        .value(
            Jobs::Wallet,
            per_job(leases, |l| l.id, |l| l.wallet.as_str().into(), Jobs::Wallet),
        )
        .value(
            Jobs::LeaseExpiresMs,
            per_job(
                leases,
                |l| l.id,
                |l| l.lease_expires_ms.into(),
                Jobs::LeaseExpiresMs,
            ),
        )
        .value(
            Jobs::AssignedMs,
            per_job(leases, |l| l.id, |l| l.assigned_ms.into(), Jobs::AssignedMs),
        )
        .value(Jobs::UpdatedMs, now_ms())
        .value(Jobs::Attempts, Expr::col(Jobs::Attempts).add(1))
        .and_where(Expr::col(Jobs::Id).in_subquery(claimable))
        .and_where(Expr::col(Jobs::Status).eq(Status::Queued.as_str()))
        .returning(Query::returning().columns([Jobs::Id, Jobs::Attempts]))
        .to_owned();
    let rows: Vec<(Uuid, i32)> = db.write_returning(&update).await?;
    Ok(rows
        .into_iter()
        .map(|(id, attempts)| (id, u32::try_from(attempts).unwrap_or(1)))
        .collect())
}

/// assigned → completed for each result whose job is still leased to the session that sent
/// it, in one statement, and the credits of those that completed, all in one transaction.
/// Returns the jobs that completed.
pub async fn complete_many(db: &Db, completions: &[Completion]) -> Result<Vec<Uuid>, DbError> {
    let mut tx = db.begin().await?;
    let completed = complete_in(&mut tx, completions).await?;
    let credits: Vec<&Credit> = completions
        .iter()
        .filter(|c| completed.contains(&c.id))
        .filter_map(|c| c.credit.as_ref())
        .collect();
    ledger::insert_credits(&mut tx, &credits).await?;
    insert_objects(
        &mut tx,
        completions.iter().filter(|c| completed.contains(&c.id)),
    )
    .await?;
    tx.commit().await?;
    Ok(completed)
}

#[derive(Iden)]
enum JobObjects {
    Table,
    JobId,
    Name,
    Key,
    SizeBytes,
    Sha256,
    CreatedMs,
}

/// Records where each completed job's objects are.
async fn insert_objects<'a>(
    tx: &mut Tx,
    completions: impl Iterator<Item = &'a Completion>,
) -> Result<(), DbError> {
    let mut insert = Query::insert();
    insert.into_table(JobObjects::Table).columns([
        JobObjects::JobId,
        JobObjects::Name,
        JobObjects::Key,
        JobObjects::SizeBytes,
        JobObjects::Sha256,
        JobObjects::CreatedMs,
    ]);
    let mut rows = 0;
    for completion in completions {
        for object in &completion.objects {
            insert.values_panic([
                completion.id.into(),
                object.name.into(),
                object.stored.key.as_str().into(),
                i64::try_from(object.stored.size_bytes)
                    .unwrap_or(i64::MAX)
                    .into(),
                object.stored.sha256.as_str().into(),
                completion.finished_ms.into(),
            ]);
            rows += 1;
        }
    }
    if rows == 0 {
        return Ok(());
    }
    insert.on_conflict(
        OnConflict::columns([JobObjects::JobId, JobObjects::Name])
            .do_nothing()
            .to_owned(),
    );
    tx.execute(&insert).await?;
    Ok(())
}

/// A job's stored objects: `(name, key, size, sha256)`.
pub async fn objects_of(db: &Db, job: Uuid) -> Result<Vec<(String, String, i64, String)>, DbError> {
    let select = Query::select()
        .columns([
            JobObjects::Name,
            JobObjects::Key,
            JobObjects::SizeBytes,
            JobObjects::Sha256,
        ])
        .from(JobObjects::Table)
        .and_where(Expr::col(JobObjects::JobId).eq(job))
        .order_by(JobObjects::Name, sea_query::Order::Asc)
        .to_owned();
    db.fetch_all(&select).await
}

async fn complete_in(tx: &mut Tx, completions: &[Completion]) -> Result<Vec<Uuid>, DbError> {
    let update = Query::update()
        .table(Jobs::Table)
        .value(Jobs::Status, Status::Completed.as_str())
        .value(
            Jobs::Output,
            per_job(
                completions,
                |c| c.id,
                |c| c.output.as_str().into(),
                Jobs::Output,
            ),
        )
        .value(
            Jobs::Metrics,
            per_job(
                completions,
                |c| c.id,
                |c| c.metrics.as_str().into(),
                Jobs::Metrics,
            ),
        )
        .value(
            Jobs::FinishedMs,
            per_job(
                completions,
                |c| c.id,
                |c| c.finished_ms.into(),
                Jobs::FinishedMs,
            ),
        )
        .value(Jobs::Error, Option::<String>::None)
        .value(Jobs::LeaseExpiresMs, Option::<i64>::None)
        .value(Jobs::UpdatedMs, now_ms())
        .and_where(Expr::col(Jobs::Id).is_in(completions.iter().map(|c| c.id)))
        .and_where(Expr::col(Jobs::Status).eq(Status::Assigned.as_str()))
        .and_where(Expr::col(Jobs::AgentSession).eq(per_job(
            completions,
            |c| c.id,
            |c| c.session.into(),
            Jobs::AgentSession,
        )))
        .returning_col(Jobs::Id)
        .to_owned();
    let rows: Vec<(Uuid,)> = tx.write_returning(&update).await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Ends an attempt that produced no result. The job goes back to the queue while it has
/// attempts left and the failure allows a retry; otherwise it fails with `reason`.
/// `session` restricts this to the lease holder (`None`: whoever holds it).
pub async fn end_attempt(
    db: &Db,
    id: Uuid,
    session: Option<Uuid>,
    reason: &str,
    retry_within: Option<u32>,
) -> Result<AttemptEnd, DbError> {
    let now = now_ms();
    if let Some(max_attempts) = retry_within {
        let requeue = leased(id, session)
            .value(Jobs::Status, Status::Queued.as_str())
            .value(Jobs::AgentSession, Option::<Uuid>::None)
            .value(Jobs::Replica, Option::<Uuid>::None)
            .value(Jobs::LeaseExpiresMs, Option::<i64>::None)
            .value(Jobs::Error, reason)
            .value(Jobs::UpdatedMs, now)
            .and_where(Expr::col(Jobs::Attempts).lt(i64::from(max_attempts)))
            .returning(Query::returning().columns(QUEUE_COLUMNS))
            .to_owned();
        if let Some(row) = db.write_returning::<QueueRow>(&requeue).await?.pop() {
            return Ok(AttemptEnd::Requeued(row));
        }
    }
    let fail = leased(id, session)
        .value(Jobs::Status, Status::Failed.as_str())
        .value(Jobs::LeaseExpiresMs, Option::<i64>::None)
        .value(Jobs::Error, reason)
        .value(Jobs::FinishedMs, now)
        .value(Jobs::UpdatedMs, now)
        .to_owned();
    Ok(if db.execute(&fail).await? == 1 {
        AttemptEnd::Failed
    } else {
        AttemptEnd::NotLeased
    })
}

fn leased(id: Uuid, session: Option<Uuid>) -> UpdateStatement {
    let mut update = Query::update();
    update
        .table(Jobs::Table)
        .and_where(Expr::col(Jobs::Id).eq(id))
        .and_where(Expr::col(Jobs::Status).eq(Status::Assigned.as_str()));
    if let Some(session) = session {
        update.and_where(Expr::col(Jobs::AgentSession).eq(session));
    }
    update
}

/// queued|assigned → cancelled, for the job's owner. Returns the status it had, if it moved.
pub async fn mark_cancelled(db: &Db, id: Uuid, api_key_id: Uuid) -> Result<bool, DbError> {
    let now = now_ms();
    let update = Query::update()
        .table(Jobs::Table)
        .value(Jobs::Status, Status::Cancelled.as_str())
        .value(Jobs::LeaseExpiresMs, Option::<i64>::None)
        .value(Jobs::FinishedMs, now)
        .value(Jobs::UpdatedMs, now)
        .and_where(Expr::col(Jobs::Id).eq(id))
        .and_where(Expr::col(Jobs::ApiKeyId).eq(api_key_id))
        .and_where(
            Expr::col(Jobs::Status).is_in([Status::Queued.as_str(), Status::Assigned.as_str()]),
        )
        .to_owned();
    Ok(db.execute(&update).await? == 1)
}

/// assigned → queued, lease dropped: the part every release of leases shares.
fn release_update() -> UpdateStatement {
    Query::update()
        .table(Jobs::Table)
        .value(Jobs::Status, Status::Queued.as_str())
        .value(Jobs::AgentSession, Option::<Uuid>::None)
        .value(Jobs::Replica, Option::<Uuid>::None)
        .value(Jobs::LeaseExpiresMs, Option::<i64>::None)
        .value(Jobs::UpdatedMs, now_ms())
        // The attempt a coordinator's end cut short is not the job's fault: it does not count.
        .value(Jobs::Attempts, Expr::col(Jobs::Attempts).sub(1))
        .and_where(Expr::col(Jobs::Status).eq(Status::Assigned.as_str()))
        .and_where(Expr::col(Jobs::Attempts).gt(0))
        .returning(Query::returning().columns(QUEUE_COLUMNS))
        .to_owned()
}

/// Puts back in the queue the leases of replicas that are gone: every replica but `me` whose
/// last heartbeat is older than `alive_since_ms` (or that left without a record).
pub async fn release_gone_replicas(
    db: &Db,
    me: Uuid,
    alive_since_ms: i64,
) -> Result<Vec<QueueRow>, DbError> {
    let alive = Query::select()
        .column(Replicas::Id)
        .from(Replicas::Table)
        .and_where(Expr::col(Replicas::SeenMs).gte(alive_since_ms))
        .to_owned();
    let mut update = release_update();
    update.cond_where(
        Expr::col(Jobs::Replica)
            .is_null()
            .or(Expr::col(Jobs::Replica)
                .ne(me)
                .and(Expr::col(Jobs::Replica).not_in_subquery(alive))),
    );
    db.write_returning(&update).await
}

/// Puts `jobs` back in the queue if they are still assigned (a coordinator shutting down
/// with them unfinished).
pub async fn release_leases(db: &Db, jobs: &[Uuid]) -> Result<Vec<QueueRow>, DbError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut update = release_update();
    update.and_where(Expr::col(Jobs::Id).is_in(jobs.iter().copied()));
    db.write_returning(&update).await
}

/// Every queued job, oldest first.
pub async fn queued(db: &Db) -> Result<Vec<QueueRow>, DbError> {
    let select: SelectStatement = Query::select()
        .columns(QUEUE_COLUMNS)
        .from(Jobs::Table)
        .and_where(Expr::col(Jobs::Status).eq(Status::Queued.as_str()))
        .order_by(Jobs::CreatedMs, sea_query::Order::Asc)
        .order_by(Jobs::Id, sea_query::Order::Asc)
        .to_owned();
    db.fetch_all(&select).await
}

/// Jobs queued and untouched since `cutoff_ms`, oldest first (at most `limit`).
pub async fn stale_queued(db: &Db, cutoff_ms: i64, limit: u64) -> Result<Vec<QueueRow>, DbError> {
    let select = Query::select()
        .columns(QUEUE_COLUMNS)
        .from(Jobs::Table)
        .and_where(Expr::col(Jobs::Status).eq(Status::Queued.as_str()))
        .and_where(Expr::col(Jobs::UpdatedMs).lt(cutoff_ms))
        .order_by(Jobs::CreatedMs, sea_query::Order::Asc)
        .limit(limit)
        .to_owned();
    db.fetch_all(&select).await
}

/// One job, if it is still queued.
pub async fn queued_one(db: &Db, id: Uuid) -> Result<Option<QueueRow>, DbError> {
    let select = Query::select()
        .columns(QUEUE_COLUMNS)
        .from(Jobs::Table)
        .and_where(Expr::col(Jobs::Id).eq(id))
        .and_where(Expr::col(Jobs::Status).eq(Status::Queued.as_str()))
        .to_owned();
    db.fetch_optional(&select).await
}

/// Leases whose deadline passed `cutoff_ms` long ago: a safety net behind the dispatcher's
/// own timers, for leases it no longer tracks.
pub async fn overdue_leases(db: &Db, cutoff_ms: i64) -> Result<Vec<Uuid>, DbError> {
    let select = Query::select()
        .column(Jobs::Id)
        .from(Jobs::Table)
        .and_where(Expr::col(Jobs::Status).eq(Status::Assigned.as_str()))
        .and_where(Expr::col(Jobs::LeaseExpiresMs).lt(cutoff_ms))
        .to_owned();
    let rows: Vec<(Uuid,)> = db.fetch_all(&select).await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// A miner's completed jobs since `since_ms` and the sum of their latencies (lease to result,
/// in ms): `(count, sum)`.
pub async fn miner_stats(db: &Db, miner_id: &str, since_ms: i64) -> Result<(i64, i64), DbError> {
    let latency = Expr::col(Jobs::FinishedMs).sub(Expr::col(Jobs::AssignedMs));
    let select = Query::select()
        .expr(Func::cast_as(Func::count(Expr::col(Jobs::Id)), "BIGINT"))
        .expr(Func::coalesce([
            Func::cast_as(Func::sum(latency), "BIGINT").into(),
            Expr::val(0i64),
        ]))
        .from(Jobs::Table)
        .and_where(Expr::col(Jobs::MinerId).eq(miner_id))
        .and_where(Expr::col(Jobs::Status).eq(Status::Completed.as_str()))
        .and_where(Expr::col(Jobs::FinishedMs).gte(since_ms))
        .to_owned();
    Ok(db.fetch_optional(&select).await?.unwrap_or((0, 0)))
}
