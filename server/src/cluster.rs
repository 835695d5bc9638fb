//! Replicas: several coordinators sharing one PostgreSQL database, with one code path for one
//! node and many.
//!
//! - **The jobs table is the queue.** Every replica offers every queued job to its own
//!   dispatcher; when one pairs a job with a slot it claims the row (`UPDATE … WHERE status =
//!   'queued'`, with `FOR UPDATE SKIP LOCKED` on PostgreSQL so a lost race costs no wait). One
//!   claim wins; the others free their slot and forget the job.
//! - **`LISTEN`/`NOTIFY` carries what memory cannot.** A replica that queues a job tells the
//!   others (`queued`), a claim tells them to drop it (`taken`), a final state wakes the
//!   consumers parked on other replicas (`final`), a cancel reaches the replica whose agent
//!   runs the job (`cancelled`), and the tokens of a streamed job travel to the replica its
//!   consumer is connected to (`token`). Notifications are hints: the database stays the truth,
//!   and a periodic re-read of the queue covers any that were lost.
//! - **Heartbeats decide who is gone.** Each replica writes `replicas.seen_ms` every
//!   `heartbeat_ms`; a lease records its replica. Leases of a replica silent for
//!   `dead_after_ms` go back to the queue, taken by whichever live replica sees it first.
//!
//! On SQLite there is one replica by construction (the database is a local file): the bus is
//! silent and every other replica counts as gone, so a restart requeues at once.

use std::sync::Arc;
use std::time::Duration;

use sea_query::{Expr, ExprTrait, Iden, OnConflict, Query};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::db::{Db, DbError, now_ms};

/// The PostgreSQL channel replicas talk on.
const CHANNEL: &str = "infermine_jobs";
/// PostgreSQL refuses payloads of 8000 bytes or more; a token this large is left to the
/// result instead.
const MAX_PAYLOAD: usize = 7_900;
/// Events sent in one statement.
const MAX_BATCH: usize = 256;

/// Settings of replication (`[cluster]` in the file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// How often this replica records that it is alive (ms).
    pub heartbeat_ms: u64,
    /// A replica silent this long is gone: its leases go back to the queue (ms). Shorter
    /// recovers faster; too short requeues the jobs of a replica that only paused.
    pub dead_after_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            heartbeat_ms: 1_000,
            dead_after_ms: 10_000,
        }
    }
}

impl ClusterConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_ms < 100 {
            return Err("cluster.heartbeat_ms must be at least 100".to_owned());
        }
        if self.dead_after_ms < 3 * self.heartbeat_ms {
            return Err(format!(
                "cluster.dead_after_ms ({}) must be at least three heartbeats (3 × cluster.heartbeat_ms = {})",
                self.dead_after_ms,
                3 * self.heartbeat_ms
            ));
        }
        Ok(())
    }
}

/// What one replica tells the others about a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "snake_case")]
pub enum Event {
    /// The job is queued (new, retried or released): offer it to local slots.
    Queued { job: Uuid },
    /// A replica claimed the job: drop it from the local queue.
    Taken { job: Uuid },
    /// The job reached a final state: wake local consumers waiting on it.
    Final { job: Uuid },
    /// The consumer cancelled the job: stop it if a local agent runs it.
    Cancelled { job: Uuid },
    /// A token of a streamed job whose consumer may be on another replica.
    Token {
        job: Uuid,
        attempt: u32,
        index: u32,
        text: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The sending replica; a replica ignores its own notifications.
    from: Uuid,
    #[serde(flatten)]
    event: Event,
}

/// What a replica does with the others' events; implemented by the job lifecycle.
pub trait Peer: Send + Sync + 'static {
    /// Another replica's event, in the order it was sent. Must return quickly.
    fn event(self: &Arc<Self>, event: Event);
    /// Listening (re)started: events may have been missed.
    fn resync(self: &Arc<Self>);
}

/// This replica's identity and its way to the others. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Cluster {
    id: Uuid,
    config: ClusterConfig,
    /// `None` on SQLite: a single replica, nobody to tell.
    bus: Option<mpsc::UnboundedSender<Event>>,
}

impl Cluster {
    /// A replica alone on its database (SQLite, and unit tests).
    pub fn single(config: ClusterConfig) -> Self {
        Self {
            id: Uuid::now_v7(),
            config,
            bus: None,
        }
    }

    /// This replica on `db`: on PostgreSQL it starts the task that sends its notifications.
    pub fn join(db: &Db, config: ClusterConfig) -> Self {
        let mut cluster = Self::single(config);
        if let Db::Postgres(pool) = db {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(publish(pool.clone(), cluster.id, rx));
            cluster.bus = Some(tx);
        }
        cluster
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Whether other replicas may share the database (PostgreSQL).
    pub fn shared(&self) -> bool {
        self.bus.is_some()
    }

    /// Tells the other replicas; a no-op alone.
    pub fn publish(&self, event: Event) {
        if let Some(bus) = &self.bus {
            // Closed only once the publisher stopped at shutdown.
            let _ = bus.send(event);
        }
    }

    /// Tells the other replicas now, bypassing the queue of events (at shutdown, when the
    /// process may end before the queue is sent).
    pub async fn publish_now(&self, db: &Db, events: Vec<Event>) {
        let Db::Postgres(pool) = db else { return };
        if !self.shared() {
            return;
        }
        let payloads: Vec<String> = events
            .into_iter()
            .filter_map(|event| encode(self.id, event))
            .collect();
        if let Err(e) = notify(pool, &payloads).await {
            tracing::warn!(error = %e, "cannot notify the other replicas; they will re-read the queue");
        }
    }

    /// Replicas whose last heartbeat is older than this are gone (ms since the epoch). Alone,
    /// every other replica is gone: the database is this process's.
    pub fn alive_since_ms(&self) -> i64 {
        if self.shared() {
            now_ms() - i64::try_from(self.config.dead_after_ms).unwrap_or(i64::MAX)
        } else {
            i64::MAX
        }
    }

    /// Starts listening to the other replicas' events (PostgreSQL only).
    pub fn listen(&self, db: &Db, peer: Arc<impl Peer>) {
        if let (Db::Postgres(pool), true) = (db, self.shared()) {
            tokio::spawn(listen(pool.clone(), self.id, peer));
        }
    }

    /// Records this replica as alive (at start, and at every heartbeat). Re-registers it if
    /// the others had given it up for gone.
    pub async fn beat(&self, db: &Db, host: &str) -> Result<(), DbError> {
        let now = now_ms();
        let insert = Query::insert()
            .into_table(Replicas::Table)
            .columns([
                Replicas::Id,
                Replicas::Host,
                Replicas::StartedMs,
                Replicas::SeenMs,
            ])
            .values_panic([self.id.into(), host.into(), now.into(), now.into()])
            .on_conflict(
                OnConflict::column(Replicas::Id)
                    .update_column(Replicas::SeenMs)
                    .to_owned(),
            )
            .to_owned();
        db.execute(&insert).await?;
        Ok(())
    }

    /// Removes this replica at a clean shutdown, after its leases went back to the queue.
    pub async fn leave(&self, db: &Db) -> Result<(), DbError> {
        let delete = Query::delete()
            .from_table(Replicas::Table)
            .and_where(Expr::col(Replicas::Id).eq(self.id))
            .to_owned();
        db.execute(&delete).await?;
        Ok(())
    }

    /// Forgets replicas gone for longer than `dead_after_ms` (their leases were released).
    pub async fn forget_gone(&self, db: &Db) -> Result<u64, DbError> {
        let delete = Query::delete()
            .from_table(Replicas::Table)
            .and_where(Expr::col(Replicas::SeenMs).lt(self.alive_since_ms()))
            .and_where(Expr::col(Replicas::Id).ne(self.id))
            .to_owned();
        db.execute(&delete).await
    }

    /// The replicas alive, this one included.
    pub async fn alive(&self, db: &Db) -> Result<Vec<Uuid>, DbError> {
        let select = Query::select()
            .column(Replicas::Id)
            .from(Replicas::Table)
            .and_where(
                Expr::col(Replicas::SeenMs)
                    .gte(self.alive_since_ms())
                    .or(Expr::col(Replicas::Id).eq(self.id)),
            )
            .to_owned();
        let rows: Vec<(Uuid,)> = db.fetch_all(&select).await?;
        let mut alive: Vec<Uuid> = rows.into_iter().map(|(id,)| id).collect();
        if !alive.contains(&self.id) {
            alive.push(self.id);
        }
        Ok(alive)
    }
}

#[derive(Iden)]
pub(crate) enum Replicas {
    Table,
    Id,
    Host,
    StartedMs,
    SeenMs,
}

/// Sends this replica's events in order: one task, one statement per batch, each committed
/// before the next (PostgreSQL delivers notifications in commit order).
async fn publish(pool: PgPool, from: Uuid, mut rx: mpsc::UnboundedReceiver<Event>) {
    while let Some(first) = rx.recv().await {
        let mut payloads = Vec::new();
        let mut next = Some(first);
        while let Some(event) = next {
            payloads.extend(encode(from, event));
            next = if payloads.len() >= MAX_BATCH {
                None
            } else {
                rx.try_recv().ok()
            };
        }
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=3 {
            match notify(&pool, &payloads).await {
                Ok(_) => break,
                Err(e) if attempt < 3 => {
                    tracing::warn!(error = %e, attempt, "cannot notify the other replicas; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                // The others re-read the queue periodically; consumers fall back to polling.
                Err(e) => {
                    tracing::error!(error = %e, events = payloads.len(), "cannot notify the other replicas; events dropped")
                }
            }
        }
    }
}

/// The notification payload of `event`; `None` for one too large to send (only a huge
/// token, whose text the result carries anyway).
fn encode(from: Uuid, event: Event) -> Option<String> {
    match serde_json::to_string(&Envelope { from, event }) {
        Ok(payload) if payload.len() <= MAX_PAYLOAD => Some(payload),
        Ok(payload) => {
            tracing::debug!(bytes = payload.len(), "event too large to notify; dropped");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an event");
            None
        }
    }
}

/// Sends `payloads` in one statement (one transaction, so in order).
async fn notify(pool: &PgPool, payloads: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
        .bind(CHANNEL)
        .bind(payloads)
        .execute(pool)
        .await?;
    Ok(())
}

/// Receives the other replicas' events until the process ends, reconnecting as needed.
async fn listen(pool: PgPool, me: Uuid, peer: Arc<impl Peer>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for the other replicas; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for the other replicas; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(200);
        // Whatever was sent while not listening is read from the tables instead.
        peer.resync();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    match serde_json::from_str::<Envelope>(notification.payload()) {
                        Ok(envelope) if envelope.from == me => {}
                        Ok(envelope) => peer.event(envelope.event),
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a malformed replica event")
                        }
                    }
                }
                // The connection dropped: listen again, then catch up on what was missed.
                Ok(None) => {
                    tracing::warn!("lost the connection to the other replicas; reconnecting");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listening for the other replicas failed; reconnecting");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_travel_as_small_json() {
        let job = Uuid::now_v7();
        let from = Uuid::now_v7();
        let envelope = Envelope {
            from,
            event: Event::Token {
                job,
                attempt: 1,
                index: 7,
                text: "héllo".into(),
            },
        };
        let text = serde_json::to_string(&envelope).expect("encode");
        assert!(text.contains(r#""e":"token""#), "{text}");
        let back: Envelope = serde_json::from_str(&text).expect("decode");
        assert_eq!(back.from, from);
        assert_eq!(back.event, envelope.event);
        let queued: Envelope = serde_json::from_str(&format!(
            r#"{{"from":"{from}","e":"queued","job":"{job}"}}"#
        ))
        .expect("decode");
        assert_eq!(queued.event, Event::Queued { job });
    }

    #[test]
    fn heartbeats_must_fit_the_dead_after_window() {
        assert!(ClusterConfig::default().validate().is_ok());
        let config = ClusterConfig {
            heartbeat_ms: 1_000,
            dead_after_ms: 2_000,
        };
        let error = config.validate().expect_err("too short");
        assert!(error.contains("three heartbeats"), "{error}");
        let config = ClusterConfig {
            heartbeat_ms: 10,
            dead_after_ms: 2_000,
        };
        assert!(config.validate().is_err());
    }

    /// Alone on its database, a replica treats every other as gone (a restart requeues its
    /// predecessor's leases at once).
    #[test]
    fn alone_every_other_replica_is_gone() {
        let cluster = Cluster::single(ClusterConfig::default());
        assert!(!cluster.shared());
        assert_eq!(cluster.alive_since_ms(), i64::MAX);
    }
}
