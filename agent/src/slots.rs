//! One worker thread per device slot. The link hands a slot its jobs through a channel; the
//! worker runs them one at a time (later ones wait, and say how long in `queue_ms`) and sends
//! tokens and outcomes back on a tokio channel the link drains.
//!
//! Engines are blocking and, later, bound to one CUDA device each, so every slot owns an OS
//! thread rather than borrowing the runtime's.
//!
//! A [`watchdog`] watches every slot: a job that overruns its lease is cancelled, and an
//! engine that ignores the cancellation (a wedged kernel, a deadlock) gets its job failed and
//! its slot a fresh worker thread, which takes over the slot's queue and loads engines anew.

mod watchdog;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use infermine_protocol::{GpuInfo, JobAssignment, JobId, JobOutput, Metrics};
use tokio::sync::mpsc;

use crate::engine::{self, CancelToken, Engine, EngineError, EngineEvent, Precision};
use crate::upload::{UploadError, Uploader};

/// What a slot reports to the link.
#[derive(Debug)]
pub(crate) enum SlotEvent {
    Token {
        job: JobId,
        index: u32,
        text: String,
    },
    /// The job is over: its output and timings, or why not.
    Finished {
        job: JobId,
        outcome: Result<(JobOutput, Metrics), EngineError>,
    },
}

/// A job waiting for its slot.
struct Queued {
    job: JobAssignment,
    received: Instant,
    cancel: CancelToken,
}

/// Why [`Slots::submit`] refused a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error("this agent has no slot {0}")]
    NoSuchSlot(u32),
    #[error("job {0} is already on this agent")]
    Duplicate(JobId),
    /// The slot's worker is gone; only possible after a crash outside any engine.
    #[error("slot {0} has stopped")]
    SlotStopped(u32),
}

/// Cancel tokens of jobs not yet finished, shared by the link (which cancels) and the
/// workers (which forget a job when it ends).
type Running = Arc<Mutex<HashMap<JobId, CancelToken>>>;

/// Makes the engine for a model on a device (normally [`engine::create`]).
pub(crate) type EngineFactory = Arc<
    dyn Fn(&str, &GpuInfo, &Path, Precision) -> Result<Box<dyn Engine>, EngineError> + Send + Sync,
>;

/// The slot workers of one agent.
pub(crate) struct Slots {
    senders: HashMap<u32, std_mpsc::Sender<Queued>>,
    running: Running,
    /// Tells the watchdog to stop.
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("slots", &self.senders.len())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Slots {
    /// Starts one worker per device, and the watchdog; every worker reports on `events` and
    /// loads models from `models_dir` in `precision`.
    pub(crate) fn start(
        devices: &[GpuInfo],
        events: mpsc::Sender<SlotEvent>,
        models_dir: &Path,
        precision: Precision,
    ) -> std::io::Result<Self> {
        Self::start_with(
            devices,
            events,
            models_dir,
            precision,
            Arc::new(|model: &str, device: &GpuInfo, dir: &Path, precision| {
                engine::create(model, device, dir, precision)
            }),
            watchdog::Timing::default(),
        )
    }

    /// [`Slots::start`] with the engines `factory` makes and the watchdog's `timing`.
    pub(crate) fn start_with(
        devices: &[GpuInfo],
        events: mpsc::Sender<SlotEvent>,
        models_dir: &Path,
        precision: Precision,
        factory: EngineFactory,
        timing: watchdog::Timing,
    ) -> std::io::Result<Self> {
        let running = Running::default();
        let mut senders = HashMap::new();
        let mut seeds = Vec::with_capacity(devices.len());
        for device in devices {
            let (tx, rx) = std_mpsc::channel();
            let seed = Arc::new(Seed {
                device: device.clone(),
                events: events.clone(),
                running: Arc::clone(&running),
                models_dir: models_dir.to_owned(),
                precision,
                factory: Arc::clone(&factory),
                jobs: Mutex::new(rx),
                watch: Mutex::new(Watch::default()),
            });
            seed.spawn_worker(0)?;
            senders.insert(device.index, tx);
            seeds.push(seed);
        }
        let stopping = Arc::new(AtomicBool::new(false));
        watchdog::spawn(seeds, timing, Arc::clone(&stopping))?;
        Ok(Self {
            senders,
            running,
            stopping,
        })
    }

    /// Queues a job on the slot it names. `received` is when its frame arrived.
    pub(crate) fn submit(&self, job: JobAssignment, received: Instant) -> Result<(), SubmitError> {
        let sender = self
            .senders
            .get(&job.slot)
            .ok_or(SubmitError::NoSuchSlot(job.slot))?;
        let cancel = CancelToken::new();
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            if running.contains_key(&job.id) {
                return Err(SubmitError::Duplicate(job.id));
            }
            running.insert(job.id, cancel.clone());
        }
        let (id, slot) = (job.id, job.slot);
        let queued = Queued {
            job,
            received,
            cancel,
        };
        if sender.send(queued).is_err() {
            self.forget(id);
            return Err(SubmitError::SlotStopped(slot));
        }
        Ok(())
    }

    /// Asks a queued or running job to stop. Returns whether the job was still here.
    pub(crate) fn cancel(&self, job: JobId) -> bool {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get(&job) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Jobs queued or running on any slot.
    pub(crate) fn in_flight(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn forget(&self, job: JobId) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&job);
    }
}

impl Drop for Slots {
    /// Cancels what is left and stops the watchdog; the workers end once their queues empty.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        for token in running.values() {
            token.cancel();
        }
    }
}

/// What a slot's workers share, and all the watchdog needs to start a new one.
struct Seed {
    device: GpuInfo,
    events: mpsc::Sender<SlotEvent>,
    running: Running,
    /// Where model folders live (`<models_dir>/<id>/`).
    models_dir: PathBuf,
    /// The number format engines load models in.
    precision: Precision,
    factory: EngineFactory,
    /// The slot's queue. A worker holds the lock only while it waits for the next job, so a
    /// replacement takes over the queue of a worker stuck in an engine.
    jobs: Mutex<std_mpsc::Receiver<Queued>>,
    watch: Mutex<Watch>,
}

/// What the watchdog sees of a slot.
#[derive(Default)]
struct Watch {
    /// The job the slot's worker is running.
    busy: Option<Busy>,
    /// Raised when the watchdog gives up on a worker: a worker with an older number leaves
    /// without reporting when its engine finally returns.
    generation: u64,
}

struct Busy {
    job: JobId,
    started: Instant,
    lease: Duration,
    cancel: CancelToken,
    /// When the watchdog cancelled it for overrunning its lease.
    cancelled_at: Option<Instant>,
}

impl Seed {
    fn watch(&self) -> std::sync::MutexGuard<'_, Watch> {
        self.watch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a worker thread of this slot, numbered `generation`.
    fn spawn_worker(self: &Arc<Self>, generation: u64) -> std::io::Result<()> {
        let worker = Worker {
            seed: Arc::clone(self),
            generation,
            engines: HashMap::new(),
            uploader: None,
        };
        // Detached: a worker ends by itself once its queue is closed (or once it is retired).
        std::thread::Builder::new()
            .name(format!("slot-{}", self.device.index))
            .spawn(move || worker.run())
            .map(|_| ())
    }
}

/// The state a slot's thread owns.
struct Worker {
    seed: Arc<Seed>,
    generation: u64,
    /// Engines loaded on this device so far, by model id.
    engines: HashMap<String, Box<dyn Engine>>,
    /// Made on the first image job (on this thread: a blocking client must not be built
    /// inside the async runtime).
    uploader: Option<Uploader>,
}

impl Worker {
    fn run(mut self) {
        loop {
            let next = self
                .seed
                .jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recv();
            let Ok(queued) = next else { return };
            let id = queued.job.id;
            self.seed.watch().busy = Some(Busy {
                job: id,
                started: Instant::now(),
                lease: Duration::from_millis(queued.job.lease_ms),
                cancel: queued.cancel.clone(),
                cancelled_at: None,
            });
            let outcome = self.execute(&queued);
            {
                let mut watch = self.seed.watch();
                if watch.generation != self.generation {
                    tracing::warn!(job = %id, slot = self.seed.device.index, "an engine the watchdog gave up on returned at last; its job was already reported failed");
                    return;
                }
                watch.busy = None;
            }
            self.seed
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            // A closed channel means the agent is stopping; the outcome has nowhere to go.
            let _ = self
                .seed
                .events
                .blocking_send(SlotEvent::Finished { job: id, outcome });
        }
    }

    fn execute(&mut self, queued: &Queued) -> Result<(JobOutput, Metrics), EngineError> {
        let job = &queued.job;
        #[cfg(feature = "cheat-lab")]
        let job = &crate::cheat::rewrite_job(job);
        let mut metrics = Metrics {
            queue_ms: millis_since(queued.received),
            ..Metrics::default()
        };
        if queued.cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        if metrics.queue_ms > job.lease_ms {
            return Err(EngineError::Transient(format!(
                "the lease expired after {} ms in the queue",
                metrics.queue_ms
            )));
        }
        #[cfg(feature = "cheat-lab")]
        crate::cheat::install_engine(&mut self.engines, job, &self.seed.models_dir)?;
        let load_start = Instant::now();
        if !self.engines.contains_key(&job.model) {
            let seed = &self.seed;
            let engine =
                (seed.factory)(&job.model, &seed.device, &seed.models_dir, seed.precision)?;
            self.engines.insert(job.model.clone(), engine);
            metrics.load_ms = millis_since(load_start);
        }
        let infer_start = Instant::now();
        let mut output = self.infer(job, &queued.cancel)?;
        #[cfg(feature = "cheat-lab")]
        crate::cheat::rewrite_output(&queued.job, &mut output)?;
        metrics.infer_ms = millis_since(infer_start);
        if let Some(url) = &job.upload_url
            && matches!(
                output,
                JobOutput::Image {
                    png_b64: Some(_),
                    ..
                }
            )
        {
            let upload_start = Instant::now();
            match self.offload(&output, url) {
                Ok(offloaded) => {
                    output = offloaded;
                    metrics.upload_ms = millis_since(upload_start);
                }
                // The coordinator also takes the PNG inline; slower, but the job is not lost.
                Err(e) => tracing::warn!(job = %job.id, "{e}; sending the image inline"),
            }
        }
        #[cfg(feature = "cheat-lab")]
        crate::cheat::rewrite_metrics(&mut metrics);
        Ok((output, metrics))
    }

    fn offload(&mut self, output: &JobOutput, url: &str) -> Result<JobOutput, UploadError> {
        let uploader = match &self.uploader {
            Some(uploader) => uploader,
            None => self.uploader.insert(Uploader::new()?),
        };
        uploader.offload(output.clone(), url)
    }

    fn infer(
        &mut self,
        job: &JobAssignment,
        cancel: &CancelToken,
    ) -> Result<JobOutput, EngineError> {
        let Some(engine) = self.engines.get_mut(&job.model) else {
            return Err(EngineError::Agent(format!(
                "model `{}` is not loaded",
                job.model
            )));
        };
        let events = &self.seed.events;
        let mut on_event = |event: EngineEvent| match event {
            EngineEvent::Token { index, text } => {
                let _ = events.blocking_send(SlotEvent::Token {
                    job: job.id,
                    index,
                    text,
                });
            }
        };
        let result = catch_unwind(AssertUnwindSafe(|| engine.run(job, cancel, &mut on_event)));
        result.unwrap_or_else(|_| {
            // The engine's state may be half-updated: load it afresh for the next job.
            self.engines.remove(&job.model);
            Err(EngineError::Agent(format!(
                "the {} engine crashed on slot {}",
                job.model, self.seed.device.index
            )))
        })
    }
}

fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use infermine_protocol::{JobParams, SyntheticParams};
    use uuid::Uuid;

    use super::*;
    use crate::gpu::Devices;

    fn job(slot: u32, delay_ms: u32) -> JobAssignment {
        JobAssignment {
            id: Uuid::now_v7(),
            model: engine::SYNTHETIC_ECHO.to_owned(),
            slot,
            params: JobParams::Synthetic(SyntheticParams {
                output_bytes: 16,
                delay_ms,
                stream_tokens: 1,
                seed: 1,
                fail: false,
            }),
            lease_ms: 60_000,
            attempt: 1,
            upload_url: None,
        }
    }

    async fn finished(
        events: &mut mpsc::Receiver<SlotEvent>,
    ) -> (JobId, Result<Metrics, EngineError>) {
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .expect("an event in time")
                .expect("workers alive");
            if let SlotEvent::Finished { job, outcome } = event {
                return (job, outcome.map(|(_, metrics)| metrics));
            }
        }
    }

    #[tokio::test]
    async fn a_busy_slot_queues_and_reports_the_wait() {
        let (tx, mut events) = mpsc::channel(64);
        let slots = Slots::start(
            Devices::cpu(1).infos(),
            tx,
            Path::new("models"),
            Precision::Auto,
        )
        .expect("start");
        let (first, second) = (job(0, 100), job(0, 0));
        let second_id = second.id;
        slots.submit(first, Instant::now()).expect("first");
        slots.submit(second, Instant::now()).expect("second");
        assert_eq!(slots.in_flight(), 2);
        finished(&mut events).await.1.expect("first ok");
        let (id, metrics) = finished(&mut events).await;
        assert_eq!(id, second_id);
        assert!(metrics.expect("second ok").queue_ms >= 90);
        assert_eq!(slots.in_flight(), 0);
    }

    #[tokio::test]
    async fn cancelled_jobs_end_as_cancelled_and_unknown_slots_are_refused() {
        let (tx, mut events) = mpsc::channel(64);
        let slots = Slots::start(
            Devices::cpu(2).infos(),
            tx,
            Path::new("models"),
            Precision::Auto,
        )
        .expect("start");
        let long = job(1, 60_000);
        let id = long.id;
        slots.submit(long, Instant::now()).expect("submit");
        assert!(slots.cancel(id));
        assert_eq!(
            finished(&mut events).await,
            (id, Err(EngineError::Cancelled))
        );
        assert!(!slots.cancel(id));
        assert_eq!(
            slots.submit(job(5, 0), Instant::now()),
            Err(SubmitError::NoSuchSlot(5))
        );
    }

    /// An engine that never returns until the test lets it: a wedged kernel. It ignores its
    /// cancel token, as a stuck CUDA call would.
    struct Wedged(Arc<AtomicBool>);

    impl Engine for Wedged {
        fn run(
            &mut self,
            _job: &JobAssignment,
            _cancel: &CancelToken,
            _events: &mut dyn FnMut(EngineEvent),
        ) -> Result<JobOutput, EngineError> {
            while !self.0.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(EngineError::Agent("released".to_owned()))
        }
    }

    #[tokio::test]
    async fn a_wedged_engine_fails_its_job_and_the_slot_gets_a_new_worker() {
        let release = Arc::new(AtomicBool::new(false));
        let wedge = Arc::clone(&release);
        let factory: EngineFactory = Arc::new(
            move |model: &str, device: &GpuInfo, dir: &Path, precision| {
                if model == "wedged" {
                    Ok(Box::new(Wedged(Arc::clone(&wedge))) as Box<dyn Engine>)
                } else {
                    engine::create(model, device, dir, precision)
                }
            },
        );
        let timing = watchdog::Timing {
            tick: Duration::from_millis(10),
            grace: Duration::from_millis(50),
            cancel_grace: Duration::from_millis(100),
        };
        let (tx, mut events) = mpsc::channel(64);
        let slots = Slots::start_with(
            Devices::cpu(1).infos(),
            tx,
            Path::new("models"),
            Precision::Auto,
            factory,
            timing,
        )
        .expect("start");
        let stuck = JobAssignment {
            model: "wedged".to_owned(),
            lease_ms: 100,
            ..job(0, 0)
        };
        let stuck_id = stuck.id;
        // Queued behind the stuck job on the same slot: the new worker must run it.
        let behind = job(0, 0);
        let behind_id = behind.id;
        slots.submit(stuck, Instant::now()).expect("stuck");
        slots.submit(behind, Instant::now()).expect("behind");

        let started = Instant::now();
        let (id, outcome) = finished(&mut events).await;
        assert_eq!(id, stuck_id);
        let Err(EngineError::Transient(why)) = outcome else {
            panic!("expected a retryable failure, got {outcome:?}");
        };
        assert!(why.contains("stopped responding"), "{why}");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "not before lease + grace + cancel grace"
        );
        let (id, outcome) = finished(&mut events).await;
        assert_eq!(id, behind_id);
        outcome.expect("the queued job runs on the new worker");

        // The abandoned thread's late return reports nothing.
        release.store(true, Ordering::Relaxed);
        let after = job(0, 0);
        let after_id = after.id;
        slots.submit(after, Instant::now()).expect("after");
        let (id, outcome) = finished(&mut events).await;
        assert_eq!(id, after_id, "no second report of the wedged job");
        outcome.expect("the slot keeps working");
        assert_eq!(slots.in_flight(), 0);
    }
}
