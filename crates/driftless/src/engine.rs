//! The engine: builder, dispatch pipeline, writer thread, reads and operations.

use crate::error::{
    BuildError, DispatchBatchError, DispatchError, DispatchWaitError, EngineError, NotCommitted,
};
use crate::observe::{self, metric_names as m, OutcomeCounts, QueueDepth, ReadModelState};
use crate::room::EventRoom;
use crate::view::{MaterializedView, ViewSource};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use driftless_domain::{
    Clock, Event, PreparedEvent, Projector, SystemClock, TableDef, Upcasters, ViewKey, ViewValue,
};
use driftless_storage::{
    CommitError, DeadLetter, Durability, EventOutcome, EventReport, Feed, KillSwitch, ReadAnswer, Registry,
    ReplayReport, Store, StoreOptions, StoreWriter, MAX_EVENT_BYTES,
};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::field::Empty;

/// What `dispatch` does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Wait for room (backpressure).
    #[default]
    Block,
    /// Return [`DispatchError::QueueFull`] at once.
    Fail,
}

/// The default page-cache size: 64 MiB. The offset index and the journal are appended to
/// at their ends and read-model rows are written once per batch, so the pages a commit
/// touches stay few and hot; redb's own default (1 GiB) would let a long ingest grow the
/// process far beyond what an embedded library should take.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// The default bound on events waiting for the writer: about 16 full batches of the
/// default size. Single-event producers still get up to 1,024 queued messages; a producer
/// of large batches waits (or is refused) once 16,384 events are queued, where the message
/// bound alone would let 1,024 batches of 1,000 events pile up.
pub const DEFAULT_QUEUE_EVENTS: usize = 16_384;

/// The default interval of the state gauges the writer records: 1 s.
pub const DEFAULT_GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most messages waiting for the writer (each holds at most `max_batch_events` events).
    pub queue_capacity: usize,
    /// Most events waiting for the writer, over all queued messages. This bounds the memory
    /// that dispatched but uncommitted events take, whatever the messages' sizes: producers
    /// of single events need many queued messages, batches need few. A message with more
    /// events than this is taken only when no other events are waiting.
    pub queue_events: usize,
    /// Most events in one commit.
    pub max_batch_events: usize,
    /// How long the writer waits for more events before committing a batch that is not
    /// full. Zero (the default) commits what is queued at once, with one exception: after a
    /// commit that answered several messages, the concurrent senders are about to send
    /// again, and the writer waits for them while they do (up to 200 µs for each next
    /// message, 2 ms in all), so that they share one commit rather than split into two.
    /// Concurrent producers share commits either way, because events queue up while a
    /// commit syncs.
    pub max_batch_wait: Duration,
    /// What a full queue does to `dispatch`.
    pub when_full: WhenFull,
    /// Commit durability.
    pub durability: Durability,
    /// Whether to keep the journal (catch-up, rebuilds and refold reconciliation need it).
    pub journal: bool,
    /// Whether an engaged kill switch also pauses projection into the read model.
    pub kill_switch_pauses_projection: bool,
    /// How often the view thread refreshes every materialized view (`None`: on demand only).
    pub view_refresh_interval: Option<Duration>,
    /// Whether a read model demoted by reconciliation has its kill switch engaged, so that
    /// readers go to the source of truth until it is rebuilt.
    pub demotion_engages_kill_switch: bool,
    /// How often the writer records the state gauges ([`Engine::record_gauges`]) through
    /// the `metrics` facade: after a commit or while idle, once this long has passed since
    /// the last time (`None`: only when [`Engine::record_gauges`] is called). Default 1 s.
    pub gauge_interval: Option<Duration>,
    /// redb page-cache size in bytes (`None`: redb's default of 1 GiB); default
    /// [`DEFAULT_CACHE_BYTES`].
    pub cache_bytes: Option<usize>,
    /// Whether the open verifies every page checksum of an existing file before trusting it
    /// (default: on), refusing a damaged file with `OpenError::Corrupted`. It reads every
    /// page the file uses; see [`StoreOptions::check_integrity_on_open`] for the cost and
    /// for what is at stake without it.
    pub check_integrity_on_open: bool,
    /// The largest event `dispatch` accepts: its stable encoding plus its aggregate id and
    /// event id, in bytes (default and most: [`MAX_EVENT_BYTES`], the codec's limit on a
    /// stored value less room for the record around the event). A larger event is refused
    /// with [`DispatchError::TooLarge`] and nothing of it is stored.
    pub max_event_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            queue_events: DEFAULT_QUEUE_EVENTS,
            max_batch_events: 1000,
            max_batch_wait: Duration::ZERO,
            when_full: WhenFull::Block,
            durability: Durability::Immediate,
            journal: true,
            kill_switch_pauses_projection: false,
            view_refresh_interval: None,
            gauge_interval: Some(DEFAULT_GAUGE_INTERVAL),
            cache_bytes: Some(DEFAULT_CACHE_BYTES),
            demotion_engages_kill_switch: true,
            check_integrity_on_open: true,
            max_event_bytes: MAX_EVENT_BYTES,
        }
    }
}

/// Builds an [`Engine`]: a database path, projectors, views and settings.
#[must_use = "a builder does nothing until `open` is called"]
pub struct EngineBuilder<E: Event> {
    path: PathBuf,
    projectors: Vec<Arc<dyn Projector<E>>>,
    views: Vec<Arc<dyn MaterializedView>>,
    options: EngineOptions,
    clock: Arc<dyn Clock>,
    upcasters: Upcasters<E>,
}

impl<E: Event> EngineBuilder<E> {
    /// A builder for the database at `path` (created if missing).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            projectors: Vec::new(),
            views: Vec::new(),
            options: EngineOptions::default(),
            clock: Arc::new(SystemClock),
            upcasters: Upcasters::new(),
        }
    }

    /// Registers how to read events stored at schema version `from_version` of `E`: they
    /// are decoded as `Old` and turned into `New` by `step`, where `New` is the type of
    /// version `from_version + 1` (the `Old` of the next step, or `E` itself when
    /// `from_version + 1` is [`Event::SCHEMA_VERSION`]). Steps compose into chains; the
    /// chain is checked when the engine opens. See [`Upcasters`].
    pub fn upcast<Old, New>(
        mut self,
        from_version: u32,
        step: impl Fn(Old) -> New + Send + Sync + 'static,
    ) -> Self
    where
        Old: DeserializeOwned + 'static,
        New: 'static,
    {
        self.upcasters = self.upcasters.upcast(from_version, step);
        self
    }

    /// Replaces the upcasters with `upcasters`.
    pub fn upcasters(mut self, upcasters: Upcasters<E>) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Sets the largest event `dispatch` accepts (see [`EngineOptions::max_event_bytes`]).
    pub fn max_event_bytes(mut self, bytes: usize) -> Self {
        self.options.max_event_bytes = bytes;
        self
    }

    /// Adds a projector.
    pub fn projector(mut self, projector: impl Projector<E>) -> Self {
        self.projectors.push(Arc::new(projector));
        self
    }

    /// Adds a shared projector.
    pub fn projector_arc(mut self, projector: Arc<dyn Projector<E>>) -> Self {
        self.projectors.push(projector);
        self
    }

    /// Adds a materialized view.
    pub fn view(mut self, view: impl MaterializedView) -> Self {
        self.views.push(Arc::new(view));
        self
    }

    /// Replaces all settings.
    pub fn options(mut self, options: EngineOptions) -> Self {
        self.options = options;
        self
    }

    /// Sets commit durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.options.durability = durability;
        self
    }

    /// Turns the integrity check of an existing file at open on or off.
    pub fn check_integrity_on_open(mut self, check: bool) -> Self {
        self.options.check_integrity_on_open = check;
        self
    }

    /// Sets the most events waiting for the writer over all queued messages (see
    /// [`EngineOptions::queue_events`]).
    pub fn queue_events(mut self, n: usize) -> Self {
        self.options.queue_events = n;
        self
    }

    /// Sets the most events per commit.
    pub fn max_batch_events(mut self, n: usize) -> Self {
        self.options.max_batch_events = n;
        self
    }

    /// Sets the queue capacity and what a full queue does.
    pub fn queue(mut self, capacity: usize, when_full: WhenFull) -> Self {
        self.options.queue_capacity = capacity;
        self.options.when_full = when_full;
        self
    }

    /// Turns the journal on or off.
    pub fn journal(mut self, keep: bool) -> Self {
        self.options.journal = keep;
        self
    }

    /// Injects the clock used for applied-at times and freshness.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Opens the database, registers projectors and views, and starts the writer thread
    /// (and the view thread, if a refresh interval is set). Handlers whose read models
    /// changed schema are rebuilt, and handlers behind the journal catch up, on the writer
    /// thread before it takes new events; until then they are not reported fresh.
    ///
    /// # Errors
    /// [`BuildError`] when the database cannot be opened, a setting is out of range, or the
    /// projectors cannot be registered.
    pub fn open(self) -> Result<Engine<E>, BuildError> {
        self.check()?;
        let store = StoreWriter::open_upgrading(&self.path, self.store_options(), &self.upcasters)?;
        self.start(store)
    }

    /// As [`EngineBuilder::open`], on a custom redb storage backend instead of the path (for
    /// fault-injection harnesses and in-memory use). A backend with no data is initialised.
    ///
    /// # Errors
    /// As [`EngineBuilder::open`].
    pub fn open_with_backend(
        self,
        backend: impl driftless_storage::StorageBackend,
    ) -> Result<Engine<E>, BuildError> {
        self.check()?;
        let store = StoreWriter::open_with_backend_upgrading(backend, self.store_options(), &self.upcasters)?;
        self.start(store)
    }

    fn store_options(&self) -> StoreOptions {
        let o = &self.options;
        StoreOptions {
            durability: o.durability,
            journal: o.journal,
            cache_bytes: o.cache_bytes,
            check_integrity_on_open: o.check_integrity_on_open,
            max_event_bytes: o.max_event_bytes,
        }
    }

    fn check(&self) -> Result<(), BuildError> {
        let o = &self.options;
        if o.queue_capacity == 0 {
            return Err(BuildError::InvalidSetting {
                setting: "queue_capacity",
                reason: "it must be at least 1",
            });
        }
        if o.queue_events == 0 {
            return Err(BuildError::InvalidSetting {
                setting: "queue_events",
                reason: "it must be at least 1",
            });
        }
        if o.max_batch_events == 0 {
            return Err(BuildError::InvalidSetting {
                setting: "max_batch_events",
                reason: "it must be at least 1",
            });
        }
        if o.gauge_interval.is_some_and(|d| d.is_zero()) {
            return Err(BuildError::InvalidSetting {
                setting: "gauge_interval",
                reason: "it must be longer than zero",
            });
        }
        if o.view_refresh_interval.is_some_and(|d| d.is_zero()) {
            return Err(BuildError::InvalidSetting {
                setting: "view_refresh_interval",
                reason: "it must be longer than zero",
            });
        }
        if o.max_event_bytes == 0 || o.max_event_bytes > MAX_EVENT_BYTES {
            return Err(BuildError::InvalidSetting {
                setting: "max_event_bytes",
                reason: "it must be at least 1 and at most MAX_EVENT_BYTES (16 MiB less 64 KiB)",
            });
        }
        self.upcasters.check().map_err(BuildError::Upcasters)?;
        // A type that reads itself through `deserialize_any` cannot be read back from
        // bincode at all: refused before any event of it is accepted.
        if let Ok(Err(driftless_domain::ShapeError::SelfDescribing { path })) =
            std::panic::catch_unwind(driftless_domain::shape_of::<E>)
        {
            return Err(BuildError::UnreadableEventType { type_name: std::any::type_name::<E>(), path });
        }
        Ok(())
    }

    fn start(self, writer: StoreWriter) -> Result<Engine<E>, BuildError> {
        let o = &self.options;
        let views: Vec<(driftless_domain::TableId, String)> =
            self.views.iter().map(|v| (v.table(), v.table().name.to_string())).collect();
        // Every stored event must read as a current one before anything is registered or
        // replays it: a refused open writes nothing.
        let checked = writer.check_stored_events(&self.upcasters).map_err(BuildError::from_check)?;
        if checked.journal_entries_upcast + checked.dead_letters_upcast > 0 {
            tracing::info!(
                journal_entries = checked.journal_entries_upcast,
                dead_letters = checked.dead_letters_upcast,
                "stored events of older schema versions read through the upcasters"
            );
        }
        let registry = writer.register(self.projectors, &views, self.upcasters)?;
        if !o.journal {
            if let Some(h) = registry.needs_rebuild.first() {
                return Err(BuildError::CannotRebuild { handler: h.to_string() });
            }
        }
        let store = Arc::clone(writer.store());
        let shared = Arc::new(Shared {
            store,
            writer: Mutex::new(writer),
            registry,
            clock: self.clock,
            room: EventRoom::new(self.options.queue_events),
            options: self.options,
            views: self.views,
            // The writer's work at open counts as one: until it is done, `dispatch_and_wait`
            // queues its event behind it.
            unfinished: AtomicUsize::new(1),
            gauges_at: Mutex::new(None),
        });
        let (tx, rx) = bounded::<Msg<E>>(shared.options.queue_capacity);
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("driftless-writer".into())
            .spawn(move || writer_loop(&writer_shared, &rx))
            .map_err(|source| BuildError::Thread { name: "driftless-writer", source })?;
        let refresher = match shared.options.view_refresh_interval {
            Some(every) if !shared.views.is_empty() => {
                let (stop_tx, stop_rx) = bounded::<()>(1);
                let s = Arc::clone(&shared);
                let handle = std::thread::Builder::new()
                    .name("driftless-views".into())
                    .spawn(move || {
                        while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(every) {
                            for v in &s.views {
                                if let Err(e) = s.refresh(v.as_ref()) {
                                    tracing::warn!(error = %e, "scheduled view refresh failed");
                                }
                            }
                        }
                    })
                    .map_err(|source| BuildError::Thread { name: "driftless-views", source })?;
                Some((stop_tx, handle))
            }
            _ => None,
        };
        Ok(Engine { shared, tx: Some(tx), writer: Some(writer), refresher })
    }
}

struct Shared<E: Event> {
    /// The store, for reads.
    store: Arc<Store>,
    /// The one writer, behind the commit lock: held by whoever commits events (the writer
    /// thread, or a caller of [`Engine::dispatch_and_wait`] that found nothing queued) or
    /// runs any other write.
    writer: Mutex<StoreWriter>,
    registry: Registry<E>,
    clock: Arc<dyn Clock>,
    options: EngineOptions,
    views: Vec<Arc<dyn MaterializedView>>,
    /// Room for events in queued messages: taken by `send`, given back when the writer
    /// receives their message.
    room: EventRoom,
    /// Event messages sent to the writer and not yet committed (or failed), plus one until
    /// the writer has done its work at open (rebuilds, catch-up).
    unfinished: AtomicUsize,
    /// When the writer last recorded the state gauges.
    gauges_at: Mutex<Option<Instant>>,
}

impl<E: Event> Shared<E> {
    /// Gives back the queue room of a message the writer has taken.
    fn taken(&self, msg: &Msg<E>) {
        self.room.give_back(msg.event_count());
    }

    fn refresh(&self, view: &dyn MaterializedView) -> Result<(), EngineError> {
        let name = view.table().name.to_string();
        let span = tracing::info_span!("view_refresh", read_model = %name, rows = Empty, seconds = Empty);
        let _entered = span.enter();
        let started = Instant::now();
        let rows = view
            .refresh(&ViewSource { store: &self.store })
            .map_err(|reason| EngineError::Refresh { view: name.clone(), reason })?;
        self.writer.lock().replace_view(&name, &rows, self.clock.now())?;
        let seconds = started.elapsed().as_secs_f64();
        span.record("rows", rows.len()).record("seconds", seconds);
        metrics::counter!(m::VIEW_REFRESHES_TOTAL, m::LABEL_READ_MODEL => name.clone()).increment(1);
        metrics::histogram!(m::VIEW_REFRESH_SECONDS, m::LABEL_READ_MODEL => name).record(seconds);
        Ok(())
    }

    fn queue_depth(&self, messages: usize) -> QueueDepth {
        QueueDepth { events: self.room.queued(), messages }
    }

    /// Records the state gauges if [`EngineOptions::gauge_interval`] has passed since the
    /// last time; `messages` is how many messages are queued.
    fn record_gauges_when_due(&self, messages: usize) {
        let Some(every) = self.options.gauge_interval else { return };
        {
            let mut at = self.gauges_at.lock();
            if at.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            *at = Some(Instant::now());
        }
        let recorded =
            observe::record_gauges(&self.store, &self.registry, self.clock.now(), self.queue_depth(messages));
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "the state gauges could not be recorded");
        }
    }
}

type Reply<T> = Sender<T>;

/// Where the writer sends the reports of one dispatch message: a one-shot channel, which
/// costs the writer one store and one wake-up per message.
type EventsReply = oneshot::Sender<Delivered>;

/// What the writer sends back for one dispatch message: the reports, and the events
/// themselves, so that the thread that made them frees them. (Memory freed on another
/// thread than the one that allocated it is slow to reuse with some allocators, glibc's
/// among them; a writer freeing every event it commits spent a third of its time there.)
struct Delivered {
    reports: Result<Vec<EventReport>, NotCommitted>,
    _events: Box<dyn Send>,
}

impl fmt::Debug for Delivered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivered").field("reports", &self.reports).finish_non_exhaustive()
    }
}

enum Command {
    Rebuild(usize),
    Retry { handler: usize, event_id: String },
    KillSwitch { read_model: String, engage: bool },
}

enum CommandOutput {
    Rebuilt(ReplayReport),
    Retried(Option<EventReport>),
    Done,
}

enum Msg<E> {
    Events { events: Vec<PreparedEvent<E>>, reply: EventsReply },
    Flush(Reply<()>),
    Command(Command, Reply<Result<CommandOutput, EngineError>>),
}

impl<E> Msg<E> {
    /// The events the message carries (the room it takes in the queue).
    fn event_count(&self) -> usize {
        match self {
            Msg::Events { events, .. } => events.len(),
            Msg::Flush(_) | Msg::Command(..) => 0,
        }
    }
}

/// A pending dispatch: wait on it for read-your-writes.
///
/// Once committed, the event comes back with its report and is freed by the thread that
/// receives the answer (the one waiting, or the one dropping the receipt), normally the one
/// that made it. A receipt kept without waiting on it keeps the event's memory.
#[derive(Debug)]
#[must_use = "a receipt says whether the event was applied; wait on it or drop it knowingly"]
pub struct Receipt {
    rx: oneshot::Receiver<Delivered>,
}

impl Receipt {
    /// Waits until the event is committed (or known not to be) and says what happened.
    ///
    /// # Errors
    /// [`NotCommitted`] when the commit failed or the engine stopped first.
    pub fn wait(self) -> Result<EventReport, NotCommitted> {
        let mut reports = self.rx.recv().map_err(|_| NotCommitted::EngineStopped)?.reports?;
        reports.pop().ok_or(NotCommitted::EngineStopped)
    }

    /// As [`Receipt::wait`], giving up after `timeout` (returning the receipt to wait again).
    ///
    /// # Errors
    /// `Err(Ok(receipt))` on time-out; `Err(Err(NotCommitted))` as for `wait`.
    pub fn wait_timeout(self, timeout: Duration) -> Result<EventReport, Result<Receipt, NotCommitted>> {
        match self.rx.recv_timeout(timeout).map(|d| d.reports) {
            Ok(Ok(mut reports)) => reports.pop().ok_or(Err(NotCommitted::EngineStopped)),
            Ok(Err(e)) => Err(Err(e)),
            Err(oneshot::RecvTimeoutError::Timeout) => Err(Ok(self)),
            Err(oneshot::RecvTimeoutError::Disconnected) => Err(Err(NotCommitted::EngineStopped)),
        }
    }
}

/// A pending batch dispatch. Like a [`Receipt`], it gets the events back to be freed.
#[derive(Debug)]
#[must_use = "a receipt says whether the events were applied; wait on it or drop it knowingly"]
pub struct BatchReceipt {
    parts: Vec<Part>,
    /// The first part that may still be waiting for its answer.
    settled: usize,
    /// Events in all parts.
    events: usize,
}

/// One message of a batch: waiting for its answer, or answered (its events freed).
#[derive(Debug)]
enum Part {
    Waiting(oneshot::Receiver<Delivered>),
    Answered(Result<Vec<EventReport>, NotCommitted>),
}

impl BatchReceipt {
    /// Waits for every event of the batch; reports are in dispatch order.
    ///
    /// # Errors
    /// [`NotCommitted`] when any part failed to commit or the engine stopped first (other
    /// parts may have committed: their effects stand and re-delivery is safe).
    pub fn wait(self) -> Result<Vec<EventReport>, NotCommitted> {
        let mut out = Vec::with_capacity(self.events);
        for part in self.parts {
            let reports = match part {
                Part::Waiting(rx) => rx.recv().map_err(|_| NotCommitted::EngineStopped)?.reports,
                Part::Answered(reports) => reports,
            };
            out.extend(reports?);
        }
        Ok(out)
    }

    /// Takes the answers that have arrived, oldest first, and frees their events while they
    /// are likely still in the cache of the thread that dispatched them.
    fn settle(&mut self) {
        while let Some(part) = self.parts.get_mut(self.settled) {
            let Part::Waiting(rx) = part else { break };
            let answer = match rx.try_recv() {
                Ok(delivered) => delivered.reports,
                Err(oneshot::TryRecvError::Empty) => break,
                Err(oneshot::TryRecvError::Disconnected) => Err(NotCommitted::EngineStopped),
            };
            *part = Part::Answered(answer);
            self.settled += 1;
        }
    }
}

/// Freshness of one read model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Freshness {
    /// The read model.
    pub read_model: String,
    /// Its owning handler or view.
    pub owner: String,
    /// Seconds between now and the newest applied event's `occurred_at` (for a view: since
    /// its last refresh); `None` before the first.
    pub seconds: Option<f64>,
    /// Applied-at minus occurred-at of the newest applied event, in milliseconds.
    pub commit_lag_ms: Option<u64>,
    /// Whether the owner has processed every journal entry (always true for a view).
    pub caught_up: bool,
    /// Events applied.
    pub applied: u64,
    /// Dead letters waiting.
    pub dead_letters: u64,
    /// Whether its kill switch is engaged.
    pub switched_off: bool,
}

impl Freshness {
    /// The value of an `X-Data-Freshness-Seconds` header: whole seconds, rounded up; `None`
    /// when unknown or while the read model is not caught up.
    #[must_use]
    pub fn header_value(&self) -> Option<String> {
        if !self.caught_up {
            return None;
        }
        self.seconds.map(|s| format!("{}", s.max(0.0).ceil() as u64))
    }
}

/// The engine an application embeds. See the crate documentation for an example.
pub struct Engine<E: Event> {
    shared: Arc<Shared<E>>,
    tx: Option<Sender<Msg<E>>>,
    writer: Option<JoinHandle<()>>,
    refresher: Option<(Sender<()>, JoinHandle<()>)>,
}

impl<E: Event> std::fmt::Debug for Engine<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.shared.store)
            .field("registry", &self.shared.registry)
            .finish()
    }
}

impl<E: Event> Engine<E> {
    /// A builder for the database at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> EngineBuilder<E> {
        EngineBuilder::new(path)
    }

    fn sender(&self) -> Result<&Sender<Msg<E>>, DispatchError> {
        if let Some(p) = self.shared.store.poisoned() {
            return Err(DispatchError::Poisoned(p.first_failure));
        }
        self.tx.as_ref().ok_or(DispatchError::ShutDown)
    }

    fn send(&self, msg: Msg<E>) -> Result<(), DispatchError> {
        let tx = self.sender()?;
        let n = msg.event_count();
        if n > 0 {
            let block = self.shared.options.when_full == WhenFull::Block;
            let writer_alive = || self.writer.as_ref().is_some_and(|w| !w.is_finished());
            self.shared.room.take(n, block, writer_alive)?;
        }
        let events = matches!(msg, Msg::Events { .. });
        if events {
            self.shared.unfinished.fetch_add(1, SeqCst);
        }
        let sent = self.send_message(tx, msg);
        if sent.is_err() {
            self.shared.room.give_back(n);
            if events {
                self.shared.unfinished.fetch_sub(1, SeqCst);
            }
        }
        sent
    }

    fn send_message(&self, tx: &Sender<Msg<E>>, msg: Msg<E>) -> Result<(), DispatchError> {
        match self.shared.options.when_full {
            WhenFull::Block => tx.send(msg).map_err(|_| DispatchError::ShutDown),
            WhenFull::Fail => tx.try_send(msg).map_err(|e| match e {
                TrySendError::Full(_) => {
                    DispatchError::QueueFull { capacity: self.shared.options.queue_capacity }
                }
                TrySendError::Disconnected(_) => DispatchError::ShutDown,
            }),
        }
    }

    /// Hands one event to the engine. Returns once it is queued; the receipt resolves once
    /// it is committed.
    ///
    /// # Errors
    /// [`DispatchError`] when the queue is full (with [`WhenFull::Fail`]), the engine is
    /// shut down or poisoned, or the event cannot be encoded.
    pub fn dispatch(&self, event: E) -> Result<Receipt, DispatchError> {
        let prepared = self.prepare(event)?;
        Ok(Receipt { rx: self.queue(vec![prepared])? })
    }

    /// Prepares an event for the queue: its id and hash, and the check of its size.
    fn prepare(&self, event: E) -> Result<PreparedEvent<E>, DispatchError> {
        let prepared = PreparedEvent::new(event)?;
        let size = prepared
            .size
            .saturating_add(prepared.event.aggregate_id().len())
            .saturating_add(prepared.id.as_str().len());
        let limit = self.shared.options.max_event_bytes;
        if size > limit {
            return Err(DispatchError::TooLarge { size, limit });
        }
        Ok(prepared)
    }

    /// Hands one event to the engine and waits until it is committed: the same as
    /// `dispatch(event)?.wait()`, faster when the engine is idle.
    ///
    /// When nothing is queued and no commit is in progress, the calling thread commits the
    /// event itself, sparing the two thread hand-offs of a dispatch and its receipt (about
    /// 47 µs together on a small virtual machine, a sixth of a synced commit there).
    /// While it commits, the calling thread runs the projectors. Otherwise the event
    /// is queued behind the others and committed with them, exactly as a dispatch. The
    /// order of events from one thread is kept either way.
    ///
    /// # Errors
    /// [`DispatchWaitError::Dispatch`] as for [`Engine::dispatch`];
    /// [`DispatchWaitError::NotCommitted`] as for [`Receipt::wait`].
    pub fn dispatch_and_wait(&self, event: E) -> Result<EventReport, DispatchWaitError> {
        let mut prepared = self.prepare(event)?;
        self.sender()?;
        let shared = &self.shared;
        if let Some(writer) = shared.writer.try_lock() {
            // Under the lock nothing is being committed; with nothing unfinished either, the
            // work at open is done and every event dispatched before this call is committed.
            if shared.unfinished.load(SeqCst) == 0 {
                let mut reports = commit_events(shared, &writer, 1, |feed| feed.push(&mut prepared))?;
                return reports.pop().ok_or(DispatchWaitError::NotCommitted(NotCommitted::EngineStopped));
            }
        }
        Ok(Receipt { rx: self.queue(vec![prepared])? }.wait()?)
    }

    /// Hands a batch of events to the engine, in order.
    ///
    /// # Errors
    /// [`DispatchBatchError`]: as for [`Engine::dispatch`], for the first event that could
    /// not be queued. The events before it that were queued are committed all the same; the
    /// error carries their receipt ([`DispatchBatchError::into_queued`]), and the events from the
    /// failing one on are not queued.
    pub fn dispatch_batch(
        &self,
        events: impl IntoIterator<Item = E>,
    ) -> Result<BatchReceipt, DispatchBatchError> {
        let max = self.shared.options.max_batch_events;
        let mut receipt = BatchReceipt { parts: Vec::new(), settled: 0, events: 0 };
        let capacity = max.min(1024);
        let mut chunk = Vec::with_capacity(capacity);
        for event in events {
            let prepared = match self.prepare(event) {
                Ok(prepared) => prepared,
                Err(error) => {
                    // What is prepared so far is queued, so that the receipt covers every
                    // event before the failing one.
                    let queued = if chunk.is_empty() { Ok(()) } else { self.send_part(&mut receipt, chunk) };
                    let error = queued.err().unwrap_or(error);
                    return Err(DispatchBatchError::new(error, receipt));
                }
            };
            chunk.push(prepared);
            if chunk.len() >= max {
                // A full-size buffer for the next message, so it does not grow by copying.
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(capacity));
                if let Err(error) = self.send_part(&mut receipt, full) {
                    return Err(DispatchBatchError::new(error, receipt));
                }
                receipt.settle();
            }
        }
        if !chunk.is_empty() {
            if let Err(error) = self.send_part(&mut receipt, chunk) {
                return Err(DispatchBatchError::new(error, receipt));
            }
        }
        Ok(receipt)
    }

    fn send_part(
        &self,
        receipt: &mut BatchReceipt,
        events: Vec<PreparedEvent<E>>,
    ) -> Result<(), DispatchError> {
        let count = events.len();
        receipt.parts.push(Part::Waiting(self.queue(events)?));
        receipt.events += count;
        Ok(())
    }

    /// Queues one message of events for the writer; its answer comes over the receiver.
    fn queue(&self, events: Vec<PreparedEvent<E>>) -> Result<oneshot::Receiver<Delivered>, DispatchError> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Events { events, reply })?;
        Ok(rx)
    }

    /// Waits until every event queued before this call is committed (or failed).
    ///
    /// # Errors
    /// [`EngineError::ShutDown`] when the writer is gone.
    pub fn flush(&self) -> Result<(), EngineError> {
        let (reply, rx) = bounded(1);
        // A flush is a wait by nature: it waits for room even with `WhenFull::Fail`, rather
        // than failing (as a shutdown) on a full queue.
        let tx = self.sender().map_err(dispatch_to_engine)?;
        tx.send(Msg::Flush(reply)).map_err(|_| EngineError::ShutDown)?;
        rx.recv().map_err(|_| EngineError::ShutDown)
    }

    fn command(&self, cmd: Command) -> Result<CommandOutput, EngineError> {
        let (reply, rx) = bounded(1);
        let tx = self.tx.as_ref().ok_or(EngineError::ShutDown)?;
        tx.send(Msg::Command(cmd, reply)).map_err(|_| EngineError::ShutDown)?;
        rx.recv().map_err(|_| EngineError::ShutDown)?
    }

    /// How many messages are waiting for the writer.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::len)
    }

    /// How many events are waiting for the writer, over all queued messages.
    #[must_use]
    pub fn queued_events(&self) -> usize {
        self.shared.room.queued()
    }

    /// Opens a read model for reading.
    ///
    /// Answers [`ReadAnswer::UseSourceOfTruth`] while its kill switch is engaged.
    ///
    /// # Errors
    /// [`EngineError::Read`] when the read model is unknown, changed schema, or storage
    /// fails.
    pub fn read<K: ViewKey, V: ViewValue>(
        &self,
        def: &TableDef<K, V>,
    ) -> Result<ReadAnswer<K, V>, EngineError> {
        Ok(self.shared.store.read(def)?)
    }

    /// The underlying store, for reconciliation, inspection and tooling. It reads; the
    /// engine's writer alone writes read models, under the commit lock.
    #[must_use]
    pub fn store(&self) -> &Arc<Store> {
        &self.shared.store
    }

    /// The upcasters registered with the engine: how events stored under older schema
    /// versions are read (for readers of the journal, such as reconcilers).
    #[must_use]
    pub fn upcasters(&self) -> &Arc<Upcasters<E>> {
        self.shared.registry.upcasters()
    }

    /// Writes a row of a read model behind its projector's back, under the commit lock: a
    /// chaos tool, to show and test that reconciliation finds drift. Built only with the
    /// `chaos` feature.
    ///
    /// # Errors
    /// [`EngineError::Commit`] when the write fails.
    #[cfg(feature = "chaos")]
    pub fn chaos_tamper_row(
        &self,
        read_model: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<(), EngineError> {
        Ok(self.shared.writer.lock().tamper_row(read_model, key, value)?)
    }

    /// The registered handler names, in registration order.
    #[must_use]
    pub fn handlers(&self) -> Vec<String> {
        self.shared.registry.handlers().iter().map(|h| h.name().to_string()).collect()
    }

    /// The clock the engine reads.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    fn handler_index(&self, handler: &str) -> Result<usize, EngineError> {
        self.shared
            .registry
            .handler_index(handler)
            .ok_or_else(|| EngineError::UnknownHandler(handler.to_string()))
    }

    /// Rebuilds a handler's read models from the journal without downtime (see
    /// [`Store::rebuild`]). Events dispatched meanwhile wait in the queue.
    ///
    /// # Errors
    /// [`EngineError::UnknownHandler`]; storage errors.
    ///
    /// Each rebuilt read model's reconciliation health restarts: a demoted one goes back to
    /// shadow, where it must earn promotion again, and the kill switch its demotion engaged
    /// is released.
    pub fn rebuild(&self, handler: &str) -> Result<ReplayReport, EngineError> {
        let i = self.handler_index(handler)?;
        let report = match self.command(Command::Rebuild(i))? {
            CommandOutput::Rebuilt(r) => r,
            _ => return Err(EngineError::ShutDown),
        };
        if let Some(h) = self.shared.registry.handlers().get(i) {
            for table in h.table_names() {
                let transition = driftless_reconciler::record_rebuild_at(
                    &self.shared.store,
                    table,
                    self.shared.clock.now(),
                )?;
                // A demotion engaged the kill switch "until it is rebuilt": release it. A
                // switch engaged by hand on a read model that was not demoted stays on.
                let was_demoted = transition
                    .is_some_and(|t| t.from == driftless_domain::reconcile::PromotionState::Demoted);
                if was_demoted && self.shared.options.demotion_engages_kill_switch {
                    self.set_kill_switch(table, false)?;
                }
            }
        }
        Ok(report)
    }

    /// A reconciliation harness builder for this engine's database and clock. A demoted
    /// read model engages its kill switch when [`EngineOptions::demotion_engages_kill_switch`]
    /// is set (the default). Add reconcilers, then `build` it.
    pub fn reconciliation(&self) -> driftless_reconciler::HarnessBuilder {
        let builder = driftless_reconciler::ReconcileHarness::builder(
            Arc::clone(&self.shared.store),
            Arc::clone(&self.shared.clock),
        );
        if !self.shared.options.demotion_engages_kill_switch {
            return builder;
        }
        // The switch is a write: it goes through the engine's writer, under the commit lock.
        // The hook does not keep the engine alive: after a shutdown it does nothing.
        let shared = Arc::downgrade(&self.shared);
        builder.on_demote(Arc::new(move |read_model: &str| {
            let Some(shared) = shared.upgrade() else {
                tracing::error!(read_model, "demoted after the engine shut down: the kill switch was not engaged");
                return;
            };
            let switch = KillSwitch { engaged_at: shared.clock.now(), pause_projection: false };
            let engaged = shared.writer.lock().set_kill_switch(read_model, Some(switch));
            match engaged {
                Ok(()) => tracing::warn!(read_model, "demoted: kill switch engaged, read the source of truth"),
                Err(e) => tracing::error!(read_model, error = %e, "demoted, but the kill switch could not be engaged"),
            }
        }))
    }

    /// Dead letters, of one handler or all.
    ///
    /// # Errors
    /// Storage errors.
    pub fn dead_letters(&self, handler: Option<&str>) -> Result<Vec<DeadLetter>, EngineError> {
        Ok(self.shared.store.dead_letters(handler)?)
    }

    /// Retries a dead letter by delivering its event again; `None` when there is no such
    /// dead letter. Every handler that has not applied the event tries it (see
    /// [`Store::retry_dead_letter`]); the retry is journaled like any delivery.
    ///
    /// # Errors
    /// [`EngineError::UnknownHandler`]; storage errors.
    pub fn retry_dead_letter(
        &self,
        handler: &str,
        event_id: &str,
    ) -> Result<Option<EventReport>, EngineError> {
        let i = self.handler_index(handler)?;
        match self.command(Command::Retry { handler: i, event_id: event_id.to_string() })? {
            CommandOutput::Retried(r) => Ok(r),
            _ => Err(EngineError::ShutDown),
        }
    }

    /// Retries every dead-lettered event (of one handler, or of all) once, in event-id
    /// order. Returns how many events were retried and how many of them are now applied.
    ///
    /// # Errors
    /// As [`Engine::retry_dead_letter`].
    pub fn retry_dead_letters(&self, handler: Option<&str>) -> Result<(usize, usize), EngineError> {
        let mut events: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        for d in self.dead_letters(handler)? {
            events.entry(d.event_id).or_insert(d.handler);
        }
        let mut fixed = 0;
        for (event_id, handler) in &events {
            if let Some(r) = self.retry_dead_letter(handler, event_id)? {
                if matches!(r.outcome, EventOutcome::Applied) {
                    fixed += 1;
                }
            }
        }
        Ok((events.len(), fixed))
    }

    /// Discards a dead letter without applying it; returns whether it existed.
    ///
    /// # Errors
    /// Storage errors.
    pub fn discard_dead_letter(&self, handler: &str, event_id: &str) -> Result<bool, EngineError> {
        Ok(self.shared.writer.lock().discard_dead_letter(handler, event_id)?)
    }

    /// Engages or releases a read model's kill switch. While engaged, reads answer
    /// [`ReadAnswer::UseSourceOfTruth`]; with `kill_switch_pauses_projection`, projection
    /// into it pauses too and catches up from the journal on release. Persisted.
    ///
    /// # Errors
    /// [`EngineError::Commit`] for an unknown read model or a storage failure.
    pub fn set_kill_switch(&self, read_model: &str, engage: bool) -> Result<(), EngineError> {
        self.command(Command::KillSwitch { read_model: read_model.to_string(), engage }).map(drop)
    }

    /// The kill switch of a read model, if engaged.
    ///
    /// # Errors
    /// [`EngineError::Read`] for an unknown read model.
    pub fn kill_switch(&self, read_model: &str) -> Result<Option<KillSwitch>, EngineError> {
        Ok(self.shared.store.kill_switch(read_model)?)
    }

    /// Refreshes one materialized view now.
    ///
    /// # Errors
    /// [`EngineError::UnknownReadModel`]; [`EngineError::Refresh`] when its refresh fails.
    pub fn refresh_view(&self, view: &str) -> Result<(), EngineError> {
        let v = self
            .shared
            .views
            .iter()
            .find(|v| v.table().name == view)
            .ok_or_else(|| EngineError::UnknownReadModel(view.to_string()))?;
        self.shared.refresh(v.as_ref())
    }

    /// Refreshes every materialized view now.
    ///
    /// # Errors
    /// The first failure.
    pub fn refresh_views(&self) -> Result<(), EngineError> {
        for v in &self.shared.views {
            self.shared.refresh(v.as_ref())?;
        }
        Ok(())
    }

    /// Freshness of every read model and view.
    ///
    /// # Errors
    /// Storage errors.
    pub fn freshness(&self) -> Result<Vec<Freshness>, EngineError> {
        let shared = &self.shared;
        Ok(observe::freshness(&shared.store, &shared.registry, shared.clock.now())?)
    }

    /// Where every read model and view stands: its freshness, kill switch and (projected
    /// read models) reconciliation health.
    ///
    /// # Errors
    /// Storage errors.
    pub fn read_model_states(&self) -> Result<Vec<ReadModelState>, EngineError> {
        let shared = &self.shared;
        Ok(observe::states(&shared.store, &shared.registry, shared.clock.now())?)
    }

    /// Records the engine's state gauges through the `metrics` facade now (the writer also
    /// records them every [`EngineOptions::gauge_interval`]): the queue in events and
    /// messages, whether the engine is poisoned, the journal head, per handler its applied
    /// events and journal position, and per read model its freshness and commit lag,
    /// caught-up flag, dead letters, kill switch and, for projected read models, promotion
    /// state and clean and breach streaks. Names in [`crate::metric_names`].
    ///
    /// # Errors
    /// Storage errors.
    pub fn record_gauges(&self) -> Result<(), EngineError> {
        let shared = &self.shared;
        let depth = shared.queue_depth(self.queued());
        Ok(observe::record_gauges(&shared.store, &shared.registry, shared.clock.now(), depth)?)
    }

    /// The reconciliation history of `read_model`: its last recorded runs with their
    /// figures and drifted keys, and its promotion changes (empty when it was never
    /// reconciled).
    ///
    /// # Errors
    /// Storage errors.
    pub fn reconcile_history(
        &self,
        read_model: &str,
    ) -> Result<driftless_reconciler::ReconcileHistory, EngineError> {
        Ok(driftless_reconciler::history(&self.shared.store, read_model)?)
    }

    /// Freshness of one read model.
    ///
    /// # Errors
    /// [`EngineError::UnknownReadModel`]; storage errors.
    pub fn freshness_of(&self, read_model: &str) -> Result<Freshness, EngineError> {
        self.freshness()?
            .into_iter()
            .find(|f| f.read_model == read_model)
            .ok_or_else(|| EngineError::UnknownReadModel(read_model.to_string()))
    }

    /// Stops accepting events, commits everything already accepted, joins the threads, and
    /// closes the database (unless a handle from [`Engine::store`] or a reconciliation
    /// harness still holds it: it then closes, silently, when the last handle is dropped).
    ///
    /// # Errors
    /// [`EngineError::Poisoned`] when the engine stopped on a storage failure (accepted
    /// events that were not committed had their receipts resolved with [`NotCommitted`]);
    /// [`EngineError::Commit`] when closing the database failed (what was committed with
    /// immediate durability stands; the next open repairs the file).
    pub fn shutdown(mut self) -> Result<(), EngineError> {
        self.stop();
        if let Some(p) = self.shared.store.poisoned() {
            return Err(EngineError::Poisoned(p.first_failure));
        }
        let shared = Arc::clone(&self.shared);
        drop(self);
        match Arc::try_unwrap(shared) {
            Ok(shared) => {
                let Shared { store, writer, .. } = shared;
                drop(store);
                Ok(writer.into_inner().close()?)
            }
            Err(_) => Ok(()),
        }
    }

    fn stop(&mut self) {
        if let Some((stop, handle)) = self.refresher.take() {
            let _ = stop.send(());
            let _ = handle.join();
        }
        self.tx = None;
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                self.shared.store.poison("the writer thread panicked");
            }
        }
    }
}

impl<E: Event> Drop for Engine<E> {
    fn drop(&mut self) {
        self.stop();
    }
}

fn dispatch_to_engine(e: DispatchError) -> EngineError {
    match e {
        DispatchError::Poisoned(p) => EngineError::Poisoned(p),
        _ => EngineError::ShutDown,
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    driftless_domain::panic_text(&**panic).unwrap_or_else(|| "a non-text panic payload".to_string())
}

fn writer_loop<E: Event>(shared: &Shared<E>, rx: &Receiver<Msg<E>>) {
    {
        let writer = shared.writer.lock();
        startup(shared, &writer);
        shared.unfinished.fetch_sub(1, SeqCst);
    }
    let mut carry: Option<Msg<E>> = None;
    // Messages and events in the last group committed: more than one message means
    // concurrent senders.
    let (mut last_messages, mut last) = (0usize, 0usize);
    loop {
        let msg = match carry.take() {
            Some(m) => m,
            None => match next_message(shared, rx) {
                Some(m) => {
                    shared.taken(&m);
                    m
                }
                None => break,
            },
        };
        match msg {
            Msg::Events { events, reply } => {
                let writer = shared.writer.lock();
                let (messages, events, next) =
                    commit_group(shared, &writer, rx, (events, reply), last, last_messages > 1);
                (last, last_messages, carry) = (events, messages, next);
                shared.unfinished.fetch_sub(messages, SeqCst);
            }
            Msg::Flush(reply) => {
                let _ = reply.send(());
            }
            Msg::Command(cmd, reply) => {
                let writer = shared.writer.lock();
                let out = match catch_unwind(AssertUnwindSafe(|| run_command(shared, &writer, cmd))) {
                    Ok(r) => r,
                    Err(panic) => {
                        let msg = format!("the writer panicked: {}", panic_message(&panic));
                        shared.store.poison(msg.clone());
                        Err(EngineError::Poisoned(msg))
                    }
                };
                let _ = reply.send(out);
            }
        }
        shared.record_gauges_when_due(rx.len());
    }
}

/// The next message for the writer; `None` once every sender is gone and the queue is
/// empty. While the queue is empty the writer does its idle work.
fn next_message<E: Event>(shared: &Shared<E>, rx: &Receiver<Msg<E>>) -> Option<Msg<E>> {
    loop {
        // Idle work waits until the queue stays empty a moment: senders answered by the last
        // commit are about to send again.
        match rx.recv_timeout(IDLE_GRACE) {
            Ok(m) => return Some(m),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {}
        }
        file_when_idle(shared);
        shared.record_gauges_when_due(rx.len());
        match rx.recv_timeout(IDLE_CHECK) {
            Ok(m) => return Some(m),
            Err(RecvTimeoutError::Disconnected) => return None,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

/// With concurrent senders, how long the writer waits for one more message before it
/// commits what it has, and how long it gathers at most.
const LINGER_GAP: Duration = Duration::from_micros(200);
const LINGER_MAX: Duration = Duration::from_millis(2);

/// How long the queue stays empty before the writer does idle work.
const IDLE_GRACE: Duration = Duration::from_millis(5);

/// How often an idle writer looks for idle work (callers of `dispatch_and_wait` commit
/// without waking it).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The fewest unfiled journal entries an idle writer files (fewer are left for later: a
/// filing rewrites pages of the per-aggregate index, and the tail is cheap to scan).
const IDLE_FILING_MIN: u64 = 4_096;

/// Files the journal's tail in the per-aggregate index when nothing else is waiting, so
/// that commits under load rarely have to (see [`driftless_storage::AGGREGATE_FILING_MAX`]).
fn file_when_idle<E: Event>(shared: &Shared<E>) {
    if !shared.options.journal || shared.store.poisoned().is_some() {
        return;
    }
    if shared.store.unfiled_journal_entries() < IDLE_FILING_MIN {
        return;
    }
    // A caller of `dispatch_and_wait` committing now goes first; the filing waits.
    let Some(writer) = shared.writer.try_lock() else { return };
    let started = Instant::now();
    match writer.file_aggregates() {
        Ok(_) => metrics::histogram!(m::FILING_SECONDS).record(started.elapsed().as_secs_f64()),
        Err(e) => tracing::error!(error = %e, "filing the journal by aggregate failed"),
    }
}

fn startup<E: Event>(shared: &Shared<E>, writer: &StoreWriter) {
    let now = || shared.clock.now();
    for name in &shared.registry.needs_rebuild {
        let Some(i) = shared.registry.handler_index(name.as_str()) else { continue };
        if let Err(e) = observe::rebuild(writer, &shared.registry, i, now()) {
            tracing::error!(handler = %name, error = %e, "rebuild at open failed");
            shared.store.poison(format!("rebuilding {name} at open failed: {e}"));
            return;
        }
    }
    for i in 0..shared.registry.handlers().len() {
        match observe::catch_up(writer, &shared.registry, i, &now) {
            Ok(r) if r.replayed > 0 => {
                tracing::info!(handler = i, replayed = r.replayed, "caught up from the journal")
            }
            Ok(_) => {}
            Err(e) => {
                shared.store.poison(format!("catch-up failed: {e}"));
                return;
            }
        }
    }
}

/// Commits `first` and the messages that come while it is processed (see the writer's
/// gathering rules on [`EngineOptions::max_batch_wait`]) in one transaction, and answers
/// each. `expected` is how many events the last group had; `lingering`, whether it came
/// from concurrent senders. Returns the group's messages and events, and a message taken
/// that was not for this group.
fn commit_group<E: Event>(
    shared: &Shared<E>,
    writer: &StoreWriter,
    rx: &Receiver<Msg<E>>,
    first: (Vec<PreparedEvent<E>>, EventsReply),
    expected: usize,
    lingering: bool,
) -> (usize, usize, Option<Msg<E>>) {
    // Every message taken is in the group before its events are pushed, so that a failure
    // (or a poisoned store, which pushes nothing) answers it with the failure too.
    let mut group = vec![first];
    let mut carry = None;
    let mut reports = commit_events(shared, writer, expected, |feed| {
        let started = Instant::now();
        let deadline = started + shared.options.max_batch_wait;
        // The senders the last commit answered send again within moments: waiting for them
        // briefly makes one commit of what would be two.
        let linger = lingering.then(|| started + LINGER_MAX);
        loop {
            // The message just taken is processed at once, so gathering the next ones costs
            // the writer only the wait for them.
            if let Some((events, _)) = group.last_mut() {
                events.iter_mut().try_for_each(|ev| feed.push(ev))?;
            }
            if feed.len() >= shared.options.max_batch_events {
                break;
            }
            let taken = match rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Disconnected) => None,
                Err(TryRecvError::Empty) if !shared.options.max_batch_wait.is_zero() => {
                    rx.recv_deadline(deadline).ok()
                }
                Err(TryRecvError::Empty) => match linger {
                    Some(until) => rx.recv_deadline(until.min(Instant::now() + LINGER_GAP)).ok(),
                    None => None,
                },
            };
            if let Some(m) = &taken {
                shared.taken(m);
            }
            match taken {
                Some(Msg::Events { events, reply }) => group.push((events, reply)),
                Some(other) => {
                    carry = Some(other);
                    break;
                }
                None => break,
            }
        }
        Ok(())
    });
    let messages = group.len();
    let count = group.iter().map(|(events, _)| events.len()).sum();
    // Each message gets its reports and its events back (the events only to be dropped
    // there: their reports took their ids over), the last message first.
    for (events, reply) in group.into_iter().rev() {
        let part = match &mut reports {
            Ok(all) => Ok(take_tail(all, events.len())),
            Err(e) => Err(e.clone()),
        };
        let _ = reply.send(Delivered { reports: part, _events: Box::new(events) });
    }
    (messages, count, carry)
}

/// The last `n` items of `v` (all of them, without copying, when it has no more).
fn take_tail<T>(v: &mut Vec<T>, n: usize) -> Vec<T> {
    if n >= v.len() {
        std::mem::take(v)
    } else {
        v.split_off(v.len() - n)
    }
}

/// Commits the events `feed` pushes in one transaction (about `expected` of them); the
/// caller holds the commit lock.
fn commit_events<E: Event>(
    shared: &Shared<E>,
    writer: &StoreWriter,
    expected: usize,
    feed: impl FnOnce(&mut Feed<'_, E>) -> Result<(), CommitError>,
) -> Result<Vec<EventReport>, NotCommitted> {
    if let Some(p) = shared.store.poisoned() {
        return Err(NotCommitted::CommitFailed(p.first_failure));
    }
    let span = tracing::debug_span!(
        "commit",
        events = Empty,
        applied = Empty,
        duplicate = Empty,
        conflict = Empty,
        rejected = Empty,
        deferred = Empty,
        refused = Empty,
        seconds = Empty,
    );
    let _entered = span.enter();
    let started = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| {
        writer.project_with(&shared.registry, shared.clock.now(), expected, feed)
    }));
    let result = match result {
        Ok(Ok(report)) => Ok(report.events),
        Ok(Err(e)) => {
            // Only a failure of storage latches; the store has done so already, as it
            // returned it. Anything else failed this batch alone.
            if e.is_storage_failure() {
                shared.store.poison(e.to_string());
            }
            Err(NotCommitted::CommitFailed(e.to_string()))
        }
        Err(panic) => {
            let msg = format!("the writer panicked: {}", panic_message(&panic));
            shared.store.poison(msg.clone());
            Err(NotCommitted::CommitFailed(msg))
        }
    };
    // The whole transaction: a group's processing and its gathering are one.
    let seconds = started.elapsed().as_secs_f64();
    span.record("seconds", seconds);
    metrics::histogram!(m::COMMIT_SECONDS).record(seconds);
    if let Ok(reports) = &result {
        metrics::histogram!(m::BATCH_EVENTS).record(reports.len() as f64);
        let counts = OutcomeCounts::of(reports);
        span.record("events", reports.len());
        for (outcome, n) in counts.labelled() {
            span.record(outcome, n);
            if n > 0 {
                metrics::counter!(m::EVENTS_TOTAL, m::LABEL_OUTCOME => outcome).increment(n);
            }
        }
    }
    result
}

fn run_command<E: Event>(
    shared: &Shared<E>,
    writer: &StoreWriter,
    cmd: Command,
) -> Result<CommandOutput, EngineError> {
    if let Some(p) = shared.store.poisoned() {
        return Err(EngineError::Poisoned(p.first_failure));
    }
    let now = || shared.clock.now();
    match cmd {
        Command::Rebuild(i) => {
            Ok(CommandOutput::Rebuilt(observe::rebuild(writer, &shared.registry, i, now())?))
        }
        Command::Retry { handler, event_id } => Ok(CommandOutput::Retried(writer.retry_dead_letter(
            &shared.registry,
            handler,
            &event_id,
            now(),
        )?)),
        Command::KillSwitch { read_model, engage } => {
            let switch = engage.then(|| KillSwitch {
                engaged_at: now(),
                pause_projection: shared.options.kill_switch_pauses_projection,
            });
            if !engage {
                // Catch up while the switch still sends readers to the source of truth, so
                // that nobody reads the stale table between the release and the catch-up.
                if let Some(current) = shared.store.kill_switch(&read_model)? {
                    if current.pause_projection {
                        let unpaused = KillSwitch { pause_projection: false, ..current };
                        writer.set_kill_switch(&read_model, Some(unpaused))?;
                    }
                }
                if let Some(i) = shared
                    .registry
                    .owner_of(&read_model)
                    .and_then(|h| shared.registry.handler_index(h.name().as_str()))
                {
                    observe::catch_up(writer, &shared.registry, i, &now)?;
                }
            }
            writer.set_kill_switch(&read_model, switch)?;
            tracing::info!(%read_model, engaged = engage, "kill switch changed");
            Ok(CommandOutput::Done)
        }
    }
}
