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
    /// The commit failed; nothing of the batch was written.
    #[error("the batch holding the event failed to commit: {0}")]
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
