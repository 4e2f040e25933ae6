//! `driftless`: the command line of driftless, over its sample domain (a property-listings
//! marketplace).
//!
//! Every command takes `--db PATH` (default `./driftless.redb`); commands that print data
//! take `--json` (one JSON object per line). Errors are one sentence on standard error,
//! `driftless: ...`. Exit status: 0 done; 1 failed, not found, or (for `verify`) not
//! clean; 2 bad usage; 3 the read model's kill switch is engaged, so the answer must come
//! from the source of truth. Logs go to standard error at `warn` (`error` for `demo`,
//! whose breaches and demotions are on purpose); `RUST_LOG` changes that. Nothing is
//! coloured but clap's help on a terminal (which honours `NO_COLOR`), and progress bars
//! are drawn only when standard error is a terminal.
#![forbid(unsafe_code)]

mod args;
mod config;
mod db;
mod demo;
mod error;
mod ingest;
mod live;
mod ops;
mod out;
mod progress;
mod query;
mod reconcile;
mod serve;
mod status;

use args::{ChaosAction, Cli, Command};
use clap::Parser;
use error::CliError;
use metrics_exporter_prometheus::PrometheusHandle;
use out::Out;
use std::io::IsTerminal;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Demo(_)) { "error" } else { "warn" };
    init_logging(default_level);
    let metrics = install_metrics();
    let mut out = Out::new();
    let result = execute(&cli, metrics.as_ref(), &mut out).and_then(|()| out.flush());
    match result {
        Ok(()) | Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(e) => {
            if !matches!(out.flush(), Err(CliError::BrokenPipe)) {
                out::note(format!("driftless: {e}"));
            }
            e.exit_code()
        }
    }
}

/// Logs to standard error through `tracing`, at `default_level` unless `RUST_LOG` says
/// otherwise; ANSI colours only on a terminal without `NO_COLOR`.
fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = std::io::stderr().is_terminal() && !no_color;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Installs a Prometheus recorder as the global `metrics` recorder.
fn install_metrics() -> Option<PrometheusHandle> {
    // Durations are Prometheus histograms, which add up across instances.
    let recorder = driftless_http::prometheus_builder().build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            status::describe();
            Some(handle)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no metrics recorder could be installed");
            None
        }
    }
}

fn execute(cli: &Cli, metrics: Option<&PrometheusHandle>, out: &mut Out) -> Result<(), CliError> {
    let db = cli.db.as_path();
    if db.as_os_str().is_empty() {
        return Err(CliError::Usage("--db is empty; give the path of a database file".into()));
    }
    match &cli.command {
        Command::Demo(a) => demo::run(db, config::DemoConfig::from_args(a)?, metrics, out),
        Command::Ingest(a) => ingest::run(db, &config::IngestConfig::from_args(a)?, out),
        Command::Query(a) => query::run(db, &a.read_model, a.key.as_deref(), a.json, out),
        Command::Reconcile(a) => reconcile::run(db, a.mode, a.read_model.as_deref(), a.json, out),
        Command::Freshness(a) => status::freshness(db, a.json, out),
        Command::Metrics => match metrics {
            Some(handle) => status::metrics(db, handle, out),
            None => Err(CliError::Failed("no metrics recorder could be installed in this process".into())),
        },
        Command::DeadLetters(a) => {
            ops::dead_letters(db, a.action, a.handler.as_deref(), a.event_id.as_deref(), a.json, out)
        }
        Command::Rebuild(a) => ops::rebuild(db, &a.handler, a.json, out),
        Command::KillSwitch(a) => ops::kill_switch(db, &a.read_model, a.action, a.json, out),
        Command::Chaos(c) => match &c.action {
            ChaosAction::Tamper(a) => ops::chaos_tamper(db, &a.read_model, a.rows, a.seed, a.json, out),
        },
        Command::Run(a) => serve::run(db, config::RunConfig::from_args(a)?, metrics, out),
        Command::Verify(a) => serve::verify(db, a.json, out),
        Command::Report(a) => serve::report(db, &a.html, out),
    }
}
