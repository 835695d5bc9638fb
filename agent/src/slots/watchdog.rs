//! The slots' watchdog: one thread that looks at every slot's running job each tick.
//!
//! 1. A job still running `grace` past its lease is cancelled (engines poll their cancel
//!    token between steps; the coordinator has moved the job elsewhere by then anyway).
//! 2. If it is still running `cancel_grace` after that, the engine is wedged: the job is
//!    reported failed (retryable, so it runs elsewhere), the stuck thread is abandoned, and
//!    a new worker takes over the slot's queue and loads its engines afresh.

use std::sync::Arc;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Seed, SlotEvent};
use crate::engine::EngineError;

/// How patient the watchdog is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// How often it looks.
    pub tick: Duration,
    /// How far past its lease a job may run before it is cancelled.
    pub grace: Duration,
    /// How long a cancelled job's engine has to return before its worker is replaced.
    pub cancel_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            grace: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(30),
        }
    }
}

/// Starts the watchdog over `slots`; it ends when `stopping` is set.
pub(super) fn spawn(
    slots: Vec<Arc<Seed>>,
    timing: Timing,
    stopping: Arc<AtomicBool>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("slot-watchdog".to_owned())
        .spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                std::thread::sleep(timing.tick);
                for slot in &slots {
                    check(slot, &timing);
                }
            }
        })
        .map(|_| ())
}

fn check(slot: &Arc<Seed>, timing: &Timing) {
    let index = slot.device.index;
    let mut watch = slot.watch();
    let Some(busy) = watch.busy.as_mut() else {
        return;
    };
    let overrun = busy.started.elapsed().saturating_sub(busy.lease);
    if overrun < timing.grace {
        return;
    }
    match busy.cancelled_at {
        None => {
            busy.cancel.cancel();
            busy.cancelled_at = Some(Instant::now());
            tracing::warn!(job = %busy.job, slot = index, "job ran {} s past its lease; cancelling it", overrun.as_secs());
        }
        Some(at) if at.elapsed() >= timing.cancel_grace => {
            let job = busy.job;
            watch.busy = None;
            watch.generation += 1;
            let generation = watch.generation;
            drop(watch);
            tracing::error!(%job, slot = index, "the engine did not stop within {} s of cancelling its job: it is wedged; starting a new worker for the slot (models load again; if the GPU's memory stays taken, restart the agent)", timing.cancel_grace.as_secs());
            slot.running
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&job);
            let outcome = Err(EngineError::Transient(format!(
                "the engine on slot {index} stopped responding and was restarted"
            )));
            let _ = slot
                .events
                .blocking_send(SlotEvent::Finished { job, outcome });
            if let Err(e) = slot.spawn_worker(generation) {
                tracing::error!(
                    slot = index,
                    "cannot start a new worker: {e}; restart the agent"
                );
            }
        }
        Some(_) => {}
    }
}
