//! One connected session, from hello to close.
//!
//! After the hello/welcome exchange the socket is split between a reader task (frames in,
//! decoded) and a writer task (frames out, in order); a heartbeat task feeds the writer. The
//! control loop here owns the session's state: it turns coordinator frames into slot work
//! and slot events into frames. Whichever ends first ends the session and the survivors are
//! aborted. Everything is generic over the socket halves so tests drive it with channels.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use infermine_protocol::{
    AgentMessage, CloseCode, CoordinatorMessage, Hello, JobAssignment, JobId, JobResult, Welcome,
    decode_coordinator, encode,
};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use super::shutdown_requested;
use crate::challenge::{self, Challenge};
use crate::engine::EngineError;
use crate::error::AgentError;
use crate::gpu::Devices;
use crate::slots::{SlotEvent, Slots, SubmitError};

/// How long the coordinator has to answer the hello.
pub(crate) const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing agent waits for its close frame to go out and be answered.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

const CHANNEL_CAPACITY: usize = 256;

/// What a session needs from the agent around it.
pub(crate) struct Session<'a> {
    pub(crate) hello: Hello,
    pub(crate) devices: Arc<Devices>,
    pub(crate) slots: &'a Slots,
    pub(crate) events: &'a mut mpsc::Receiver<SlotEvent>,
    pub(crate) shutdown: &'a mut watch::Receiver<bool>,
    pub(crate) drain_timeout: Duration,
    /// Where the served models' folders are, for file challenges.
    pub(crate) models_dir: PathBuf,
}

/// How a session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// Shutdown was requested; running jobs were finished (or the drain timed out) and the
    /// socket closed with 1000.
    Shutdown,
    /// The coordinator refused this agent for good.
    Refused(AgentError),
    /// The connection ended or broke; worth reconnecting.
    Lost(String),
}

/// What the reader task passes on.
enum Incoming {
    Frame(CoordinatorMessage, Instant),
    Closed(Option<CloseFrame>),
    Broken(String),
}

/// Runs one session on a connected socket until it ends.
pub(crate) async fn run<S, R, E>(sink: S, stream: R, session: Session<'_>) -> SessionEnd
where
    S: Sink<Message> + Send + 'static,
    S::Error: Display,
    R: Stream<Item = Result<Message, E>> + Send + 'static,
    E: Display + 'static,
{
    let mut sink = Box::pin(sink);
    let mut stream = Box::pin(stream);
    let welcome = tokio::select! {
        welcome = handshake(&mut sink, &mut stream, &session.hello) => welcome,
        () = shutdown_requested(session.shutdown) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(normal_close())).await;
            return SessionEnd::Shutdown;
        }
    };
    let welcome = match welcome {
        Ok(welcome) => welcome,
        Err(end) => return end,
    };
    log_welcome(&welcome, &session.hello);

    let (out_tx, out_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let (in_tx, mut in_rx) = mpsc::channel(CHANNEL_CAPACITY);
    let mut writer = AbortOnDrop(tokio::spawn(write_frames(sink, out_rx)));
    let _reader = AbortOnDrop(tokio::spawn(read_frames(stream, in_tx)));
    let heartbeat = AbortOnDrop(tokio::spawn(send_heartbeats(
        Arc::clone(&session.devices),
        Duration::from_secs(welcome.heartbeat_s.max(1)),
        out_tx.clone(),
    )));

    let mut control = Control {
        out: out_tx,
        slots: session.slots,
        models: session.hello.models.iter().map(|m| m.id.clone()).collect(),
        models_dir: session.models_dir.into(),
        proofs: JoinSet::new(),
        in_flight: HashMap::new(),
        drain_deadline: None,
    };
    let served = control.serve(
        &mut in_rx,
        session.events,
        session.shutdown,
        session.drain_timeout,
    );
    let end = tokio::select! {
        Err(end) = served => end,
        written = &mut writer.0 => {
            let why = match written {
                Ok(Err(e)) => e,
                _ => "the writer stopped".to_owned(),
            };
            return SessionEnd::Lost(format!("sending failed: {why}"));
        }
    };
    if matches!(end, SessionEnd::Shutdown) {
        drop(heartbeat);
        let _ = control.out.send(normal_close()).await;
        drop(control);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, &mut writer.0).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait_closed(&mut in_rx)).await;
    }
    end
}

/// Sends the hello and waits for the welcome.
async fn handshake<S, R, E>(
    sink: &mut Pin<Box<S>>,
    stream: &mut Pin<Box<R>>,
    hello: &Hello,
) -> Result<Welcome, SessionEnd>
where
    S: Sink<Message>,
    S::Error: Display,
    R: Stream<Item = Result<Message, E>>,
    E: Display,
{
    let lost = |why: String| SessionEnd::Lost(why);
    sink.send(Message::text(encode(&AgentMessage::Hello(hello.clone()))))
        .await
        .map_err(|e| lost(format!("could not send the hello: {e}")))?;
    let deadline = Instant::now() + WELCOME_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| lost(format!("no welcome within {WELCOME_TIMEOUT:?}")))?;
        let text = match next {
            None => return Err(lost("the connection ended before the welcome".to_owned())),
            Some(Err(e)) => {
                return Err(lost(format!(
                    "the connection failed before the welcome: {e}"
                )));
            }
            Some(Ok(Message::Close(frame))) => return Err(close_end(frame)),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        match decode_coordinator(&text) {
            Ok(CoordinatorMessage::Welcome(welcome)) => return Ok(welcome),
            Ok(CoordinatorMessage::Heartbeat { .. }) => continue,
            Ok(other) => return Err(lost(format!("expected a welcome, got {other:?}"))),
            Err(e) => return Err(lost(format!("unreadable welcome: {e}"))),
        }
    }
}

fn log_welcome(welcome: &Welcome, hello: &Hello) {
    tracing::info!(
        session = %welcome.session,
        heartbeat_s = welcome.heartbeat_s,
        "connected to the coordinator with {} slot(s)",
        welcome.slots.len()
    );
    for slot in &welcome.slots {
        tracing::info!(gpu = slot.gpu_index, miner = %slot.miner_id, models = ?slot.models, "slot registered");
    }
    for gpu in &hello.gpus {
        if !welcome.slots.iter().any(|s| s.gpu_index == gpu.index) {
            tracing::warn!(
                gpu = gpu.index,
                "the coordinator registered no slot for {}",
                gpu.name
            );
        }
    }
}

/// The session's state, owned by one loop.
struct Control<'a> {
    out: mpsc::Sender<Message>,
    slots: &'a Slots,
    models: Arc<[String]>,
    models_dir: Arc<Path>,
    /// Challenges being hashed; dropping the set with the session abandons them.
    proofs: JoinSet<()>,
    /// Jobs accepted in this session and not yet reported, and whether each was cancelled.
    in_flight: HashMap<JobId, bool>,
    /// Set once shutdown is requested: no new jobs, and the session ends when `in_flight`
    /// empties or at this instant.
    drain_deadline: Option<Instant>,
}

impl Control<'_> {
    /// Returns only to end the session, hence the error-only result.
    async fn serve(
        &mut self,
        incoming: &mut mpsc::Receiver<Incoming>,
        events: &mut mpsc::Receiver<SlotEvent>,
        shutdown: &mut watch::Receiver<bool>,
        drain_timeout: Duration,
    ) -> Result<Infallible, SessionEnd> {
        loop {
            if self.drain_deadline.is_some() && self.in_flight.is_empty() {
                return Err(SessionEnd::Shutdown);
            }
            let deadline = self.drain_deadline;
            tokio::select! {
                incoming = incoming.recv() => match incoming {
                    Some(Incoming::Frame(message, received)) => self.on_frame(message, received).await?,
                    Some(Incoming::Closed(frame)) => return Err(close_end(frame)),
                    Some(Incoming::Broken(why)) => return Err(SessionEnd::Lost(why)),
                    None => return Err(SessionEnd::Lost("the reader stopped".to_owned())),
                },
                Some(event) = events.recv() => self.on_event(event).await?,
                () = shutdown_requested(shutdown), if deadline.is_none() => {
                    tracing::info!(
                        "shutting down: finishing {} running job(s) (at most {drain_timeout:?})",
                        self.in_flight.len()
                    );
                    self.drain_deadline = Some(Instant::now() + drain_timeout);
                }
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    tracing::warn!("gave up waiting for {} job(s); their results are lost", self.in_flight.len());
                    return Err(SessionEnd::Shutdown);
                }
            }
        }
    }

    async fn on_frame(
        &mut self,
        message: CoordinatorMessage,
        received: Instant,
    ) -> Result<(), SessionEnd> {
        match message {
            CoordinatorMessage::Job(job) => self.on_job(job, received).await,
            CoordinatorMessage::Cancel { job } => {
                if let Some(cancelled) = self.in_flight.get_mut(&job) {
                    *cancelled = true;
                    self.slots.cancel(job);
                    tracing::info!(%job, "job cancelled by the coordinator");
                }
                Ok(())
            }
            CoordinatorMessage::Heartbeat { .. } => Ok(()),
            CoordinatorMessage::Challenge {
                id,
                model,
                file,
                offset,
                len,
            } => {
                self.on_challenge(
                    id,
                    Challenge {
                        model,
                        file,
                        offset,
                        len,
                    },
                );
                Ok(())
            }
            CoordinatorMessage::Welcome(_) => {
                tracing::warn!("ignoring a second welcome");
                Ok(())
            }
        }
    }

    async fn on_job(&mut self, job: JobAssignment, received: Instant) -> Result<(), SessionEnd> {
        let id = job.id;
        let refusal = if self.drain_deadline.is_some() {
            Some("the agent is shutting down".to_owned())
        } else if !self.models.contains(&job.model) {
            Some(format!("model `{}` is not served by this agent", job.model))
        } else {
            None
        };
        let submitted = match refusal {
            Some(reason) => Err(reason),
            None => match self.slots.submit(job, received.into_std()) {
                Ok(()) => Ok(()),
                // Still running from a session that dropped: this session inherits its result.
                Err(SubmitError::Duplicate(_)) if !self.in_flight.contains_key(&id) => Ok(()),
                Err(SubmitError::Duplicate(_)) => {
                    tracing::warn!(job = %id, "the coordinator sent a job twice; ignored");
                    return Ok(());
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match submitted {
            Ok(()) => {
                tracing::info!(job = %id, "job accepted");
                self.in_flight.insert(id, false);
                self.send(AgentMessage::Accepted { job: id }).await
            }
            Err(reason) => {
                tracing::warn!(job = %id, "refused a job: {reason}");
                // Nothing is wrong with the job itself: another agent (or this one, later)
                // can take it.
                self.send(AgentMessage::Failed {
                    job: id,
                    reason,
                    retryable: true,
                })
                .await
            }
        }
    }

    /// Hashes the challenged range on a blocking thread and sends the proof when it is
    /// ready, so frames keep flowing meanwhile.
    fn on_challenge(&mut self, id: u64, challenge: Challenge) {
        while self.proofs.try_join_next().is_some() {}
        let (models, models_dir, out) = (
            Arc::clone(&self.models),
            Arc::clone(&self.models_dir),
            self.out.clone(),
        );
        self.proofs.spawn(async move {
            let proof = challenge::answer(id, challenge, models_dir, models).await;
            // A closed channel means the session ended; the coordinator asks again.
            let _ = out.send(Message::text(encode(&proof))).await;
        });
    }

    async fn on_event(&mut self, event: SlotEvent) -> Result<(), SessionEnd> {
        match event {
            SlotEvent::Token { job, index, text } => {
                if self.in_flight.get(&job) == Some(&false) {
                    self.send(AgentMessage::Token { job, index, text }).await?;
                }
                Ok(())
            }
            SlotEvent::Finished { job, outcome } => {
                let Some(cancelled) = self.in_flight.remove(&job) else {
                    tracing::info!(%job, "job finished after its connection dropped; result discarded (the coordinator requeued it)");
                    return Ok(());
                };
                match outcome {
                    _ if cancelled => Ok(()),
                    Ok((output, metrics)) => {
                        tracing::debug!(%job, ?metrics, "job done");
                        self.send(AgentMessage::Result(JobResult {
                            job,
                            output,
                            metrics,
                        }))
                        .await
                    }
                    Err(EngineError::Cancelled) => Ok(()),
                    Err(e) => {
                        tracing::warn!(%job, "job failed: {e}");
                        let (reason, retryable) = (e.to_string(), e.is_retryable());
                        self.send(AgentMessage::Failed {
                            job,
                            reason,
                            retryable,
                        })
                        .await
                    }
                }
            }
        }
    }

    async fn send(&self, message: AgentMessage) -> Result<(), SessionEnd> {
        self.out
            .send(Message::text(encode(&message)))
            .await
            .map_err(|_| SessionEnd::Lost("the writer stopped".to_owned()))
    }
}

async fn write_frames<S>(
    mut sink: Pin<Box<S>>,
    mut out: mpsc::Receiver<Message>,
) -> Result<(), String>
where
    S: Sink<Message>,
    S::Error: Display,
{
    while let Some(message) = out.recv().await {
        let closing = matches!(message, Message::Close(_));
        sink.send(message).await.map_err(|e| e.to_string())?;
        if closing {
            return Ok(());
        }
    }
    sink.close().await.map_err(|e| e.to_string())
}

async fn read_frames<R, E>(mut stream: Pin<Box<R>>, incoming: mpsc::Sender<Incoming>)
where
    R: Stream<Item = Result<Message, E>>,
    E: Display,
{
    loop {
        let item = match stream.next().await {
            None => Incoming::Broken("the connection ended without a close frame".to_owned()),
            Some(Err(e)) => Incoming::Broken(format!("the connection failed: {e}")),
            Some(Ok(Message::Close(frame))) => Incoming::Closed(frame),
            Some(Ok(Message::Text(text))) => match decode_coordinator(&text) {
                Ok(message) => Incoming::Frame(message, Instant::now()),
                // A newer coordinator may send frames this agent does not know yet.
                Err(e) => {
                    tracing::warn!("ignoring a frame this agent cannot read: {e}");
                    continue;
                }
            },
            Some(Ok(_)) => continue,
        };
        let last = !matches!(item, Incoming::Frame(..));
        if incoming.send(item).await.is_err() || last {
            return;
        }
    }
}

async fn send_heartbeats(devices: Arc<Devices>, every: Duration, out: mpsc::Sender<Message>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let devices = Arc::clone(&devices);
        let gpus = tokio::task::spawn_blocking(move || devices.stats())
            .await
            .unwrap_or_default();
        let frame = Message::text(encode(&AgentMessage::Heartbeat { gpus }));
        if out.send(frame).await.is_err() {
            return;
        }
    }
}

/// Waits for the coordinator's answer to our close frame, or the end of the connection.
async fn wait_closed(incoming: &mut mpsc::Receiver<Incoming>) {
    while let Some(item) = incoming.recv().await {
        if !matches!(item, Incoming::Frame(..)) {
            return;
        }
    }
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: WsCloseCode::Normal,
        reason: "agent shutting down".into(),
    }))
}

/// What a close frame from the coordinator means for the agent.
fn close_end(frame: Option<CloseFrame>) -> SessionEnd {
    let Some(frame) = frame else {
        return SessionEnd::Lost("the coordinator closed the connection".to_owned());
    };
    let code = u16::from(frame.code);
    let reason = frame.reason.as_str();
    let Some(close) = CloseCode::from_code(code) else {
        return SessionEnd::Lost(format!(
            "the coordinator closed the connection ({code}): {reason}"
        ));
    };
    if let Some(refusal) = AgentError::from_close(close, reason) {
        return SessionEnd::Refused(refusal);
    }
    let hint = match close {
        CloseCode::Replaced => {
            "; another agent connected with the same miner token: run one agent per token"
        }
        _ => "",
    };
    SessionEnd::Lost(format!(
        "the coordinator closed the connection ({close:?}, {code}): {reason}{hint}"
    ))
}

/// Aborts its task when dropped, so no session task outlives its session.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
