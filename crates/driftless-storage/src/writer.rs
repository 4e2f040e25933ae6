//! The one writer of a database: the only way to change read models.

use crate::check::StoredEventsCheck;
use crate::commit::{BatchReport, Delivery, EventReport, Feed, ReplayReport};
use crate::error::{CommitError, OpenError, RegisterError};
use crate::registry::Registry;
use crate::schema::KillSwitch;
use crate::store::{Store, StoreOptions};
use driftless_domain::{Event, Projector, TableId, Timestamp, Upcasters};
use std::path::Path;
use std::sync::Arc;

/// The writer of one open database: registering projectors, projecting events, catching up,
/// rebuilding, retrying and discarding dead letters, replacing views and switching read
/// models off. It is the only handle with these operations, and there is one per open file:
/// whoever holds it decides the order of every write to the read models (the engine keeps it
/// behind its commit lock). For reads, it dereferences to the [`Store`], which can be
/// shared ([`StoreWriter::store`]) and has no write to a read model.
///
/// Opening a file of an older format needs the application's event type to upgrade it
/// ([`StoreWriter::open_upgrading`]); [`StoreWriter::open`] refuses such a file with
/// [`OpenError::UpgradeRequired`].
#[derive(Debug)]
pub struct StoreWriter {
    store: Arc<Store>,
}

impl std::ops::Deref for StoreWriter {
    type Target = Store;

    fn deref(&self) -> &Store {
        &self.store
    }
}

impl StoreWriter {
    /// Opens the database at `path`, creating it if there is no file there (see
    /// [`Store`] for how a file is created and verified).
    ///
    /// # Errors
    /// [`OpenError::InUse`] when another process has it open, [`OpenError::NotDriftless`]
    /// for a file that is not a driftless database, [`OpenError::NewerFormat`],
    /// [`OpenError::UpgradeRequired`] for a file of an older format,
    /// [`OpenError::Corrupted`], [`OpenError::Io`].
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, OpenError> {
        Ok(Self { store: Arc::new(Store::open(path, options, None)?) })
    }

    /// As [`StoreWriter::open`], upgrading a file of an older format in place first, in one
    /// write transaction (nothing of it is written if it fails). The upgrade reads the
    /// events the file holds with `upcasters` (see `docs/FORMAT.md`).
    ///
    /// # Errors
    /// As [`StoreWriter::open`], and [`OpenError::UpgradeFailed`] when a stored event cannot
    /// be read (its schema version needs an upcaster, or it does not decode).
    pub fn open_upgrading<E: Event>(
        path: impl AsRef<Path>,
        options: StoreOptions,
        upcasters: &Upcasters<E>,
    ) -> Result<Self, OpenError> {
        Ok(Self { store: Arc::new(Store::open(path, options, Some(upcasters))?) })
    }

    /// Opens (or creates, if empty) a database on a custom redb storage backend, such as a
    /// fault-injecting one in tests.
    ///
    /// # Errors
    /// As [`StoreWriter::open`].
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        options: StoreOptions,
    ) -> Result<Self, OpenError> {
        Ok(Self { store: Arc::new(Store::open_with_backend(backend, options, None)?) })
    }

    /// As [`StoreWriter::open_with_backend`], upgrading an older format first (see
    /// [`StoreWriter::open_upgrading`]).
    ///
    /// # Errors
    /// As [`StoreWriter::open_upgrading`].
    pub fn open_with_backend_upgrading<E: Event>(
        backend: impl redb::StorageBackend,
        options: StoreOptions,
        upcasters: &Upcasters<E>,
    ) -> Result<Self, OpenError> {
        Ok(Self { store: Arc::new(Store::open_with_backend(backend, options, Some(upcasters))?) })
    }

    /// The store, for reads, to share with readers (reconcilers, tooling).
    #[must_use]
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Registers projectors and materialized views, assigning each handler a persistent
    /// slot and recording each table's owner and schema fingerprint; `upcasters` read the
    /// events stored under older schema versions.
    ///
    /// # Errors
    /// [`RegisterError`] for duplicate handler names, a table declared twice, an invalid
    /// table name, or a storage failure.
    pub fn register<E: Event>(
        &self,
        projectors: Vec<Arc<dyn Projector<E>>>,
        views: &[(TableId, String)],
        upcasters: Upcasters<E>,
    ) -> Result<Registry<E>, RegisterError> {
        self.store.register(projectors, views, Arc::new(upcasters))
    }

    /// Projects a batch of new deliveries through every registered projector in ONE write
    /// transaction.
    ///
    /// For each (event, handler): a duplicate is skipped; an id first accepted with another
    /// payload is a conflict (skipped, reported); otherwise `apply` runs. A failing or
    /// panicking `apply` leaves no offset and no write for that event and handler, and
    /// records a dead letter; the rest of the batch commits. An event that cannot be stored
    /// (too large, or an encoding that does not read back) is refused, and the rest goes on.
    ///
    /// # Errors
    /// [`CommitError`] when the transaction cannot be committed. Nothing of the batch is then
    /// committed, unless the failure was in the final sync, after which the file may hold it
    /// or not; storage failures poison the store.
    pub fn project<E: Event, D: Delivery<E>>(
        &self,
        reg: &Registry<E>,
        events: impl IntoIterator<Item = D>,
        now: Timestamp,
    ) -> Result<BatchReport, CommitError> {
        self.store.project(reg, events, now)
    }

    /// Projects new deliveries in ONE write transaction, as [`StoreWriter::project`] does,
    /// taking them from `feed` one at a time: each is processed as soon as it is pushed, so
    /// a caller gathering deliveries from several senders need not hold the first until the
    /// last has arrived. The transaction commits once `feed` returns `Ok`; the report has
    /// one entry per delivery pushed, in order (`capacity` is how many are expected).
    ///
    /// # Errors
    /// As [`StoreWriter::project`]. An error from `feed` abandons the batch: nothing of it
    /// is written, and the error is returned.
    pub fn project_with<E: Event>(
        &self,
        reg: &Registry<E>,
        now: Timestamp,
        capacity: usize,
        feed: impl FnOnce(&mut Feed<'_, E>) -> Result<(), CommitError>,
    ) -> Result<BatchReport, CommitError> {
        self.store.project_with(reg, now, capacity, feed)
    }

    /// Brings one handler up to the journal head, in transactions of a few thousand
    /// entries. A paused handler is left alone.
    ///
    /// # Errors
    /// [`CommitError::Unreadable`] when an entry cannot be read as a current event (nothing
    /// of that transaction is written, and the store is not poisoned); otherwise as
    /// [`StoreWriter::project`].
    pub fn catch_up<E: Event>(
        &self,
        reg: &Registry<E>,
        handler: usize,
        now: &dyn Fn() -> Timestamp,
    ) -> Result<ReplayReport, CommitError> {
        self.store.catch_up(reg, handler, now)
    }

    /// Retries a dead letter: delivers the stored event (upcast to the current version)
    /// again, as a new delivery. Handlers that applied it skip it as a duplicate; the others
    /// (the dead letter's handler among them) try it again, and success removes their dead
    /// letters. Like any delivery that some handler still needs, it is journaled, so a later
    /// rebuild or catch-up replays the retry too and does not undo it.
    ///
    /// # Errors
    /// As [`StoreWriter::catch_up`]; `Ok(None)` when there is no such dead letter.
    pub fn retry_dead_letter<E: Event>(
        &self,
        reg: &Registry<E>,
        handler: usize,
        event_id: &str,
        now: Timestamp,
    ) -> Result<Option<EventReport>, CommitError> {
        self.store.retry_dead_letter(reg, handler, event_id, now)
    }

    /// Rebuilds one handler's read models from the journal without downtime: the handler's
    /// offsets and dead letters are reset, every journal entry is projected (upcast to the
    /// current version) into shadow tables, and the shadows replace the live tables — all
    /// in ONE write transaction, so a reader sees the old tables until the commit and the
    /// new ones after it. An entry whose payload differs from the one first accepted under
    /// its id is skipped as a conflict: a rebuild never changes which payload won.
    ///
    /// An offset the handler had before keeps its applied-at time where the replay applies
    /// the event again; an event it applies for the first time (a dead letter that now
    /// succeeds) gets `now`.
    ///
    /// # Errors
    /// [`CommitError::NoJournal`] without a journal; otherwise as [`StoreWriter::catch_up`].
    pub fn rebuild<E: Event>(
        &self,
        reg: &Registry<E>,
        handler: usize,
        now: Timestamp,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<ReplayReport, CommitError> {
        self.store.rebuild(reg, handler, now, progress)
    }

    /// Replaces every row of a materialized view in one write transaction: a reader sees
    /// the old rows or the new ones, never a mix.
    ///
    /// # Errors
    /// [`CommitError::UnknownReadModel`] when `view` is not a registered view; otherwise
    /// as [`StoreWriter::project`].
    pub fn replace_view(
        &self,
        view: &str,
        rows: &[(Vec<u8>, Vec<u8>)],
        now: Timestamp,
    ) -> Result<(), CommitError> {
        self.store.replace_view(view, rows, now)
    }

    /// Discards a dead letter without applying it. Returns whether it existed.
    ///
    /// # Errors
    /// [`CommitError`] when the write fails.
    pub fn discard_dead_letter(&self, handler: &str, event_id: &str) -> Result<bool, CommitError> {
        self.store.discard_dead_letter(handler, event_id)
    }

    /// Engages (`Some`) or releases (`None`) the kill switch of a read model. With
    /// `pause_projection`, the owning handler stops projecting while any of its tables has
    /// such a switch engaged (and then catches up from the journal). The state is persisted.
    ///
    /// # Errors
    /// [`CommitError::UnknownReadModel`]; [`CommitError::NoJournal`] when pausing without a
    /// journal to catch up from.
    pub fn set_kill_switch(&self, read_model: &str, switch: Option<KillSwitch>) -> Result<(), CommitError> {
        self.store.set_kill_switch(read_model, switch)
    }

    /// Checks that every stored event — each journal entry and dead letter — can be read as
    /// a current event with `upcasters`: no schema version newer than the
    /// event type's, every older one with a chain of upcasters, and every event stored at an
    /// older version decoding and upcasting without error. Events at the current version
    /// were checked to read back when they were accepted and are not decoded again. What was
    /// checked is remembered in the file with the chain's signature, so that later opens
    /// read only entries journaled since (a changed chain checks everything again).
    ///
    /// # Errors
    /// [`CommitError::Unreadable`] naming the first event that cannot be read (its position,
    /// name and schema version) and what to register; nothing is written then.
    pub fn check_stored_events<E: Event>(
        &self,
        upcasters: &Upcasters<E>,
    ) -> Result<StoredEventsCheck, CommitError> {
        self.store.check_stored_events(upcasters)
    }

    /// Writes a row of a read model behind its projector's back, with a valid envelope: a
    /// chaos tool, to show and test that reconciliation finds drift. Built only with the
    /// `chaos` feature.
    ///
    /// # Errors
    /// [`CommitError`] when the write fails.
    #[cfg(feature = "chaos")]
    pub fn tamper_row(&self, read_model: &str, key: &[u8], value: Option<&[u8]>) -> Result<(), CommitError> {
        self.store.tamper_row(read_model, key, value)
    }

    /// Runs redb's integrity check (every page checksum, the allocator state). It needs the
    /// database to itself: every [`Store`] shared from this writer must have been dropped.
    /// A panic of the storage engine during the check is damage: the store is poisoned (the
    /// check may have written the repaired allocator state) and the answer is an error.
    ///
    /// # Errors
    /// [`CommitError::Storage`] when the check cannot run (or the store is still shared),
    /// [`CommitError::Corrupted`] when the storage engine stopped on damage.
    pub fn check_integrity(&mut self) -> Result<bool, CommitError> {
        match Arc::get_mut(&mut self.store) {
            Some(store) => store.check_integrity(),
            None => Err(CommitError::Storage(crate::error::StorageFailure::new(std::io::Error::other(
                "the integrity check needs the database to itself, and a shared store still holds it",
            )))),
        }
    }

    /// Closes the database and reports how the close went (dropping the writer and every
    /// shared [`Store`] closes it too, but silently). While a shared store is still held
    /// elsewhere, the close happens when the last one is dropped, and this returns `Ok`.
    ///
    /// # Errors
    /// [`CommitError::Storage`] when the close failed: what was committed with immediate
    /// durability stands, and the next open repairs the file.
    pub fn close(self) -> Result<(), CommitError> {
        match Arc::try_unwrap(self.store) {
            Ok(store) => store.close(),
            Err(_) => Ok(()),
        }
    }
}
