//! Token holdings that boost points: Heurist Imaginaries NFTs now, stHEU later.
//!
//! Holdings come from a [`HoldingsSource`]: today a snapshot file (`address,count` per line,
//! imported with `infermine-server nft import holdings.csv`); a chain reader can implement the
//! same trait later. An import replaces the token's whole snapshot in one transaction, so a
//! bad file changes nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sea_query::{Expr, ExprTrait, Iden, Query};

use super::BoostDetail;
use crate::auth::normalize_wallet;
use crate::db::{Db, DbError, now_ms};
use crate::points::{PointsConfig, boosted_miners};

#[derive(Iden)]
enum Holdings {
    Table,
    Wallet,
    Token,
    Count,
    Source,
    UpdatedMs,
}

/// A boosting token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Token {
    /// Heurist Imaginaries NFTs.
    Nft,
    /// Staked HEU (its boost table is empty, i.e. off, until its rules are announced).
    Stheu,
}

impl Token {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nft => "nft",
            Self::Stheu => "stheu",
        }
    }
}

/// Why holdings could not be read or imported.
#[derive(Debug, thiserror::Error)]
pub enum HoldingsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{path} line {line}: {problem}")]
    Line {
        path: PathBuf,
        line: u64,
        problem: String,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Where holdings come from.
pub trait HoldingsSource {
    /// Names the source in logs and in the stored rows.
    fn name(&self) -> String;
    /// Every holder and their count.
    fn holdings(&self) -> impl Future<Output = Result<Vec<(String, u32)>, HoldingsError>> + Send;
}

/// A snapshot file: `address,count` per line, an optional header, `#` comments.
#[derive(Debug, Clone)]
pub struct CsvSnapshot {
    pub path: PathBuf,
}

impl HoldingsSource for CsvSnapshot {
    fn name(&self) -> String {
        self.path.file_name().map_or_else(
            || "snapshot".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    async fn holdings(&self) -> Result<Vec<(String, u32)>, HoldingsError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || parse_csv(&path))
            .await
            .map_err(|e| HoldingsError::Db(DbError::Shared(format!("reader task failed: {e}"))))?
    }
}

fn parse_csv(path: &Path) -> Result<Vec<(String, u32)>, HoldingsError> {
    let read = |source| HoldingsError::Read {
        path: path.to_owned(),
        source,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .flexible(true)
        .from_path(path)
        .map_err(read)?;
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(read)?;
        let line = record.position().map_or(index as u64 + 1, |p| p.line());
        let problem = |problem: String| HoldingsError::Line {
            path: path.to_owned(),
            line,
            problem,
        };
        if record.iter().all(str::is_empty) {
            continue;
        }
        if index == 0
            && record
                .get(0)
                .is_some_and(|f| f.eq_ignore_ascii_case("address"))
        {
            continue;
        }
        if record.len() != 2 {
            return Err(problem(format!(
                "expected `address,count`, found {} fields",
                record.len()
            )));
        }
        let wallet = normalize_wallet(&record[0]).map_err(|e| problem(e.to_string()))?;
        let count: u32 = record[1].parse().map_err(|_| {
            problem(format!(
                "count `{}` is not a whole number from 0 to {}",
                &record[1],
                u32::MAX
            ))
        })?;
        if let Some(first) = seen.insert(wallet.clone(), line) {
            return Err(problem(format!(
                "{wallet} is listed twice (first on line {first}); list each holder once with their total"
            )));
        }
        rows.push((wallet, count));
    }
    Ok(rows)
}

/// Replaces the snapshot of `token` with what `source` holds. Returns the holders imported.
pub async fn import(
    db: &Db,
    token: Token,
    source: &impl HoldingsSource,
) -> Result<usize, HoldingsError> {
    let rows = source.holdings().await?;
    let name = source.name();
    let now = now_ms();
    let mut tx = db.begin().await?;
    let delete = Query::delete()
        .from_table(Holdings::Table)
        .and_where(Expr::col(Holdings::Token).eq(token.as_str()))
        .to_owned();
    tx.execute(&delete).await?;
    for chunk in rows.chunks(500).filter(|c| !c.is_empty()) {
        let mut insert = Query::insert();
        insert.into_table(Holdings::Table).columns([
            Holdings::Wallet,
            Holdings::Token,
            Holdings::Count,
            Holdings::Source,
            Holdings::UpdatedMs,
        ]);
        for (wallet, count) in chunk {
            insert.values_panic([
                wallet.as_str().into(),
                token.as_str().into(),
                i64::from(*count).into(),
                name.as_str().into(),
                now.into(),
            ]);
        }
        tx.execute(&insert).await?;
    }
    tx.commit().await?;
    Ok(rows.len())
}

/// What a wallet holds: (NFTs, stHEU).
pub async fn held(db: &Db, wallet: &str) -> Result<(u32, u32), DbError> {
    let select = Query::select()
        .columns([Holdings::Token, Holdings::Count])
        .from(Holdings::Table)
        .and_where(Expr::col(Holdings::Wallet).eq(wallet))
        .to_owned();
    let rows: Vec<(String, i64)> = db.fetch_all(&select).await?;
    let count = |token: Token| {
        rows.iter()
            .find(|(t, _)| t == token.as_str())
            .map_or(0, |(_, c)| u32::try_from(*c).unwrap_or(u32::MAX))
    };
    Ok((count(Token::Nft), count(Token::Stheu)))
}

/// The boost in force for one of a wallet's GPUs: each token's multiplier applies when the
/// GPU is among the 3·n its holding covers (by seniority, see [`boosted_miners`]).
pub async fn boost_for(
    db: &Db,
    config: &PointsConfig,
    wallet: &str,
    miner_id: &str,
) -> Result<BoostDetail, DbError> {
    let (nft_held, stheu_held) = held(db, wallet).await?;
    let mut detail = BoostDetail {
        nft_held,
        stheu_held,
        applies: false,
        multiplier_millionths: 1_000_000,
    };
    if nft_held == 0 && stheu_held == 0 {
        return Ok(detail);
    }
    let miners = crate::miners::seniority(db, wallet).await?;
    let mut multiplier: u128 = 1_000_000;
    for (held, table_multiplier) in [
        (nft_held, config.nft_multiplier(nft_held)),
        (stheu_held, config.stheu_multiplier(stheu_held)),
    ] {
        if held > 0 && boosted_miners(&miners, held).contains(miner_id) {
            multiplier = multiplier * u128::from(table_multiplier) / 1_000_000;
            detail.applies |= table_multiplier > 1_000_000;
        }
    }
    detail.multiplier_millionths = u64::try_from(multiplier).unwrap_or(u64::MAX);
    Ok(detail)
}
