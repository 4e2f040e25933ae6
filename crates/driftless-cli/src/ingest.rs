//! `driftless ingest`, and the ingestion loop the demo shares.

use crate::config::IngestConfig;
use crate::db;
use crate::error::CliError;
use crate::out::{self, count, Out};
use crate::progress;
use driftless::{BatchReceipt, EngineOptions, EventOutcome};
use driftless_listings::{parse_jsonl, JsonlError, ListingEvent, Summary};
use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Batches dispatched and not yet waited for: parsing the next batches overlaps the
/// commit of the earlier ones, while reports still come back in file order.
const MAX_IN_FLIGHT: usize = 4;

/// Something worth telling about one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The line is not a well-formed event.
    Malformed {
        /// Its 1-based number.
        line: u64,
        /// Why.
        reason: String,
    },
    /// Its event id was first delivered (applied or rejected) with another payload.
    Conflict {
        /// Its 1-based number.
        line: u64,
        /// The event id.
        event_id: String,
    },
    /// The business rules refused it; it is kept as a dead letter.
    Rejected {
        /// Its 1-based number.
        line: u64,
        /// The event id.
        event_id: String,
        /// Why.
        reason: String,
    },
}

impl Notice {
    /// The line's number.
    pub fn line(&self) -> u64 {
        match self {
            Self::Malformed { line, .. } | Self::Conflict { line, .. } | Self::Rejected { line, .. } => *line,
        }
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { line, reason } => write!(f, "line {line}: {reason}"),
            Self::Conflict { line, event_id } => write!(
                f,
                "line {line}: conflict: the event id {event_id} was first delivered with another payload; skipped"
            ),
            Self::Rejected { line, event_id, reason } => {
                write!(f, "line {line}: rejected: {reason} (event {event_id}, kept as a dead letter)")
            }
        }
    }
}

/// One line of a batch: an event (its report comes from the engine) or a malformed line.
enum Entry {
    Event,
    Malformed(String),
}

struct Pending {
    entries: Vec<(u64, Entry)>,
    receipt: Option<BatchReceipt>,
}

/// Feeds numbered, parsed lines through `engine` in batches of `batch` events, waiting in
/// order, and counts every line. `on_notice` hears of malformed, conflicting and rejected
/// lines in line order; `on_progress` hears how many lines are done.
///
/// The outcomes map to the contract's words: applied (a deferred event, which only a
/// pausing kill switch causes, counts as applied: it is journaled and projected on
/// release), duplicates, conflicts, rejected; a malformed line is never dispatched.
///
/// # Errors
/// A read error ends ingestion after everything read before it is committed; dispatch
/// and commit failures end it at once.
pub fn ingest_lines(
    engine: &db::ListingEngine,
    lines: impl Iterator<Item = (u64, Result<ListingEvent, JsonlError>)>,
    batch: usize,
    on_notice: &mut dyn FnMut(&Notice),
    on_progress: &mut dyn FnMut(u64),
) -> Result<Summary, CliError> {
    let mut summary = Summary::default();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut entries: Vec<(u64, Entry)> = Vec::new();
    let mut events: Vec<ListingEvent> = Vec::with_capacity(batch.min(65_536));
    let mut failure = None;
    for (line, result) in lines {
        match result {
            Ok(event) => {
                entries.push((line, Entry::Event));
                events.push(event);
            }
            Err(JsonlError::Malformed(m)) => entries.push((line, Entry::Malformed(m.to_string()))),
            Err(JsonlError::Io(e)) => {
                failure = Some(CliError::io(format!("reading the events failed at line {line}"), e));
                break;
            }
            Err(other) => entries.push((line, Entry::Malformed(other.to_string()))),
        }
        if events.len() >= batch {
            let receipt = engine.dispatch_batch(std::mem::take(&mut events)).map_err(|e| e.error)?;
            pending.push_back(Pending { entries: std::mem::take(&mut entries), receipt: Some(receipt) });
            while pending.len() > MAX_IN_FLIGHT {
                if let Some(p) = pending.pop_front() {
                    resolve(p, &mut summary, on_notice)?;
                    on_progress(summary.lines);
                }
            }
        }
    }
    if !entries.is_empty() {
        let receipt =
            if events.is_empty() { None } else { Some(engine.dispatch_batch(events).map_err(|e| e.error)?) };
        pending.push_back(Pending { entries, receipt });
    }
    while let Some(p) = pending.pop_front() {
        resolve(p, &mut summary, on_notice)?;
        on_progress(summary.lines);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

fn resolve(p: Pending, summary: &mut Summary, on_notice: &mut dyn FnMut(&Notice)) -> Result<(), CliError> {
    let reports = match p.receipt {
        Some(r) => r.wait()?,
        None => Vec::new(),
    };
    let mut reports = reports.into_iter();
    for (line, entry) in p.entries {
        bump(&mut summary.lines);
        match entry {
            Entry::Malformed(reason) => {
                bump(&mut summary.malformed);
                metrics::counter!("driftless_cli_malformed_lines_total").increment(1);
                on_notice(&Notice::Malformed { line, reason });
            }
            Entry::Event => {
                let report = reports.next().ok_or_else(|| {
                    CliError::Failed(format!("the engine returned no report for the event of line {line}"))
                })?;
                match report.outcome {
                    EventOutcome::Applied | EventOutcome::Deferred => bump(&mut summary.applied),
                    EventOutcome::Duplicate => bump(&mut summary.duplicates),
                    EventOutcome::Conflict { .. } => {
                        bump(&mut summary.conflicts);
                        on_notice(&Notice::Conflict { line, event_id: report.event_id.as_str().to_string() });
                    }
                    EventOutcome::Rejected { reason } => {
                        bump(&mut summary.rejected);
                        on_notice(&Notice::Rejected {
                            line,
                            event_id: report.event_id.as_str().to_string(),
                            reason,
                        });
                    }
                    // Not accepted, nothing of it stored: for the contract's counts, the line
                    // is as good as malformed.
                    EventOutcome::Refused { reason } => {
                        bump(&mut summary.malformed);
                        on_notice(&Notice::Malformed { line, reason });
                    }
                }
            }
        }
    }
    Ok(())
}

/// The summary in words: `12 lines: 7 applied, 1 duplicate, 1 conflict, 2 rejected, 1 malformed`.
pub fn summary_words(s: &Summary) -> String {
    let plural = |n: u64, one: &str, many: &str| format!("{} {}", count(n), if n == 1 { one } else { many });
    format!(
        "{}: {} applied, {}, {}, {} rejected, {} malformed",
        plural(s.lines, "line", "lines"),
        count(s.applied),
        plural(s.duplicates, "duplicate", "duplicates"),
        plural(s.conflicts, "conflict", "conflicts"),
        count(s.rejected),
        count(s.malformed),
    )
}

/// `driftless ingest`.
pub fn run(db_path: &Path, config: &IngestConfig, out: &mut Out) -> Result<(), CliError> {
    // The input is opened first, so that a missing file creates no database.
    let (reader, bar, counts_lines): (Box<dyn BufRead>, _, bool) = match &config.file {
        Some(path) => {
            let what = || format!("cannot read the event file {}", path.display());
            let file = std::fs::File::open(path).map_err(|e| CliError::io(what(), e))?;
            let meta = file.metadata().map_err(|e| CliError::io(what(), e))?;
            if meta.is_dir() {
                return Err(CliError::Failed(format!(
                    "{} is a directory, not a JSON Lines file of events",
                    path.display()
                )));
            }
            let bar = progress::bytes(meta.len(), "ingesting");
            (Box::new(BufReader::with_capacity(1 << 16, bar.wrap_read(file))), bar, false)
        }
        None => {
            let bar = progress::line_spinner("ingesting standard input");
            (Box::new(BufReader::with_capacity(1 << 16, std::io::stdin().lock())), bar, true)
        }
    };
    let options = EngineOptions { max_batch_events: config.batch, ..EngineOptions::default() };
    let engine = db::open(db_path, options, None)?;
    let result = ingest_lines(
        &engine,
        parse_jsonl(reader),
        config.batch,
        &mut |notice| {
            bar.suspend(|| out::note(notice.to_string()));
        },
        &mut |done| {
            if counts_lines {
                bar.set_position(done);
            }
        },
    );
    bar.finish_and_clear();
    let summary = result?;
    if let Err(e) = engine.refresh_views() {
        tracing::warn!(error = %e, "the views could not be refreshed after ingesting");
    }
    engine.shutdown()?;
    if config.json {
        out.json(&summary)?;
    } else {
        out.line(summary_words(&summary))?;
    }
    Ok(())
}
