//! The worker pool of one read model's run: named threads, a bounded job channel, a
//! per-key timeout, and abandonment of workers stuck in a hung reconciler.

use crate::port::{ReconcileSession, Reconciler};
use crate::report::FailureKind;
use crossbeam_channel::{bounded, unbounded, Receiver, Select, Sender};
use driftless_domain::{ReconcileMode, ReconcileResult, SampleKey};
use parking_lot::Mutex;
use std::any::Any;
use std::collections::VecDeque;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest the gatherer waits without re-checking deadlines and the lease.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What became of one key.
#[derive(Debug)]
pub(crate) enum KeyOutcome {
    /// The reconciler gave a verdict.
    Checked(ReconcileResult),
    /// The key could not be checked.
    Failed {
        /// How it failed.
        kind: FailureKind,
        /// Why.
        reason: String,
    },
}

/// How a pool run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolEnd {
    /// Every key has an outcome.
    Completed,
    /// The cancel channel fired (the scheduler is stopping); unchecked keys have none.
    Cancelled,
    /// The keep-alive said stop (the lease was lost); unchecked keys have none.
    Stopped,
}

/// The settings of one pool run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolConfig {
    /// Worker threads (at least 1).
    pub workers: usize,
    /// How long one `reconcile` call may take before its worker is abandoned.
    pub key_timeout: Duration,
    /// How many replacements for abandoned workers one run may start.
    pub max_abandoned: usize,
}

/// The most keys handed to a worker at once. Workers take keys in chunks and report a
/// chunk's outcomes together, so that the gatherer wakes once per chunk rather than once
/// per key; the per-key timeout still applies to every key.
const MAX_CHUNK: usize = 64;

/// The state a worker shares with the gatherer, under one lock so that "finished the key"
/// and "abandoned for the key" cannot both happen.
#[derive(Debug, Default)]
struct SlotState {
    /// The key index being checked and since when.
    busy: Option<(usize, Instant)>,
    /// The end (exclusive) of the chunk being checked: the keys after the busy one that an
    /// abandonment hands back.
    chunk_end: usize,
    /// Outcomes of the current chunk not yet sent to the gatherer.
    done: Vec<(usize, KeyOutcome)>,
    /// The gatherer gave up on this worker: it must exit after its current call and
    /// report nothing.
    abandoned: bool,
}

struct Worker {
    slot: Arc<Mutex<SlotState>>,
    handle: JoinHandle<()>,
}

struct Shared {
    reconciler: Arc<dyn Reconciler>,
    keys: Arc<Vec<SampleKey>>,
    jobs: Receiver<Range<usize>>,
    results: Sender<Vec<(usize, KeyOutcome)>>,
}

/// A chunk's session: not asked for yet, or what [`Reconciler::session`] gave.
type ChunkSession<'r> = Option<Option<Box<dyn ReconcileSession + 'r>>>;

/// Checks `key` through the chunk's session, asking for one first if need be. A panic drops
/// the session: the next key of the chunk asks for a new one.
fn check_one<'r>(
    reconciler: &'r dyn Reconciler,
    session: &mut ChunkSession<'r>,
    key: &SampleKey,
) -> KeyOutcome {
    let checked =
        catch_unwind(AssertUnwindSafe(|| match session.get_or_insert_with(|| reconciler.session()) {
            Some(session) => session.reconcile(key),
            None => reconciler.reconcile(key),
        }));
    match checked {
        Ok(Ok(result)) => KeyOutcome::Checked(result),
        Ok(Err(e)) => KeyOutcome::Failed { kind: FailureKind::Error, reason: e.to_string() },
        Err(payload) => {
            *session = None;
            KeyOutcome::Failed {
                kind: FailureKind::Panic,
                reason: format!("the reconciler panicked: {}", panic_message(payload.as_ref())),
            }
        }
    }
}

fn spawn_worker(id: usize, shared: &Shared) -> std::io::Result<Worker> {
    let slot = Arc::new(Mutex::new(SlotState::default()));
    let reconciler = Arc::clone(&shared.reconciler);
    let keys = Arc::clone(&shared.keys);
    let jobs = shared.jobs.clone();
    let results = shared.results.clone();
    let mine = Arc::clone(&slot);
    let handle = std::thread::Builder::new().name(format!("driftless-reconcile-{id}")).spawn(move || {
        while let Ok(chunk) = jobs.recv() {
            mine.lock().chunk_end = chunk.end;
            let mut session = None;
            for index in chunk {
                let Some(key) = keys.get(index) else { continue };
                mine.lock().busy = Some((index, Instant::now()));
                let outcome = check_one(reconciler.as_ref(), &mut session, key);
                let mut state = mine.lock();
                state.busy = None;
                if state.abandoned {
                    return;
                }
                state.done.push((index, outcome));
            }
            drop(session);
            let done = std::mem::take(&mut mine.lock().done);
            if results.send(done).is_err() {
                return;
            }
        }
    })?;
    Ok(Worker { slot, handle })
}

/// Records the outcome of key `index` unless it already has one; returns whether it did.
fn resolve(outcomes: &mut [Option<KeyOutcome>], index: usize, outcome: KeyOutcome) -> bool {
    match outcomes.get_mut(index) {
        Some(slot @ None) => {
            *slot = Some(outcome);
            true
        }
        _ => false,
    }
}

/// Records every outcome of `batch` that has none yet; returns how many it recorded.
fn resolve_all(outcomes: &mut [Option<KeyOutcome>], batch: Vec<(usize, KeyOutcome)>) -> usize {
    batch.into_iter().map(|(index, outcome)| usize::from(resolve(outcomes, index, outcome))).sum()
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    driftless_domain::panic_text(payload).unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Checks every key of `keys` with `reconciler` on `config.workers` named threads.
///
/// Keys go to the workers in chunks over a bounded channel; each chunk's outcomes come
/// back together over another. A worker busy on one key for longer than
/// `config.key_timeout` is *abandoned*: its key counts as a [`FailureKind::Timeout`], the
/// thread is left to finish (or hang) on its own
/// and exits without taking another key, the rest of its chunk goes back to the queue
/// (the keys it finished keep their outcomes), and a replacement is started — at most
/// `config.max_abandoned` replacements per run. When every worker is stuck and no
/// replacement is left, the keys still unchecked count as [`FailureKind::NotChecked`]. So
/// a hung reconciler delays the run by about one timeout per wave of workers, and never
/// stalls it.
///
/// `keep_alive` is called between waits; when it returns false the run stops
/// ([`PoolEnd::Stopped`]). A message or disconnection on `cancel` stops it too
/// ([`PoolEnd::Cancelled`]). Stopped runs leave the outcomes of unchecked keys `None`.
pub(crate) fn check_keys(
    reconciler: &Arc<dyn Reconciler>,
    keys: Arc<Vec<SampleKey>>,
    config: PoolConfig,
    keep_alive: &mut dyn FnMut() -> bool,
    cancel: &Receiver<()>,
) -> (Vec<Option<KeyOutcome>>, PoolEnd) {
    let total = keys.len();
    let mut outcomes: Vec<Option<KeyOutcome>> = std::iter::repeat_with(|| None).take(total).collect();
    if total == 0 {
        return (outcomes, PoolEnd::Completed);
    }
    let workers = config.workers.max(1);
    let (job_tx, job_rx) = bounded::<Range<usize>>(workers.saturating_mul(2));
    // Small enough that every worker gets several chunks, so the run still spreads evenly.
    let chunk = (total / workers.saturating_mul(8)).clamp(1, MAX_CHUNK);
    // Chunks handed back by abandoned workers go out again before new ones.
    let mut returned: VecDeque<Range<usize>> = VecDeque::new();
    let (result_tx, result_rx) = unbounded();
    let shared = Shared { reconciler: Arc::clone(reconciler), keys, jobs: job_rx, results: result_tx };

    let mut live: Vec<Worker> = Vec::with_capacity(workers);
    let mut started = 0usize;
    let mut abandoned = 0usize;
    let mut resolved = 0usize;
    let mut next_job = 0usize;
    let mut spawn_failure: Option<String> = None;
    let mut end = PoolEnd::Completed;

    while resolved < total {
        // Start workers up to the pool size; replace abandoned ones within the allowance.
        while live.len() < workers
            && spawn_failure.is_none()
            && started < workers.saturating_add(config.max_abandoned)
        {
            match spawn_worker(started, &shared) {
                Ok(worker) => {
                    live.push(worker);
                    started += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "a reconciliation worker thread could not be started");
                    spawn_failure = Some(format!("not checked: no worker thread could be started: {e}"));
                }
            }
        }
        if live.is_empty() {
            let reason = spawn_failure.clone().unwrap_or_else(|| {
                format!(
                    "not checked: {abandoned} workers were abandoned on hung keys and no replacement is left"
                )
            });
            for index in 0..total {
                let outcome = KeyOutcome::Failed { kind: FailureKind::NotChecked, reason: reason.clone() };
                resolve(&mut outcomes, index, outcome);
            }
            break;
        }
        if !keep_alive() {
            end = PoolEnd::Stopped;
            break;
        }

        let now = Instant::now();
        let wait =
            live.iter()
                .filter_map(|w| {
                    w.slot.lock().busy.map(|(_, since)| {
                        config.key_timeout.saturating_sub(now.saturating_duration_since(since))
                    })
                })
                .min()
                .unwrap_or(config.key_timeout)
                .min(config.key_timeout)
                .min(MAX_WAIT);

        {
            let job = returned
                .front()
                .cloned()
                .or_else(|| (next_job < total).then(|| next_job..next_job.saturating_add(chunk).min(total)));
            let mut select = Select::new();
            let send_op = job.is_some().then(|| select.send(&job_tx));
            let result_op = select.recv(&result_rx);
            let _cancel_op = select.recv(cancel);
            if let Ok(op) = select.select_timeout(wait) {
                let index = op.index();
                if Some(index) == send_op {
                    if let Some(job) = job {
                        let end_of_job = job.end;
                        // A handed-back chunk was the one sent if there is one.
                        if op.send(&job_tx, job).is_ok() && returned.pop_front().is_none() {
                            next_job = end_of_job;
                        }
                    }
                } else if index == result_op {
                    if let Ok(batch) = op.recv(&result_rx) {
                        resolved += resolve_all(&mut outcomes, batch);
                    }
                } else {
                    let _ = op.recv(cancel);
                    end = PoolEnd::Cancelled;
                }
            }
            // Whatever else has arrived, without waiting.
            while let Ok(batch) = result_rx.try_recv() {
                resolved += resolve_all(&mut outcomes, batch);
            }
        }
        if end == PoolEnd::Cancelled {
            break;
        }

        // Abandon the workers stuck past the timeout.
        let now = Instant::now();
        let mut kept = Vec::with_capacity(live.len());
        for worker in live.drain(..) {
            let expired = {
                let mut state = worker.slot.lock();
                match state.busy {
                    Some((index, since)) if now.saturating_duration_since(since) >= config.key_timeout => {
                        state.abandoned = true;
                        let rest = index.saturating_add(1)..state.chunk_end;
                        Some((index, std::mem::take(&mut state.done), rest))
                    }
                    _ => None,
                }
            };
            match expired {
                Some((index, finished, rest)) => {
                    abandoned += 1;
                    resolved += resolve_all(&mut outcomes, finished);
                    if !rest.is_empty() {
                        returned.push_back(rest);
                    }
                    let key = shared.keys.get(index).cloned().unwrap_or_default();
                    tracing::warn!(
                        read_model = reconciler.read_model(),
                        key = %key,
                        timeout_ms = u64::try_from(config.key_timeout.as_millis()).unwrap_or(u64::MAX),
                        "a key took longer than the per-key timeout; its worker thread is abandoned"
                    );
                    let reason = format!(
                        "the reconciler did not answer within {} ms; its worker was abandoned",
                        config.key_timeout.as_millis()
                    );
                    if resolve(
                        &mut outcomes,
                        index,
                        KeyOutcome::Failed { kind: FailureKind::Timeout, reason },
                    ) {
                        resolved += 1;
                    }
                    // Detached: the thread exits when its call returns, if ever.
                    drop(worker.handle);
                }
                None => kept.push(worker),
            }
        }
        live = kept;
    }

    drop(job_tx);
    for worker in live {
        let idle = worker.slot.lock().busy.is_none();
        if idle && end == PoolEnd::Completed && worker.handle.join().is_err() {
            tracing::error!("a reconciliation worker thread ended in a panic");
        }
        // Otherwise detached: it exits after its current call, as the job channel is closed.
    }
    (outcomes, end)
}

/// How listing the keys ended.
#[derive(Debug)]
pub(crate) enum Listing {
    /// The reconciler answered (or failed, panicked or timed out: the failure's kind and
    /// reason).
    Done(Result<Vec<SampleKey>, (FailureKind, String)>),
    /// The cancel channel fired first.
    Cancelled,
}

/// Calls `reconciler.list_sample_keys(mode, limit)` on a named thread
/// (`driftless-reconcile-list`), waiting at most `timeout`; a listing that outlives it is
/// abandoned like a hung key, and a panic is caught.
pub(crate) fn list_keys(
    reconciler: &Arc<dyn Reconciler>,
    mode: ReconcileMode,
    limit: usize,
    timeout: Duration,
    cancel: &Receiver<()>,
) -> Listing {
    let (tx, rx) = bounded(1);
    let mine = Arc::clone(reconciler);
    let spawned = std::thread::Builder::new().name("driftless-reconcile-list".to_owned()).spawn(move || {
        let listed = match catch_unwind(AssertUnwindSafe(|| mine.list_sample_keys(mode, limit))) {
            Ok(Ok(keys)) => Ok(keys),
            Ok(Err(e)) => Err((FailureKind::Error, e.to_string())),
            Err(payload) => Err((
                FailureKind::Panic,
                format!("listing the keys panicked: {}", panic_message(payload.as_ref())),
            )),
        };
        let _ = tx.send(listed);
    });
    let handle = match spawned {
        Ok(handle) => handle,
        Err(e) => {
            return Listing::Done(Err((
                FailureKind::NotChecked,
                format!("not checked: no thread could be started to list the keys: {e}"),
            )))
        }
    };
    crossbeam_channel::select! {
        recv(rx) -> listed => {
            if handle.join().is_err() {
                tracing::error!("the key-listing thread ended in a panic");
            }
            Listing::Done(listed.unwrap_or_else(|_| {
                Err((FailureKind::Error, "the key-listing thread ended without an answer".to_owned()))
            }))
        }
        recv(cancel) -> _ => Listing::Cancelled,
        default(timeout) => {
            tracing::warn!(
                read_model = reconciler.read_model(),
                timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                "listing the keys took longer than the listing timeout; its thread is abandoned"
            );
            Listing::Done(Err((
                FailureKind::Timeout,
                format!("the reconciler did not list its keys within {} ms; the listing was abandoned", timeout.as_millis()),
            )))
        }
    }
}
