//! The dispatcher: one task that owns every live agent slot, the in-memory queue of jobs
//! waiting for a slot, and the leases of running jobs. Everyone else talks to it through a
//! [`Dispatcher`] handle (a channel), so assignment state has exactly one owner.
//!
//! It knows nothing of storage or points. When it pairs a job with a slot it hands the pair to
//! an [`AssignSink`] (the job lifecycle), which persists the assignment and pushes the frame;
//! when a lease is lost (agent gone, lease expired) it tells the sink, which decides between
//! requeue and failure. The database's conditional updates settle any race between the two.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use infermine_protocol::{CloseCode, CoordinatorMessage, JobId, JobParams};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

mod probation;
use probation::Allowance;
pub use probation::Probation;

/// An agent's WebSocket session.
pub type SessionId = Uuid;

/// What the dispatcher and the job lifecycle send down an agent's socket.
#[derive(Debug)]
pub enum Outbound {
    Frame(CoordinatorMessage),
    Close(CloseCode, String),
}

/// A slot an agent offers: one GPU, the models it may run, and how many jobs of each at once.
#[derive(Debug, Clone)]
pub struct SlotSpec {
    pub gpu_index: u32,
    pub miner_id: String,
    pub models: Vec<(String, u32)>,
    /// An admin marked this GPU as a trusted validator: it also runs review re-executions.
    pub validator: bool,
    /// A GPU still earning the reviewer's trust: a cap on its unreviewed work.
    pub probation: Option<Probation>,
}

/// A job waiting for a slot.
#[derive(Debug, Clone)]
pub struct QueuedJob {
    pub id: JobId,
    pub model: String,
    pub params: Arc<JobParams>,
    pub lease: Duration,
    /// When the job was submitted (ms since the epoch); carried for the job's views.
    pub created_ms: i64,
    /// Only validator slots may run it (a review re-execution).
    pub validators_only: bool,
    /// Its consumer streams its tokens.
    pub streamed: bool,
}

/// Jobs wait, and idle slots are filed, per model and lane: validator slots serve both lanes
/// of their models, other slots only the open lane.
type Lane = (String, bool);

fn lane_of(job: &QueuedJob) -> Lane {
    (job.model.clone(), job.validators_only)
}

/// A job paired with a slot, for the sink to persist and send.
#[derive(Debug)]
pub struct Assignment {
    pub job: QueuedJob,
    pub session: SessionId,
    pub gpu_index: u32,
    pub miner_id: String,
    pub agent: mpsc::Sender<Outbound>,
}

/// Why a lease ended without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    AgentDisconnected,
    LeaseExpired,
}

impl LostReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentDisconnected => "agent disconnected",
            Self::LeaseExpired => "lease expired before a result arrived",
        }
    }
}

/// Where the dispatcher's decisions go. Both calls must return quickly (spawn the I/O).
pub trait AssignSink: Send + Sync + 'static {
    /// Persist the assignment, then send the job frame. If the job is no longer queued (it was
    /// cancelled), call [`Dispatcher::release`].
    fn assign(&self, assignment: Assignment);
    /// A lease ended without a result: requeue or fail the job.
    fn lost(&self, job: JobId, session: SessionId, reason: LostReason);
}

/// Counts the dispatcher reports, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub agents: usize,
    pub slots: usize,
    pub queued: usize,
    pub leased: usize,
    /// Queued jobs per model (both lanes).
    pub queued_by_model: std::collections::BTreeMap<String, usize>,
}

enum Command {
    Enqueue(QueuedJob),
    AgentJoined {
        session: SessionId,
        sender: mpsc::Sender<Outbound>,
        slots: Vec<SlotSpec>,
    },
    AgentLeft {
        session: SessionId,
    },
    Finished {
        job: JobId,
        session: SessionId,
        latency: Option<Duration>,
    },
    Release {
        job: JobId,
        session: SessionId,
    },
    Cancel {
        job: JobId,
    },
    Forget {
        job: JobId,
    },
    Drain,
    Snapshot(oneshot::Sender<Snapshot>),
    Serving {
        model: String,
        validators_only: bool,
        reply: oneshot::Sender<usize>,
    },
    Restrict {
        miner_id: String,
        probation: Probation,
    },
    Grant {
        miner_id: String,
    },
    Lift {
        miner_id: String,
    },
}

/// A cheap handle to the dispatcher task.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    tx: mpsc::UnboundedSender<Command>,
}

impl Dispatcher {
    /// Creates the handle and the receiver the task will run on (see [`run`]).
    pub fn channel() -> (Self, DispatcherInbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, DispatcherInbox(rx))
    }

    // A closed channel means the dispatcher stopped at shutdown; there is nothing left to tell.
    fn send(&self, command: Command) {
        let _ = self.tx.send(command);
    }

    /// A job was persisted as queued: find it a slot.
    pub fn enqueue(&self, job: QueuedJob) {
        self.send(Command::Enqueue(job));
    }

    pub fn agent_joined(
        &self,
        session: SessionId,
        sender: mpsc::Sender<Outbound>,
        slots: Vec<SlotSpec>,
    ) {
        self.send(Command::AgentJoined {
            session,
            sender,
            slots,
        });
    }

    /// The agent's socket is gone; its leases are lost.
    pub fn agent_left(&self, session: SessionId) {
        self.send(Command::AgentLeft { session });
    }

    /// A leased job ended (result stored or failure recorded): free its slot.
    pub fn finished(&self, job: JobId, session: SessionId, latency: Option<Duration>) {
        self.send(Command::Finished {
            job,
            session,
            latency,
        });
    }

    /// The sink could not persist an assignment (the job left the queue): free the slot.
    pub fn release(&self, job: JobId, session: SessionId) {
        self.send(Command::Release { job, session });
    }

    /// The job was cancelled: drop it from the queue, or stop it on its agent.
    pub fn cancel(&self, job: JobId) {
        self.send(Command::Cancel { job });
    }

    /// Another replica claimed the job: drop it from the queue (a lease here is left alone).
    pub fn forget(&self, job: JobId) {
        self.send(Command::Forget { job });
    }

    /// Stop handing out jobs (shutdown); running leases continue.
    pub fn drain(&self) {
        self.send(Command::Drain);
    }

    pub async fn snapshot(&self) -> Snapshot {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Snapshot(tx));
        rx.await.unwrap_or_default()
    }

    /// How many connected slots may run `model` (busy or not): zero tells a waiting consumer
    /// that no agent serves the model, rather than that all of them are busy.
    pub async fn serving(&self, model: &str) -> usize {
        self.count_serving(model, false).await
    }

    /// How many connected validator slots may run `model`.
    pub async fn validators_serving(&self, model: &str) -> usize {
        self.count_serving(model, true).await
    }

    /// Puts a GPU on probation (or renews it): it may have at most `probation.limit` jobs
    /// running or awaiting review at once.
    pub fn restrict(&self, miner_id: &str, probation: Probation) {
        self.send(Command::Restrict {
            miner_id: miner_id.to_owned(),
            probation,
        });
    }

    /// One of a GPU's results on probation was reviewed: it may start one more job.
    pub fn grant(&self, miner_id: &str) {
        self.send(Command::Grant {
            miner_id: miner_id.to_owned(),
        });
    }

    /// The GPU earned the reviewer's trust: no more cap.
    pub fn lift(&self, miner_id: &str) {
        self.send(Command::Lift {
            miner_id: miner_id.to_owned(),
        });
    }

    async fn count_serving(&self, model: &str, validators_only: bool) -> usize {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Serving {
            model: model.to_owned(),
            validators_only,
            reply,
        });
        rx.await.unwrap_or_default()
    }
}

/// The receiving end, consumed by [`run`].
#[derive(Debug)]
pub struct DispatcherInbox(mpsc::UnboundedReceiver<Command>);

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

type SlotKey = (SessionId, u32);

#[derive(Debug)]
struct Slot {
    miner_id: String,
    models: Vec<(String, u32)>,
    validator: bool,
    running: u32,
    latency_ms: u64,
    /// While on probation, how many more open-lane jobs it may start.
    allowance: Option<Allowance>,
}

impl Slot {
    /// Whether the slot may start one more job of `lane` now.
    fn has_room(&self, lane: &Lane, concurrency: u32) -> bool {
        let (_, validators_only) = lane;
        self.running < concurrency
            && (*validators_only || self.allowance.is_none_or(|a| a.left > 0))
    }

    /// The lanes this slot takes jobs from, with its concurrency for each.
    fn lanes(&self) -> impl Iterator<Item = (Lane, u32)> + '_ {
        let lanes: &[bool] = if self.validator {
            &[false, true]
        } else {
            &[false]
        };
        self.models.iter().flat_map(move |(model, concurrency)| {
            lanes
                .iter()
                .map(move |&validators_only| ((model.clone(), validators_only), *concurrency))
        })
    }
}

#[derive(Debug)]
struct Lease {
    slot: SlotKey,
    deadline: Instant,
    /// It used up one of the slot's probation allowance.
    on_probation: bool,
}

#[derive(Debug)]
struct Agent {
    sender: mpsc::Sender<Outbound>,
    gpus: Vec<u32>,
}

/// The dispatcher's state. Only [`run`] touches it.
struct State<S> {
    sink: S,
    draining: bool,
    agents: HashMap<SessionId, Agent>,
    slots: HashMap<SlotKey, Slot>,
    /// Per lane, the slots with room for one more job of it, fastest first.
    idle: HashMap<Lane, BTreeSet<(u64, SlotKey)>>,
    /// Per lane, jobs waiting, oldest first; `u64` is the arrival order across lanes.
    queues: HashMap<Lane, VecDeque<(u64, QueuedJob)>>,
    /// Every job in `queues`, so a job offered twice is queued once.
    queued_ids: HashSet<JobId>,
    arrivals: u64,
    leases: HashMap<JobId, Lease>,
    deadlines: BinaryHeap<Reverse<(Instant, JobId)>>,
}

/// Runs the dispatcher until every handle is dropped.
pub async fn run(inbox: DispatcherInbox, sink: impl AssignSink) {
    let DispatcherInbox(mut rx) = inbox;
    let mut state = State {
        sink,
        draining: false,
        agents: HashMap::new(),
        slots: HashMap::new(),
        idle: HashMap::new(),
        queues: HashMap::new(),
        queued_ids: HashSet::new(),
        arrivals: 0,
        leases: HashMap::new(),
        deadlines: BinaryHeap::new(),
    };
    loop {
        let next_deadline = state.deadlines.peek().map(|Reverse((at, _))| *at);
        let command = tokio::select! {
            command = rx.recv() => match command {
                Some(command) => command,
                None => return,
            },
            () = sleep_until(next_deadline) => {
                state.expire_leases(Instant::now());
                continue;
            }
        };
        state.handle(command);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl<S: AssignSink> State<S> {
    fn handle(&mut self, command: Command) {
        match command {
            Command::Enqueue(job) => self.enqueue(job),
            Command::AgentJoined {
                session,
                sender,
                slots,
            } => self.agent_joined(session, sender, slots),
            Command::AgentLeft { session } => self.agent_left(session),
            Command::Finished {
                job,
                session,
                latency,
            } => self.end_lease(job, session, latency),
            Command::Release { job, session } => self.end_lease(job, session, None),
            Command::Cancel { job } => self.cancel(job),
            Command::Forget { job } => self.unqueue(job),
            Command::Drain => self.draining = true,
            Command::Snapshot(reply) => {
                let mut queued_by_model = std::collections::BTreeMap::new();
                for ((model, _), queue) in &self.queues {
                    *queued_by_model.entry(model.clone()).or_insert(0) += queue.len();
                }
                let _ = reply.send(Snapshot {
                    agents: self.agents.len(),
                    slots: self.slots.len(),
                    queued: self.queues.values().map(VecDeque::len).sum(),
                    leased: self.leases.len(),
                    queued_by_model,
                });
            }
            Command::Serving {
                model,
                validators_only,
                reply,
            } => {
                let slots = self
                    .slots
                    .values()
                    .filter(|slot| slot.validator || !validators_only)
                    .filter(|slot| slot.models.iter().any(|(m, _)| *m == model))
                    .count();
                let _ = reply.send(slots);
            }
            Command::Restrict {
                miner_id,
                probation,
            } => self.restrict(&miner_id, probation),
            Command::Grant { miner_id } => self.grant(&miner_id),
            Command::Lift { miner_id } => self.lift(&miner_id),
        }
    }

    fn enqueue(&mut self, job: QueuedJob) {
        if self.leases.contains_key(&job.id) || self.queued_ids.contains(&job.id) {
            return;
        }
        let lane = lane_of(&job);
        if !self.draining
            && let Some(&(_, key)) = self.idle.get(&lane).and_then(|set| set.first())
        {
            self.start(job, key);
            return;
        }
        self.arrivals += 1;
        self.queued_ids.insert(job.id);
        self.queues
            .entry(lane)
            .or_default()
            .push_back((self.arrivals, job));
    }

    fn agent_joined(
        &mut self,
        session: SessionId,
        sender: mpsc::Sender<Outbound>,
        specs: Vec<SlotSpec>,
    ) {
        let gpus = specs.iter().map(|s| s.gpu_index).collect();
        self.agents.insert(session, Agent { sender, gpus });
        for spec in specs {
            let key = (session, spec.gpu_index);
            let slot = Slot {
                miner_id: spec.miner_id,
                models: spec.models,
                validator: spec.validator,
                running: 0,
                latency_ms: 0,
                allowance: spec
                    .probation
                    .filter(|_| !spec.validator)
                    .map(|p| Allowance::new(p, 0)),
            };
            self.slots.insert(key, slot);
            self.refill(key);
        }
    }

    fn agent_left(&mut self, session: SessionId) {
        let Some(agent) = self.agents.remove(&session) else {
            return;
        };
        for gpu in agent.gpus {
            let key = (session, gpu);
            self.set_idle(key, false);
            self.slots.remove(&key);
        }
        let lost: Vec<JobId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.slot.0 == session)
            .map(|(id, _)| *id)
            .collect();
        for job in lost {
            self.leases.remove(&job);
            self.sink.lost(job, session, LostReason::AgentDisconnected);
        }
    }

    fn cancel(&mut self, job: JobId) {
        if let Some(lease) = self.leases.remove(&job) {
            if let Some(agent) = self.agents.get(&lease.slot.0) {
                let _ = agent
                    .sender
                    .try_send(Outbound::Frame(CoordinatorMessage::Cancel { job }));
            }
            self.lease_ended(&lease, None);
            return;
        }
        self.unqueue(job);
    }

    fn unqueue(&mut self, job: JobId) {
        if self.queued_ids.remove(&job) {
            for queue in self.queues.values_mut() {
                queue.retain(|(_, queued)| queued.id != job);
            }
        }
    }

    /// A lease ended normally (result, failure report, or a refused assignment).
    fn end_lease(&mut self, job: JobId, session: SessionId, latency: Option<Duration>) {
        match self.leases.get(&job) {
            Some(lease) if lease.slot.0 == session => {
                if let Some(lease) = self.leases.remove(&job) {
                    self.lease_ended(&lease, latency);
                }
            }
            _ => {}
        }
    }

    fn expire_leases(&mut self, now: Instant) {
        while let Some(Reverse((at, job))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            // Heap entries of leases that already ended are skipped here rather than removed.
            let expired = matches!(self.leases.get(&job), Some(lease) if lease.deadline == at);
            if !expired {
                continue;
            }
            let Some(lease) = self.leases.remove(&job) else {
                continue;
            };
            if let Some(agent) = self.agents.get(&lease.slot.0) {
                let _ = agent
                    .sender
                    .try_send(Outbound::Frame(CoordinatorMessage::Cancel { job }));
            }
            self.sink.lost(job, lease.slot.0, LostReason::LeaseExpired);
            self.lease_ended(&lease, None);
        }
    }

    fn start(&mut self, job: QueuedJob, key: SlotKey) {
        let (Some(slot), Some(agent)) = (self.slots.get_mut(&key), self.agents.get(&key.0)) else {
            return;
        };
        slot.running += 1;
        let on_probation = !job.validators_only && slot.allowance.is_some();
        if let Some(allowance) = slot.allowance.as_mut().filter(|_| on_probation) {
            allowance.left = allowance.left.saturating_sub(1);
        }
        let deadline = Instant::now() + job.lease;
        self.leases.insert(
            job.id,
            Lease {
                slot: key,
                deadline,
                on_probation,
            },
        );
        self.deadlines.push(Reverse((deadline, job.id)));
        let assignment = Assignment {
            session: key.0,
            gpu_index: key.1,
            miner_id: slot.miner_id.clone(),
            agent: agent.sender.clone(),
            job,
        };
        self.update_idle(key);
        self.sink.assign(assignment);
    }

    /// A lease ended: `latency` is set when a result came back. A job on probation that
    /// brought no result will never be reviewed, so its allowance comes back now.
    fn lease_ended(&mut self, lease: &Lease, latency: Option<Duration>) {
        let key = lease.slot;
        self.set_idle(key, false);
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        slot.running = slot.running.saturating_sub(1);
        if lease.on_probation
            && latency.is_none()
            && let Some(allowance) = slot.allowance.as_mut()
        {
            allowance.give_back(slot.running);
        }
        if let Some(latency) = latency {
            // Exponentially weighted, so one slow job does not banish a fast GPU.
            let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
            slot.latency_ms = if slot.latency_ms == 0 {
                ms
            } else {
                (slot.latency_ms * 7 + ms) / 8
            };
        }
        self.refill(key);
    }

    /// Gives a slot the oldest queued jobs it can run, as long as it has room.
    fn refill(&mut self, key: SlotKey) {
        while !self.draining {
            let Some(slot) = self.slots.get(&key) else {
                return;
            };
            let oldest = slot
                .lanes()
                .filter(|(lane, concurrency)| slot.has_room(lane, *concurrency))
                .filter_map(|(lane, _)| {
                    let arrival = self.queues.get(&lane)?.front()?.0;
                    Some((arrival, lane))
                })
                .min();
            let Some((_, lane)) = oldest else { break };
            let Some((_, job)) = self.queues.get_mut(&lane).and_then(VecDeque::pop_front) else {
                break;
            };
            self.queued_ids.remove(&job.id);
            self.start(job, key);
        }
        self.update_idle(key);
    }

    /// Re-files the slot in the idle sets of the models it has room for.
    fn update_idle(&mut self, key: SlotKey) {
        self.set_idle(key, false);
        self.set_idle(key, true);
    }

    fn set_idle(&mut self, key: SlotKey, insert: bool) {
        let Some(slot) = self.slots.get(&key) else {
            return;
        };
        let entry = (slot.latency_ms, key);
        for (lane, concurrency) in slot.lanes() {
            if insert {
                if slot.has_room(&lane, concurrency) && !self.draining {
                    self.idle.entry(lane).or_default().insert(entry);
                }
            } else if let Some(set) = self.idle.get_mut(&lane) {
                set.remove(&entry);
            }
        }
    }
}

#[cfg(test)]
mod tests;
