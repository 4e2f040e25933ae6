//! The raw command line, as clap parses it. [`crate::config`] validates it.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// driftless: an embedded CQRS read-model engine, driven through its sample domain (a
/// property-listings marketplace).
#[derive(Debug, Parser)]
#[command(name = "driftless", version, propagate_version = true, max_term_width = 100)]
#[command(after_help = "Start with `driftless demo`. Exit status: 0 done, 1 failed (or not found, \
or not clean), 2 bad usage, 3 the read model is switched off (read the source of truth).")]
pub struct Cli {
    /// The database file.
    #[arg(long, global = true, value_name = "PATH", default_value = "./driftless.redb")]
    pub db: PathBuf,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--json`: one JSON object per line instead of words and tables.
#[derive(Debug, Clone, Copy, Args)]
pub struct JsonFlag {
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a marketplace stream, ingest it, show read models, freshness, drift,
    /// paging, promotion and demotion, and the metrics.
    Demo(DemoArgs),
    /// Ingest a JSON Lines file of listing events (`-` for standard input).
    Ingest(IngestArgs),
    /// Print the rows of a read model, or the row of one key.
    Query(QueryArgs),
    /// Re-check read models against a refold of the journal.
    Reconcile(ReconcileArgs),
    /// How fresh each read model is.
    Freshness(JsonFlag),
    /// The metrics of the database and of this process, in the Prometheus text format.
    Metrics,
    /// List, retry or discard dead letters (events the business rules rejected).
    #[command(name = "dead-letters")]
    DeadLetters(DeadLetterArgs),
    /// Rebuild a handler's read models from the journal.
    Rebuild(RebuildArgs),
    /// Engage, release or show a read model's kill switch.
    #[command(name = "kill-switch")]
    KillSwitch(KillSwitchArgs),
    /// Break things on purpose, to see drift detection work.
    Chaos(ChaosArgs),
    /// Serve in the foreground: scheduled reconciliation and view refreshes (and, with
    /// --listen, HTTP), until Ctrl-C or SIGTERM.
    Run(RunArgs),
    /// Check the file (redb integrity, value checksums) and reconcile every read model in
    /// full; exit status 0 only when all is clean.
    Verify(JsonFlag),
    /// Write the drift report: one self-contained, accessible HTML page.
    Report(ReportArgs),
}

/// `driftless report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The HTML file to write (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
}

/// `driftless demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Distinct events to generate (at least 100).
    #[arg(long, default_value_t = 50_000, value_name = "N")]
    pub events: usize,
    /// The generator's seed: the same seed gives the same stream.
    #[arg(long, default_value_t = 42, value_name = "S")]
    pub seed: u64,
}

/// `driftless ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The JSON Lines file, or `-` for standard input.
    #[arg(value_name = "FILE")]
    pub file: String,
    /// The most events in one commit (default: the engine's, 1000).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `driftless query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// listing_card, district_stats or district_leaderboard.
    #[arg(value_name = "READ_MODEL")]
    pub read_model: String,
    /// Print only the row of this key (a listing id, a district, a rank).
    #[arg(value_name = "KEY")]
    pub key: Option<String>,
    /// Print one JSON object per row.
    #[arg(long)]
    pub json: bool,
}

/// How much a reconciliation run checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// A seeded random sample: 1 % of the keys, at least 20.
    Sampled,
    /// Every key.
    Full,
}

/// `driftless reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Sampled or full.
    #[arg(long, value_enum, value_name = "MODE")]
    pub mode: ModeArg,
    /// Only this read model (listing_card or district_stats); default: both.
    #[arg(long = "read-model", value_name = "NAME")]
    pub read_model: Option<String>,
    /// Print one JSON object per read model.
    #[arg(long)]
    pub json: bool,
}

/// What `dead-letters` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DeadLetterAction {
    /// Show them.
    #[default]
    List,
    /// Deliver them again (each is tried against the current state).
    Retry,
    /// Drop them without applying them (needs --event-id).
    Discard,
}

/// `driftless dead-letters`.
#[derive(Debug, Args)]
pub struct DeadLetterArgs {
    /// list, retry or discard.
    #[arg(value_enum, default_value_t = DeadLetterAction::List, value_name = "ACTION")]
    pub action: DeadLetterAction,
    /// Only this handler's (listing_card or district_stats).
    #[arg(long, value_name = "H")]
    pub handler: Option<String>,
    /// Only this event's.
    #[arg(long = "event-id", value_name = "ID")]
    pub event_id: Option<String>,
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// `driftless rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// listing_card or district_stats.
    #[arg(value_name = "HANDLER")]
    pub handler: String,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What `kill-switch` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SwitchAction {
    /// Engage it: queries answer "read the source of truth".
    On,
    /// Release it.
    Off,
    /// Show it.
    Status,
}

/// `driftless kill-switch`.
#[derive(Debug, Args)]
pub struct KillSwitchArgs {
    /// listing_card, district_stats or district_leaderboard.
    #[arg(value_name = "READ_MODEL")]
    pub read_model: String,
    /// on, off or status.
    #[arg(value_enum, value_name = "ACTION")]
    pub action: SwitchAction,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `driftless chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// What to break.
    #[command(subcommand)]
    pub action: ChaosAction,
}

/// The kinds of chaos.
#[derive(Debug, Subcommand)]
pub enum ChaosAction {
    /// Change existing rows behind the projector's back (listing_card: price + 1;
    /// district_stats: inquiries + 7).
    Tamper(TamperArgs),
}

/// `driftless chaos tamper`.
#[derive(Debug, Args)]
pub struct TamperArgs {
    /// listing_card or district_stats.
    #[arg(long = "read-model", value_name = "NAME")]
    pub read_model: String,
    /// How many distinct rows to change.
    #[arg(long, value_name = "N")]
    pub rows: usize,
    /// Which rows (default: a random seed, printed so the same rows can be picked again).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Print one JSON object per changed row.
    #[arg(long)]
    pub json: bool,
}

/// `driftless run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Seconds between refreshes of the materialized views.
    #[arg(long = "refresh-secs", default_value_t = 60, value_name = "SECONDS")]
    pub refresh_secs: u64,
    /// Also serve HTTP on this address (e.g. 127.0.0.1:9184; port 0 picks one): metrics,
    /// health, freshness, rows, reconciliation and the drift report. Other `driftless`
    /// commands on this database then ask this process.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Allow a --listen address that is not loopback (the service has no authentication).
    #[arg(long = "allow-remote", requires = "listen")]
    pub allow_remote: bool,
}
