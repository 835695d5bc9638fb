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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub agents: usize,
    pub slots: usize,
    pub queued: usize,
    pub leased: usize,
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
    Drain,
    Snapshot(oneshot::Sender<Snapshot>),
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

    /// Stop handing out jobs (shutdown); running leases continue.
    pub fn drain(&self) {
        self.send(Command::Drain);
    }

    pub async fn snapshot(&self) -> Snapshot {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Snapshot(tx));
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
    running: u32,
    latency_ms: u64,
}

#[derive(Debug)]
struct Lease {
    slot: SlotKey,
    deadline: Instant,
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
    /// Per model, the slots with room for one more job of it, fastest first.
    idle: HashMap<String, BTreeSet<(u64, SlotKey)>>,
    /// Per model, jobs waiting, oldest first; `u64` is the arrival order across models.
    queues: HashMap<String, VecDeque<(u64, QueuedJob)>>,
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
            Command::Drain => self.draining = true,
            Command::Snapshot(reply) => {
                let _ = reply.send(Snapshot {
                    agents: self.agents.len(),
                    slots: self.slots.len(),
                    queued: self.queues.values().map(VecDeque::len).sum(),
                    leased: self.leases.len(),
                });
            }
        }
    }

    fn enqueue(&mut self, job: QueuedJob) {
        if self.leases.contains_key(&job.id) || self.queued_ids.contains(&job.id) {
            return;
        }
        if !self.draining
            && let Some(&(_, key)) = self.idle.get(&job.model).and_then(|set| set.first())
        {
            self.start(job, key);
            return;
        }
        self.arrivals += 1;
        self.queued_ids.insert(job.id);
        self.queues
            .entry(job.model.clone())
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
                running: 0,
                latency_ms: 0,
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
            self.slot_freed(lease.slot, None);
            return;
        }
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
                let slot = lease.slot;
                self.leases.remove(&job);
                self.slot_freed(slot, latency);
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
            self.slot_freed(lease.slot, None);
        }
    }

    fn start(&mut self, job: QueuedJob, key: SlotKey) {
        let (Some(slot), Some(agent)) = (self.slots.get_mut(&key), self.agents.get(&key.0)) else {
            return;
        };
        slot.running += 1;
        let deadline = Instant::now() + job.lease;
        self.leases.insert(
            job.id,
            Lease {
                slot: key,
                deadline,
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

    fn slot_freed(&mut self, key: SlotKey, latency: Option<Duration>) {
        self.set_idle(key, false);
        let Some(slot) = self.slots.get_mut(&key) else {
            return;
        };
        slot.running = slot.running.saturating_sub(1);
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
                .models
                .iter()
                .filter(|(_, concurrency)| slot.running < *concurrency)
                .filter_map(|(model, _)| {
                    self.queues
                        .get(model)?
                        .front()
                        .map(|(arrival, _)| (*arrival, model.clone()))
                })
                .min();
            let Some((_, model)) = oldest else { break };
            let Some((_, job)) = self.queues.get_mut(&model).and_then(VecDeque::pop_front) else {
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
        for (model, concurrency) in &slot.models {
            let entry = (slot.latency_ms, key);
            if insert {
                if slot.running < *concurrency && !self.draining {
                    self.idle.entry(model.clone()).or_default().insert(entry);
                }
            } else if let Some(set) = self.idle.get_mut(model) {
                set.remove(&entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use infermine_protocol::SyntheticParams;

    use super::*;

    /// Records what the dispatcher decided.
    #[derive(Debug)]
    enum Decision {
        Assign(JobId, SessionId, u32),
        Lost(JobId, SessionId, LostReason),
    }

    struct RecordingSink(mpsc::UnboundedSender<Decision>);

    impl AssignSink for RecordingSink {
        fn assign(&self, a: Assignment) {
            let _ = self
                .0
                .send(Decision::Assign(a.job.id, a.session, a.gpu_index));
        }
        fn lost(&self, job: JobId, session: SessionId, reason: LostReason) {
            let _ = self.0.send(Decision::Lost(job, session, reason));
        }
    }

    fn start() -> (Dispatcher, mpsc::UnboundedReceiver<Decision>) {
        let (dispatcher, inbox) = Dispatcher::channel();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(inbox, RecordingSink(tx)));
        (dispatcher, rx)
    }

    fn job(model: &str, lease_ms: u64) -> QueuedJob {
        QueuedJob {
            id: Uuid::now_v7(),
            model: model.to_owned(),
            params: Arc::new(JobParams::Synthetic(SyntheticParams {
                output_bytes: 1,
                delay_ms: 0,
                stream_tokens: 0,
                seed: 0,
                fail: false,
            })),
            lease: Duration::from_millis(lease_ms),
            created_ms: 0,
        }
    }

    fn agent(
        dispatcher: &Dispatcher,
        models: &[&str],
        gpus: u32,
    ) -> (SessionId, mpsc::Receiver<Outbound>) {
        let session = Uuid::now_v7();
        let (tx, rx) = mpsc::channel(16);
        let slots = (0..gpus)
            .map(|gpu_index| SlotSpec {
                gpu_index,
                miner_id: format!("m-gpu{gpu_index}"),
                models: models.iter().map(|m| ((*m).to_owned(), 1)).collect(),
            })
            .collect();
        dispatcher.agent_joined(session, tx, slots);
        (session, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Decision>) -> Decision {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a decision")
            .expect("open")
    }

    #[tokio::test]
    async fn jobs_wait_for_a_slot_with_their_model_and_go_oldest_first() {
        let (dispatcher, mut decisions) = start();
        let (first, second, other) = (job("a", 60_000), job("a", 60_000), job("b", 60_000));
        for queued in [&first, &second, &other] {
            dispatcher.enqueue(queued.clone());
        }
        assert_eq!(dispatcher.snapshot().await.queued, 3);
        let (session, _rx) = agent(&dispatcher, &["a"], 1);
        let Decision::Assign(id, s, 0) = next(&mut decisions).await else {
            panic!("not assigned")
        };
        assert_eq!(
            (id, s),
            (first.id, session),
            "oldest job of the slot's model first"
        );
        assert_eq!(
            dispatcher.snapshot().await,
            Snapshot {
                agents: 1,
                slots: 1,
                queued: 2,
                leased: 1
            }
        );

        dispatcher.finished(first.id, session, Some(Duration::from_millis(5)));
        let Decision::Assign(id, _, _) = next(&mut decisions).await else {
            panic!("not assigned")
        };
        assert_eq!(id, second.id, "model b never goes to a slot without it");
    }

    #[tokio::test]
    async fn a_job_offered_twice_is_queued_once() {
        let (dispatcher, _decisions) = start();
        let queued = job("m", 60_000);
        dispatcher.enqueue(queued.clone());
        dispatcher.enqueue(queued);
        assert_eq!(dispatcher.snapshot().await.queued, 1);
    }

    #[tokio::test]
    async fn ties_go_to_the_slot_with_the_lowest_recent_latency() {
        let (dispatcher, mut decisions) = start();
        let (_slow, _a) = agent(&dispatcher, &["m"], 1);
        let (fast, _b) = agent(&dispatcher, &["m"], 1);
        // One job each (a slot runs one at a time); the fast slot answers in 10 ms.
        for _ in 0..2 {
            dispatcher.enqueue(job("m", 60_000));
        }
        for _ in 0..2 {
            let Decision::Assign(id, s, _) = next(&mut decisions).await else {
                panic!("not assigned")
            };
            let latency = if s == fast { 10 } else { 900 };
            dispatcher.finished(id, s, Some(Duration::from_millis(latency)));
        }
        for _ in 0..3 {
            let queued = job("m", 60_000);
            dispatcher.enqueue(queued.clone());
            let Decision::Assign(_, s, _) = next(&mut decisions).await else {
                panic!()
            };
            assert_eq!(s, fast, "the faster slot wins while it is idle");
            dispatcher.finished(queued.id, s, Some(Duration::from_millis(10)));
        }
    }

    #[tokio::test]
    async fn a_departed_agent_loses_its_leases_and_its_slots() {
        let (dispatcher, mut decisions) = start();
        let (session, _rx) = agent(&dispatcher, &["m"], 2);
        let (a, b) = (job("m", 60_000), job("m", 60_000));
        dispatcher.enqueue(a.clone());
        dispatcher.enqueue(b.clone());
        next(&mut decisions).await;
        next(&mut decisions).await;
        dispatcher.agent_left(session);
        let mut lost = vec![];
        for _ in 0..2 {
            let Decision::Lost(id, s, LostReason::AgentDisconnected) = next(&mut decisions).await
            else {
                panic!()
            };
            assert_eq!(s, session);
            lost.push(id);
        }
        lost.sort();
        let mut expected = vec![a.id, b.id];
        expected.sort();
        assert_eq!(lost, expected);
        assert_eq!(dispatcher.snapshot().await, Snapshot::default());
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_lease_is_lost_and_its_agent_told_to_stop() {
        let (dispatcher, mut decisions) = start();
        let (session, mut frames) = agent(&dispatcher, &["m"], 1);
        let queued = job("m", 1_000);
        dispatcher.enqueue(queued.clone());
        next(&mut decisions).await;
        tokio::time::advance(Duration::from_millis(1_001)).await;
        let Decision::Lost(id, s, LostReason::LeaseExpired) = next(&mut decisions).await else {
            panic!()
        };
        assert_eq!((id, s), (queued.id, session));
        let Some(Outbound::Frame(CoordinatorMessage::Cancel { job })) = frames.recv().await else {
            panic!()
        };
        assert_eq!(job, queued.id);
        // A result arriving after expiry frees nothing twice.
        dispatcher.finished(queued.id, session, None);
        assert_eq!(dispatcher.snapshot().await.leased, 0);
    }

    #[tokio::test]
    async fn cancelling_a_queued_job_removes_it_and_draining_stops_assignment() {
        let (dispatcher, mut decisions) = start();
        let (cancelled, kept) = (job("m", 60_000), job("m", 60_000));
        dispatcher.enqueue(cancelled.clone());
        dispatcher.enqueue(kept.clone());
        dispatcher.cancel(cancelled.id);
        dispatcher.drain();
        let (_session, _rx) = agent(&dispatcher, &["m"], 1);
        assert_eq!(dispatcher.snapshot().await.queued, 1);
        assert!(
            decisions.try_recv().is_err(),
            "nothing is assigned while draining"
        );
    }
}
