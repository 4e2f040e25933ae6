//! Opening the database, building the reconciliation harness, the CLI's pager.

use crate::error::CliError;
use crate::out;
use driftless::reconcile::{health_key, Page, Pager, ReadModelHealth, ReconcileHarness};
use driftless::{Clock, Engine, EngineOptions, Store};
use driftless_listings::embed::{engine_builder, reconcilers};
use driftless_listings::ListingEvent;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// The engine of the sample domain.
pub type ListingEngine = Engine<ListingEvent>;

/// Refuses a database path that does not exist (for commands that do not create one).
pub fn require_existing(path: &Path) -> Result<(), CliError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::NoDatabase(path.to_path_buf())),
        Err(e) => Err(CliError::io(format!("could not look at {}", path.display()), e)),
    }
}

/// Opens the engine over an existing database.
pub fn open_existing(path: &Path) -> Result<ListingEngine, CliError> {
    require_existing(path)?;
    open(path, EngineOptions::default(), None)
}

/// What a read command reads: the database, or the process serving it.
pub enum Source {
    /// The database, opened by this process.
    Local(ListingEngine),
    /// The process that holds the database and serves it (`driftless run --listen`).
    Live(crate::live::Live),
}

/// Opens the engine over an existing database or, when another process holds it and
/// serves it (`driftless run --listen`), finds that process.
pub fn open_or_live(path: &Path) -> Result<Source, CliError> {
    match open_existing(path) {
        Ok(engine) => Ok(Source::Local(engine)),
        Err(e) if e.is_in_use() => crate::live::find(path).map(Source::Live).ok_or(e),
        Err(e) => Err(e),
    }
}

/// Opens (creating if needed) the engine with `options` and, if given, `clock`.
///
/// A database written by an earlier release is upgraded in place, and a read model whose
/// rows changed shape is rebuilt from the journal; the engine does that work on its writer
/// thread as it opens, and this waits for it, so that what the command reads next is the
/// rebuilt read model.
pub fn open(
    path: &Path,
    options: EngineOptions,
    clock: Option<Arc<dyn Clock>>,
) -> Result<ListingEngine, CliError> {
    let mut builder = engine_builder(path).options(options);
    if let Some(clock) = clock {
        builder = builder.clock(clock);
    }
    let engine = builder.open()?;
    engine.flush()?;
    Ok(engine)
}

/// The reconciliation harness of the sample domain over `engine`: both reconcilers, the
/// engine's clock and demotion hook (a demoted read model has its kill switch engaged),
/// and `pager`.
///
/// A lease left behind in the database is broken first: this process holds the database
/// file exclusively (redb locks it), so no other run can be holding it; such a lease is
/// the leftover of a process that died during a run.
pub fn harness(engine: &ListingEngine, pager: Arc<dyn Pager>) -> Result<ReconcileHarness, CliError> {
    let harness = engine
        .reconciliation()
        .reconcilers(reconcilers(Arc::clone(engine.store())))
        .pager(pager)
        .owner(format!("driftless-cli-{}", std::process::id()))
        .build()?;
    if let Some(lease) = harness.lease()? {
        tracing::warn!(owner = %lease.owner, "breaking the reconciliation lease of a process that is gone");
        harness.break_lease()?;
    }
    Ok(harness)
}

/// The persisted reconciliation health of `read_model` (shadow when never reconciled).
pub fn health(store: &Store, read_model: &str) -> Result<ReadModelHealth, CliError> {
    Ok(store.meta_get::<ReadModelHealth>(&health_key(read_model))?.unwrap_or_default())
}

/// The CLI's pager: the page goes to standard error — through the log when the log
/// records errors (the default), directly otherwise — and is kept for the caller.
#[derive(Debug, Default)]
pub struct CliPager {
    pages: Mutex<Vec<Page>>,
}

impl CliPager {
    /// The pages raised so far, taking them.
    pub fn take(&self) -> Vec<Page> {
        std::mem::take(&mut *self.pages.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Pager for CliPager {
    fn page(&self, alert: &Page) {
        if tracing::enabled!(target: "driftless::page", tracing::Level::ERROR) {
            tracing::error!(
                target: "driftless::page",
                read_model = %alert.read_model,
                state = %alert.state,
                drifted = alert.summary.drifted,
                sampled = alert.summary.sampled,
                "PAGE: {alert}"
            );
        } else {
            out::note(format!("driftless: PAGE: {alert}"));
        }
        self.pages.lock().unwrap_or_else(PoisonError::into_inner).push(alert.clone());
    }
}
