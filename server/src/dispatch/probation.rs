//! Probation: a GPU still earning the reviewer's trust may have only a few jobs running or
//! awaiting review at once.
//!
//! Without it a cheat that finishes jobs faster than a validator re-executes them would
//! complete dozens before its first failed audit came back. With it, a GPU on probation
//! starts a new open-lane job only when one of its earlier results has been reviewed (the
//! reviewer calls [`Dispatcher::grant`](super::Dispatcher::grant)), or when a job ended
//! without a result (nothing to review). The reviewer lifts probation once the warm-up is
//! over, and imposes it again after a failed check.

use super::{AssignSink, State};

/// A probation to impose: at most `limit` jobs running or awaiting review, of which
/// `unsettled` already await review (completed earlier, not yet reviewed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probation {
    pub limit: u32,
    pub unsettled: u32,
}

/// A slot's remaining allowance on probation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Allowance {
    pub(super) limit: u32,
    /// Open-lane jobs the slot may still start.
    pub(super) left: u32,
}

impl Allowance {
    /// The allowance of a slot running `running` jobs under `probation`.
    pub(super) fn new(probation: Probation, running: u32) -> Self {
        Self {
            limit: probation.limit,
            left: probation
                .limit
                .saturating_sub(probation.unsettled.saturating_add(running)),
        }
    }

    /// One job no longer counts (reviewed, or ended without a result); never more than the
    /// limit allows beside the `running` ones.
    pub(super) fn give_back(&mut self, running: u32) {
        self.left = (self.left + 1).min(self.limit.saturating_sub(running));
    }
}

impl<S: AssignSink> State<S> {
    /// The connected slots of one GPU (one, unless it is mid-reconnect).
    fn slots_of(&self, miner_id: &str) -> Vec<super::SlotKey> {
        self.slots
            .iter()
            .filter(|(_, slot)| slot.miner_id == miner_id && !slot.validator)
            .map(|(key, _)| *key)
            .collect()
    }

    pub(super) fn restrict(&mut self, miner_id: &str, probation: Probation) {
        for key in self.slots_of(miner_id) {
            self.set_idle(key, false);
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.allowance = Some(Allowance::new(probation, slot.running));
            }
            self.refill(key);
        }
    }

    pub(super) fn grant(&mut self, miner_id: &str) {
        for key in self.slots_of(miner_id) {
            self.set_idle(key, false);
            if let Some(slot) = self.slots.get_mut(&key)
                && let Some(allowance) = slot.allowance.as_mut()
            {
                allowance.give_back(slot.running);
            }
            self.refill(key);
        }
    }

    pub(super) fn lift(&mut self, miner_id: &str) {
        for key in self.slots_of(miner_id) {
            self.set_idle(key, false);
            if let Some(slot) = self.slots.get_mut(&key) {
                slot.allowance = None;
            }
            self.refill(key);
        }
    }
}
