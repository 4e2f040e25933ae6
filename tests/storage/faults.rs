//! Fault injection through redb's storage backend.
//!
//! A wrapper around redb's in-memory backend counts every write, `set_len` and `sync_data`
//! and fails the N-th one, once. For every N over a small scenario the failing operation
//! must return an error, the store must refuse writes afterwards, and a store reopened on the
//! same bytes must hold a consistent state: every event fully applied by a handler or not at
//! all, and after re-delivering the whole stream, every event applied exactly once.

use super::support::{
    prepare_all, projectors, Faults, Op, Tables, TestError, TestResult, COUNT, HANDLERS, LOG, SUM,
};
use driftless_domain::Upcasters;
use driftless_domain::{PreparedEvent, Timestamp};
use driftless_storage::StoreWriter;
use driftless_storage::{
    CommitError, Durability, OpenError, RegisterError, StorageBackend, Store, StoreOptions,
};
use redb::backends::InMemoryBackend;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Counts mutating operations and fails the `fail_at`-th one (1-based; 0 never fails).
#[derive(Debug, Default)]
struct Counter {
    ops: AtomicU64,
    fail_at: u64,
    fired: AtomicBool,
}

impl Counter {
    fn failing_at(fail_at: u64) -> Arc<Self> {
        Arc::new(Self { fail_at, ..Self::default() })
    }

    fn tick(&self, what: &str) -> io::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fail_at && !self.fired.swap(true, Ordering::SeqCst) {
            return Err(io::Error::other(format!("injected failure of {what} at operation {n}")));
        }
        Ok(())
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }
}

/// A backend over shared in-memory bytes ("the disk"), which outlive every backend.
#[derive(Debug)]
struct FaultyBackend {
    disk: Arc<InMemoryBackend>,
    counter: Arc<Counter>,
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        self.disk.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.disk.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.counter.tick("set_len")?;
        self.disk.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.counter.tick("sync_data")?;
        self.disk.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.counter.tick("write")?;
        self.disk.write(offset, data)
    }
}

/// The stream: three batches with duplicates and failing handlers.
fn stream() -> Vec<Vec<Op>> {
    let a = Op::new("a", "k0", 1, 5);
    let b = Op::new("b", "k1", 2, 3);
    let c = Op::new("c", "k0", 3, -2).failing(&[SUM]);
    let d = Op::new("d", "k2", 4, 7).failing(&[LOG]);
    let e = Op::new("e", "k1", 5, 1);
    let f = Op::new("f", "k0", 6, 4).failing(&[COUNT]);
    let g = Op::new("g", "k2", 7, -7);
    let h = Op::new("h", "k1", 8, 9).failing(&[SUM, COUNT, LOG]);
    vec![
        vec![a.clone(), b.clone(), c.clone()],
        vec![a.clone(), d, b, e],
        vec![c, f, a, g, h.clone()],
        vec![h],
    ]
}

/// The distinct events of the stream, in first-delivery order.
fn distinct(stream: &[Vec<Op>]) -> Vec<Op> {
    let mut seen = BTreeSet::new();
    stream.iter().flatten().filter(|op| seen.insert(op.id.clone())).cloned().collect()
}

/// How far the scenario got.
#[derive(Debug)]
enum Stop {
    /// Everything ran; `ops` operations had been counted before the store closed.
    Completed { ops: u64 },
    /// `open_with_backend` failed.
    Open(OpenError),
    /// `register` failed.
    Register(RegisterError),
    /// The `project` of batch `n` failed.
    Project(usize, CommitError),
}

fn poison_holds(store: &StoreWriter, faults: &Faults, stop: &Stop) -> TestResult {
    let poisoned = store.poisoned().ok_or_else(|| format!("the store is not poisoned after {stop:?}"))?;
    ensure!(
        poisoned.first_failure.contains("injected failure"),
        "the poison names another cause: {:?} (after {stop:?})",
        poisoned.first_failure
    );
    if let Stop::Register(RegisterError::Storage(failure)) | Stop::Project(_, CommitError::Storage(failure)) =
        stop
    {
        ensure_eq!(poisoned.first_failure, failure.message(), "the poison and the error returned");
    }
    match store.register(projectors(faults)?, &[], Upcasters::new()) {
        Err(RegisterError::Poisoned(_)) => {}
        other => return Err(format!("register on a poisoned store: {other:?}").into()),
    }
    match store.meta_update::<u64, ()>("probe", |_| (Some(1), ())) {
        Err(CommitError::Poisoned(_)) => {}
        other => return Err(format!("a metadata write on a poisoned store: {other:?}").into()),
    }
    Ok(())
}

/// Runs the scenario on `disk`, failing operation `fail_at`.
fn scenario(
    disk: &Arc<InMemoryBackend>,
    counter: &Arc<Counter>,
    faults: &Faults,
    options: &StoreOptions,
) -> Result<Stop, TestError> {
    let backend = FaultyBackend { disk: Arc::clone(disk), counter: Arc::clone(counter) };
    let store = match StoreWriter::open_with_backend(backend, options.clone()) {
        Ok(store) => store,
        Err(e) => return Ok(Stop::Open(e)),
    };
    let registry = match store.register(projectors(faults)?, &[], Upcasters::new()) {
        Ok(r) => r,
        Err(e) => {
            ensure!(matches!(e, RegisterError::Storage(_)), "the failed register said {e:?}");
            let stop = Stop::Register(e);
            poison_holds(&store, faults, &stop)?;
            return Ok(stop);
        }
    };
    for (n, batch) in stream().iter().enumerate() {
        let prepared = prepare_all(batch)?;
        if let Err(e) = store.project(&registry, &prepared, Timestamp(100 + n as u64)) {
            ensure!(matches!(e, CommitError::Storage(_)), "the failed project of batch {n} said {e:?}");
            let stop = Stop::Project(n, e);
            poison_holds(&store, faults, &stop)?;
            match store.project(&registry, &prepared, Timestamp(200)) {
                Err(CommitError::Poisoned(_)) => {}
                other => return Err(format!("project on a poisoned store: {other:?}").into()),
            }
            return Ok(stop);
        }
    }
    ensure!(store.poisoned().is_none(), "the store is poisoned although every operation succeeded");
    Ok(Stop::Completed { ops: counter.ops() })
}

/// What each handler applied, by offsets, and the tables that must follow from it.
fn applied_sets(
    store: &Store,
    events: &[PreparedEvent<Op>],
) -> Result<BTreeMap<&'static str, Vec<String>>, TestError> {
    let mut out = BTreeMap::new();
    for h in HANDLERS {
        let mut ids = Vec::new();
        for ev in events {
            if let Some(rec) = store.offset(ev.id.as_str(), h)? {
                ensure_eq!(rec.payload_hash, ev.hash, "payload hash of ({}, {h})", ev.id);
                ensure!(!ev.event.fails_for(h), "{h} has an offset for {}, which it must fail", ev.id);
                ids.push(ev.id.to_string());
            }
        }
        out.insert(h, ids);
    }
    Ok(out)
}

/// Checks that the tables are exactly the fold of the events each handler has an offset
/// for (no event half-applied, none applied twice), and that dead letters and offsets never
/// overlap.
fn consistent(
    store: &Store,
    events: &[PreparedEvent<Op>],
) -> Result<BTreeMap<&'static str, Vec<String>>, TestError> {
    let applied = applied_sets(store, events)?;
    let mut want = Tables::default();
    for ev in events {
        for h in HANDLERS {
            if applied.get(h).is_some_and(|ids| ids.contains(&ev.id.to_string())) {
                want.apply(h, ev.id.as_str(), &ev.event);
            }
        }
    }
    let mut got = Tables::read(store)?;
    for ids in got.logs.values_mut() {
        let before = ids.len();
        ids.sort();
        ids.dedup();
        ensure_eq!(ids.len(), before, "an event was logged twice: {ids:?}");
    }
    for ids in want.logs.values_mut() {
        ids.sort();
    }
    ensure_eq!(got, want, "the tables are not the fold of the applied events");
    for letter in store.dead_letters(None)? {
        ensure!(
            store.offset(&letter.event_id, &letter.handler)?.is_none(),
            "({}, {}) is both applied and dead-lettered",
            letter.handler,
            letter.event_id
        );
    }
    // Every id ever accepted (journaled) has its offset row, applied by some handler or not.
    let mut accepted = BTreeSet::new();
    for entry in store.journal_range(1, usize::MAX)? {
        accepted.insert(PreparedEvent::<Op>::from_body(&entry.body)?.id.to_string());
    }
    let with_offsets: BTreeSet<&String> = applied.values().flatten().collect();
    ensure!(with_offsets.iter().all(|id| accepted.contains(*id)), "an applied event is not in the journal");
    ensure_eq!(store.offset_count()?, accepted.len() as u64, "event ids recorded");
    Ok(applied)
}

/// Reopens on the same bytes without faults, checks consistency, re-delivers the whole
/// stream and checks the final state.
fn recover(disk: &Arc<InMemoryBackend>, faults: &Faults, options: &StoreOptions, stop: &Stop) -> TestResult {
    let backend = FaultyBackend { disk: Arc::clone(disk), counter: Counter::failing_at(0) };
    let mut store = match StoreWriter::open_with_backend(backend, options.clone()) {
        Ok(store) => store,
        Err(e) => return Err(format!("reopening after {stop:?} failed: {e}").into()),
    };
    ensure!(store.check_integrity()?, "redb's integrity check failed after {stop:?}");
    let registry = store.register(projectors(faults)?, &[], Upcasters::new())?;
    ensure!(registry.needs_rebuild.is_empty(), "reopening asked for rebuilds");
    let events = prepare_all(&distinct(&stream()))?;
    let before =
        consistent(&store, &events).map_err(|e| format!("after {stop:?}, before re-delivery: {e}"))?;
    // What must have survived (the batches whose commits returned, when they were synced)
    // and what may have (plus the batch whose commit failed: its outcome is unknown).
    let batches = stream().len();
    let synced = options.durability == Durability::Immediate;
    let (lower, upper) = match stop {
        Stop::Open(_) | Stop::Register(_) => (0, 0),
        Stop::Project(n, _) => (if synced { *n } else { 0 }, n + 1),
        Stop::Completed { .. } => (if synced { batches } else { 0 }, batches),
    };
    for h in HANDLERS {
        let applied: BTreeSet<String> = before.get(h).cloned().unwrap_or_default().into_iter().collect();
        let upto = |k: usize| -> BTreeSet<String> {
            let ops: Vec<Op> = stream().into_iter().take(k).flatten().collect();
            ops.iter().filter(|op| !op.fails_for(h)).filter_map(|op| op.id.clone()).collect()
        };
        let (must, may) = (upto(lower), upto(upper));
        ensure!(
            must.is_subset(&applied) && applied.is_subset(&may),
            "after {stop:?}, {h} applied {applied:?}; it must have applied {must:?} and may have applied {may:?}"
        );
    }

    for (n, batch) in stream().iter().enumerate() {
        store.project(&registry, &prepare_all(batch)?, Timestamp(300 + n as u64))?;
    }
    let applied = consistent(&store, &events).map_err(|e| format!("after {stop:?} and re-delivery: {e}"))?;
    for h in HANDLERS {
        let want: Vec<String> =
            events.iter().filter(|ev| !ev.event.fails_for(h)).map(|ev| ev.id.to_string()).collect();
        ensure_eq!(applied.get(h).cloned().unwrap_or_default(), want, "events applied by {h} after {stop:?}");
    }
    let letters: BTreeSet<(String, String)> =
        store.dead_letters(None)?.into_iter().map(|d| (d.handler, d.event_id)).collect();
    let want: BTreeSet<(String, String)> = events
        .iter()
        .flat_map(|ev| ev.event.fail_for.iter().map(|h| (h.clone(), ev.id.to_string())))
        .collect();
    ensure_eq!(letters, want, "dead letters after {stop:?}");
    ensure!(store.check_integrity()?, "redb's integrity check failed after re-delivery ({stop:?})");
    Ok(())
}

/// Fails every operation of the scenario in turn, one run per operation.
fn sweep(options: &StoreOptions, commits_write: bool) -> TestResult {
    let faults = Faults::default();
    // A reference run without faults: how many operations the scenario takes.
    let reference = Counter::failing_at(0);
    let disk = Arc::new(InMemoryBackend::new());
    let stop = scenario(&disk, &reference, &faults, options)?;
    ensure!(matches!(stop, Stop::Completed { .. }), "the reference run stopped: {stop:?}");
    let total = reference.ops();
    ensure!(total > 0, "the scenario wrote nothing");
    recover(&disk, &faults, options, &stop)?;

    let mut stops: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut n = 1u64;
    loop {
        let disk = Arc::new(InMemoryBackend::new());
        let counter = Counter::failing_at(n);
        let stop =
            scenario(&disk, &counter, &faults, options).map_err(|e| format!("failing operation {n}: {e}"))?;
        // Dropping the store above may have written (and failed) too.
        let fired = counter.fired();
        let kind = match &stop {
            Stop::Completed { .. } if !fired => break,
            // redb writes some pages "best effort" (a failure keeps them buffered for a later
            // write and fails nothing): every call may then succeed.
            Stop::Completed { ops } if n <= *ops => "absorbed",
            Stop::Completed { .. } => "close",
            Stop::Open(_) => "open",
            Stop::Register(_) => "register",
            Stop::Project(..) => "project",
        };
        ensure!(fired, "operation {n} was never reached, yet the scenario stopped: {stop:?}");
        *stops.entry(kind).or_default() += 1;
        if let Stop::Open(e) = &stop {
            // A failure while creating the database may leave bytes that are not a database
            // yet: opening them again must be a clear error or a working database.
            let backend = FaultyBackend { disk: Arc::clone(&disk), counter: Counter::failing_at(0) };
            match StoreWriter::open_with_backend(backend, options.clone()) {
                Ok(store) => drop(store),
                Err(again) => {
                    ensure!(!again.to_string().is_empty(), "an empty open error");
                    ensure!(
                        matches!(again, OpenError::Corrupted { .. } | OpenError::NotDriftless { .. }),
                        "reopening after a failed creation ({e}) gave {again:?}"
                    );
                    *stops.entry("open, left no database").or_default() += 1;
                    n += 1;
                    continue;
                }
            }
        }
        recover(&disk, &faults, options, &stop).map_err(|e| format!("failing operation {n}: {e}"))?;
        n += 1;
    }
    println!("fault injection ({options:?}): {total} operations in the scenario, {} failure points, stops {stops:?}", n - 1);
    ensure!(n > total, "stopped at {n} before covering the {total} operations of the reference run");
    if commits_write {
        ensure!(
            stops.get("project").copied().unwrap_or(0) > 0,
            "no failure hit a projection commit: {stops:?}"
        );
    }
    Ok(())
}

#[test]
fn a_failure_at_any_write_poisons_and_leaves_a_consistent_database() -> TestResult {
    // Immediate durability: a commit that returned is on the "disk".
    sweep(&StoreOptions::default(), true)
}

#[test]
fn with_a_tiny_cache_failures_also_hit_writes_inside_transactions() -> TestResult {
    // A small page cache makes redb write pages out while a transaction is still running,
    // so failures also surface from inserts, not only from commits.
    sweep(&StoreOptions { cache_bytes: Some(16 * 1024), ..StoreOptions::default() }, true)
}

#[test]
fn without_syncs_a_failure_still_leaves_a_consistent_database() -> TestResult {
    // Unsynced commits stay in redb's cache until the store closes: failures hit the open
    // and the close, and what the close did not write is lost but never half-applied.
    sweep(&StoreOptions { durability: Durability::Eventual, ..StoreOptions::default() }, false)
}
