//! Opening, creating and poisoning a database file.

use crate::error::{CommitError, OpenError, Poisoned, StorageFailure};
use crate::isolate::{self, Stopped};
use crate::schema::{
    FormatRecord, DEAD_LETTERS, EVENT_IDS, EVENT_INDEX, FORMAT_VERSION, HANDLERS, JOURNAL,
    JOURNAL_BY_AGGREGATE, MAGIC, META, META_FORMAT, META_HEAD, META_INDEX_PROBE, OLDEST_FORMAT_VERSION,
    READ_MODELS,
};
use crate::upgrade::LegacyEvents;
use driftless_domain::{codec, Event, Upcasters};
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase};
use std::fs::{File, OpenOptions};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How durable a commit is when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Synced to disk before the commit returns (the default).
    #[default]
    Immediate,
    /// Not synced; made durable by the next immediate commit. For tests and throwaway data.
    Eventual,
}

/// Options of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Commit durability.
    pub durability: Durability,
    /// Whether every accepted event is kept in the journal (needed for catch-up, rebuilds
    /// and refold reconciliation).
    pub journal: bool,
    /// redb's page cache size in bytes (`None`: redb's default).
    pub cache_bytes: Option<usize>,
    /// Whether opening an existing file verifies it first (the default): redb checks the
    /// checksum of every page of its committed trees, its own bookkeeping included, and
    /// rebuilds its allocator state from them, so that a file damaged since it was written is
    /// refused with [`OpenError::Corrupted`] instead of being trusted.
    ///
    /// The check reads every page the file uses, at every open: on the development machine
    /// 0.2 to 0.6 ms per MiB of file with the file in the operating system's cache and 1 to
    /// 2 ms per MiB from disk (a 514 MiB file of a million events: 0.3 s and 1.1 s). After an
    /// unclean shutdown redb does this work anyway, to recover. Without the check, an open
    /// reads only the pages it needs, and damage is met by the reads and writes that touch
    /// it, which report it as an error. Damage to redb's record of freed pages makes redb
    /// panic twice at the first durable commit or at the close (the second time while the
    /// first panic unwinds); both run on a thread of their own, which is then halted for good
    /// instead of aborting the process: the write fails with [`CommitError::Corrupted`], the
    /// store is poisoned, and the file stays open (and locked) until the process exits.
    pub check_integrity_on_open: bool,
    /// The largest event accepted, in bytes of its stable encoding plus its aggregate id
    /// (default and most: [`MAX_EVENT_BYTES`]). A larger event is refused, not journaled:
    /// every stored value, a journal entry or a dead letter holding the event among them,
    /// must fit in the codec's limit.
    pub max_event_bytes: usize,
}

/// The most bytes an event may take ([`StoreOptions::max_event_bytes`]): the codec's
/// limit on a stored value, less 64 KiB for the journal entry or dead letter around the
/// event (a dead letter's reason is cut to 4 KiB).
pub const MAX_EVENT_BYTES: usize = driftless_domain::codec::MAX_BODY_LEN - (64 << 10);

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Immediate,
            journal: true,
            cache_bytes: None,
            check_integrity_on_open: true,
            max_event_bytes: MAX_EVENT_BYTES,
        }
    }
}

/// One open driftless database file, for reading.
///
/// It owns the redb database and latches the first commit failure: after it, every write
/// returns [`Poisoned`] until the store is dropped and reopened. It reads read models, the
/// journal, offsets, dead letters and records, and keeps its own metadata records
/// ([`Store::meta_update`]), but it writes no read model: that is the
/// [`StoreWriter`](crate::StoreWriter)'s alone, and an engine keeps its writer to itself.
///
/// ```compile_fail
/// // A store handed out (`Engine::store`) cannot write a row behind the projector's back...
/// fn tamper(store: &driftless_storage::Store) {
///     store.tamper_row("cards", b"k", None);
/// }
/// ```
///
/// ```compile_fail
/// // ...nor replace a view, nor project, rebuild or retry.
/// fn replace(store: &driftless_storage::Store) {
///     store.replace_view("board", &[], driftless_domain::Timestamp(0));
/// }
/// ```
pub struct Store {
    pub(crate) db: DbHandle,
    pub(crate) path: PathBuf,
    pub(crate) options: StoreOptions,
    poison: Mutex<Option<String>>,
    /// Hashes of at least every stored dead letter's key, kept from one commit to the
    /// next so that a commit does not scan the dead letters again (see `commit.rs`).
    pub(crate) dead_filter: Mutex<Option<std::collections::HashSet<u64>>>,
    /// Journal entries not yet filed by aggregate, as of the last commit that journaled or
    /// filed (see [`Store::unfiled_journal_entries`]).
    pub(crate) unfiled: std::sync::atomic::AtomicU64,
    /// The event schemas journal entries refer to (see `schemas.rs`).
    pub(crate) schemas: parking_lot::RwLock<crate::schemas::Schemas>,
    /// The upcasters registered with the store's projectors (an `Upcasters<E>`), for
    /// readers of the journal that know `E` (see [`Store::upcasters`]).
    pub(crate) upcasters: Mutex<Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>>,
    /// Whether no commit has succeeded since the open. The first one is made durable and runs
    /// on a thread of its own (see [`Store::commit`]).
    first_commit_pending: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).field("options", &self.options).finish()
    }
}

fn builder(options: &StoreOptions) -> redb::Builder {
    let mut b = Database::builder();
    if let Some(bytes) = options.cache_bytes {
        b.set_cache_size(bytes);
    }
    b.set_check_integrity_on_open(options.check_integrity_on_open);
    b
}

fn map_database_error(path: &Path, e: redb::DatabaseError) -> OpenError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            OpenError::InUse { path: path.to_path_buf() }
        }
        redb::DatabaseError::UpgradeRequired(v) => OpenError::NotDriftless {
            path: path.to_path_buf(),
            reason: format!("it is a redb file of the old format {v}"),
        },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
            OpenError::Corrupted { path: path.to_path_buf(), reason }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(source)) => match source.kind() {
            std::io::ErrorKind::InvalidData => {
                OpenError::NotDriftless { path: path.to_path_buf(), reason: source.to_string() }
            }
            // A file cut short inside redb's header: damaged, not an I/O failure.
            std::io::ErrorKind::UnexpectedEof => OpenError::Corrupted {
                path: path.to_path_buf(),
                reason: format!("the file ends inside its header ({source})"),
            },
            _ => OpenError::Io { path: path.to_path_buf(), source },
        },
        other => OpenError::Storage(StorageFailure::new(other)),
    }
}

/// Runs a redb call that may panic on a damaged file, turning the panic into an error.
fn guarded<T>(path: &Path, f: impl FnOnce() -> Result<T, OpenError>) -> Result<T, OpenError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let reason = crate::error::panic_message(&*panic);
            Err(OpenError::Corrupted { path: path.to_path_buf(), reason })
        }
    }
}

impl Store {
    /// Opens the database at `path`, creating it if there is no file there.
    ///
    /// A new database is created at a temporary path beside `path`, initialised, synced and
    /// then linked into place, so a crash during creation never leaves a half-made file at
    /// `path`. New files are readable and writable by their owner only. An existing file is
    /// verified before anything else reads it, unless
    /// [`StoreOptions::check_integrity_on_open`] is off.
    ///
    /// # Errors
    /// [`OpenError::InUse`] when another process has it open, [`OpenError::NotDriftless`]
    /// for a file that is not a driftless database, [`OpenError::NewerFormat`],
    /// [`OpenError::Corrupted`], [`OpenError::Io`].
    pub(crate) fn open(
        path: impl AsRef<Path>,
        options: StoreOptions,
        upgrade: Option<&dyn LegacyEvents>,
    ) -> Result<Self, OpenError> {
        let path = path.as_ref().to_path_buf();
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                return Err(OpenError::NotDriftless { path, reason: "it is a directory".into() })
            }
            Ok(meta) if meta.len() == 0 => {
                return Err(OpenError::NotDriftless { path, reason: "the file is empty".into() })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_new(&path, &options)?,
            Err(source) => return Err(OpenError::Io { path, source }),
        }
        let db = guarded(&path, || builder(&options).open(&path).map_err(|e| map_database_error(&path, e)))?;
        Self::finish_open(DbHandle::new(db), path, options, upgrade)
    }

    /// Opens (or creates, if empty) a database on a custom redb storage backend, such as a
    /// fault-injecting one in tests.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub(crate) fn open_with_backend(
        backend: impl redb::StorageBackend,
        options: StoreOptions,
        upgrade: Option<&dyn LegacyEvents>,
    ) -> Result<Self, OpenError> {
        let path = PathBuf::from("<backend>");
        let db = DbHandle::new(guarded(&path, || {
            builder(&options).create_with_backend(backend).map_err(|e| map_database_error(&path, e))
        })?);
        let fresh = guarded(&path, || {
            let txn = db.begin_read()?;
            Ok(match txn.open_table(META) {
                Ok(_) => false,
                Err(redb::TableError::TableDoesNotExist(_)) => true,
                Err(e) => return Err(e.into()),
            })
        })?;
        if fresh {
            initialise(&db, &path)?;
        }
        Self::finish_open(db, path, options, upgrade)
    }

    fn finish_open(
        db: DbHandle,
        path: PathBuf,
        options: StoreOptions,
        upgrade: Option<&dyn LegacyEvents>,
    ) -> Result<Self, OpenError> {
        let found = guarded(&path, || check_format(&db, &path))?;
        if found < FORMAT_VERSION {
            let Some(events) = upgrade else {
                return Err(OpenError::UpgradeRequired { path, found, supported: FORMAT_VERSION });
            };
            guarded(&path, || crate::upgrade::upgrade(&db, &path, found, events))?;
        }
        let schemas = guarded(&path, || {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            check_tips(&txn, &meta, &path)?;
            crate::schemas::Schemas::load(&meta)
                .map_err(|e| OpenError::Corrupted { path: path.clone(), reason: e.to_string() })
        })?;
        let mut options = options;
        options.max_event_bytes = options.max_event_bytes.min(MAX_EVENT_BYTES);
        Ok(Self {
            db,
            path,
            options,
            poison: Mutex::new(None),
            dead_filter: Mutex::new(None),
            unfiled: std::sync::atomic::AtomicU64::new(0),
            schemas: parking_lot::RwLock::new(schemas),
            upcasters: Mutex::new(None),
            first_commit_pending: AtomicBool::new(true),
        })
    }

    /// The largest event accepted ([`StoreOptions::max_event_bytes`]).
    #[must_use]
    pub fn max_event_bytes(&self) -> usize {
        self.options.max_event_bytes
    }

    /// The upcasters registered with this store's projectors, when they are for events of
    /// type `E`; none otherwise (then only current events are read).
    #[must_use]
    pub fn upcasters<E: Event>(&self) -> std::sync::Arc<Upcasters<E>> {
        self.upcasters
            .lock()
            .as_ref()
            .and_then(|any| std::sync::Arc::clone(any).downcast::<Upcasters<E>>().ok())
            .unwrap_or_else(|| std::sync::Arc::new(Upcasters::new()))
    }

    /// The database file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The options it was opened with.
    #[must_use]
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// Whether the journal is kept.
    #[must_use]
    pub fn journal_enabled(&self) -> bool {
        self.options.journal
    }

    /// The first commit failure, if the store is poisoned.
    #[must_use]
    pub fn poisoned(&self) -> Option<Poisoned> {
        self.poison.lock().as_ref().map(|f| Poisoned { first_failure: f.clone() })
    }

    pub(crate) fn check_poison(&self) -> Result<(), Poisoned> {
        match self.poisoned() {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }

    /// Latches `failure` as the reason every later write is refused.
    pub fn poison(&self, failure: impl Into<String>) {
        let mut guard = self.poison.lock();
        if guard.is_none() {
            let failure = failure.into();
            tracing::error!(%failure, "the database is poisoned: writes are refused until it is reopened");
            *guard = Some(failure);
        }
    }

    /// Begins a write transaction with the store's durability, refusing if poisoned. Until a
    /// commit has succeeded since the open, the transaction is durable whatever the store's
    /// durability (see [`Store::commit`]).
    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, CommitError> {
        self.check_poison()?;
        let first = self.first_commit_pending.load(Ordering::Acquire);
        let mut txn = if first {
            self.begin_first_write()?
        } else {
            self.db.begin_write().map_err(|e| self.fail(e))?
        };
        let durability = if first || self.options.durability == Durability::Immediate {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        };
        txn.set_durability(durability).map_err(|e| self.fail(e))?;
        Ok(txn)
    }

    /// Begins a write transaction while the first commit since the open may be running:
    /// without waiting in redb, because that commit may halt holding redb's write lock for
    /// good (see [`Store::commit`]). A writer that finds the lock taken polls, and gives up
    /// when the store is poisoned.
    fn begin_first_write(&self) -> Result<redb::WriteTransaction, CommitError> {
        loop {
            match self.db.try_begin_write() {
                Err(redb::TransactionError::WouldBlock) => {
                    self.check_poison()?;
                    std::thread::sleep(Duration::from_micros(500));
                }
                other => return other.map_err(|e| self.fail(e)),
            }
        }
    }

    /// Commits, poisoning the store if the commit fails.
    ///
    /// The first commit since the open runs on a thread of its own (`isolate`), and is
    /// durable (see [`Store::begin_write`]): a durable commit takes the pages freed by earlier
    /// transactions out of redb's freed-pages tree, and when that tree is damaged, redb
    /// panics there and again while the first panic unwinds, which would abort the process.
    /// Isolated, the second panic halts that thread instead; the store is then poisoned, its
    /// database is never closed (the halted transaction holds redb's write lock), and the
    /// commit fails with [`CommitError::Corrupted`]. Later commits run inline: the tree holds
    /// only what this process wrote since (unless a read transaction kept entries back).
    pub(crate) fn commit(&self, txn: redb::WriteTransaction) -> Result<(), CommitError> {
        if !self.first_commit_pending.load(Ordering::Acquire) {
            return txn.commit().map_err(|e| self.fail(e));
        }
        match isolate::run("driftless-commit", move || txn.commit()) {
            Ok(committed) => {
                committed.map_err(|e| self.fail(e))?;
                self.first_commit_pending.store(false, Ordering::Release);
                Ok(())
            }
            Err(stopped) => {
                if matches!(stopped, Stopped::Halted(_)) {
                    self.db.halt();
                }
                let reason = stopped.to_string();
                tracing::error!(%reason, "the storage engine panicked while committing on a damaged file");
                self.poison(format!("commit: {reason}"));
                Err(CommitError::Corrupted { what: "commit".into(), reason })
            }
        }
    }

    /// Turns a storage failure inside a write into a [`CommitError`], poisoning the store.
    pub(crate) fn fail(&self, e: impl std::error::Error + Send + Sync + 'static) -> CommitError {
        let failure = StorageFailure::new(e);
        self.poison(failure.message());
        CommitError::Storage(failure)
    }

    /// Closes the database and reports how the close went (dropping a store closes it too,
    /// but silently). The close records the allocator state, so that the next open needs no
    /// repair, and makes a pending non-durable commit durable.
    ///
    /// # Errors
    /// [`CommitError::Storage`] when the close failed: what was committed with immediate
    /// durability stands, and the next open repairs the file. [`CommitError::Corrupted`] when
    /// the storage engine stopped on damage while closing, or a commit had stopped so that
    /// the database cannot be closed (it stays open, and the file locked, until the process
    /// exits).
    pub fn close(self) -> Result<(), CommitError> {
        self.db.close()
    }

    /// Runs redb's integrity check (every page checksum, the allocator state). A panic of
    /// the storage engine during the check is damage: the store is poisoned (the check may
    /// have written the repaired allocator state) and the answer is an error.
    ///
    /// # Errors
    /// [`CommitError::Storage`] when the check cannot run, [`CommitError::Corrupted`] when
    /// the storage engine stopped on damage.
    pub(crate) fn check_integrity(&mut self) -> Result<bool, CommitError> {
        self.check_poison()?;
        let db = &mut self.db;
        match catch_unwind(AssertUnwindSafe(|| db.check_integrity())) {
            Ok(Ok(clean)) => Ok(clean),
            Ok(Err(e)) => Err(CommitError::Storage(StorageFailure::new(e))),
            Err(panic) => {
                let reason = crate::error::panic_message(&*panic);
                self.poison(format!("check_integrity: {reason}"));
                Err(CommitError::Corrupted { what: "the integrity check".into(), reason })
            }
        }
    }
}

fn create_new(path: &Path, options: &StoreOptions) -> Result<(), OpenError> {
    let io = |source| OpenError::Io { path: path.to_path_buf(), source };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.creating-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let file =
        owner_only(OpenOptions::new().read(true).write(true).create_new(true)).open(&tmp).map_err(io)?;
    let result = (|| {
        let backend = redb::backends::FileBackend::new(file).map_err(|e| map_database_error(path, e))?;
        let db = builder(options).create_with_backend(backend).map_err(|e| map_database_error(path, e))?;
        initialise(&db, path)?;
        drop(db);
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        // A hard link never replaces an existing file: if another process created the
        // database first, its file wins and ours is discarded.
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        sync_parent(path).map_err(io)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(unix)]
fn owner_only(o: &mut OpenOptions) -> &mut OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    o.mode(0o600)
}

#[cfg(not(unix))]
fn owner_only(o: &mut OpenOptions) -> &mut OpenOptions {
    o
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn initialise(db: &Database, path: &Path) -> Result<(), OpenError> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let record = FormatRecord { magic: MAGIC.into(), version: FORMAT_VERSION };
        let bytes = codec::encode(&record)
            .map_err(|e| OpenError::Corrupted { path: path.to_path_buf(), reason: e.to_string() })?;
        meta.insert(META_FORMAT, bytes.as_slice())?;
        txn.open_table(HANDLERS)?;
        txn.open_table(READ_MODELS)?;
        txn.open_table(EVENT_INDEX)?;
        txn.open_table(EVENT_IDS)?;
        txn.open_table(JOURNAL)?;
        txn.open_table(JOURNAL_BY_AGGREGATE)?;
        txn.open_table(DEAD_LETTERS)?;
    }
    txn.commit()?;
    Ok(())
}

/// Checks the tips of the two trees every commit extends, against what `meta` says the last
/// commit wrote: the journal ends at the journal head, and the offset index holds the row
/// of the index probe. A tree whose root redb was sent back to an older version of it
/// (damage to redb's table of tables, which is verified only by the integrity check) is
/// refused here rather than found by missing rows: a missing offset row would let an event
/// be applied a second time.
fn check_tips(
    txn: &redb::ReadTransaction,
    meta: &redb::ReadOnlyTable<&'static str, &'static [u8]>,
    path: &Path,
) -> Result<(), OpenError> {
    use redb::ReadableTable;
    let damaged = |reason: String| OpenError::Corrupted { path: path.to_path_buf(), reason };
    // Every table a database is created with is still there: a write would create a missing
    // one empty, and take every event for new.
    let missing = |e: redb::TableError| match e {
        redb::TableError::TableDoesNotExist(name) => {
            damaged(format!("its table {name} is missing: redb's table of tables is damaged"))
        }
        other => other.into(),
    };
    txn.open_table(HANDLERS).map_err(missing)?;
    txn.open_table(READ_MODELS).map_err(missing)?;
    txn.open_table(EVENT_IDS).map_err(missing)?;
    txn.open_table(DEAD_LETTERS).map_err(missing)?;
    txn.open_table(EVENT_INDEX).map_err(missing)?;
    txn.open_table(JOURNAL).map_err(missing)?;
    txn.open_table(JOURNAL_BY_AGGREGATE).map_err(missing)?;
    if let Some(bytes) = meta.get(META_HEAD)? {
        let head: u64 = codec::decode(bytes.value()).map_err(|e| damaged(format!("journal head: {e}")))?;
        let journal = txn.open_table(JOURNAL)?;
        let last = journal.last()?.map(|(k, _)| k.value());
        // A journal that was never written (an engine without one) has no entries.
        if head > 0 && last.is_some_and(|last| last != head) {
            return Err(damaged(format!(
                "the journal ends at position {}, but its head is {head}: the journal's tree is damaged",
                last.unwrap_or(0)
            )));
        }
    }
    if let Some(bytes) = meta.get(META_INDEX_PROBE)? {
        let key: Vec<u8> = codec::decode(bytes.value()).map_err(|e| damaged(format!("index probe: {e}")))?;
        let index = txn.open_table(EVENT_INDEX)?;
        match index.get(key.as_slice())? {
            Some(row) => {
                codec::verify_keyed(&key, row.value())
                    .map_err(|e| damaged(format!("the last offset row written fails its checksum: {e}")))?;
            }
            None => {
                return Err(damaged(
                    "the offset index does not hold the last row written to it: its tree is damaged".into(),
                ))
            }
        }
    }
    Ok(())
}

/// Checks that the file is a driftless database of a format this build reads, and returns
/// its format version.
fn check_format(db: &Database, path: &Path) -> Result<u32, OpenError> {
    let not_ours = |reason: &str| OpenError::NotDriftless { path: path.to_path_buf(), reason: reason.into() };
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Err(not_ours("it is a redb database without driftless metadata"))
        }
        Err(redb::TableError::TableTypeMismatch { .. }) => {
            return Err(not_ours("its metadata table has another type"))
        }
        Err(e) => return Err(e.into()),
    };
    let Some(bytes) = meta.get(META_FORMAT)? else {
        return Err(not_ours("its metadata has no format record"));
    };
    let record: FormatRecord = codec::decode(bytes.value()).map_err(|e| OpenError::Corrupted {
        path: path.to_path_buf(),
        reason: format!("format record: {e}"),
    })?;
    if record.magic != MAGIC {
        return Err(not_ours("its format record has another magic string"));
    }
    if record.version > FORMAT_VERSION {
        return Err(OpenError::NewerFormat {
            path: path.to_path_buf(),
            found: record.version,
            supported: FORMAT_VERSION,
        });
    }
    if record.version < OLDEST_FORMAT_VERSION {
        return Err(not_ours("its format version is older than any driftless release wrote"));
    }
    Ok(record.version)
}

/// The store's redb database, closed on drop with any panic of the close contained.
///
/// Closing a database records its allocator state, a durable commit; on a damaged file redb
/// may panic there, even twice (see [`Store::commit`]), and a panic in a destructor is never
/// acceptable. So the close runs on a thread of its own (`isolate`), whether by
/// [`DbHandle::close`] or on drop; dropping a store closes quietly, as before, and a close
/// that stopped on damage leaves the file to be repaired at the next open.
///
/// Once a call on the database has halted its thread, the database is never closed nor
/// dropped: redb would wait for the halted transaction, or close on its behalf while it
/// holds the database's state. It is kept until the process exits.
pub(crate) struct DbHandle {
    db: Option<Database>,
    halted: AtomicBool,
}

impl DbHandle {
    pub(crate) fn new(db: Database) -> Self {
        Self { db: Some(db), halted: AtomicBool::new(false) }
    }

    /// Records that a call on this database halted its thread: from now on the database is
    /// left alone.
    pub(crate) fn halt(&self) {
        self.halted.store(true, Ordering::Release);
    }

    /// Closes the database, reporting a contained panic as damage.
    pub(crate) fn close(mut self) -> Result<(), CommitError> {
        self.close_isolated()
    }

    fn close_isolated(&mut self) -> Result<(), CommitError> {
        let Some(db) = self.db.take() else { return Ok(()) };
        if self.halted.load(Ordering::Acquire) {
            std::mem::forget(db);
            return Err(CommitError::Corrupted {
                what: "close".into(),
                reason: "an earlier commit stopped on damage and halted the storage engine's thread: \
                         the database stays open until the process exits"
                    .into(),
            });
        }
        match isolate::run("driftless-close", move || db.close()) {
            Ok(closed) => closed.map_err(|e| CommitError::Storage(StorageFailure::new(e))),
            Err(stopped) => {
                if matches!(stopped, Stopped::Halted(_)) {
                    self.halt();
                }
                let reason = stopped.to_string();
                tracing::error!(%reason, "the storage engine panicked while closing a damaged database");
                Err(CommitError::Corrupted { what: "close".into(), reason })
            }
        }
    }
}

impl Drop for DbHandle {
    fn drop(&mut self) {
        let _ = self.close_isolated();
    }
}

impl std::ops::Deref for DbHandle {
    type Target = Database;

    #[expect(clippy::expect_used, reason = "the database is taken only by close and drop, which consume it")]
    fn deref(&self) -> &Database {
        self.db.as_ref().expect("the database is open until the store is closed")
    }
}

impl std::ops::DerefMut for DbHandle {
    #[expect(clippy::expect_used, reason = "the database is taken only by close and drop, which consume it")]
    fn deref_mut(&mut self) -> &mut Database {
        self.db.as_mut().expect("the database is open until the store is closed")
    }
}
