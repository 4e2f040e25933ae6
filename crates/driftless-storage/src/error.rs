//! One error type per storage operation.

use driftless_domain::{CodecError, HandlerName, NameError};
use std::any::Any;
use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// A failure of the underlying database engine or file system, kept opaque so that no
/// crate above storage depends on redb's types.
#[derive(Debug)]
pub struct StorageFailure(Box<dyn std::error::Error + Send + Sync>);

impl StorageFailure {
    pub(crate) fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }

    /// The failure as text.
    #[must_use]
    pub fn message(&self) -> String {
        self.0.to_string()
    }
}

impl std::fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StorageFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

macro_rules! storage_from {
    ($target:ty, $($src:ty),*) => {
        $(impl From<$src> for $target {
            fn from(e: $src) -> Self { Self::Storage(StorageFailure::new(e)) }
        })*
    };
}

/// Why a database could not be opened or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Another process (or another handle in this one) has the database open.
    #[error("the database {path} is in use by another process")]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The file exists but is not a driftless database.
    #[error("{path} is not a driftless database: {reason}")]
    NotDriftless {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The file was written in an older format, which only an upgrade reads (opening it
    /// with an engine, or `StoreWriter::open_upgrading`, upgrades it in place).
    #[error(
        "{path} has format version {found}, older than the {supported} this build writes; open it \
         with the engine (or `StoreWriter::open_upgrading`), which upgrades it in place"
    )]
    UpgradeRequired {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The version this build writes.
        supported: u32,
    },
    /// Upgrading the file from an older format failed: nothing of the upgrade was written,
    /// and the file is as it was.
    #[error("{path} could not be upgraded from format version {from}: {reason}")]
    UpgradeFailed {
        /// The file.
        path: PathBuf,
        /// Its version.
        from: u32,
        /// Why.
        reason: String,
    },
    /// The file was written by a newer driftless.
    #[error("{path} has format version {found}, newer than the {supported} this build reads")]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// The file is damaged.
    #[error("the database {path} is damaged: {reason}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// What was found.
        reason: String,
    },
    /// The file system refused.
    #[error("could not open {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The storage engine failed.
    #[error("the storage engine failed while opening the database: {0}")]
    Storage(#[source] StorageFailure),
}

storage_from!(OpenError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// Why projectors could not be registered with a database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// Two projectors have the same handler name.
    #[error("two projectors are named {0}; handler names must be unique")]
    DuplicateHandler(HandlerName),
    /// Two projectors, or a projector and a view, declare the same table.
    #[error("the table {table} is declared by both {first} and {second}; a table has one owner")]
    TableOwnedTwice {
        /// The table.
        table: String,
        /// The first owner.
        first: String,
        /// The second owner.
        second: String,
    },
    /// A table name is not allowed.
    #[error("the table name {name:?} is not allowed: {source}")]
    InvalidTable {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: NameError,
    },
    /// The database is poisoned.
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
    /// A stored record did not decode.
    #[error("a stored handler or table record is unreadable: {0}")]
    Codec(#[from] CodecError),
    /// The storage engine failed.
    #[error("the storage engine failed while registering projectors: {0}")]
    Storage(#[source] StorageFailure),
    /// The file is damaged: the storage engine stopped (panicked, contained) on an
    /// inconsistency while registering. The database is now poisoned.
    #[error("the database is damaged: {what} stopped on an inconsistency in the file: {reason}")]
    Corrupted {
        /// The operation.
        what: String,
        /// What the storage engine said.
        reason: String,
    },
}

storage_from!(RegisterError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// The database refuses writes after an earlier commit or sync failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the database refuses writes because an earlier commit failed ({first_failure}); reopen it")]
pub struct Poisoned {
    /// The failure that poisoned it.
    pub first_failure: String,
}

/// Why a write transaction (a projection commit, a rebuild, a view refresh, a metadata
/// update) failed. Nothing of it was committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// The database is poisoned by an earlier failure.
    #[error(transparent)]
    Poisoned(#[from] Poisoned),
    /// A stored record did not decode (the file is damaged), or a record could not be
    /// encoded.
    #[error("a record could not be read or written: {0}")]
    Codec(#[from] CodecError),
    /// A stored event cannot be read as a current one: its schema version has no upcaster,
    /// or it does not decode. Nothing was written; register the upcaster named and retry.
    #[error("{what} cannot be read as a current event: {source}")]
    Unreadable {
        /// Which stored event.
        what: String,
        /// Why.
        #[source]
        source: driftless_domain::UpcastError,
    },
    /// The handler is not registered.
    #[error("no projector named {0} is registered")]
    UnknownHandler(String),
    /// The read model is not registered.
    #[error("no read model named {0} is registered")]
    UnknownReadModel(String),
    /// The journal is needed but this database keeps none.
    #[error("this needs the journal, and the engine was opened without one")]
    NoJournal,
    /// Reading state before the write failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The storage engine failed; the database is now poisoned.
    #[error("the storage engine failed during a commit: {0}")]
    Storage(#[source] StorageFailure),
    /// The file is damaged: the storage engine stopped (panicked, contained) on an
    /// inconsistency during the write. The database is now poisoned.
    #[error("the database is damaged: {what} stopped on an inconsistency in the file: {reason}")]
    Corrupted {
        /// The operation.
        what: String,
        /// What the storage engine said.
        reason: String,
    },
}

storage_from!(CommitError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

impl CommitError {
    /// Whether the failure is the storage's (I/O, sync, damage), which latches the store
    /// as poisoned; a failure of the request itself (an unknown handler, an unreadable
    /// event, no journal) does not.
    #[must_use]
    pub fn is_storage_failure(&self) -> bool {
        match self {
            Self::Poisoned(_) | Self::Codec(_) | Self::Storage(_) | Self::Corrupted { .. } => true,
            Self::Read(e) => e.is_storage_failure(),
            Self::Unreadable { .. }
            | Self::UnknownHandler(_)
            | Self::UnknownReadModel(_)
            | Self::NoJournal => false,
        }
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A stored value failed its checksum or did not decode.
    #[error("a row of {table} is unreadable: {source}")]
    Codec {
        /// The table.
        table: String,
        /// What the codec said.
        #[source]
        source: CodecError,
    },
    /// A stored key did not decode.
    #[error("a key of {table} is unreadable: {source}")]
    Key {
        /// The table.
        table: String,
        /// What the key decoder said.
        #[source]
        source: driftless_domain::KeyDecodeError,
    },
    /// The table was stored with another key or row type; it needs a rebuild.
    #[error("the read model {table} was written with another row type; rebuild it")]
    SchemaChanged {
        /// The table.
        table: String,
    },
    /// The read model is not registered.
    #[error("no read model named {0} exists in this database")]
    UnknownReadModel(String),
    /// The storage engine failed.
    #[error("the storage engine failed during a read: {0}")]
    Storage(#[source] StorageFailure),
    /// The file is damaged: the storage engine stopped (panicked, contained) on an
    /// inconsistency during the read.
    #[error("the database is damaged: {what} stopped on an inconsistency in the file: {reason}")]
    Corrupted {
        /// The operation.
        what: String,
        /// What the storage engine said.
        reason: String,
    },
}

storage_from!(ReadError, redb::TransactionError, redb::TableError, redb::StorageError);

impl ReadError {
    /// Whether the failure is the storage's (I/O, damage) rather than the request's.
    #[must_use]
    pub fn is_storage_failure(&self) -> bool {
        !matches!(self, Self::SchemaChanged { .. } | Self::UnknownReadModel(_))
    }
}

impl From<CodecError> for ReadError {
    fn from(source: CodecError) -> Self {
        Self::Codec { table: "driftless metadata".into(), source }
    }
}

/// A panic of the storage engine, contained by [`contain`]: redb panics (instead of
/// returning an error) on some inconsistencies of a damaged file, in ordinary reads and
/// writes as well as at open.
#[derive(Debug)]
pub(crate) struct Contained {
    pub(crate) what: &'static str,
    pub(crate) reason: String,
}

impl From<Contained> for ReadError {
    fn from(c: Contained) -> Self {
        Self::Corrupted { what: c.what.to_string(), reason: c.reason }
    }
}

impl From<Contained> for CommitError {
    fn from(c: Contained) -> Self {
        Self::Corrupted { what: c.what.to_string(), reason: c.reason }
    }
}

impl From<Contained> for RegisterError {
    fn from(c: Contained) -> Self {
        Self::Corrupted { what: c.what.to_string(), reason: c.reason }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    driftless_domain::panic_text(payload)
        .unwrap_or_else(|| "the storage engine stopped on an inconsistency".to_string())
}

/// A panic of the caller's own code (a callback) inside a contained region: re-raised as it
/// was, never taken for damage.
struct CallerPanic(Box<dyn Any + Send>);

thread_local! {
    /// How many [`contain`] regions this thread is in.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Runs the caller's callback inside a contained region: a panic in it propagates to the
/// caller unchanged instead of being reported as damage.
pub(crate) fn caller<T>(f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => resume_unwind(Box::new(CallerPanic(payload))),
    }
}

/// Runs `f`, turning a panic of the storage engine into [`Contained`] (after calling
/// `on_panic` with its text, e.g. to poison the store). A panic of a callback run through
/// [`caller`] is re-raised.
pub(crate) fn contain<T, E: From<Contained>>(
    what: &'static str,
    on_panic: impl FnOnce(&str),
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    DEPTH.with(|d| d.set(d.get().saturating_add(1)));
    let result = catch_unwind(AssertUnwindSafe(f));
    let depth = DEPTH.with(|d| {
        d.set(d.get().saturating_sub(1));
        d.get()
    });
    match result {
        Ok(r) => r,
        Err(payload) => match payload.downcast::<CallerPanic>() {
            // Still inside an outer region: keep the mark for it.
            Ok(mark) if depth > 0 => resume_unwind(mark),
            Ok(mark) => resume_unwind(mark.0),
            Err(payload) => {
                let reason = panic_message(&*payload);
                tracing::error!(operation = what, %reason, "the storage engine panicked on a damaged file");
                on_panic(&reason);
                Err(Contained { what, reason }.into())
            }
        },
    }
}

/// [`contain`] for reads, which change nothing and poison nothing.
pub(crate) fn contain_read<T>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, ReadError>,
) -> Result<T, ReadError> {
    contain(what, |_| {}, f)
}
