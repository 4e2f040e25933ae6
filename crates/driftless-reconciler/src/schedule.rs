//! Cadence slots: which are due, claiming them, and the scheduler thread.

use crate::harness::{cancelled, schedule_key, HarnessError, ReconcileHarness};
use crate::report::RunReport;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use driftless_domain::reconcile::initial_marker;
use driftless_domain::{ReconcileMode, Timestamp};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The modes in the order a tick runs their due slots.
const MODES: [ReconcileMode; 2] = [ReconcileMode::Sampled, ReconcileMode::Full];

impl ReconcileHarness {
    /// The last slot claimed for `mode` (unix ms), or the install marker, or `None` before
    /// the first [`Self::due`].
    ///
    /// # Errors
    /// [`HarnessError::Read`] when it cannot be read.
    pub fn last_slot(&self, mode: ReconcileMode) -> Result<Option<u64>, HarnessError> {
        Ok(self.store.meta_get::<u64>(&schedule_key(mode))?)
    }

    /// The cadence slots due at `now`, at most one per mode (the latest one passed, so a
    /// machine that slept through several runs once on waking).
    ///
    /// The last slot claimed per mode is persisted under [`schedule_key`]. The first call on
    /// a database stores [`initial_marker`]`(now)`, so nothing runs for slots before the
    /// install. A slot at or before the stored marker is never due again, whatever the
    /// clock does.
    ///
    /// # Errors
    /// [`HarnessError`] when the markers cannot be read or installed.
    pub fn due(&self, now: Timestamp) -> Result<Vec<(ReconcileMode, u64)>, HarnessError> {
        let mut due = Vec::new();
        for mode in MODES {
            let key = schedule_key(mode);
            let last = match self.store.meta_get::<u64>(&key)? {
                Some(last) => last,
                None => self.store.meta_update(&key, |current: Option<u64>| {
                    let marker = current.unwrap_or_else(|| initial_marker(now.0));
                    (Some(marker), marker)
                })?,
            };
            if let Some(slot) = self.policy.cadence(mode).due_slot(now.0, Some(last)) {
                due.push((mode, slot));
            }
        }
        Ok(due)
    }

    /// The first slot of any cadence strictly after `now` (unix ms).
    #[must_use]
    pub fn next_slot_after(&self, now: Timestamp) -> u64 {
        MODES.iter().map(|&mode| self.policy.cadence(mode).next_after(now.0)).min().unwrap_or(u64::MAX)
    }

    /// Runs whatever is due at the clock's now, without sleeping: one [`RunReport`] per due
    /// slot, none when nothing is due.
    ///
    /// Under the lease, each due slot is **claimed** (written as the mode's last slot, a
    /// compare-and-set) *before* it runs: a slot runs at most once, across restarts and
    /// clock jumps, and a run that crashes is not retried (the next slot checks again).
    /// When another run holds the lease, nothing is claimed and the reports say
    /// [`skipped`](RunReport::skipped); the slot stays due for the next tick.
    ///
    /// # Errors
    /// [`HarnessError`] when the schedule, lease or health cannot be read or written.
    pub fn tick(&self) -> Result<Vec<RunReport>, HarnessError> {
        self.tick_with(&crossbeam_channel::never())
    }

    pub(crate) fn tick_with(&self, cancel: &Receiver<()>) -> Result<Vec<RunReport>, HarnessError> {
        let now = self.clock.now();
        let due = self.due(now)?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut lease = match self.acquire_lease()? {
            Ok(lease) => lease,
            Err(skip) => {
                return Ok(due
                    .into_iter()
                    .map(|(mode, slot)| {
                        let mut report = RunReport::new(mode, Some(slot), now);
                        report.skipped = Some(skip.clone());
                        report
                    })
                    .collect())
            }
        };
        let targets = self.all_targets();
        let mut reports = Vec::with_capacity(due.len());
        for (mode, slot) in due {
            if !self.claim_slot(mode, slot)? {
                continue;
            }
            tracing::info!(%mode, slot, "running a scheduled reconciliation");
            let mut report = RunReport::new(mode, Some(slot), now);
            self.run_targets(&mut lease, &targets, &mut report, cancel)?;
            let stop = report.interrupted.is_some();
            reports.push(report);
            if stop {
                break;
            }
        }
        drop(lease);
        Ok(reports)
    }

    /// Records `slot` as the last slot of `mode` if it is later than the stored one;
    /// returns whether it was (so whether this caller may run it).
    fn claim_slot(&self, mode: ReconcileMode, slot: u64) -> Result<bool, HarnessError> {
        Ok(self.store.meta_update(&schedule_key(mode), |current: Option<u64>| match current {
            Some(last) if last >= slot => (Some(last), false),
            _ => (Some(slot), true),
        })?)
    }

    /// Starts the scheduler: a thread named `driftless-scheduler` that runs [`Self::tick`],
    /// then sleeps until the next slot by the injected clock (at most the poll interval, so
    /// clock jumps and freed leases are noticed), and again, until stopped.
    ///
    /// The sleep is a wait on a channel, so [`SchedulerHandle::stop`] (or dropping the
    /// handle) wakes it at once; a run in progress is cancelled (its unchecked keys are
    /// left, and it is not recorded) and the thread is joined.
    ///
    /// # Errors
    /// [`HarnessError::Spawn`] when the thread cannot be started.
    pub fn start_scheduler(self: Arc<Self>) -> Result<SchedulerHandle, HarnessError> {
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let harness = self;
        let thread = std::thread::Builder::new()
            .name("driftless-scheduler".to_owned())
            .spawn(move || scheduler_loop(&harness, &stop_rx))
            .map_err(HarnessError::Spawn)?;
        Ok(SchedulerHandle { stop: Some(stop_tx), thread: Some(thread) })
    }
}

fn scheduler_loop(harness: &ReconcileHarness, stop: &Receiver<()>) {
    tracing::info!(owner = harness.owner(), "the reconciliation scheduler started");
    loop {
        match harness.tick_with(stop) {
            Ok(reports) => {
                for report in reports {
                    if let Some(skip) = &report.skipped {
                        tracing::info!(mode = %report.mode, "a scheduled reconciliation waits: {skip}");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "a scheduled reconciliation failed"),
        }
        if cancelled(stop) {
            break;
        }
        let now = harness.clock.now();
        let until_next = harness.next_slot_after(now).saturating_sub(now.0);
        let wait = Duration::from_millis(until_next).min(harness.poll_interval).max(Duration::from_millis(1));
        match stop.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    tracing::info!(owner = harness.owner(), "the reconciliation scheduler stopped");
}

/// The running scheduler thread. [`Self::stop`] or dropping it stops and joins the thread.
#[derive(Debug)]
pub struct SchedulerHandle {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl SchedulerHandle {
    /// Stops the scheduler (cancelling a run in progress) and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Whether the scheduler thread is still running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the reconciliation scheduler thread ended in a panic");
            }
        }
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
