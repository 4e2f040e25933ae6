//! `driftless run` (the foreground service) and `driftless verify`.

use crate::config::{ReadModel, RunConfig};
use crate::db::{self, CliPager, ListingEngine};
use crate::error::CliError;
use crate::live::ServingRecord;
use crate::out::{count, Out};
use crate::reconcile::{report_row, report_table, run_once};
use driftless::reconcile::{ReconcileHarness, ReconcileMode, RunReport};
use driftless::EngineOptions;
use driftless_http::{DriftReport, ReportOptions, ServeOptions, Service};
use driftless_listings::{DISTRICT_LEADERBOARD, DISTRICT_STATS, LISTING_CARD};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::net::SocketAddr;
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
///
/// With `--listen ADDR` it also serves HTTP there ([`driftless_http`]: metrics, health,
/// freshness, the rows of the three read models, reconciliation and the drift report), and
/// records the address beside the database ([`crate::live`]) for the other commands.
pub fn run(
    db_path: &Path,
    config: RunConfig,
    metrics: Option<&PrometheusHandle>,
    out: &mut Out,
) -> Result<(), CliError> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let what = |e| CliError::io("could not install the signal handler", e);
        // The second signal exits at once; the first only sets the flag.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop)).map_err(what)?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(what)?;
    }
    let options = EngineOptions { view_refresh_interval: Some(config.refresh), ..EngineOptions::default() };
    let engine = Arc::new(db::open(db_path, options, None)?);
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
    let http = match config.listen {
        None => None,
        Some(address) => {
            let (service, record) =
                listen(db_path, &engine, &harness, address, config.allow_remote, metrics)?;
            out.line(format!(
                "serving HTTP on http://{0}: /metrics, /health, /freshness, /read-models/NAME[/KEY], /report",
                service.local_addr()
            ))?;
            out.flush()?;
            Some((service, record))
        }
    };
    tracing::info!(db = %db_path.display(), "serving");
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(STOP_POLL);
    }
    tracing::info!("stopping");
    if let Some((service, record)) = http {
        drop(record);
        service.stop();
    }
    scheduler.stop();
    drop(harness);
    let engine = Arc::try_unwrap(engine)
        .map_err(|_| CliError::Failed("the engine is still in use as the service stops".into()))?;
    engine.shutdown()?;
    out.line("driftless stopped cleanly")?;
    Ok(())
}

/// Starts the HTTP service of `engine` on `address` and records it beside the database.
fn listen(
    db_path: &Path,
    engine: &Arc<ListingEngine>,
    harness: &Arc<ReconcileHarness>,
    address: SocketAddr,
    allow_remote: bool,
    metrics: Option<&PrometheusHandle>,
) -> Result<(Service, ServingRecord), CliError> {
    let mut options = ServeOptions::new()
        .address(address)
        .allow_remote(allow_remote)
        .read_model(&LISTING_CARD)
        .read_model(&DISTRICT_STATS)
        .read_model(&DISTRICT_LEADERBOARD)
        .reconciliation(Arc::clone(harness))
        .report(ReportOptions::default().read_models(ReadModel::PROJECTED.map(ReadModel::name)));
    options = match metrics {
        Some(handle) => options.metrics(handle.clone()),
        None => options.without_metrics(),
    };
    let service = driftless_http::serve(engine, options).map_err(|e| CliError::Failed(e.to_string()))?;
    let record = ServingRecord::write(db_path, service.local_addr())?;
    Ok((service, record))
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
/// anything is read, with the open's error. While another process serves the database
/// (`run --listen`), the file cannot be read here: the reconciliation runs in that
/// process, and the integrity and checksum checks are reported as not done.
pub fn verify(db_path: &Path, json: bool, out: &mut Out) -> Result<(), CliError> {
    let (scan, report, live) = match db::open_or_live(db_path)? {
        db::Source::Local(engine) => {
            let scan = engine.store().scan_values()?;
            let harness = db::harness(&engine, Arc::new(CliPager::default()))?;
            let spinner = crate::progress::spinner("reconciling every read model in full");
            let result = run_once(&harness, ReconcileMode::Full, None);
            spinner.finish_and_clear();
            let report = result?;
            drop(harness);
            engine.shutdown()?;
            (Some(scan), report, None)
        }
        db::Source::Live(live) => {
            let spinner =
                crate::progress::spinner("reconciling every read model in full, in the serving process");
            let result = live.reconcile(ReconcileMode::Full, None);
            spinner.finish_and_clear();
            (None, result?, Some(live))
        }
    };
    let mut problems = Vec::new();
    if let Some(scan) = &scan {
        if !scan.damaged.is_empty() {
            problems.push(format!("{} stored values fail their checksum", count(scan.damaged.len() as u64)));
        }
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
    let not_checked = live.as_ref().map(|l| {
        format!("not checked: the file is held by {}; stop it and run verify again to check it", l.who())
    });
    if json {
        print_verify_json(scan.as_ref(), &report, not_checked.as_deref(), clean, out)?;
    } else {
        match (&scan, &not_checked) {
            (Some(scan), _) => {
                out.line("integrity: clean (every page checksum and the allocator state, checked at open)")?;
                out.line(format!(
                    "values:    {} checked, {} damaged",
                    count(scan.checked),
                    count(scan.damaged.len() as u64)
                ))?;
                for (table, key, error) in scan.damaged.iter().take(10) {
                    out.line(format!("  {table} {key}: {error}"))?;
                }
            }
            (None, why) => {
                let why = why.as_deref().unwrap_or("not checked");
                out.line(format!("integrity: {why}"))?;
                out.line(format!("values:    {why}"))?;
            }
        }
        match &live {
            Some(l) => out.line(format!("reconciliation (full), run by {}:", l.who()))?,
            None => out.line("reconciliation (full):")?,
        }
        let mut table = report_table(&[], 2);
        for r in &report.read_models {
            table.row(report_row(r));
        }
        out.table(&table)?;
        out.line(match (clean, live.is_some()) {
            (true, false) => "the database is clean",
            (true, true) => "the read models are clean; the file itself was not checked",
            (false, _) => "the database is NOT clean",
        })?;
    }
    if clean {
        Ok(())
    } else {
        out.flush()?;
        Err(CliError::Unclean(problems.join("; ")))
    }
}

/// `verify --json`: one object per check, then `{"check": "all", "clean", "complete"}`;
/// a check not done says `"clean": null` and why in `"not_checked"`.
fn print_verify_json(
    scan: Option<&driftless_storage::ValueScan>,
    report: &RunReport,
    not_checked: Option<&str>,
    clean: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    match scan {
        Some(scan) => {
            out.json(&json!({"check": "integrity", "clean": true}))?;
            out.json(&json!({
                "check": "values",
                "checked": scan.checked,
                "damaged": scan.damaged.iter().map(|(t, k, e)| json!({"table": t, "key": k, "error": e})).collect::<Vec<_>>(),
                "clean": scan.damaged.is_empty(),
            }))?;
        }
        None => {
            for check in ["integrity", "values"] {
                out.json(&json!({"check": check, "clean": null, "not_checked": not_checked}))?;
            }
        }
    }
    for r in &report.read_models {
        let mut row = crate::reconcile::report_json(r);
        row.check = Some("reconcile");
        row.clean = Some(r.drifted == 0 && r.errors == 0);
        out.json(&row)?;
    }
    out.json(&json!({"check": "all", "clean": clean, "complete": scan.is_some()}))
}

/// `driftless report --html FILE`: the drift report of the database, or of the process
/// serving it, as one self-contained HTML page (`-`: standard output).
pub fn report(db_path: &Path, file: &Path, out: &mut Out) -> Result<(), CliError> {
    let html = match db::open_or_live(db_path)? {
        db::Source::Local(engine) => {
            let options = ReportOptions::default().read_models(ReadModel::PROJECTED.map(ReadModel::name));
            let html = DriftReport::collect(&engine, &options)?.to_html();
            engine.shutdown()?;
            html
        }
        db::Source::Live(live) => live.report()?,
    };
    if file.as_os_str() == "-" {
        return out.line(html.trim_end());
    }
    std::fs::write(file, html).map_err(|e| CliError::io(format!("could not write {}", file.display()), e))?;
    out.line(format!("wrote the drift report to {}", file.display()))
}
