//! `kill -9` of a writing process, and two processes on one file.
//!
//! Injection: the test binary re-runs itself as the child (as sled's crash tests do):
//! the parent starts `current_exe()` on the single test [`crash_child`] with the environment
//! variable `DRIFTLESS_CRASH_CHILD` set to a database path. In every other run that test
//! returns at once. The child opens an engine on the file (sample domain, immediate
//! durability), prints `@opening` before the open and `@opened` once the engine has opened
//! and finished its startup, then dispatches a large deterministic stream
//! ([`generate_events`], with re-deliveries and conflicting twins) from the index it is
//! given, in small batches of random size with a few batches in flight. Before handing a
//! batch over it prints `@dispatch <last index>`, and for each event whose receipt resolved
//! `@ack <index> <outcome>`, flushing stdout after every line. It never returns: the parent
//! kills it with SIGKILL (`Child::kill`) at a random moment (seeded), reads every line it
//! printed, and starts the next child, which resumes a little before the first
//! unacknowledged event (so that it re-delivers some acknowledged ones) on the same,
//! uncleanly closed file: every child's open is a recovery. Kills are aimed deliberately at
//! the open (right after `@opening`, within the open times measured so far) whenever fewer
//! than a tenth of the kills, plus two, landed there; a kill counts as "during open" only
//! when the child had not printed `@opened` (which it prints after redb's recovery, the
//! registration and the handlers' catch-up).
//!
//! After every kill the parent copies the file (leaving the original for the next child to
//! recover) and checks the copy: it opens, redb's integrity check passes, the read models are
//! the fold ([`ListingModel`](driftless_listings::ListingModel)) of exactly a prefix of the
//! stream that holds every acknowledged event and nothing past the furthest dispatched one,
//! one offset-index row per applied event and each handler's applied count equal the fold's
//! (listing versions show any event applied twice), every event the last child acknowledged
//! has its offsets (or its dead letters, if rejected), and after re-delivering the stream up
//! to the furthest dispatched event the copy holds that prefix's fold. Each acknowledgement
//! is also checked against the fold: a duplicate, conflict or rejection is reported as such,
//! and an event is reported applied at most once over all the children.
//!
//! Now and then, while the child holds the file, the parent opens it too: the open must fail
//! with `OpenError::InUse`, and must not disturb the child. A second test does the same
//! deliberately and then opens the file once the child is killed.
//!
//! `DRIFTLESS_KILL_RUNS` (default 30) sets the number of kills, `DRIFTLESS_KILL_EVENTS`
//! (default 20 000) the stream's length, `DRIFTLESS_KILL_WINDOW_MS` (default 400) the
//! longest a child runs after its open, and `DRIFTLESS_KILL_SEED` the seed.

use super::{
    accepted_ids, ensure_dead_letters, ensure_offsets, ensure_some_prefix, ensure_state, env_count, fold,
    listing_projectors, TestResult, HANDLERS,
};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use driftless::{BuildError, Durability, Engine, EngineOptions, EventOutcome, OpenError, Timestamp};
use driftless_domain::PreparedEvent;
use driftless_domain::Upcasters;
use driftless_listings::{generate_events, GenConfig, ListingEvent, Outcome, GENERATED_START_MILLIS};
use driftless_storage::StoreOptions;
use driftless_storage::StoreWriter;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to the database path, it makes [`crash_child`] the child writer.
const CHILD_ENV: &str = "DRIFTLESS_CRASH_CHILD";
/// The index of the first event the child dispatches.
const START_ENV: &str = "DRIFTLESS_CRASH_START";
/// The seed of the child's batch sizes.
const SEED_ENV: &str = "DRIFTLESS_CRASH_SEED";
/// The length of the stream.
const EVENTS_ENV: &str = "DRIFTLESS_CRASH_EVENTS";
/// The full name of the child test, for `--exact`.
const CHILD_TEST: &str = "reliability::kill::crash_child";

/// How long the parent waits for a line before it gives up on the child.
const LINE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a child runs after its open before it is killed, by default.
const RUN_WINDOW_MS: usize = 400;
/// The most batches a child has in flight.
const IN_FLIGHT: usize = 3;
/// The largest batch a child dispatches.
const MAX_BATCH: usize = 12;
/// How far before the first unacknowledged event the next child resumes, at most.
const MAX_OVERLAP: usize = 40;
/// The default stream length.
const DEFAULT_EVENTS: usize = 20_000;

/// The stream every child dispatches a part of.
fn kill_stream(events: usize) -> Vec<ListingEvent> {
    generate_events(GenConfig {
        events,
        listings: (events / 8).max(1),
        districts: 12,
        seed: 2024,
        redeliveries: 0.05,
        conflicts: events / 400 + 3,
        invalid_lines: 0,
    })
}

fn open_options() -> EngineOptions {
    EngineOptions { durability: Durability::Immediate, ..EngineOptions::default() }
}

fn open_engine(path: &Path) -> Result<Engine<ListingEvent>, BuildError> {
    let mut builder = Engine::builder(path).options(open_options());
    for p in listing_projectors() {
        builder = builder.projector_arc(p);
    }
    builder.open()
}

fn env_number<T: std::str::FromStr>(name: &str) -> TestResult<T>
where
    T::Err: std::fmt::Display,
{
    let v = std::env::var(name).map_err(|e| format!("{name}: {e}"))?;
    v.parse().map_err(|e| format!("{name}={v:?}: {e}").into())
}

/// The child writer. A no-op test unless the kill harness runs this binary as its child.
#[test]
fn crash_child() -> TestResult {
    let Some(path) = std::env::var_os(CHILD_ENV) else { return Ok(()) };
    child_main(Path::new(&path))
}

fn outcome_code(outcome: &EventOutcome) -> char {
    match outcome {
        EventOutcome::Applied => 'A',
        EventOutcome::Duplicate => 'D',
        EventOutcome::Conflict { .. } => 'C',
        EventOutcome::Rejected { .. } => 'R',
        EventOutcome::Deferred => 'F',
        EventOutcome::Refused { .. } => 'X',
    }
}

fn child_main(path: &Path) -> TestResult {
    let start: usize = env_number(START_ENV)?;
    let seed: u64 = env_number(SEED_ENV)?;
    let events: usize = env_number(EVENTS_ENV)?;
    let stream = kill_stream(events);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Straight to the file descriptor (not through the test harness's capture), a line at a
    // time, flushed: what the parent reads was printed before the kill.
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| -> TestResult {
        out.write_all(line.as_bytes())?;
        out.flush()?;
        Ok(())
    };
    say("@opening\n".into())?;
    let engine = open_engine(path)?;
    engine.flush()?;
    say("@opened\n".into())?;
    let mut in_flight: VecDeque<(usize, driftless::BatchReceipt)> = VecDeque::new();
    let mut next = start;
    loop {
        if next < stream.len() && in_flight.len() < IN_FLIGHT {
            let end = (next + rng.random_range(1..=MAX_BATCH)).min(stream.len());
            say(format!("@dispatch {}\n", end - 1))?;
            let batch = stream.get(next..end).ok_or("a batch past the stream's end")?;
            in_flight.push_back((next, engine.dispatch_batch(batch.iter().cloned())?));
            next = end;
            continue;
        }
        let Some((first, receipt)) = in_flight.pop_front() else { break };
        for (i, report) in receipt.wait()?.iter().enumerate() {
            say(format!("@ack {} {}\n", first + i, outcome_code(&report.outcome)))?;
        }
    }
    say("@done\n".into())?;
    // Wait to be killed; a child whose parent is gone gives up eventually.
    std::thread::sleep(Duration::from_secs(600));
    Err("the child writer was never killed".into())
}

/// One line the child printed, with the time the parent read it.
struct Line {
    at: Instant,
    text: String,
}

/// A running child writer and its output.
struct ChildWriter {
    child: Child,
    lines: Receiver<Line>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    seen: Vec<Line>,
}

impl ChildWriter {
    fn spawn(exe: &Path, db: &Path, start: usize, seed: u64, events: usize) -> TestResult<Self> {
        let mut child = Command::new(exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, db)
            .env(START_ENV, start.to_string())
            .env(SEED_ENV, seed.to_string())
            .env(EVENTS_ENV, events.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        let (tx, lines) = crossbeam_channel::unbounded();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut text = String::new();
            // Only whole lines count: a line cut by the kill was not printed.
            while r.read_line(&mut text).is_ok_and(|n| n > 0) && text.ends_with('\n') {
                if tx.send(Line { at: Instant::now(), text: std::mem::take(&mut text) }).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut all);
            all
        });
        Ok(Self { child, lines, reader: Some(reader), stderr: Some(stderr), seen: Vec::new() })
    }

    /// Waits until the child prints a line starting with `prefix`.
    fn wait_for(&mut self, prefix: &str) -> TestResult<Instant> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(line) => {
                    let at = line.at;
                    let hit = payload(&line.text).starts_with(prefix);
                    self.seen.push(line);
                    if hit {
                        return Ok(at);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("the child printed no {prefix} within {LINE_TIMEOUT:?}").into())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
                    return Err(format!("the child exited before printing {prefix}: {stderr}").into());
                }
            }
        }
    }

    /// Sends SIGKILL, reaps the child and returns every whole line it printed.
    fn kill(mut self) -> TestResult<Vec<Line>> {
        self.child.kill()?;
        let status = self.child.wait()?;
        if let Some(r) = self.reader.take() {
            r.join().map_err(|_| "the reader thread panicked")?;
        }
        let stderr = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        {
            use std::os::unix::process::ExitStatusExt;
            if status.signal() != Some(9) {
                return Err(
                    format!("the child was not killed by SIGKILL but ended with {status}: {stderr}").into()
                );
            }
        }
        self.seen.extend(self.lines.try_iter());
        Ok(std::mem::take(&mut self.seen))
    }
}

impl Drop for ChildWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line's message: from its first `@` (the test harness prints `test … ... ` before the
/// child's first line).
fn payload(text: &str) -> &str {
    text.find('@').and_then(|i| text.get(i..)).unwrap_or("")
}

/// What one child printed.
#[derive(Debug, Default)]
struct Printed {
    opening: Option<Instant>,
    opened: Option<Instant>,
    dispatched: Option<usize>,
    acks: Vec<(usize, char)>,
}

fn parse(lines: &[Line]) -> TestResult<Printed> {
    let mut p = Printed::default();
    for line in lines {
        let mut words = payload(&line.text).split_whitespace();
        match words.next() {
            Some("@opening") => p.opening = Some(line.at),
            Some("@opened") => p.opened = Some(line.at),
            Some("@dispatch") => {
                let last: usize = words.next().ok_or("a bare @dispatch")?.parse()?;
                p.dispatched = Some(p.dispatched.map_or(last, |d| d.max(last)));
            }
            Some("@ack") => {
                let i: usize = words.next().ok_or("a bare @ack")?.parse()?;
                let code = words.next().and_then(|w| w.chars().next()).ok_or("an @ack without outcome")?;
                p.acks.push((i, code));
            }
            // The test harness's own lines.
            _ => {}
        }
    }
    Ok(p)
}

/// What the parent knows across children.
struct Ledger {
    stream: Vec<ListingEvent>,
    outcomes: Vec<Outcome>,
    /// Every event up to this index was acknowledged (by some child).
    acknowledged: Option<usize>,
    /// The furthest event ever handed to an engine.
    dispatched: Option<usize>,
    /// How often each event id was reported applied.
    applied_reports: HashMap<String, u32>,
    acks: u64,
    checks: u64,
    offsets_checked: u64,
    redelivered: u64,
    /// Events found applied although their acknowledgement was never printed.
    unacknowledged_found: u64,
    /// Kills that came before the database file was created (nothing to check).
    before_creation: u64,
}

impl Ledger {
    /// Records a child's acknowledgements, checking each against the fold.
    fn record(&mut self, start: usize, printed: &Printed) -> TestResult {
        let before = self.dispatched;
        for (expect, &(i, code)) in (start..).zip(&printed.acks) {
            ensure_eq!(i, expect, "acknowledgements out of order");
            let e = self.stream.get(i).ok_or("an acknowledged index past the stream")?;
            let outcome = self.outcomes.get(i).ok_or("an acknowledged index past the stream")?;
            let seen_before = before.is_some_and(|d| i <= d);
            let fine = match (outcome, code) {
                (Outcome::Applied, 'A') => true,
                // Applied by an earlier child that was killed before it said so.
                (Outcome::Applied, 'D') => seen_before,
                (Outcome::Duplicate, 'D') | (Outcome::Conflict { .. }, 'C') | (Outcome::Rejected(_), 'R') => {
                    true
                }
                _ => false,
            };
            ensure!(
                fine,
                "event {i} ({}) was acknowledged as {code}, but the fold says {outcome}",
                e.event_id
            );
            if code == 'A' {
                let n = self.applied_reports.entry(e.event_id.clone()).or_default();
                *n += 1;
                ensure!(*n == 1, "event {i} ({}) was reported applied {n} times", e.event_id);
            }
            self.acknowledged = Some(self.acknowledged.map_or(i, |a| a.max(i)));
            self.acks += 1;
        }
        if let Some(d) = printed.dispatched {
            self.dispatched = Some(self.dispatched.map_or(d, |x| x.max(d)));
        }
        Ok(())
    }

    /// Checks a copy of the killed child's file (see the module documentation).
    fn check_copy(&mut self, db: &Path, copy: &Path, printed: &Printed, run: usize) -> TestResult {
        let what = |s: &str| format!("after kill {run}: {s}");
        if !db.exists() {
            ensure!(self.acknowledged.is_none(), "{}", what("the database file is gone"));
            self.before_creation += 1;
            return Ok(());
        }
        let _ = std::fs::remove_file(copy);
        std::fs::copy(db, copy)?;
        let options = StoreOptions { durability: Durability::Eventual, ..StoreOptions::default() };
        let mut store =
            StoreWriter::open(copy, options).map_err(|e| what(&format!("reopening failed: {e}")))?;
        ensure!(store.check_integrity()?, "{}", what("redb's integrity check failed"));
        let registry = store.register(listing_projectors(), &[], Upcasters::new())?;
        ensure!(registry.needs_rebuild.is_empty(), "{}", what("the database asks for rebuilds"));
        let lo = self.acknowledged.map_or(0, |a| a + 1);
        let hi = self.dispatched.map_or(0, |d| d + 1);
        let cuts: Vec<usize> = (lo..=hi).collect();
        let cut = ensure_some_prefix(&store, &self.stream, &cuts, &what("before re-delivery"))?;
        self.unacknowledged_found += (cut - lo) as u64;
        self.offsets_checked += ensure_offsets(
            &store,
            &self.stream,
            &self.outcomes,
            printed.acks.iter().map(|(i, _)| *i),
            &what("acknowledged events"),
        )? as u64;
        let prefix = self.stream.get(..hi).ok_or("a dispatched index past the stream")?;
        for chunk in prefix.chunks(4096) {
            let prepared = chunk.iter().cloned().map(PreparedEvent::new).collect::<Result<Vec<_>, _>>()?;
            store.project(&registry, &prepared, Timestamp(GENERATED_START_MILLIS + 86_400_000))?;
            self.redelivered += chunk.len() as u64;
        }
        let (model, outcomes) = fold(prefix);
        let accepted = accepted_ids(prefix, &outcomes);
        ensure_state(&store, &model, accepted, &what("after re-delivering the dispatched prefix"))?;
        ensure_dead_letters(&store, prefix, &what("after re-delivery"))?;
        drop(store);
        std::fs::remove_file(copy)?;
        self.checks += 1;
        Ok(())
    }
}

/// A second open of a file a live child holds must be refused as in use.
fn ensure_in_use(db: &Path) -> TestResult {
    match StoreWriter::open(db, StoreOptions::default()) {
        Err(OpenError::InUse { .. }) => {}
        Err(e) => return Err(format!("a second open of a held file said {e:?}, not InUse").into()),
        Ok(_) => return Err("a second process opened a file another process holds".into()),
    }
    match open_engine(db) {
        Err(BuildError::Open(OpenError::InUse { path })) => {
            ensure_eq!(path, db.to_path_buf(), "the path in the InUse error");
        }
        Err(e) => return Err(format!("a second engine on a held file said {e:?}, not InUse").into()),
        Ok(_) => return Err("a second engine opened a file another process holds".into()),
    }
    Ok(())
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_event_and_applies_none_twice() -> TestResult {
    let runs = env_count("DRIFTLESS_KILL_RUNS", 30)?;
    let events = env_count("DRIFTLESS_KILL_EVENTS", DEFAULT_EVENTS)?;
    let seed = env_count("DRIFTLESS_KILL_SEED", 9)? as u64;
    let window = env_count("DRIFTLESS_KILL_WINDOW_MS", RUN_WINDOW_MS)? as u64;
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let db: PathBuf = dir.path().join("killed.redb");
    let copy = dir.path().join("checked.redb");
    let stream = kill_stream(events);
    let (_, outcomes) = fold(&stream);
    let mut ledger = Ledger {
        stream,
        outcomes,
        acknowledged: None,
        dispatched: None,
        applied_reports: HashMap::new(),
        acks: 0,
        checks: 0,
        offsets_checked: 0,
        redelivered: 0,
        unacknowledged_found: 0,
        before_creation: 0,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut open_times: Vec<Duration> = Vec::new();
    let (mut during_open, mut aimed_at_open, mut in_use_probes) = (0usize, 0usize, 0usize);
    for run in 0..runs {
        let start =
            ledger.acknowledged.map_or(0, |a| a + 1).saturating_sub(rng.random_range(0..=MAX_OVERLAP));
        let mut child = ChildWriter::spawn(&exe, &db, start, rng.random(), events)?;
        let opening = child.wait_for("@opening")?;
        // Aim at the open whenever fewer than a tenth of the kills (plus two) landed there.
        let at_open = during_open * 10 < run + 20;
        if at_open {
            aimed_at_open += 1;
            // Within the longest of the recent open times (30 ms before any was measured).
            let recent = open_times.iter().rev().take(5).max().copied().unwrap_or(Duration::from_millis(30));
            let delay = rng.random_range(0..=recent.as_micros() as u64);
            std::thread::sleep(Duration::from_micros(delay).saturating_sub(opening.elapsed()));
        } else {
            child.wait_for("@opened")?;
            if run % 4 == 1 {
                ensure_in_use(&db)?;
                in_use_probes += 1;
            }
            std::thread::sleep(Duration::from_millis(rng.random_range(0..=window)));
        }
        let lines = child.kill()?;
        let printed = parse(&lines)?;
        match (printed.opening, printed.opened) {
            (Some(a), Some(b)) => open_times.push(b.duration_since(a)),
            (Some(_), None) => during_open += 1,
            _ => {}
        }
        ledger.record(start, &printed).map_err(|e| format!("kill {run}: {e}"))?;
        ledger.check_copy(&db, &copy, &printed, run)?;
    }
    let mean_open =
        open_times.iter().sum::<Duration>().checked_div(open_times.len() as u32).unwrap_or_default();
    println!(
        "kill -9: {runs} kills ({during_open} during open/recovery, {aimed_at_open} aimed at it), \
         {} acknowledgements (events 0..={} of {}), {} checks of the killed file ({} kills came before \
         its creation; {} acknowledged \
         offsets, {} unacknowledged events found applied, {} events re-delivered), {in_use_probes} \
         second opens refused as in use; mean open {mean_open:.1?}; {:.1?}",
        ledger.acks,
        ledger.acknowledged.unwrap_or_default(),
        ledger.stream.len(),
        ledger.checks,
        ledger.before_creation,
        ledger.offsets_checked,
        ledger.unacknowledged_found,
        ledger.redelivered,
        started.elapsed()
    );
    ensure!(ledger.acks > 0, "no event was acknowledged in {runs} runs");
    ensure!(
        runs < 10 || during_open * 10 >= runs * 8 / 10,
        "only {during_open} of {runs} kills landed during the open"
    );
    Ok(())
}

#[test]
fn a_second_process_is_refused_while_the_first_holds_the_file_and_opens_it_once_killed() -> TestResult {
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("held.redb");
    let stream = kill_stream(DEFAULT_EVENTS);
    let mut child = ChildWriter::spawn(&exe, &db, 0, 1, DEFAULT_EVENTS)?;
    child.wait_for("@opened")?;
    child.wait_for("@ack")?;
    ensure_in_use(&db)?;
    // The child was not disturbed: it goes on acknowledging.
    child.seen.extend(child.lines.try_iter());
    let before = parse(&child.seen)?.acks.last().map(|(i, _)| *i);
    while parse(&child.seen)?.acks.last().map(|(i, _)| *i) == before {
        child.wait_for("@ack")?;
    }
    let lines = child.kill()?;
    let printed = parse(&lines)?;
    let acknowledged = printed.acks.last().map(|(i, _)| *i).ok_or("nothing acknowledged")?;
    let engine = open_engine(&db).map_err(|e| format!("opening the file of the killed process: {e}"))?;
    let lo = acknowledged + 1;
    let hi = printed.dispatched.map_or(lo, |d| d + 1);
    let cuts: Vec<usize> = (lo..=hi).collect();
    let cut = ensure_some_prefix(engine.store(), &stream, &cuts, "after the kill")?;
    let (_, outcomes) = fold(&stream);
    ensure_offsets(engine.store(), &stream, &outcomes, 0..=acknowledged, "acknowledged events")?;
    for h in HANDLERS {
        ensure!(engine.freshness_of(h)?.caught_up, "{h} is not caught up after the reopen");
    }
    engine.shutdown()?;
    println!("two processes: a second open was refused as in use; after the kill, {cut} events were found");
    Ok(())
}
