//! `driftless freshness` and `driftless metrics`.

use crate::db::{self, ListingEngine};
use crate::error::CliError;
use crate::out::{age, count, yes_no, Align, Out, Table};
use driftless::Freshness;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use std::path::Path;

/// One read model's freshness as a JSON line: the fields of [`Freshness`], then `header`,
/// the value of an `X-Data-Freshness-Seconds` header (`null` while unknown or not caught
/// up).
#[derive(Debug, Serialize)]
pub struct FreshnessLine<'a> {
    #[serde(flatten)]
    freshness: &'a Freshness,
    header: Option<String>,
}

/// The [`FreshnessLine`] of `f`.
pub fn freshness_json(f: &Freshness) -> FreshnessLine<'_> {
    FreshnessLine { freshness: f, header: f.header_value() }
}

/// The freshness table.
pub fn freshness_table(rows: &[Freshness], indent: usize) -> Table {
    let mut table = Table::new(&[
        ("read model", Align::Left),
        ("owner", Align::Left),
        ("data age", Align::Right),
        ("commit lag", Align::Right),
        ("caught up", Align::Left),
        ("applied", Align::Right),
        ("dead letters", Align::Right),
        ("switched off", Align::Left),
        ("header", Align::Right),
    ])
    .indent(indent);
    for f in rows {
        table.row(vec![
            f.read_model.clone(),
            f.owner.clone(),
            f.seconds.map_or_else(|| "-".to_string(), age),
            f.commit_lag_ms.map_or_else(|| "-".to_string(), |ms| format!("{} ms", count(ms))),
            yes_no(f.caught_up),
            count(f.applied),
            count(f.dead_letters),
            yes_no(f.switched_off),
            f.header_value().unwrap_or_else(|| "-".to_string()),
        ]);
    }
    table
}

/// `driftless freshness`: of the database, or asked of the process serving it.
pub fn freshness(db_path: &Path, json: bool, out: &mut Out) -> Result<(), CliError> {
    let rows = match db::open_or_live(db_path)? {
        db::Source::Local(engine) => engine.freshness()?,
        db::Source::Live(live) => live.freshness()?,
    };
    if json {
        for f in &rows {
            out.json(&freshness_json(f))?;
        }
    } else {
        out.table(&freshness_table(&rows, 0))?;
        out.blank()?;
        out.line(
            "data age: since the newest applied event happened (for a view: since its refresh); \
             commit lag: from that event happening to its commit; header: X-Data-Freshness-Seconds",
        )?;
    }
    Ok(())
}

/// Sets gauges of the database's state on the installed recorder: the engine's state
/// gauges ([`driftless::Engine::record_gauges`]) and the entries of each table.
pub fn record_state(engine: &ListingEngine) -> Result<(), CliError> {
    engine.record_gauges()?;
    for t in engine.store().table_figures()? {
        metrics::gauge!(TABLE_ENTRIES, "table" => t.table).set(t.entries as f64);
    }
    Ok(())
}

/// The gauge of a table's entries.
const TABLE_ENTRIES: &str = "driftless_table_entries";

/// Describes the metrics of the engine, the reconciler and this process.
pub fn describe() {
    driftless_http::describe_metrics();
    metrics::describe_counter!(
        "driftless_cli_malformed_lines_total",
        "Malformed lines read by this process."
    );
    metrics::describe_counter!(
        "driftless_cli_tampered_rows_total",
        "Rows changed behind their projector's back by `chaos tamper`."
    );
    metrics::describe_gauge!(TABLE_ENTRIES, "Rows of each table of the database file.");
}

/// `driftless metrics`: of the database and this process, or of the process serving it.
pub fn metrics(db_path: &Path, handle: &PrometheusHandle, out: &mut Out) -> Result<(), CliError> {
    let text = match db::open_or_live(db_path)? {
        db::Source::Local(engine) => {
            record_state(&engine)?;
            handle.render()
        }
        db::Source::Live(live) => live.metrics()?,
    };
    for line in text.lines() {
        out.line(line)?;
    }
    Ok(())
}
