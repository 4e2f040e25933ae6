//! The CLI's errors and exit statuses.

use driftless::reconcile::{BuildError as HarnessBuildError, HarnessError};
use driftless::{BuildError, DispatchError, EngineError, NotCommitted, OpenError, ReadError};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status 1: the command failed, found nothing, or found the database unclean.
pub const EXIT_FAILED: u8 = 1;
/// Exit status 2: bad usage (clap uses it too).
pub const EXIT_USAGE: u8 = 2;
/// Exit status 3: the read model's kill switch is engaged; read the source of truth.
pub const EXIT_SWITCHED_OFF: u8 = 3;

/// Why a command did not succeed. Each displays as one sentence.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is valid for clap but not for the command.
    #[error("{0}")]
    Usage(String),
    /// The database file is missing and the command does not create one.
    #[error("the database {path} does not exist; create it with `driftless ingest FILE --db {path}` or `driftless demo --db {path}`", path = .0.display())]
    NoDatabase(PathBuf),
    /// The engine could not be opened.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The store could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// An engine operation failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Events could not be dispatched.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// Events were not committed.
    #[error(transparent)]
    NotCommitted(#[from] NotCommitted),
    /// A read failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A write failed.
    #[error(transparent)]
    Commit(#[from] driftless::CommitError),
    /// A stored value did not decode.
    #[error("a stored value is unreadable: {0}")]
    Codec(#[from] driftless::CodecError),
    /// The reconciliation harness could not be built.
    #[error(transparent)]
    HarnessBuild(#[from] HarnessBuildError),
    /// Reconciliation failed.
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// A file or stream could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The asked-for row does not exist.
    #[error("{read_model} has no row with the key {key:?}")]
    NotFound {
        /// The read model.
        read_model: String,
        /// The key.
        key: String,
    },
    /// The read model's kill switch is engaged.
    #[error("the read model {read_model} is switched off (its kill switch was engaged at {since}); answer from the source of truth instead, or release it with `driftless kill-switch {read_model} off`")]
    SwitchedOff {
        /// The read model.
        read_model: String,
        /// When it was engaged, as text.
        since: String,
    },
    /// `verify` found something wrong; the details were printed.
    #[error("the database is not clean: {0}")]
    Unclean(String),
    /// Anything else, as one sentence.
    #[error("{0}")]
    Failed(String),
    /// Standard output was closed by its reader: stop quietly.
    #[error("standard output was closed")]
    BrokenPipe,
}

impl CliError {
    /// The exit status for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::BrokenPipe => 0,
            Self::Usage(_) => EXIT_USAGE,
            Self::SwitchedOff { .. } => EXIT_SWITCHED_OFF,
            _ => EXIT_FAILED,
        })
    }

    /// Whether the database could not be opened because another process holds it.
    pub fn is_in_use(&self) -> bool {
        matches!(
            self,
            Self::Build(BuildError::Open(OpenError::InUse { .. })) | Self::Open(OpenError::InUse { .. })
        )
    }

    /// An I/O error while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { what: what.into(), source }
    }
}
