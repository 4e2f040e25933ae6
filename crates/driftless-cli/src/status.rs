//! `driftless freshness` and `driftless metrics`.

use crate::config::ReadModel;
use crate::db::{self, ListingEngine};
use crate::error::CliError;
use crate::out::{age, count, yes_no, Align, Out, Table};
use driftless::reconcile::PromotionState;
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

/// `driftless freshness`.
pub fn freshness(db_path: &Path, json: bool, out: &mut Out) -> Result<(), CliError> {
    let engine = db::open_existing(db_path)?;
    let rows = engine.freshness()?;
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

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// Sets gauges of the database's state on the installed recorder: the journal head, per
/// handler its applied events, dead letters and journal position, per read model its
/// freshness, catch-up, kill switch and promotion state, per table its entries.
pub fn record_state(engine: &ListingEngine) -> Result<(), CliError> {
    let store = engine.store();
    metrics::gauge!("driftless_journal_head").set(store.journal_head()? as f64);
    for (handler, rec) in store.handler_records()? {
        metrics::gauge!("driftless_handler_applied_events", "handler" => handler.clone())
            .set(rec.applied as f64);
        metrics::gauge!("driftless_handler_dead_letters", "handler" => handler.clone())
            .set(rec.dead_letters as f64);
        metrics::gauge!("driftless_handler_journal_position", "handler" => handler).set(rec.seen as f64);
    }
    for f in engine.freshness()? {
        let rm = f.read_model.clone();
        if let Some(s) = f.seconds {
            metrics::gauge!("driftless_read_model_freshness_seconds", "read_model" => rm.clone()).set(s);
        }
        if let Some(lag) = f.commit_lag_ms {
            metrics::gauge!("driftless_read_model_commit_lag_seconds", "read_model" => rm.clone())
                .set(lag as f64 / 1000.0);
        }
        metrics::gauge!("driftless_read_model_caught_up", "read_model" => rm.clone()).set(flag(f.caught_up));
        metrics::gauge!("driftless_read_model_switched_off", "read_model" => rm).set(flag(f.switched_off));
    }
    for rm in ReadModel::PROJECTED {
        let health = db::health(store, rm.name())?;
        for state in [PromotionState::Shadow, PromotionState::Promoted, PromotionState::Demoted] {
            metrics::gauge!(
                "driftless_read_model_promotion_state",
                "read_model" => rm.name(),
                "state" => state.as_str()
            )
            .set(flag(health.state == state));
        }
        metrics::gauge!("driftless_read_model_clean_streak", "read_model" => rm.name())
            .set(f64::from(health.consecutive_clean));
        metrics::gauge!("driftless_read_model_breach_streak", "read_model" => rm.name())
            .set(f64::from(health.consecutive_breaches));
    }
    for t in store.table_figures()? {
        metrics::gauge!("driftless_table_entries", "table" => t.table).set(t.entries as f64);
    }
    Ok(())
}

/// Describes the gauges of [`record_state`].
pub fn describe() {
    driftless::reconcile::describe_metrics();
    metrics::describe_counter!("driftless_events_total", "Events dispatched by this process, by outcome.");
    metrics::describe_counter!(
        "driftless_view_refreshes_total",
        "Materialized-view refreshes by this process."
    );
    metrics::describe_histogram!(
        "driftless_commit_seconds",
        metrics::Unit::Seconds,
        "Wall time of one commit's transaction, from its start to its sync: processing its events and, for the writer, taking the messages that arrive meanwhile."
    );
    metrics::describe_histogram!("driftless_batch_events", "Events in one commit.");
    metrics::describe_histogram!(
        "driftless_filing_seconds",
        metrics::Unit::Seconds,
        "Wall time of one filing of the journal by aggregate while the writer is idle."
    );
    metrics::describe_counter!(
        "driftless_cli_malformed_lines_total",
        "Malformed lines read by this process."
    );
    metrics::describe_counter!(
        "driftless_cli_tampered_rows_total",
        "Rows changed behind their projector's back by `chaos tamper`."
    );
    metrics::describe_gauge!("driftless_journal_head", "The last journal position handed out.");
    metrics::describe_gauge!("driftless_handler_applied_events", "Events a handler has applied.");
    metrics::describe_gauge!("driftless_handler_dead_letters", "Dead letters waiting, per handler.");
    metrics::describe_gauge!(
        "driftless_handler_journal_position",
        "The last journal position a handler processed."
    );
    metrics::describe_gauge!(
        "driftless_read_model_freshness_seconds",
        metrics::Unit::Seconds,
        "Since the newest applied event happened (views: since their refresh)."
    );
    metrics::describe_gauge!(
        "driftless_read_model_commit_lag_seconds",
        metrics::Unit::Seconds,
        "From the newest applied event happening to its commit."
    );
    metrics::describe_gauge!(
        "driftless_read_model_caught_up",
        "1 when the read model has processed the whole journal."
    );
    metrics::describe_gauge!(
        "driftless_read_model_switched_off",
        "1 while the read model's kill switch is engaged."
    );
    metrics::describe_gauge!(
        "driftless_read_model_promotion_state",
        "1 for the read model's current promotion state (shadow, promoted, demoted)."
    );
    metrics::describe_gauge!("driftless_read_model_clean_streak", "Clean reconciliation runs in a row.");
    metrics::describe_gauge!("driftless_read_model_breach_streak", "Breaching reconciliation runs in a row.");
    metrics::describe_gauge!("driftless_table_entries", "Rows of each table of the database file.");
}

/// `driftless metrics`.
pub fn metrics(db_path: &Path, handle: &PrometheusHandle, out: &mut Out) -> Result<(), CliError> {
    let engine = db::open_existing(db_path)?;
    record_state(&engine)?;
    for line in handle.render().lines() {
        out.line(line)?;
    }
    Ok(())
}
