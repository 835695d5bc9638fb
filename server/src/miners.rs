//! The miners table: one row per GPU slot ever seen, with its hardware and when it was last
//! connected. The portal lists a wallet's miners from here.

use infermine_protocol::GpuInfo;
use sea_query::{Expr, ExprTrait, Iden, OnConflict, Query};

use crate::auth::MinerIdentity;
use crate::db::{Db, DbError, now_ms};

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

/// Stamps the miners of a session that just ended.
pub async fn seen(db: &Db, miner_ids: &[String]) -> Result<(), DbError> {
    if miner_ids.is_empty() {
        return Ok(());
    }
    let update = Query::update()
        .table(Miners::Table)
        .value(Miners::LastSeenMs, now_ms())
        .and_where(Expr::col(Miners::MinerId).is_in(miner_ids.iter().map(String::as_str)))
        .to_owned();
    db.execute(&update).await?;
    Ok(())
}
