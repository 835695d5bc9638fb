//! The miners table: one row per GPU slot ever seen, with its hardware and when it was last
//! connected. The portal lists a wallet's miners from here.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use infermine_protocol::GpuInfo;
use sea_query::{Expr, ExprTrait, Iden, OnConflict, Query};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::MinerIdentity;
use crate::db::{Db, DbError, now_ms};
use crate::dispatch::{Outbound, SessionId};

#[derive(Iden)]
enum Miners {
    Table,
    MinerId,
    Wallet,
    Name,
    GpuIndex,
    GpuUuid,
    GpuName,
    VramMb,
    FirstSeenMs,
    LastSeenMs,
    Models,
    SuspendedMs,
    SuspendedReason,
    ValidatorSinceMs,
    Replica,
}

/// Records (or refreshes) every device of a rig that just connected.
pub async fn register(db: &Db, identity: &MinerIdentity, gpus: &[GpuInfo]) -> Result<(), DbError> {
    let now = now_ms();
    let mut insert = Query::insert();
    insert.into_table(Miners::Table).columns([
        Miners::MinerId,
        Miners::Wallet,
        Miners::Name,
        Miners::GpuIndex,
        Miners::GpuUuid,
        Miners::GpuName,
        Miners::VramMb,
        Miners::FirstSeenMs,
        Miners::LastSeenMs,
    ]);
    for gpu in gpus {
        insert.values_panic([
            identity.miner_id(gpu.index).into(),
            identity.wallet.as_str().into(),
            identity.name.as_str().into(),
            i64::from(gpu.index).into(),
            gpu.uuid.as_str().into(),
            gpu.name.as_str().into(),
            i64::try_from(gpu.vram_mb).unwrap_or(i64::MAX).into(),
            now.into(),
            now.into(),
        ]);
    }
    insert.on_conflict(
        OnConflict::column(Miners::MinerId)
            .update_columns([
                Miners::GpuUuid,
                Miners::GpuName,
                Miners::VramMb,
                Miners::LastSeenMs,
            ])
            .to_owned(),
    );
    db.execute(&insert).await?;
    Ok(())
}

/// The GPUs that got slots in a session of `replica`: online, wherever they are looked up.
pub async fn connected(db: &Db, miner_ids: &[String], replica: Uuid) -> Result<(), DbError> {
    if miner_ids.is_empty() {
        return Ok(());
    }
    let update = Query::update()
        .table(Miners::Table)
        .value(Miners::Replica, replica)
        .and_where(Expr::col(Miners::MinerId).is_in(miner_ids.iter().map(String::as_str)))
        .to_owned();
    db.execute(&update).await?;
    Ok(())
}

/// Stamps the miners of a session of `replica` that just ended: offline, unless they are
/// already connected again (to another replica).
pub async fn seen(db: &Db, miner_ids: &[String], replica: Uuid) -> Result<(), DbError> {
    if miner_ids.is_empty() {
        return Ok(());
    }
    let ours = Expr::col(Miners::Replica).eq(replica);
    let update = Query::update()
        .table(Miners::Table)
        .value(Miners::LastSeenMs, now_ms())
        .value(
            Miners::Replica,
            Expr::case(ours, Expr::value(Option::<Uuid>::None)).finally(Expr::col(Miners::Replica)),
        )
        .and_where(Expr::col(Miners::MinerId).is_in(miner_ids.iter().map(String::as_str)))
        .to_owned();
    db.execute(&update).await?;
    Ok(())
}

/// A wallet's miners with when each was first seen: the input of the boost's seniority rule.
pub async fn seniority(db: &Db, wallet: &str) -> Result<Vec<(String, i64)>, DbError> {
    let select = Query::select()
        .columns([Miners::MinerId, Miners::FirstSeenMs])
        .from(Miners::Table)
        .and_where(Expr::col(Miners::Wallet).eq(wallet))
        .to_owned();
    db.fetch_all(&select).await
}

/// A miner as the portal shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MinerRow {
    pub miner_id: String,
    pub wallet: String,
    pub name: String,
    pub gpu_index: i32,
    pub gpu_name: String,
    pub vram_mb: i64,
    pub models: Option<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub suspended_ms: Option<i64>,
    pub suspended_reason: Option<String>,
    /// The replica its agent is connected to, if any.
    pub replica: Option<Uuid>,
}

const MINER_COLUMNS: [Miners; 12] = [
    Miners::MinerId,
    Miners::Wallet,
    Miners::Name,
    Miners::GpuIndex,
    Miners::GpuName,
    Miners::VramMb,
    Miners::Models,
    Miners::FirstSeenMs,
    Miners::LastSeenMs,
    Miners::SuspendedMs,
    Miners::SuspendedReason,
    Miners::Replica,
];

pub async fn get(db: &Db, miner_id: &str) -> Result<Option<MinerRow>, DbError> {
    let select = Query::select()
        .columns(MINER_COLUMNS)
        .from(Miners::Table)
        .and_where(Expr::col(Miners::MinerId).eq(miner_id))
        .to_owned();
    db.fetch_optional(&select).await
}

/// A wallet's miners, oldest first.
pub async fn of_wallet(db: &Db, wallet: &str) -> Result<Vec<MinerRow>, DbError> {
    let select = Query::select()
        .columns(MINER_COLUMNS)
        .from(Miners::Table)
        .and_where(Expr::col(Miners::Wallet).eq(wallet))
        .order_by(Miners::FirstSeenMs, sea_query::Order::Asc)
        .order_by(Miners::MinerId, sea_query::Order::Asc)
        .to_owned();
    db.fetch_all(&select).await
}

/// Records the models each of a session's GPUs serves.
pub async fn set_models(db: &Db, models: &[(String, Vec<String>)]) -> Result<(), DbError> {
    for (miner_id, list) in models {
        let json = serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned());
        let update = Query::update()
            .table(Miners::Table)
            .value(Miners::Models, json)
            .and_where(Expr::col(Miners::MinerId).eq(miner_id.as_str()))
            .to_owned();
        db.execute(&update).await?;
    }
    Ok(())
}

/// Suspends (`Some(reason)`) or reinstates (`None`) a miner. False if there is no such miner.
pub async fn set_suspended(db: &Db, miner_id: &str, reason: Option<&str>) -> Result<bool, DbError> {
    let update = Query::update()
        .table(Miners::Table)
        .value(Miners::SuspendedMs, reason.map(|_| now_ms()))
        .value(Miners::SuspendedReason, reason.map(str::to_owned))
        .and_where(Expr::col(Miners::MinerId).eq(miner_id))
        .to_owned();
    Ok(db.execute(&update).await? == 1)
}

/// Of `miner_ids`, those suspended, with the reason.
pub async fn suspended(db: &Db, miner_ids: &[String]) -> Result<Vec<(String, String)>, DbError> {
    if miner_ids.is_empty() {
        return Ok(Vec::new());
    }
    let select = Query::select()
        .columns([Miners::MinerId, Miners::SuspendedReason])
        .from(Miners::Table)
        .and_where(Expr::col(Miners::MinerId).is_in(miner_ids.iter().map(String::as_str)))
        .and_where(Expr::col(Miners::SuspendedMs).is_not_null())
        .to_owned();
    let rows: Vec<(String, Option<String>)> = db.fetch_all(&select).await?;
    Ok(rows
        .into_iter()
        .map(|(id, reason)| (id, reason.unwrap_or_default()))
        .collect())
}

/// Suspends a GPU and closes its session if connected. `None` when there is no such miner;
/// otherwise whether a session was closed.
pub async fn suspend(
    db: &Db,
    online: &Online,
    miner_id: &str,
    reason: &str,
) -> Result<Option<bool>, DbError> {
    if !set_suspended(db, miner_id, Some(reason)).await? {
        return Ok(None);
    }
    Ok(Some(match online.session_of(miner_id) {
        Some((_, sender)) => sender
            .send(Outbound::Close(
                infermine_protocol::CloseCode::Suspended,
                format!("suspended: {reason}"),
            ))
            .await
            .is_ok(),
        None => false,
    }))
}

/// Makes a miner a trusted validator (`true`) or an ordinary miner again. False if there is
/// no such miner. A connected GPU takes the change at its next connection.
pub async fn set_validator(db: &Db, miner_id: &str, validator: bool) -> Result<bool, DbError> {
    let since = validator.then(now_ms);
    let update = Query::update()
        .table(Miners::Table)
        .value(Miners::ValidatorSinceMs, since)
        .and_where(Expr::col(Miners::MinerId).eq(miner_id))
        .to_owned();
    Ok(db.execute(&update).await? == 1)
}

/// Of `miner_ids`, the validators.
pub async fn validators_among(db: &Db, miner_ids: &[String]) -> Result<Vec<String>, DbError> {
    if miner_ids.is_empty() {
        return Ok(Vec::new());
    }
    let select = Query::select()
        .column(Miners::MinerId)
        .from(Miners::Table)
        .and_where(Expr::col(Miners::MinerId).is_in(miner_ids.iter().map(String::as_str)))
        .and_where(Expr::col(Miners::ValidatorSinceMs).is_not_null())
        .to_owned();
    let rows: Vec<(String,)> = db.fetch_all(&select).await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Every validator, with its GPU's name and since when, oldest first.
pub async fn validators(db: &Db) -> Result<Vec<(String, String, i64)>, DbError> {
    let select = Query::select()
        .columns([Miners::MinerId, Miners::GpuName, Miners::ValidatorSinceMs])
        .from(Miners::Table)
        .and_where(Expr::col(Miners::ValidatorSinceMs).is_not_null())
        .order_by(Miners::ValidatorSinceMs, sea_query::Order::Asc)
        .to_owned();
    db.fetch_all(&select).await
}

/// The GPU name a miner claimed at its last connection.
pub async fn gpu_name(db: &Db, miner_id: &str) -> Result<Option<String>, DbError> {
    let select = Query::select()
        .column(Miners::GpuName)
        .from(Miners::Table)
        .and_where(Expr::col(Miners::MinerId).eq(miner_id))
        .to_owned();
    let row: Option<(String,)> = db.fetch_optional(&select).await?;
    Ok(row.map(|(name,)| name))
}

/// How to reach a connected miner's session.
type Handle = (SessionId, mpsc::Sender<Outbound>);

/// Which miners are connected right now, and how to reach their sessions (to close a
/// session whose miner gets suspended).
#[derive(Debug, Default)]
pub struct Online {
    sessions: Mutex<HashMap<String, Handle>>,
}

impl Online {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Handle>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn joined(
        &self,
        session: SessionId,
        sender: &mpsc::Sender<Outbound>,
        miner_ids: &[String],
    ) {
        let mut map = self.map();
        for id in miner_ids {
            map.insert(id.clone(), (session, sender.clone()));
        }
    }

    pub fn left(&self, session: SessionId, miner_ids: &[String]) {
        let mut map = self.map();
        for id in miner_ids {
            if map.get(id).is_some_and(|(s, _)| *s == session) {
                map.remove(id);
            }
        }
    }

    pub fn is_online(&self, miner_id: &str) -> bool {
        self.map().contains_key(miner_id)
    }

    /// The session serving `miner_id`, if connected.
    pub fn session_of(&self, miner_id: &str) -> Option<Handle> {
        self.map().get(miner_id).cloned()
    }
}
