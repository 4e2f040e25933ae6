//! The materialized `district_leaderboard`: atomic refreshes and the refresh thread.

use super::{fold, joined, leaderboard_view, options, stream, wait_until, TestResult};
use driftless::{Engine, EngineError, EngineOptions, ReadAnswer};
use driftless_listings::{
    leaderboard, projectors, LeaderboardRow, ListingEvent, ListingModel, DISTRICT_LEADERBOARD,
};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn open_with_view(path: &Path, options: EngineOptions) -> TestResult<Engine<ListingEvent>> {
    let mut builder = Engine::builder(path).options(options).view(leaderboard_view());
    for p in projectors() {
        builder = builder.projector_arc(Arc::from(p));
    }
    Ok(builder.open()?)
}

/// The leaderboard rows in rank order, checking the keys are the ranks 1..=n.
fn ranking(engine: &Engine<ListingEvent>) -> TestResult<Vec<LeaderboardRow>> {
    let ReadAnswer::Ready(repo) = engine.read(&DISTRICT_LEADERBOARD)? else {
        return Err("district_leaderboard is switched off".into());
    };
    let mut out = Vec::new();
    for (expected_rank, row) in (1u64..).zip(repo.iter()?) {
        let (rank, row) = row?;
        ensure!(
            rank == expected_rank && row.rank == rank,
            "rank {expected_rank} is missing: found key {rank} holding rank {}",
            row.rank
        );
        out.push(row);
    }
    ensure_eq!(repo.len()?, out.len() as u64, "len() and the rows of one snapshot");
    Ok(out)
}

fn expected(model: &ListingModel) -> Vec<LeaderboardRow> {
    leaderboard(model.districts().cloned())
}

#[test]
fn readers_only_see_complete_rankings_of_one_version_of_the_stats() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = stream(400, 40, 6, 41);
    // Every ranking a refresh may legitimately produce: that of a prefix of the stream,
    // since each event is committed on its own.
    let mut model = ListingModel::new();
    let mut valid: HashSet<Vec<LeaderboardRow>> = HashSet::from([expected(&model)]);
    for e in &events {
        model.apply(e);
        valid.insert(expected(&model));
    }
    ensure!(valid.len() > 20, "the stream must move the ranking ({} rankings)", valid.len());
    let engine = open_with_view(&dir.path().join("db.redb"), options())?;

    let done = AtomicBool::new(false);
    let (refreshes, reads) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| -> TestResult {
        let refresher = s.spawn(|| -> TestResult {
            while !done.load(Ordering::SeqCst) {
                engine.refresh_view("district_leaderboard")?;
                refreshes.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        });
        let reader = s.spawn(|| -> TestResult {
            loop {
                let finished = done.load(Ordering::SeqCst);
                let rows = ranking(&engine)?;
                ensure!(valid.contains(&rows), "a ranking of no version of district_stats: {rows:?}");
                reads.fetch_add(1, Ordering::SeqCst);
                if finished {
                    return Ok(());
                }
            }
        });
        let produced = (|| -> TestResult {
            for e in &events {
                engine.dispatch(e.clone())?.wait()?;
            }
            Ok(())
        })();
        done.store(true, Ordering::SeqCst);
        joined(refresher.join())?;
        joined(reader.join())?;
        produced
    })?;
    ensure!(refreshes.load(Ordering::SeqCst) > 0, "the view was refreshed");
    ensure!(reads.load(Ordering::SeqCst) > 0, "the view was read");
    engine.refresh_view("district_leaderboard")?;
    ensure_eq!(ranking(&engine)?, expected(&model), "the final ranking");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn the_refresh_thread_keeps_the_view_up_to_date() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = stream(300, 30, 5, 42);
    let (model, _) = fold(&events);
    let engine = open_with_view(
        &dir.path().join("db.redb"),
        EngineOptions { view_refresh_interval: Some(Duration::from_millis(10)), ..options() },
    )?;
    ensure_eq!(ranking(&engine)?, Vec::<LeaderboardRow>::new(), "the ranking before any event");
    engine.dispatch_batch(events.iter().cloned())?.wait()?;
    let want = expected(&model);
    ensure!(!want.is_empty(), "the stream has districts");
    wait_until("the refresh thread ranks every district", || Ok(ranking(&engine)? == want))?;
    let f = engine.freshness_of("district_leaderboard")?;
    ensure!(f.caught_up && f.seconds.is_some(), "the view's freshness: {f:?}");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_view_is_not_refreshed_from_a_switched_off_source() -> TestResult {
    let dir = tempfile::tempdir()?;
    let events = stream(200, 20, 4, 43);
    let (model, _) = fold(&events);
    let engine = open_with_view(&dir.path().join("db.redb"), options())?;
    engine.dispatch_batch(events.iter().cloned())?.wait()?;
    engine.refresh_views()?;
    let want = expected(&model);
    ensure_eq!(ranking(&engine)?, want, "the ranking");

    engine.set_kill_switch("district_stats", true)?;
    match engine.refresh_view("district_leaderboard") {
        Err(EngineError::Refresh { view, reason }) => {
            ensure_eq!(view, "district_leaderboard", "the view named");
            ensure!(reason.contains("switched off"), "the reason: {reason}");
        }
        other => return Err(format!("expected a refresh error, got {other:?}").into()),
    }
    ensure_eq!(ranking(&engine)?, want, "the ranking kept after a failed refresh");

    engine.set_kill_switch("district_stats", false)?;
    engine.set_kill_switch("district_leaderboard", true)?;
    ensure!(
        matches!(engine.read(&DISTRICT_LEADERBOARD)?, ReadAnswer::UseSourceOfTruth { .. }),
        "a switched-off view is not served"
    );
    engine.set_kill_switch("district_leaderboard", false)?;
    ensure_eq!(ranking(&engine)?, want, "the ranking after release");
    ensure!(matches!(engine.refresh_view("nope"), Err(EngineError::UnknownReadModel(_))), "an unknown view");
    engine.shutdown()?;
    Ok(())
}
