//! Errors of the engine facade.

use driftless_storage::{CommitError, OpenError, ReadError, RegisterError};

/// Why an engine could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The projectors or views could not be registered.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// A setting is out of range.
    #[error("the setting {setting} is invalid: {reason}")]
    InvalidSetting {
        /// The setting.
        setting: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// A read model changed its schema and there is no journal to rebuild it from.
    #[error(
        "the read models of {handler} changed their schema and there is no journal to rebuild them from"
    )]
    CannotRebuild {
        /// The handler.
        handler: String,
    },
    /// The registered upcasters do not fit together (see `Upcasters::check`).
    #[error("the upcasters are inconsistent: {0}")]
    Upcasters(#[source] driftless_domain::UpcastError),
    /// The event type reads itself in a way bincode cannot (through `deserialize_any`:
    /// untagged or internally tagged enums, `#[serde(flatten)]`, ...), so no event of it could
    /// be read back from the journal.
    #[error(
        "the event type {type_name} cannot be read back from its encoding: {path} needs a \
         self-describing format (untagged or internally tagged enums and #[serde(flatten)] do); \
         see the serde shapes driftless supports"
    )]
    UnreadableEventType {
        /// The event type.
        type_name: &'static str,
        /// Where in it.
        path: String,
    },
    /// A stored event cannot be read as a current one: its schema version has no upcaster,
    /// is newer than the event type's, or it does not decode. Nothing was written.
    #[error("{what} cannot be read as current events: {source}")]
    UnreadableEvents {
        /// Which stored events.
        what: String,
        /// Why, and what to register.
        #[source]
        source: driftless_domain::UpcastError,
    },
    /// Checking the stored events failed in storage.
    #[error("checking the stored events failed: {0}")]
    Storage(#[source] CommitError),
    /// A background thread could not be started.
    #[error("the thread {name} could not be started: {source}")]
    Thread {
        /// The thread's name.
        name: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// The error of a failed check of the stored events.
    pub(crate) fn from_check(e: CommitError) -> Self {
        match e {
            CommitError::Unreadable { what, source } => Self::UnreadableEvents { what, source },
            other => Self::Storage(other),
        }
    }
}

/// Why an event was not accepted for projection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchError {
    /// The queue is full and the engine is configured to fail rather than wait.
    #[error("the dispatch queue is full ({capacity} pending); try again later")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The engine is shutting down or stopped.
    #[error("the engine is shut down and accepts no more events")]
    ShutDown,
    /// The engine is poisoned by an earlier storage failure.
    #[error("the engine refuses events because an earlier commit failed ({0}); reopen it")]
    Poisoned(String),
    /// The event could not be encoded.
    #[error("the event could not be encoded: {0}")]
    Encode(#[from] driftless_domain::CodecError),
    /// The event is too large to store.
    #[error(
        "the event is too large to store: {size} bytes (its encoding, aggregate id and event id), \
         more than the {limit} allowed (EngineOptions::max_event_bytes)"
    )]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// Why [`crate::Engine::dispatch_batch`] did not queue the whole batch.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct DispatchBatchError {
    /// Why the first event not queued was refused.
    #[source]
    pub error: DispatchError,
    /// The receipt of the events before it that were queued (behind a mutex only so that
    /// the error can cross threads as `Send + Sync`).
    queued: std::sync::Mutex<crate::BatchReceipt>,
}

impl DispatchBatchError {
    pub(crate) fn new(error: DispatchError, queued: crate::BatchReceipt) -> Self {
        Self { error, queued: std::sync::Mutex::new(queued) }
    }

    /// The receipt of the events before the refused one that were queued: they are
    /// committed all the same, and waiting on it tells how.
    pub fn into_queued(self) -> crate::BatchReceipt {
        self.queued.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why [`crate::Engine::dispatch_and_wait`] returned no report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DispatchWaitError {
    /// The event was not accepted; nothing of it is stored.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// The event was accepted but its commit is not known to have happened; delivering it
    /// again is safe.
    #[error(transparent)]
    NotCommitted(#[from] NotCommitted),
}

/// Why an accepted event's commit is not known to have happened.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NotCommitted {
    /// The commit failed. Nothing of the batch is committed, unless the failure was in the
    /// final sync: then the file may hold the batch or not, which the next open tells.
    /// Delivering the events again is safe either way.
    #[error("the batch holding the event failed to commit ({0}); deliver it again after reopening")]
    CommitFailed(String),
    /// The engine stopped before the event was committed.
    #[error("the engine stopped before the event was committed")]
    EngineStopped,
}

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// A write failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// A read failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// No projector has this name.
    #[error("no projector named {0} is registered")]
    UnknownHandler(String),
    /// No read model or view has this name.
    #[error("no read model named {0} is registered")]
    UnknownReadModel(String),
    /// The materialized view's refresh failed.
    #[error("refreshing the view {view} failed: {reason}")]
    Refresh {
        /// The view.
        view: String,
        /// Why.
        reason: String,
    },
    /// The engine is shut down or its writer stopped.
    #[error("the engine is shut down")]
    ShutDown,
    /// The engine is poisoned.
    #[error("the engine refuses writes because an earlier commit failed ({0}); reopen it")]
    Poisoned(String),
}
