//! Where dispatched events are freed: on the thread that dispatched them, which gets them
//! back with their reports, not on the writer thread (memory freed on another thread than
//! the one that allocated it is slow to reuse with glibc's allocator).

use super::{options, TestResult};
use driftless::{
    ApplyError, Engine, Event, EventOutcome, HandlerName, ProjectionContext, Projector, TableDef, TableId,
    Timestamp, Views,
};
use parking_lot::Mutex;
use std::sync::Arc;

/// Names of the threads that dropped an armed [`Probe`].
type DropLog = Arc<Mutex<Vec<String>>>;

/// Records the name of the thread that drops it, when armed. Not part of the event's
/// encoding: a copy decoded from the journal is unarmed.
#[derive(Debug, Default)]
struct Probe(Option<DropLog>);

impl Drop for Probe {
    fn drop(&mut self) {
        if let Some(log) = &self.0 {
            log.lock().push(std::thread::current().name().unwrap_or("unnamed").to_string());
        }
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Traced {
    key: String,
    at: u64,
    #[serde(skip)]
    _probe: Probe,
}

impl Event for Traced {
    fn aggregate_id(&self) -> &str {
        &self.key
    }

    fn event_name(&self) -> &str {
        "Traced"
    }

    fn occurred_at(&self) -> Timestamp {
        Timestamp(self.at)
    }
}

const SEEN: TableDef<String, u64> = TableDef::new("seen", 1);

/// Counts the events of each key.
struct Counter;

impl Projector<Traced> for Counter {
    fn handler_name(&self) -> HandlerName {
        HandlerName::new("counter").unwrap_or_else(|_| unreachable!("a valid name"))
    }

    fn tables(&self) -> Vec<TableId> {
        vec![SEEN.id()]
    }

    fn apply(&self, e: &Traced, _: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
        let mut seen = views.table(&SEEN)?;
        let n = seen.get(&e.key)?.unwrap_or(0);
        seen.put(&e.key, &(n + 1))?;
        Ok(())
    }
}

fn traced(log: &DropLog, n: usize) -> Vec<Traced> {
    (0..n)
        .map(|i| Traced {
            key: format!("k{}", i % 7),
            at: 1_000 + i as u64,
            _probe: Probe(Some(log.clone())),
        })
        .collect()
}

#[test]
fn dispatched_events_are_freed_on_the_thread_that_dispatched_them() -> TestResult {
    let dir = tempfile::tempdir()?;
    let engine = Engine::builder(dir.path().join("db.redb"))
        .options(driftless::EngineOptions { max_batch_events: 50, ..options() })
        .projector(Counter)
        .open()?;
    let log = DropLog::default();
    std::thread::scope(|s| -> TestResult {
        let producer = std::thread::Builder::new().name("producer".into()).spawn_scoped(s, || {
            // A batch of several messages, then single events (dispatched, and dispatched
            // and waited for), then the whole batch again (re-deliveries).
            let text = |e: &dyn std::error::Error| e.to_string();
            let batch = traced(&log, 300);
            let ids: Vec<_> = batch.iter().map(Event::event_id).collect();
            let first = engine.dispatch_batch(batch).map_err(|e| text(&e))?.wait().map_err(|e| text(&e))?;
            // Answers taken while the batch was still being dispatched keep their place.
            let got: Vec<_> = first.iter().map(|r| r.event_id.clone()).collect();
            if let Some(at) = (0..ids.len().max(got.len())).find(|&i| got.get(i) != ids.get(i)) {
                return Err(format!("report {at} of the batch is {:?}, not {:?}", got.get(at), ids.get(at)));
            }
            let mut singles = Vec::new();
            for e in traced(&log, 5) {
                let receipt = engine.dispatch(Traced { at: e.at + 10_000, ..e }).map_err(|e| text(&e))?;
                singles.push(receipt.wait().map_err(|e| text(&e))?);
            }
            for e in traced(&log, 2) {
                let e = Traced { at: e.at + 20_000, ..e };
                singles.push(engine.dispatch_and_wait(e).map_err(|e| text(&e))?);
            }
            // Single events dispatched before any is waited for: the writer commits those
            // queued together in one group, and each receipt still gets its own report.
            let mut pending = Vec::new();
            for e in traced(&log, 40) {
                let e = Traced { at: e.at + 30_000, ..e };
                let id = e.event_id();
                pending.push((id, engine.dispatch(e).map_err(|e| text(&e))?));
            }
            for (id, receipt) in pending {
                let report = receipt.wait().map_err(|e| text(&e))?;
                if report.event_id != id {
                    return Err(format!("the receipt of {id} reported {}", report.event_id));
                }
                singles.push(report);
            }
            let again = engine
                .dispatch_batch(traced(&log, 300))
                .map_err(|e| text(&e))?
                .wait()
                .map_err(|e| text(&e))?;
            Ok::<_, String>((first, singles, again))
        })?;
        let (first, singles, again) = producer.join().map_err(|_| "the producer panicked")??;
        ensure!(first.iter().all(|r| r.outcome == EventOutcome::Applied), "first delivery: {first:?}");
        ensure!(singles.iter().all(|r| r.outcome == EventOutcome::Applied), "single events: {singles:?}");
        ensure!(again.iter().all(|r| r.outcome == EventOutcome::Duplicate), "re-delivery: {again:?}");
        Ok(())
    })?;
    let drops = log.lock().clone();
    ensure_eq!(drops.len(), 647, "armed events dropped");
    let elsewhere: Vec<&String> = drops.iter().filter(|t| t.as_str() != "producer").collect();
    ensure!(elsewhere.is_empty(), "events dropped on other threads: {elsewhere:?}");
    engine.shutdown()?;
    Ok(())
}
