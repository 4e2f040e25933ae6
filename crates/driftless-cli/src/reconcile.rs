//! `driftless reconcile`, and the report rows the demo and `verify` share.

use crate::args::ModeArg;
use crate::config::ReadModel;
use crate::db::{self, CliPager};
use crate::error::CliError;
use crate::out::{count, yes_no, Align, Out, Table};
use driftless::reconcile::{ReadModelReport, ReconcileHarness, ReconcileMode, RunReport};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

impl From<ModeArg> for ReconcileMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Sampled => Self::Sampled,
            ModeArg::Full => Self::Full,
        }
    }
}

/// One read model's report as a JSON line: `read_model`, `mode`, `sampled`, `drifted`,
/// `errors`, `drift_ratio`, `breach`, `state`, then the details (`verdict`, `transition`,
/// `paged`, `drifted_keys`, `duration_ms`).
#[derive(Debug, Serialize)]
pub struct ReportLine<'a> {
    /// Set by `verify`: `"reconcile"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<&'static str>,
    read_model: &'a str,
    mode: &'static str,
    sampled: u64,
    drifted: u64,
    errors: u64,
    drift_ratio: f64,
    breach: bool,
    state: &'static str,
    verdict: &'static str,
    transition: Option<String>,
    paged: bool,
    drifted_keys: Vec<&'a str>,
    duration_ms: u64,
    /// Set by `verify`: whether nothing drifted and every key was checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clean: Option<bool>,
}

/// The [`ReportLine`] of `r`.
pub fn report_json(r: &ReadModelReport) -> ReportLine<'_> {
    ReportLine {
        check: None,
        read_model: &r.read_model,
        mode: r.mode.as_str(),
        sampled: r.sampled,
        drifted: r.drifted,
        errors: r.errors,
        drift_ratio: r.drift_ratio,
        breach: r.breach,
        state: r.state.as_str(),
        verdict: r.verdict.as_str(),
        transition: r.transition.map(|t| format!("{} -> {}", t.from, t.to)),
        paged: r.paged,
        drifted_keys: r.drifted_keys.iter().map(|d| d.key.as_str()).collect(),
        duration_ms: r.duration_ms,
        clean: None,
    }
}

/// The columns of [`report_row`], after `first` leading columns.
pub fn report_table(first: &[(&str, Align)], indent: usize) -> Table {
    let mut columns: Vec<(&str, Align)> = first.to_vec();
    columns.extend([
        ("read model", Align::Left),
        ("mode", Align::Left),
        ("checked", Align::Right),
        ("drifted", Align::Right),
        ("errors", Align::Right),
        ("drift", Align::Right),
        ("breach", Align::Left),
        ("state", Align::Left),
        ("change", Align::Left),
    ]);
    Table::new(&columns).indent(indent)
}

/// One read model's report as table cells.
pub fn report_row(r: &ReadModelReport) -> Vec<String> {
    vec![
        r.read_model.clone(),
        r.mode.to_string(),
        count(r.sampled),
        count(r.drifted),
        count(r.errors),
        format!("{:.3} %", r.drift_ratio * 100.0),
        yes_no(r.breach),
        r.state.to_string(),
        r.transition.map(|t| format!("{} -> {}", t.from, t.to)).unwrap_or_default(),
    ]
}

/// Runs once and refuses a skipped run.
pub fn run_once(
    harness: &ReconcileHarness,
    mode: ReconcileMode,
    read_model: Option<&str>,
) -> Result<RunReport, CliError> {
    let report = harness.run_once(mode, read_model, None)?;
    if let Some(skip) = &report.skipped {
        return Err(CliError::Failed(format!("the reconciliation did not run: {skip}")));
    }
    Ok(report)
}

/// `driftless reconcile`.
pub fn run(
    db_path: &Path,
    mode: ModeArg,
    read_model: Option<&str>,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let read_model = read_model
        .map(|name| ReadModel::parse(name, &ReadModel::PROJECTED, "the read model").map(ReadModel::name))
        .transpose()?;
    let spinner = crate::progress::spinner("reconciling");
    let result = match db::open_or_live(db_path)? {
        db::Source::Local(engine) => {
            let harness = db::harness(&engine, Arc::new(CliPager::default()))?;
            run_once(&harness, mode.into(), read_model)
        }
        db::Source::Live(live) => live.reconcile(mode.into(), read_model),
    };
    spinner.finish_and_clear();
    print_report(&result?, json, out)
}

/// Prints a run's report: one JSON line or one table row per read model, then the drifted
/// and unchecked keys.
fn print_report(report: &RunReport, json: bool, out: &mut Out) -> Result<(), CliError> {
    if json {
        for r in &report.read_models {
            out.json(&report_json(r))?;
        }
        return Ok(());
    }
    let mut table = report_table(&[], 0);
    for r in &report.read_models {
        table.row(report_row(r));
    }
    out.table(&table)?;
    for r in &report.read_models {
        if r.drifted_keys.is_empty() && r.failures.is_empty() {
            continue;
        }
        out.blank()?;
        out.line(format!("{}:", r.read_model))?;
        const SHOWN: usize = 10;
        for d in r.drifted_keys.iter().take(SHOWN) {
            out.line(format!("  drifted {}: {}", d.key, d.reason))?;
        }
        if r.drifted_keys.len() > SHOWN {
            out.line(format!("  ... and {} more drifted keys", count_len(r.drifted_keys.len() - SHOWN)))?;
        }
        for f in r.failures.iter().take(SHOWN) {
            out.line(format!(
                "  could not check {} ({}): {}",
                f.key.as_deref().unwrap_or("the key list"),
                f.kind,
                f.reason
            ))?;
        }
    }
    Ok(())
}

fn count_len(n: usize) -> String {
    crate::out::count_usize(n)
}
