//! One error type per storage operation.

use driftless_domain::{CodecError, HandlerName, NameError};
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
    /// A stored record did not decode.
    #[error("a stored record is unreadable: {0}")]
    Codec(#[from] CodecError),
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
}

storage_from!(CommitError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

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
}

storage_from!(ReadError, redb::TransactionError, redb::TableError, redb::StorageError);

impl From<CodecError> for ReadError {
    fn from(source: CodecError) -> Self {
        Self::Codec { table: "driftless metadata".into(), source }
    }
}
