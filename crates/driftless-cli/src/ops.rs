//! Operations: `dead-letters`, `rebuild`, `kill-switch`, `chaos tamper`.

use crate::args::{DeadLetterAction, SwitchAction};
use crate::config::{parse_handler, ReadModel};
use crate::db::{self, ListingEngine};
use crate::error::CliError;
use crate::out::{count, count_usize, utc, Align, Out, Table};
use driftless::codec;
use driftless::reconcile::PromotionState;
use driftless_listings::{DistrictStats, ListingCard, MAX_SAFE_INTEGER};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// One dead letter as a JSON line (times in Unix milliseconds).
#[derive(Debug, serde::Serialize)]
struct DeadLetterLine<'a> {
    handler: &'a str,
    event_id: &'a str,
    reason: &'a str,
    attempts: u32,
    first_failed_at: u64,
    last_failed_at: u64,
    position: u64,
}

/// `driftless dead-letters`.
pub fn dead_letters(
    db_path: &Path,
    action: DeadLetterAction,
    handler: Option<&str>,
    event_id: Option<&str>,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let handler = handler.map(|h| parse_handler(h).map(ReadModel::name)).transpose()?;
    if action == DeadLetterAction::Discard && event_id.is_none() {
        return Err(CliError::Usage(
            "discard needs --event-id: dead letters are discarded one event at a time".into(),
        ));
    }
    let engine = db::open_existing(db_path)?;
    let matching = |engine: &ListingEngine| -> Result<Vec<driftless::DeadLetter>, CliError> {
        Ok(engine
            .dead_letters(handler)?
            .into_iter()
            .filter(|d| event_id.is_none_or(|id| d.event_id == id))
            .collect())
    };
    match action {
        DeadLetterAction::List => {
            let letters = matching(&engine)?;
            if json {
                for d in &letters {
                    out.json(&DeadLetterLine {
                        handler: &d.handler,
                        event_id: &d.event_id,
                        reason: &d.reason,
                        attempts: d.attempts,
                        first_failed_at: d.first_failed_at.0,
                        last_failed_at: d.last_failed_at.0,
                        position: d.position,
                    })?;
                }
            } else if letters.is_empty() {
                out.line("no dead letters")?;
            } else {
                let mut table = Table::new(&[
                    ("handler", Align::Left),
                    ("event id", Align::Left),
                    ("attempts", Align::Right),
                    ("last failed", Align::Left),
                    ("reason", Align::Left),
                ]);
                for d in &letters {
                    table.row(vec![
                        d.handler.clone(),
                        d.event_id.clone(),
                        d.attempts.to_string(),
                        utc(d.last_failed_at),
                        d.reason.clone(),
                    ]);
                }
                out.table(&table)?;
            }
        }
        DeadLetterAction::Retry => {
            let (retried, applied) = match event_id {
                None => engine.retry_dead_letters(handler)?,
                Some(id) => {
                    let letters = matching(&engine)?;
                    let Some(first) = letters.first() else {
                        return Err(CliError::Failed(format!("no dead letter has the event id {id:?}")));
                    };
                    // One retry delivers the event to every handler that has not applied it.
                    let report = engine.retry_dead_letter(&first.handler, id)?;
                    let applied =
                        report.is_some_and(|r| matches!(r.outcome, driftless::EventOutcome::Applied));
                    (1, usize::from(applied))
                }
            };
            let remaining = matching(&engine)?.len();
            if json {
                out.json(&json!({"retried": retried, "applied": applied, "remaining": remaining}))?;
            } else {
                out.line(format!(
                    "retried {} events: {} applied now, {} dead letters remain",
                    count_usize(retried),
                    count_usize(applied),
                    count_usize(remaining)
                ))?;
            }
        }
        DeadLetterAction::Discard => {
            let letters = matching(&engine)?;
            if letters.is_empty() {
                return Err(CliError::Failed(format!(
                    "no dead letter has the event id {:?}",
                    event_id.unwrap_or_default()
                )));
            }
            let mut discarded = 0usize;
            for d in &letters {
                if engine.discard_dead_letter(&d.handler, &d.event_id)? {
                    discarded += 1;
                }
            }
            if json {
                out.json(&json!({"discarded": discarded}))?;
            } else {
                out.line(format!("discarded {} dead letters", count_usize(discarded)))?;
            }
        }
    }
    Ok(())
}

/// What [`rebuild`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rebuilt {
    /// The handler.
    pub handler: String,
    /// Journal entries replayed.
    pub replayed: u64,
    /// Events applied.
    pub applied: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// The read model's promotion state afterwards.
    pub state: String,
    /// Read models whose kill switch, engaged by their demotion, was released.
    pub released_kill_switches: Vec<String>,
}

/// Rebuilds `handler`'s read models from the journal. A read model that was demoted (and
/// so had its kill switch engaged by the demotion) is back in shadow afterwards, and its
/// kill switch is released: it again holds exactly what the journal says. A kill switch
/// engaged by hand on a read model that was not demoted stays engaged.
pub fn rebuild_handler(engine: &ListingEngine, handler: ReadModel) -> Result<Rebuilt, CliError> {
    let store = engine.store();
    let demoted = db::health(store, handler.name())?.state == PromotionState::Demoted;
    let engaged = engine.kill_switch(handler.name())?.is_some();
    let report = engine.rebuild(handler.name())?;
    let mut released = Vec::new();
    if demoted && engaged {
        // The engine's rebuild releases a switch that its demotion engaged; one engaged
        // otherwise while the read model was demoted is released here.
        if engine.kill_switch(handler.name())?.is_some() {
            engine.set_kill_switch(handler.name(), false)?;
        }
        released.push(handler.name().to_string());
    }
    Ok(Rebuilt {
        handler: handler.name().to_string(),
        replayed: report.replayed,
        applied: report.applied,
        dead_lettered: report.dead_lettered,
        state: db::health(store, handler.name())?.state.to_string(),
        released_kill_switches: released,
    })
}

/// `driftless rebuild`.
pub fn rebuild(db_path: &Path, handler: &str, json: bool, out: &mut Out) -> Result<(), CliError> {
    let handler = parse_handler(handler)?;
    let engine = db::open_existing(db_path)?;
    let spinner = crate::progress::spinner(&format!("rebuilding {}", handler.name()));
    let result = rebuild_handler(&engine, handler);
    spinner.finish_and_clear();
    let rebuilt = result?;
    if let Err(e) = engine.refresh_views() {
        tracing::warn!(error = %e, "the views could not be refreshed after the rebuild");
    }
    engine.shutdown()?;
    if json {
        out.json(&rebuilt)?;
    } else {
        out.line(format!(
            "rebuilt {} from the journal: {} entries replayed, {} applied, {} dead-lettered; it is {} now",
            rebuilt.handler,
            count(rebuilt.replayed),
            count(rebuilt.applied),
            count(rebuilt.dead_lettered),
            rebuilt.state
        ))?;
        for rm in &rebuilt.released_kill_switches {
            out.line(format!("released the kill switch of {rm}, engaged when it was demoted"))?;
        }
    }
    Ok(())
}

/// `driftless kill-switch`.
pub fn kill_switch(
    db_path: &Path,
    read_model: &str,
    action: SwitchAction,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let read_model = ReadModel::parse(read_model, &ReadModel::ALL, "the read model")?;
    let engine = db::open_existing(db_path)?;
    match action {
        SwitchAction::On => engine.set_kill_switch(read_model.name(), true)?,
        SwitchAction::Off => engine.set_kill_switch(read_model.name(), false)?,
        SwitchAction::Status => {}
    }
    let switch = engine.kill_switch(read_model.name())?;
    engine.shutdown()?;
    if json {
        out.json(&json!({
            "read_model": read_model.name(),
            "engaged": switch.is_some(),
            "since": switch.map(|s| s.engaged_at.0),
        }))?;
    } else {
        match switch {
            Some(s) => out.line(format!(
                "the kill switch of {} is engaged since {}: its queries answer \"read the source of truth\"",
                read_model.name(),
                utc(s.engaged_at)
            ))?,
            None => {
                out.line(format!("the kill switch of {} is released: it answers queries", read_model.name()))?
            }
        }
    }
    Ok(())
}

/// One row changed by [`tamper`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tampered {
    /// The read model.
    pub read_model: String,
    /// The row's key.
    pub key: String,
    /// The field changed.
    pub field: String,
    /// Its value before.
    pub before: u64,
    /// Its value after.
    pub after: u64,
}

/// Changes `rows` distinct existing rows of `read_model` behind its projector's back, with
/// valid envelopes (so only reconciliation can tell): a card's price + 1, a district's
/// inquiries + 7. The rows are drawn with `seed`; the result is in key order.
pub fn tamper(
    engine: &ListingEngine,
    read_model: ReadModel,
    rows: usize,
    seed: u64,
) -> Result<Vec<Tampered>, CliError> {
    if read_model == ReadModel::DistrictLeaderboard {
        return Err(CliError::Usage(
            "district_leaderboard is a view rebuilt at every refresh; tamper with listing_card or district_stats"
                .into(),
        ));
    }
    if rows == 0 {
        return Err(CliError::Usage("--rows must be at least 1".into()));
    }
    let existing = engine.store().raw_rows(read_model.name())?;
    if rows > existing.len() {
        return Err(CliError::Failed(format!(
            "{} has only {} rows, fewer than the {} to tamper with",
            read_model.name(),
            count_usize(existing.len()),
            count_usize(rows)
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let picked = rand::seq::index::sample(&mut rng, existing.len(), rows);
    let mut chosen: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for i in picked {
        if let Some((k, v)) = existing.get(i) {
            chosen.insert(k.clone(), v.clone());
        }
    }
    let mut out = Vec::with_capacity(rows);
    for (key, value) in chosen {
        let (field, before, after, bytes) = match read_model {
            ReadModel::ListingCard => {
                let mut card: ListingCard = codec::decode(&value)?;
                let before = card.price;
                // One up, or one down at the contract's largest price.
                card.price = if card.price >= MAX_SAFE_INTEGER { card.price - 1 } else { card.price + 1 };
                ("price", before, card.price, codec::encode(&card)?)
            }
            _ => {
                let mut stats: DistrictStats = codec::decode(&value)?;
                let before = stats.inquiries;
                stats.inquiries = stats.inquiries.saturating_add(7);
                ("inquiries", before, stats.inquiries, codec::encode(&stats)?)
            }
        };
        engine.chaos_tamper_row(read_model.name(), &key, Some(&bytes))?;
        out.push(Tampered {
            read_model: read_model.name().to_string(),
            key: String::from_utf8_lossy(&key).into_owned(),
            field: field.to_string(),
            before,
            after,
        });
    }
    metrics::counter!("driftless_cli_tampered_rows_total", "read_model" => read_model.name())
        .increment(rows as u64);
    Ok(out)
}

/// One changed row as a JSON line, with the seed that picked it.
#[derive(Debug, serde::Serialize)]
struct TamperLine<'a> {
    #[serde(flatten)]
    tampered: &'a Tampered,
    seed: u64,
}

/// `driftless chaos tamper`.
pub fn chaos_tamper(
    db_path: &Path,
    read_model: &str,
    rows: usize,
    seed: Option<u64>,
    json: bool,
    out: &mut Out,
) -> Result<(), CliError> {
    let read_model = ReadModel::parse(read_model, &ReadModel::PROJECTED, "the read model")?;
    if rows == 0 {
        return Err(CliError::Usage("--rows must be at least 1".into()));
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64 ^ u64::from(std::process::id()))
    });
    let engine = db::open_existing(db_path)?;
    let changed = tamper(&engine, read_model, rows, seed)?;
    engine.shutdown()?;
    if json {
        for t in &changed {
            out.json(&TamperLine { tampered: t, seed })?;
        }
    } else {
        out.line(format!(
            "changed {} rows of {} behind its projector's back (seed {seed}):",
            count_usize(changed.len()),
            read_model.name()
        ))?;
        for t in &changed {
            out.line(format!("  {}: {} {} -> {}", t.key, t.field, count(t.before), count(t.after)))?;
        }
        out.line(format!(
            "find them with `driftless reconcile --mode full --read-model {}`",
            read_model.name()
        ))?;
    }
    Ok(())
}
