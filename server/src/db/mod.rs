//! The database: SQLite (the default, one file in the data dir) or PostgreSQL, each through
//! its own typed sqlx pool. Queries are written once with sea-query and built for the dialect
//! of the pool in use; migrations live in `migrations/<dialect>/` and are embedded.

use std::str::FromStr;
use std::time::Duration;

use sea_query::{
    DeleteStatement, InsertStatement, PostgresQueryBuilder, SelectStatement, SqliteQueryBuilder,
    UpdateStatement,
};
use sea_query_sqlx::SqlxBinder;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, FromRow};

/// A database failure. Callers log it and answer 500; it never reaches a consumer verbatim.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A failure of a statement shared by several callers (a batched write), as text.
    #[error("database: {0}")]
    Shared(String),
    #[error("the database writer has stopped (shutting down)")]
    Closed,
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A pool for one of the two supported databases. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Db {
    /// SQLite allows one writer at a time, so writes share a single connection (no lock
    /// contention, no `SQLITE_BUSY` retries) while reads use a pool of their own.
    Sqlite {
        write: SqlitePool,
        read: SqlitePool,
        /// Runs WAL checkpoints, which the writer never does itself.
        checkpoint: SqlitePool,
    },
    Postgres(PgPool),
}

/// Builds `$statement` for the pool's dialect and runs `$body` with the pool (`write` or
/// `read` side on SQLite; PostgreSQL has one pool), the SQL and its bound values.
macro_rules! on_dialect {
    ($db:expr, $side:ident, $statement:expr, |$pool:ident, $sql:ident, $values:ident| $body:expr) => {
        match $db {
            Db::Sqlite { $side: $pool, .. } => {
                let ($sql, $values) = $statement.build_sqlx(SqliteQueryBuilder);
                $body
            }
            Db::Postgres($pool) => {
                let ($sql, $values) = $statement.build_sqlx(PostgresQueryBuilder);
                $body
            }
        }
    };
}

/// A row type readable from both databases.
pub trait Row: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}
impl<T> Row for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{}

/// Statements that change rows (sea-query's insert, update and delete).
pub trait Write: SqlxBinder {}
impl Write for InsertStatement {}
impl Write for UpdateStatement {}
impl Write for DeleteStatement {}

impl DbError {
    /// A copy for each caller of a batched write that failed.
    pub fn shared(&self) -> Self {
        Self::Shared(self.to_string())
    }
}

impl Db {
    /// Opens the database at `url` (`sqlite://PATH` or `postgres://…`), creating a SQLite file
    /// and its directory when missing.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            return Ok(Self::Postgres(pool));
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL survives process crashes; only an OS crash can lose the last
            // commits, which the queue tolerates (jobs are re-submitted by their consumers).
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| DbError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        // Checkpoints fsync; on the writer's connection they would stall the hot path, so
        // the writer never checkpoints and a background connection does it (see
        // `Db::checkpoint`; passive checkpoints never block the writer).
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone().read_only(true))
            .await?;
        let checkpoint = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        Ok(Self::Sqlite {
            write,
            read,
            checkpoint,
        })
    }

    /// Applies the embedded migrations for this dialect.
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self {
            Self::Sqlite { write, .. } => sqlx::migrate!("../migrations/sqlite").run(write).await?,
            Self::Postgres(pool) => sqlx::migrate!("../migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Which database this is, for logs.
    pub fn dialect(&self) -> &'static str {
        match self {
            Self::Sqlite { .. } => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Runs an insert, update or delete; returns the number of rows it touched.
    pub async fn execute(&self, statement: &impl Write) -> Result<u64, DbError> {
        Ok(on_dialect!(self, write, statement, |pool, sql, values| {
            sqlx::query_with(AssertSqlSafe(sql), values)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Runs a write with a `RETURNING` clause and reads the rows it returned.
    pub async fn write_returning<T: Row>(&self, statement: &impl Write) -> Result<Vec<T>, DbError> {
        Ok(on_dialect!(self, write, statement, |pool, sql, values| {
            sqlx::query_as_with(AssertSqlSafe(sql), values)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Reads at most one row.
    pub async fn fetch_optional<T: Row>(
        &self,
        statement: &SelectStatement,
    ) -> Result<Option<T>, DbError> {
        Ok(on_dialect!(self, read, statement, |pool, sql, values| {
            sqlx::query_as_with(AssertSqlSafe(sql), values)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Reads every row.
    pub async fn fetch_all<T: Row>(&self, statement: &SelectStatement) -> Result<Vec<T>, DbError> {
        Ok(on_dialect!(self, read, statement, |pool, sql, values| {
            sqlx::query_as_with(AssertSqlSafe(sql), values)
                .fetch_all(pool)
                .await?
        }))
    }

    /// Answers when the database does: a `SELECT 1` on the read pool.
    pub async fn ping(&self) -> Result<(), DbError> {
        let select = sea_query::Query::select()
            .expr(sea_query::Expr::val(1i64))
            .to_owned();
        let _: Option<(i64,)> = self.fetch_optional(&select).await?;
        Ok(())
    }

    /// Moves SQLite's write-ahead log into the database file without blocking writers.
    /// Called periodically; a no-op on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<(), DbError> {
        if let Self::Sqlite { checkpoint, .. } = self {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(checkpoint)
                .await?;
        }
        Ok(())
    }

    /// Closes every connection (on shutdown, so SQLite checkpoints its WAL).
    pub async fn close(&self) {
        match self {
            Self::Sqlite {
                write,
                read,
                checkpoint,
            } => {
                read.close().await;
                checkpoint.close().await;
                write.close().await;
            }
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

/// A transaction on either database: several writes that land together or not at all.
/// Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// [`on_dialect!`] for a transaction.
macro_rules! on_tx_dialect {
    ($tx:expr, $statement:expr, |$conn:ident, $sql:ident, $values:ident| $body:expr) => {
        match $tx {
            Tx::Sqlite(tx) => {
                let ($sql, $values) = $statement.build_sqlx(SqliteQueryBuilder);
                let $conn = &mut **tx;
                $body
            }
            Tx::Postgres(tx) => {
                let ($sql, $values) = $statement.build_sqlx(PostgresQueryBuilder);
                let $conn = &mut **tx;
                $body
            }
        }
    };
}

impl Db {
    /// Starts a transaction (on SQLite, on the single writer connection).
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(match self {
            Self::Sqlite { write, .. } => Tx::Sqlite(write.begin().await?),
            Self::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }
}

impl Tx {
    /// Runs an insert, update or delete; returns the number of rows it touched.
    pub async fn execute(&mut self, statement: &impl Write) -> Result<u64, DbError> {
        Ok(on_tx_dialect!(self, statement, |conn, sql, values| {
            sqlx::query_with(AssertSqlSafe(sql), values)
                .execute(conn)
                .await?
                .rows_affected()
        }))
    }

    /// Runs a write with a `RETURNING` clause and reads the rows it returned.
    pub async fn write_returning<T: Row>(
        &mut self,
        statement: &impl Write,
    ) -> Result<Vec<T>, DbError> {
        Ok(on_tx_dialect!(self, statement, |conn, sql, values| {
            sqlx::query_as_with(AssertSqlSafe(sql), values)
                .fetch_all(conn)
                .await?
        }))
    }

    /// Reads rows inside the transaction (sees its own writes).
    pub async fn fetch_all<T: Row>(
        &mut self,
        statement: &SelectStatement,
    ) -> Result<Vec<T>, DbError> {
        Ok(on_tx_dialect!(self, statement, |conn, sql, values| {
            sqlx::query_as_with(AssertSqlSafe(sql), values)
                .fetch_all(conn)
                .await?
        }))
    }

    /// Makes the transaction's writes permanent.
    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Self::Sqlite(tx) => tx.commit().await?,
            Self::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch: how every timestamp is stored.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
