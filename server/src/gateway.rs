//! The agent gateway: `GET /v1/agent/ws`. One session per connected agent, always the same
//! shape: wait for `hello`, check the miner token and protocol version, register the agent's
//! slots with the dispatcher, then run a writer task (frames from the dispatcher and the
//! lifecycle, plus heartbeats) beside a reader loop (tokens, results, failures, heartbeats)
//! until either ends. Every way out tells the dispatcher, which requeues the agent's jobs.
//!
//! The session core is generic over the socket's halves so tests can drive it with channels.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use governor::{Quota, RateLimiter};
use infermine_protocol::{
    AgentMessage, CloseCode, CoordinatorMessage, Hello, MAX_FRAME_BYTES, PROTOCOL_VERSION,
    SlotInfo, Welcome, decode_agent, encode,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::AppState;
use crate::auth::{AuthError, MinerIdentity};
use crate::dispatch::{Outbound, SessionId, SlotSpec};
use crate::jobs::Refusal;
use crate::miners;
use crate::review::{challenge, probation};

/// How long a new connection has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for one agent before senders wait.
const OUTBOUND_BUFFER: usize = 1024;
/// Initial read buffer of an agent's socket.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// How long a departing agent's last reports may take to be recorded.
const REPORTS_TIMEOUT: Duration = Duration::from_secs(10);
/// Most devices one agent may register.
const MAX_DEVICES: usize = 64;

/// The agents' WebSocket. After the upgrade the agent sends `hello` with its miner token and
/// the two sides exchange the JSON frames of the `infermine-protocol` crate (its crate docs
/// draw the exchange; close codes are its `CloseCode`).
#[utoipa::path(get, path = "/v1/agent/ws", tag = "agent", operation_id = "agent_websocket",
    responses(
        (status = 101, description = "switching to the agent protocol (`infermine-protocol`, \
            version in the hello); the miner token travels in the `hello` frame, not in a header"),
        (status = 400, description = "not a WebSocket upgrade request"),
        (status = 426, description = "the connection cannot be upgraded")))]
pub async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    // tungstenite allocates its read buffer up front (128 KiB by default); agents mostly send
    // small frames, and the buffer grows when a large one comes, so a small one keeps 10,000
    // idle agents well under a gigabyte.
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| {
            let (sink, stream) = socket.split();
            session(state, sink, stream)
        })
}

/// Why a session ended; the agent gets it as the close frame.
#[derive(Debug)]
struct Ending(CloseCode, String);

impl Ending {
    fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Self(code, reason.into())
    }
}

/// Runs one agent session to its end.
pub async fn session<W, R>(state: AppState, mut sink: W, mut stream: R)
where
    W: Sink<Message> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let session = Uuid::now_v7();
    let (identity, welcome, slots) = match handshake(&state, session, &mut stream).await {
        Ok(accepted) => accepted,
        Err(Ending(code, reason)) => {
            tracing::info!(%session, code = code.code(), %reason, "agent refused");
            let _ = sink.send(close_frame(code, &reason)).await;
            return;
        }
    };
    let miner_ids: Vec<String> = welcome.slots.iter().map(|s| s.miner_id.clone()).collect();
    if sink
        .send(text(&CoordinatorMessage::Welcome(welcome)))
        .await
        .is_err()
    {
        return;
    }
    let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
    let challenged: Vec<(String, Vec<String>)> = slots
        .iter()
        .filter(|slot| !slot.validator && state.config.review.challenge_on_connect)
        .map(|slot| {
            let models = slot.models.iter().map(|(m, _)| m.clone()).collect();
            (slot.miner_id.clone(), models)
        })
        .collect();
    state.dispatcher.agent_joined(session, tx.clone(), slots);
    state.online.joined(session, &tx, &miner_ids);
    if let Err(e) = miners::connected(&state.db, &miner_ids, state.jobs.cluster().id()).await {
        tracing::warn!(%session, error = %e, "could not record the miners as connected; other replicas show them offline");
    }
    for (miner_id, models) in &challenged {
        let issued =
            challenge::issue(&state, session, &tx, miner_id, &identity.wallet, models).await;
        if let Err(e) = issued {
            tracing::warn!(%session, %miner_id, error = %e, "could not send a model-file challenge");
        }
    }
    tracing::info!(%session, wallet = %identity.wallet, rig = %identity.name, "agent connected");

    let heartbeat = Duration::from_secs(state.config.heartbeat_interval_s);
    let mut reports = JoinSet::new();
    let mut writer = tokio::spawn(write_loop(sink, rx, heartbeat));
    let Ending(code, reason) = tokio::select! {
        ending = read_loop(&state, session, &mut stream, &mut reports) => ending,
        _ = &mut writer => Ending::new(CloseCode::GoingAway, "connection lost while writing"),
    };
    tracing::info!(%session, code = code.code(), %reason, "agent session ended");
    // The close frame goes after whatever is already queued; a stuck writer is stopped.
    let closed = tx.try_send(Outbound::Close(code, reason)).is_ok()
        && tokio::time::timeout(Duration::from_secs(2), &mut writer)
            .await
            .is_ok();
    if !closed {
        writer.abort();
    }
    // Results the agent sent before it left must land before its leases are declared lost,
    // or a delivered result would be refused and its job run again.
    let settle = async { while reports.join_next().await.is_some() {} };
    if tokio::time::timeout(REPORTS_TIMEOUT, settle).await.is_err() {
        tracing::warn!(%session, "reports still being recorded at departure; the rest may be retried");
    }
    state.dispatcher.agent_left(session);
    state.online.left(session, &miner_ids);
    if let Err(e) = miners::seen(&state.db, &miner_ids, state.jobs.cluster().id()).await {
        tracing::warn!(%session, error = %e, "could not record when the miners were last seen");
    }
}

/// Reads the hello and decides whether to accept the agent.
async fn handshake<R>(
    state: &AppState,
    session: SessionId,
    stream: &mut R,
) -> Result<(MinerIdentity, Welcome, Vec<SlotSpec>), Ending>
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let first = tokio::time::timeout(HELLO_TIMEOUT, stream.next())
        .await
        .map_err(|_| {
            Ending::new(
                CloseCode::HelloExpected,
                "no hello within 10 s of connecting",
            )
        })?;
    let hello = match first {
        Some(Ok(Message::Text(text))) => match decode_agent(&text) {
            Ok(AgentMessage::Hello(hello)) => hello,
            Ok(_) => {
                return Err(Ending::new(
                    CloseCode::HelloExpected,
                    "the first frame must be a hello",
                ));
            }
            Err(e) => {
                return Err(Ending::new(
                    CloseCode::ProtocolError,
                    format!("malformed hello: {e}"),
                ));
            }
        },
        _ => {
            return Err(Ending::new(
                CloseCode::HelloExpected,
                "the first frame must be a JSON text hello",
            ));
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(Ending::new(
            CloseCode::IncompatibleProtocol,
            format!(
                "agent speaks protocol {} but this coordinator speaks {PROTOCOL_VERSION}: install the matching infermine-agent",
                hello.protocol
            ),
        ));
    }
    let identity = state
        .auth
        .verify_miner_token(&hello.token)
        .await
        .map_err(|e| match e {
            AuthError::Db(e) => {
                tracing::error!(error = %e, "token check failed");
                Ending::new(CloseCode::GoingAway, "coordinator unavailable; retry later")
            }
            other => Ending::new(CloseCode::Unauthorized, other.to_string()),
        })?;
    let mut slots = plan_slots(state, &identity, &hello)?;
    let unavailable = |e: crate::db::DbError| {
        tracing::error!(error = %e, "could not record the agent's miners");
        Ending::new(CloseCode::GoingAway, "coordinator unavailable; retry later")
    };
    miners::register(&state.db, &identity, &hello.gpus)
        .await
        .map_err(unavailable)?;
    // Suspended GPUs get no work; a rig whose every GPU is suspended is told why and stays off.
    let ids: Vec<String> = slots.iter().map(|s| s.miner_id.clone()).collect();
    let suspended = miners::suspended(&state.db, &ids)
        .await
        .map_err(unavailable)?;
    if !suspended.is_empty() {
        slots.retain(|slot| !suspended.iter().any(|(id, _)| *id == slot.miner_id));
        if slots.is_empty() {
            let (id, reason) = &suspended[0];
            return Err(Ending::new(
                CloseCode::Suspended,
                format!("miner {id} is suspended ({reason}); the portal shows the case"),
            ));
        }
    }
    let validators = miners::validators_among(&state.db, &ids)
        .await
        .map_err(unavailable)?;
    for slot in &mut slots {
        slot.validator = validators.contains(&slot.miner_id);
        if !slot.validator {
            let models: Vec<String> = slot.models.iter().map(|(m, _)| m.clone()).collect();
            slot.probation = probation::probation_for(state, &slot.miner_id, &models)
                .await
                .map_err(unavailable)?;
        }
    }
    let served: Vec<(String, Vec<String>)> = slots
        .iter()
        .map(|s| {
            (
                s.miner_id.clone(),
                s.models.iter().map(|(m, _)| m.clone()).collect(),
            )
        })
        .collect();
    miners::set_models(&state.db, &served)
        .await
        .map_err(unavailable)?;
    let welcome = Welcome {
        session: session.to_string(),
        heartbeat_s: state.config.heartbeat_interval_s,
        slots: slots
            .iter()
            .map(|s| SlotInfo {
                gpu_index: s.gpu_index,
                miner_id: s.miner_id.clone(),
                models: s.models.iter().map(|(m, _)| m.clone()).collect(),
            })
            .collect(),
    };
    Ok((identity, welcome, slots))
}

/// One slot per device, each with the models the device may run per the registry.
fn plan_slots(
    state: &AppState,
    identity: &MinerIdentity,
    hello: &Hello,
) -> Result<Vec<SlotSpec>, Ending> {
    if hello.gpus.is_empty() || hello.gpus.len() > MAX_DEVICES {
        return Err(Ending::new(
            CloseCode::PolicyViolation,
            format!(
                "an agent must report between 1 and {MAX_DEVICES} devices, not {}",
                hello.gpus.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let registry = state.jobs.registry();
    let mut slots = Vec::with_capacity(hello.gpus.len());
    for gpu in &hello.gpus {
        // Stored as text, where PostgreSQL cannot take a NUL character.
        if gpu.name.contains('\0') || gpu.uuid.contains('\0') {
            return Err(Ending::new(
                CloseCode::PolicyViolation,
                format!(
                    "device {}: gpus[].name and gpus[].uuid may not contain a NUL character",
                    gpu.index
                ),
            ));
        }
        if !seen.insert(gpu.index) {
            return Err(Ending::new(
                CloseCode::ProtocolError,
                format!("device index {} reported twice", gpu.index),
            ));
        }
        let models = hello
            .models
            .iter()
            .filter_map(|m| registry.get(&m.id))
            .filter(|spec| registry.eligible(spec, gpu))
            .map(|spec| (spec.id.clone(), spec.slot_concurrency))
            .collect();
        slots.push(SlotSpec {
            gpu_index: gpu.index,
            miner_id: identity.miner_id(gpu.index),
            models,
            validator: false,
            probation: None,
        });
    }
    Ok(slots)
}

/// Sends queued frames (batched into one flush) and heartbeats until told to close.
async fn write_loop<W>(mut sink: W, mut rx: mpsc::Receiver<Outbound>, heartbeat: Duration)
where
    W: Sink<Message> + Unpin,
{
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let first = tokio::select! {
            outbound = rx.recv() => outbound,
            _ = ticker.tick() => {
                let beat = CoordinatorMessage::Heartbeat { time_ms: crate::db::now_ms().unsigned_abs() };
                if sink.send(text(&beat)).await.is_err() { return; }
                continue;
            }
        };
        let mut next = first;
        loop {
            match next {
                Some(Outbound::Frame(frame)) => {
                    if sink.feed(text(&frame)).await.is_err() {
                        return;
                    }
                }
                Some(Outbound::Close(code, reason)) => {
                    let _ = sink.send(close_frame(code, &reason)).await;
                    return;
                }
                None => {
                    let _ = sink
                        .send(close_frame(
                            CloseCode::GoingAway,
                            "coordinator shutting down",
                        ))
                        .await;
                    return;
                }
            }
            match rx.try_recv() {
                Ok(more) => next = Some(more),
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// Reads frames until the agent leaves or breaks a rule.
async fn read_loop<R>(
    state: &AppState,
    session: SessionId,
    stream: &mut R,
    reports: &mut JoinSet<()>,
) -> Ending
where
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let per_second =
        NonZeroU32::new(state.config.agent_max_frames_per_s).unwrap_or(NonZeroU32::MIN);
    let limiter = RateLimiter::direct(
        Quota::per_second(per_second)
            .allow_burst(per_second.saturating_mul(NonZeroU32::MIN.saturating_add(1))),
    );
    let silence = Duration::from_secs(state.config.agent_timeout_s);
    let mut closing = state.closing.clone();
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(silence, stream.next()) => next,
            _ = closing.wait_for(|closing| *closing) => {
                return Ending::new(CloseCode::GoingAway, "coordinator shutting down; reconnect later");
            }
        };
        let message = match next {
            Err(_) => {
                return Ending::new(
                    CloseCode::HeartbeatTimeout,
                    format!("no frame for {} s", silence.as_secs()),
                );
            }
            Ok(None) => return Ending::new(CloseCode::GoingAway, "connection closed"),
            Ok(Some(Err(e))) => return read_error(&e),
            Ok(Some(Ok(message))) => message,
        };
        if limiter.check().is_err() {
            return Ending::new(
                CloseCode::PolicyViolation,
                format!("more than {per_second} frames per second"),
            );
        }
        match message {
            Message::Text(text) => match decode_agent(&text) {
                Ok(message) => {
                    while reports.try_join_next().is_some() {}
                    if let Some(ending) = handle(state, session, message, reports) {
                        return ending;
                    }
                }
                Err(e) => {
                    return Ending::new(CloseCode::ProtocolError, format!("malformed frame: {e}"));
                }
            },
            Message::Binary(_) => {
                return Ending::new(
                    CloseCode::ProtocolError,
                    "binary frames are not supported; send JSON text frames",
                );
            }
            Message::Close(_) => {
                return Ending::new(CloseCode::GoingAway, "agent closed the connection");
            }
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

fn read_error(error: &axum::Error) -> Ending {
    let detail = error.to_string();
    if detail.contains("too long") || detail.contains("too big") {
        Ending::new(
            CloseCode::MessageTooBig,
            format!("frame larger than {MAX_FRAME_BYTES} bytes"),
        )
    } else {
        Ending::new(
            CloseCode::ProtocolError,
            format!("unreadable frame: {detail}"),
        )
    }
}

/// Acts on one frame; `Some` ends the session.
///
/// Results and failures are recorded in tasks of their own (in `reports`): each waits for a
/// database write, and a busy agent must not finish only one job per write round trip. They
/// concern different jobs, so their order does not matter; the rate limit bounds how many
/// start, and the session waits for them all before it ends.
fn handle(
    state: &AppState,
    session: SessionId,
    message: AgentMessage,
    reports: &mut JoinSet<()>,
) -> Option<Ending> {
    let jobs = std::sync::Arc::clone(&state.jobs);
    match message {
        AgentMessage::Hello(_) => {
            return Some(Ending::new(CloseCode::ProtocolError, "hello sent twice"));
        }
        AgentMessage::Result(result) => {
            reports.spawn(async move { report(session, jobs.complete(session, result).await) });
        }
        AgentMessage::Failed {
            job,
            reason,
            retryable,
        } => {
            let reason = without_nul(reason);
            reports.spawn(async move {
                report(
                    session,
                    jobs.attempt_failed(session, job, &reason, retryable).await,
                )
            });
        }
        AgentMessage::Token { job, index, text } => {
            // Inline, not spawned: tokens must keep their order, and passing one on never
            // waits (a slow consumer lags instead).
            if !jobs.token(session, job, index, text) {
                tracing::trace!(%session, %job, index, "token not passed on");
            }
        }
        AgentMessage::Proof { id, sha256, error } => {
            let state = state.clone();
            let error = error.map(without_nul);
            reports.spawn(async move {
                if let Err(e) = challenge::answered(&state, session, id, sha256, error).await {
                    tracing::warn!(%session, challenge = id, error = %e, "could not judge a challenge's proof");
                }
            });
        }
        AgentMessage::Accepted { .. } | AgentMessage::Heartbeat { .. } => {}
    }
    None
}

/// An agent's words for the record (a failure reason, a proof's error), with each NUL
/// character (which PostgreSQL cannot store in text) replaced by U+FFFD: the report is
/// recorded rather than lost to a database error.
fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

fn report(session: SessionId, outcome: Result<(), Refusal>) {
    match outcome {
        Ok(()) => {}
        Err(Refusal::NotLeased(job)) => {
            tracing::warn!(%session, %job, "refused a report for a job not leased to this agent");
        }
        Err(e @ (Refusal::Db(_) | Refusal::Storage(_))) => {
            // The lease stays; if the failure lasts, it expires and the job runs again.
            tracing::error!(%session, error = %e, "could not record an agent's report")
        }
    }
}

fn text(message: &CoordinatorMessage) -> Message {
    Message::Text(encode(message).into())
}

fn close_frame(code: CloseCode, reason: &str) -> Message {
    // Close reasons are limited to 123 bytes on the wire.
    let mut reason = reason.to_owned();
    while reason.len() > 123 {
        reason.pop();
    }
    Message::Close(Some(CloseFrame {
        code: code.code(),
        reason: reason.into(),
    }))
}
