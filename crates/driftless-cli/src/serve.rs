//! `driftless run` (the foreground service) and `driftless verify`.

use crate::config::RunConfig;
use crate::db::{self, CliPager};
use crate::error::CliError;
use crate::out::{count, Out};
use crate::reconcile::{report_row, report_table, run_once};
use driftless::reconcile::ReconcileMode;
use driftless::EngineOptions;
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the service looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// `driftless run`: opens the database (creating it if needed), refreshes the views every
/// `refresh` and runs the reconciliation schedule of the default policy (sampled daily at
/// 03:17 UTC, full on Sundays at 04:30 UTC), until SIGINT or SIGTERM; then stops the
/// scheduler (cancelling a run in progress), shuts the engine down and exits 0. A second
/// signal ends the process at once with status 1.
pub fn run(db_path: &Path, config: RunConfig, out: &mut Out) -> Result<(), CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let what = |e| CliError::io("could not install the signal handler", e);
        // The second signal exits at once; the first only sets the flag.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop)).map_err(what)?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(what)?;
    }
    let options = EngineOptions { view_refresh_interval: Some(config.refresh), ..EngineOptions::default() };
    let engine = db::open(db_path, options, None)?;
    let pager = Arc::new(CliPager::default());
    let harness = Arc::new(db::harness(&engine, pager)?);
    if let Err(e) = engine.refresh_views() {
        tracing::warn!(error = %e, "the views could not be refreshed at start");
    }
    let scheduler = Arc::clone(&harness).start_scheduler()?;
    let policy = harness.policy();
    out.line(format!(
        "driftless is serving {}: views refresh every {} s; reconciliation runs sampled {} and full {} (UTC); \
         Ctrl-C or SIGTERM stops it",
        db_path.display(),
        config.refresh.as_secs(),
        describe_cadence(&policy.sampled_cadence),
        describe_cadence(&policy.full_cadence),
    ))?;
    out.flush()?;
    tracing::info!(db = %db_path.display(), "serving");
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(STOP_POLL);
    }
    tracing::info!("stopping");
    scheduler.stop();
    drop(harness);
    engine.shutdown()?;
    out.line("driftless stopped cleanly")?;
    Ok(())
}

fn describe_cadence(c: &driftless::reconcile::Cadence) -> String {
    match c.weekday() {
        Some(day) => {
            let name = day.full_name();
            let mut chars = name.chars();
            let capital: String =
                chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default();
            format!("every {capital} at {:02}:{:02}", c.hour(), c.minute())
        }
        None => format!("daily at {:02}:{:02}", c.hour(), c.minute()),
    }
}

/// `driftless verify`: redb's integrity check, the checksum of every stored value, and a
/// full reconciliation of every read model. Exit status 0 only when all three are clean.
///
/// The integrity check is the one every open runs: a file that fails it is refused before
/// anything is read, with the open's error.
pub fn verify(db_path: &Path, json: bool, out: &mut Out) -> Result<(), CliError> {
    let engine = db::open_existing(db_path)?;
    let scan = engine.store().scan_values()?;
    let harness = db::harness(&engine, Arc::new(CliPager::default()))?;
    let spinner = crate::progress::spinner("reconciling every read model in full");
    let result = run_once(&harness, ReconcileMode::Full, None);
    spinner.finish_and_clear();
    let report = result?;
    drop(harness);
    engine.shutdown()?;

    let mut problems = Vec::new();
    if !scan.damaged.is_empty() {
        problems.push(format!("{} stored values fail their checksum", count(scan.damaged.len() as u64)));
    }
    for r in &report.read_models {
        if r.drifted > 0 || r.errors > 0 {
            problems.push(format!(
                "{} has {} drifted and {} unchecked keys",
                r.read_model,
                count(r.drifted),
                count(r.errors)
            ));
        }
    }
    let clean = problems.is_empty();
    if json {
        out.json(&json!({"check": "integrity", "clean": true}))?;
        out.json(&json!({
            "check": "values",
            "checked": scan.checked,
            "damaged": scan.damaged.iter().map(|(t, k, e)| json!({"table": t, "key": k, "error": e})).collect::<Vec<_>>(),
            "clean": scan.damaged.is_empty(),
        }))?;
        for r in &report.read_models {
            let mut row = crate::reconcile::report_json(r);
            row.check = Some("reconcile");
            row.clean = Some(r.drifted == 0 && r.errors == 0);
            out.json(&row)?;
        }
        out.json(&json!({"check": "all", "clean": clean}))?;
    } else {
        out.line("integrity: clean (every page checksum and the allocator state, checked at open)")?;
        out.line(format!(
            "values:    {} checked, {} damaged",
            count(scan.checked),
            count(scan.damaged.len() as u64)
        ))?;
        for (table, key, error) in scan.damaged.iter().take(10) {
            out.line(format!("  {table} {key}: {error}"))?;
        }
        out.line("reconciliation (full):")?;
        let mut table = report_table(&[], 2);
        for r in &report.read_models {
            table.row(report_row(r));
        }
        out.table(&table)?;
        out.line(if clean { "the database is clean" } else { "the database is NOT clean" })?;
    }
    if clean {
        Ok(())
    } else {
        out.flush()?;
        Err(CliError::Unclean(problems.join("; ")))
    }
}
