//! Black-box tests of the `driftless` binary: the sample domain's contract for `ingest`
//! and `query`, the other commands, and how the CLI behaves when things go wrong.

use driftless_listings::{generate, parse_jsonl, GenConfig, ListingModel};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {{
        let (l, r) = (&$left, &$right);
        if l != r {
            return Err(format!("{}: {:?} != {:?}", format!($($msg)+), l, r).into());
        }
    }};
}

const BIN: &str = env!("CARGO_BIN_EXE_driftless");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A file of the CLI's `assets/`: the previous release's database and the events it was
/// made from.
fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets").join(name)
}

/// A `ListingCreated` line for `listing` at `at` whose price is the JSON text `price`.
fn created_line(listing: &str, at: u64, price: &str) -> String {
    format!(
        r#"{{"aggregate_id":"{listing}","event":"ListingCreated","occurred_at":{at},"payload":{{"title":"Flat {listing}","price":{price},"district":"Mitte"}}}}"#
    )
}

fn path_str(path: &Path) -> TestResult<&str> {
    Ok(path.to_str().ok_or("a non-UTF-8 path")?)
}

/// What one run of the binary did.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    fn json_lines(&self) -> TestResult<Vec<Value>> {
        self.stdout.lines().map(|l| Ok(serde_json::from_str::<Value>(l)?)).collect()
    }

    fn ok(self) -> TestResult<Self> {
        ensure!(self.status.success(), "driftless failed ({:?}): {}", self.code(), self.stderr);
        Ok(self)
    }
}

fn command(db: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args).arg("--db").arg(db).env_remove("RUST_LOG").env_remove("NO_COLOR");
    c
}

fn run_with(mut c: Command, stdin: Option<&[u8]>) -> TestResult<Output> {
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn()?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    Ok(Output {
        status: out.status,
        stdout: String::from_utf8(out.stdout)?,
        stderr: String::from_utf8(out.stderr)?,
    })
}

fn driftless(db: &Path, args: &[&str]) -> TestResult<Output> {
    run_with(command(db, args), None)
}

fn read_jsonl(path: &Path) -> TestResult<Vec<Value>> {
    std::fs::read_to_string(path)?.lines().map(|l| Ok(serde_json::from_str::<Value>(l)?)).collect()
}

fn read_json(path: &Path) -> TestResult<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// The reference model after folding the fixture `times` times.
fn model_of_fixture(times: usize) -> TestResult<ListingModel> {
    let mut model = ListingModel::new();
    for _ in 0..times {
        let file = std::fs::File::open(fixture("every_outcome.jsonl"))?;
        for (_, line) in parse_jsonl(BufReader::new(file)) {
            match line {
                Ok(event) => {
                    model.apply(&event);
                }
                Err(_) => model.record_malformed(),
            }
        }
    }
    Ok(model)
}

fn ingest_fixture(db: &Path, extra: &[&str]) -> TestResult<Output> {
    let path = fixture("every_outcome.jsonl");
    let mut args = vec!["ingest", path.to_str().ok_or("a non-UTF-8 path")?, "--json"];
    args.extend_from_slice(extra);
    driftless(db, &args)?.ok()
}

/// Writes a generated stream and returns its path.
fn generated_file(dir: &Path, events: usize, listings: usize) -> TestResult<PathBuf> {
    let config = GenConfig { events, listings, districts: 6, seed: 9, ..GenConfig::default() };
    let path = dir.join("generated.jsonl");
    let mut text = generate(config).join("\n");
    text.push('\n');
    std::fs::write(&path, text)?;
    Ok(path)
}

fn wait_timeout(child: &mut Child, limit: Duration) -> TestResult<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("the child did not exit within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ingest_reports_every_outcome_of_the_contract() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    let expected = read_json(&fixture("expected_summary.json"))?;
    ensure_eq!(
        model_of_fixture(1)?.summary().to_json(),
        expected,
        "the hand-written summary vs ListingModel"
    );

    let out = ingest_fixture(&db, &[])?;
    ensure_eq!(out.json_lines()?, vec![expected.clone()], "the summary of `ingest --json`");
    for line in [
        "line 7: conflict: the event id l-a:1003:InquiryReceived was first delivered with another payload",
        "line 9: conflict: the event id crm-77 was first delivered with another payload",
        "line 11: rejected: listing l-a already exists",
        "line 13: the line is empty",
        "line 26: rejected: listing l-zz does not exist",
        "line 37: the required field `payload.price` is missing",
        "line 38: the event name \"ListingDeleted\" is unknown",
        "line 45: the field `payload` must be an object, but is an array",
    ] {
        ensure!(out.stderr.contains(line), "stderr lacks {line:?}:\n{}", out.stderr);
    }
    let malformed_reports =
        out.stderr.lines().filter(|l| !l.contains("conflict") && !l.contains("rejected")).count();
    ensure_eq!(malformed_reports, 12, "one stderr line per malformed line");

    // The batch size changes nothing; the summary in words says the same.
    let other = dir.path().join("small-batches.redb");
    let out = ingest_fixture(&other, &["--batch", "4"])?;
    ensure_eq!(out.json_lines()?, vec![expected], "the summary with --batch 4");
    let path = fixture("every_outcome.jsonl");
    let words = driftless(&dir.path().join("words.redb"), &["ingest", path.to_str().ok_or("path")?])?.ok()?;
    ensure_eq!(
        words.stdout.trim(),
        "45 lines: 15 applied, 3 duplicates, 2 conflicts, 13 rejected, 12 malformed",
        "the summary in words"
    );
    Ok(())
}

#[test]
fn query_prints_the_contract_rows_in_key_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    ingest_fixture(&db, &[])?;
    let model = model_of_fixture(1)?;

    let cards = driftless(&db, &["query", "listing_card", "--json"])?.ok()?.json_lines()?;
    let expected = read_jsonl(&fixture("expected_listing_card.jsonl"))?;
    ensure_eq!(cards, expected, "listing_card rows");
    let from_model: Vec<Value> = model.cards().map(|c| c.to_json()).collect();
    ensure_eq!(from_model, expected, "the hand-written cards vs ListingModel");

    let stats = driftless(&db, &["query", "district_stats", "--json"])?.ok()?.json_lines()?;
    let expected = read_jsonl(&fixture("expected_district_stats.jsonl"))?;
    ensure_eq!(stats, expected, "district_stats rows");
    let from_model: Vec<Value> = model.districts().map(|d| d.to_json()).collect();
    ensure_eq!(from_model, expected, "the hand-written districts vs ListingModel");

    let one = driftless(&db, &["query", "district_stats", "Neukölln", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(one, expected.get(2).cloned().into_iter().collect::<Vec<_>>(), "one key");
    let one = driftless(&db, &["query", "listing_card", "L-9", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(one.len(), 1, "one card");

    let missing = driftless(&db, &["query", "listing_card", "l-nope", "--json"])?;
    ensure_eq!(missing.code(), Some(1), "a missing key");
    ensure!(missing.stdout.is_empty(), "nothing on stdout for a missing key: {}", missing.stdout);
    ensure!(
        missing.stderr.starts_with("driftless: ") && missing.stderr.contains("l-nope"),
        "{}",
        missing.stderr
    );

    // The view was refreshed at the end of the ingest.
    let board = driftless(&db, &["query", "district_leaderboard", "1", "--json"])?.ok()?.json_lines()?;
    let first = board.first().ok_or("no leaderboard row")?;
    ensure_eq!(first.get("district").and_then(Value::as_str), Some("Mitte"), "rank 1");
    let table = driftless(&db, &["query", "listing_card"])?.ok()?;
    ensure!(table.stdout.lines().next().is_some_and(|h| h.starts_with("listing_id")), "{}", table.stdout);
    ensure_eq!(table.stdout.lines().count(), 6, "a header and 5 rows");
    Ok(())
}

#[test]
fn re_ingesting_skips_duplicates_and_retries_rejected_events() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    ingest_fixture(&db, &[])?;
    let second = ingest_fixture(&db, &[])?;
    let expected = read_json(&fixture("expected_summary_reingest.json"))?;
    ensure_eq!(second.json_lines()?, vec![expected.clone()], "the second ingest");

    // ListingModel over the file twice: the second pass alone is the difference.
    let once = model_of_fixture(1)?.summary();
    let twice = model_of_fixture(2)?;
    let s = twice.summary();
    let second_pass = serde_json::json!({
        "lines": s.lines - once.lines, "applied": s.applied - once.applied,
        "duplicates": s.duplicates - once.duplicates, "conflicts": s.conflicts - once.conflicts,
        "rejected": s.rejected - once.rejected, "malformed": s.malformed - once.malformed,
    });
    ensure_eq!(second_pass, expected, "the hand-written second pass vs ListingModel");

    let cards = driftless(&db, &["query", "listing_card", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(cards, twice.cards().map(|c| c.to_json()).collect::<Vec<_>>(), "cards after two passes");
    let l_d = cards.last().ok_or("no cards")?;
    ensure_eq!(
        (l_d.get("inquiries").and_then(Value::as_u64), l_d.get("version").and_then(Value::as_u64)),
        (Some(1), Some(3)),
        "the early inquiry of l-d is applied on re-delivery"
    );
    let stats = driftless(&db, &["query", "district_stats", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(
        stats,
        twice.districts().map(|d| d.to_json()).collect::<Vec<_>>(),
        "districts after two passes"
    );
    Ok(())
}

#[test]
fn ingest_reads_standard_input_for_a_dash() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    let input = std::fs::read(fixture("every_outcome.jsonl"))?;
    let out = run_with(command(&db, &["ingest", "-", "--json", "--batch", "7"]), Some(&input))?.ok()?;
    ensure_eq!(out.json_lines()?, vec![read_json(&fixture("expected_summary.json"))?], "stdin summary");
    let cards = driftless(&db, &["query", "listing_card", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(cards, read_jsonl(&fixture("expected_listing_card.jsonl"))?, "cards from stdin");
    Ok(())
}

#[test]
fn a_second_process_is_told_the_database_is_in_use_and_sigterm_stops_the_service() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    ingest_fixture(&db, &[])?;
    let mut c = command(&db, &["run", "--refresh-secs", "1"]);
    let mut child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut ready = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut ready)?;
    if !ready.contains("serving") {
        let _ = child.kill();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut err)?;
        }
        return Err(format!("`run` did not come up: {ready:?} {err}").into());
    }
    let second = driftless(&db, &["query", "listing_card"]);
    let killed = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = wait_timeout(&mut child, Duration::from_secs(10))?;
    let second = second?;
    ensure!(killed?.success(), "kill -TERM failed");
    ensure_eq!(second.code(), Some(1), "the second process");
    ensure!(second.stderr.contains("in use"), "stderr: {}", second.stderr);
    ensure!(!second.stderr.contains("panicked"), "stderr: {}", second.stderr);
    ensure!(status.success(), "`run` exits 0 on SIGTERM, not {status:?}");
    // The database is free again.
    driftless(&db, &["query", "listing_card", "--json"])?.ok()?;
    Ok(())
}

#[test]
fn read_commands_ask_the_process_serving_the_database() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    ingest_fixture(&db, &[])?;
    // What the commands say with the database to themselves.
    let cards = driftless(&db, &["query", "listing_card", "--json"])?.ok()?.json_lines()?;
    let card = driftless(&db, &["query", "listing_card", "l-a", "--json"])?.ok()?.json_lines()?;

    let mut c = command(&db, &["run", "--listen", "127.0.0.1:0"]);
    let mut child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let (mut first, mut second) = (String::new(), String::new());
    lines.read_line(&mut first)?;
    lines.read_line(&mut second)?;
    let checks = (|| -> TestResult {
        ensure!(second.starts_with("serving HTTP on http://127.0.0.1:"), "{first}{second}");
        let serving: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("db.redb.serving"))?)?;
        ensure_eq!(
            serving.get("pid").and_then(Value::as_u64),
            Some(u64::from(child.id())),
            "the recorded pid"
        );

        ensure_eq!(
            driftless(&db, &["query", "listing_card", "--json"])?.ok()?.json_lines()?,
            cards,
            "rows, live"
        );
        ensure_eq!(
            driftless(&db, &["query", "listing_card", "l-a", "--json"])?.ok()?.json_lines()?,
            card,
            "one row"
        );
        let missing = driftless(&db, &["query", "listing_card", "nope"])?;
        ensure_eq!(missing.code(), Some(1), "a missing key");
        ensure!(missing.stderr.contains("no row with the key"), "{}", missing.stderr);
        let table = driftless(&db, &["query", "district_stats"])?.ok()?;
        ensure!(table.stdout.contains("Mitte"), "{}", table.stdout);

        let freshness = driftless(&db, &["freshness", "--json"])?.ok()?.json_lines()?;
        let names: BTreeSet<&str> = freshness.iter().filter_map(|f| f.get("read_model")?.as_str()).collect();
        ensure!(names.contains("listing_card") && names.contains("district_stats"), "{names:?}");
        let metrics = driftless(&db, &["metrics"])?.ok()?;
        ensure!(
            metrics.stdout.contains("driftless_read_model_caught_up{read_model=\"listing_card\"}"),
            "{}",
            metrics.stdout
        );
        ensure!(metrics.stdout.contains("driftless_http_requests_total"), "the serving process's metrics");

        let run = driftless(&db, &["reconcile", "--mode", "full", "--json"])?.ok()?.json_lines()?;
        ensure_eq!(run.len(), 2, "one line per read model");
        ensure!(run.iter().all(|r| r.get("drifted").and_then(Value::as_u64) == Some(0)), "{run:?}");

        let verify = driftless(&db, &["verify", "--json"])?.ok()?.json_lines()?;
        let integrity = verify.first().ok_or("no integrity line")?;
        ensure_eq!(integrity.get("clean"), Some(&Value::Null), "the integrity check is not done live");
        ensure!(
            integrity
                .get("not_checked")
                .and_then(Value::as_str)
                .is_some_and(|w| w.contains("held by the process")),
            "{integrity}"
        );
        let all = verify.last().ok_or("no summary")?;
        ensure_eq!(
            all.get("complete").and_then(Value::as_bool),
            Some(false),
            "verify says it was not complete"
        );
        let words = driftless(&db, &["verify"])?.ok()?;
        ensure!(words.stdout.contains("the file itself was not checked"), "{}", words.stdout);

        let html = dir.path().join("report.html");
        driftless(&db, &["report", "--html", path_str(&html)?])?.ok()?;
        let page = std::fs::read_to_string(&html)?;
        ensure!(page.starts_with("<!DOCTYPE html>") && page.contains("listing_card"), "{page}");

        // A command that writes is still told the database is in use.
        let write = driftless(&db, &["kill-switch", "listing_card", "on"])?;
        ensure!(write.stderr.contains("in use"), "{}", write.stderr);
        Ok(())
    })();
    let killed = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let status = wait_timeout(&mut child, Duration::from_secs(10))?;
    checks?;
    ensure!(killed?.success() && status.success(), "`run` exits 0 on SIGTERM, not {status:?}");
    ensure!(!dir.path().join("db.redb.serving").exists(), "the record is removed when the service stops");
    // With the service gone, the commands open the file again.
    driftless(&db, &["verify", "--json"])?.ok()?;
    Ok(())
}

#[test]
fn files_that_are_not_driftless_databases_are_refused_as_such() -> TestResult {
    let dir = tempfile::tempdir()?;
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "just some notes\n")?;
    for args in [&["query", "listing_card"][..], &["verify"], &["demo", "--events", "100"]] {
        let out = driftless(&text, args)?;
        ensure_eq!(out.code(), Some(1), "{args:?}");
        ensure!(out.stderr.contains("not a driftless database"), "{args:?}: {}", out.stderr);
        ensure!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    ensure_eq!(std::fs::read_to_string(&text)?, "just some notes\n", "the file is untouched");

    let missing = driftless(&dir.path().join("nope.redb"), &["query", "listing_card"])?;
    ensure_eq!(missing.code(), Some(1), "a missing database");
    ensure!(missing.stderr.contains("does not exist"), "{}", missing.stderr);
    ensure!(!dir.path().join("nope.redb").exists(), "query creates no database");
    Ok(())
}

#[test]
fn a_missing_event_file_is_a_clear_error_and_creates_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    let missing = dir.path().join("no-such-file.jsonl");
    let out = driftless(&db, &["ingest", missing.to_str().ok_or("path")?])?;
    ensure_eq!(out.code(), Some(1), "exit status");
    ensure!(out.stderr.starts_with("driftless: cannot read the event file"), "{}", out.stderr);
    ensure_eq!(out.stderr.lines().count(), 1, "one sentence");
    ensure!(!db.exists(), "no database was created");
    Ok(())
}

#[test]
fn bad_usage_exits_with_status_2() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    for args in [
        &["reconcile", "--mode", "partial"][..],
        &["query"],
        &["frobnicate"],
        &["ingest", "-", "--batch", "0"],
        &["kill-switch", "listing_card", "maybe"],
        &["chaos", "tamper", "--read-model", "listing_card"],
        &["demo", "--events", "5"],
    ] {
        let out = driftless(&db, args)?;
        ensure_eq!(out.code(), Some(2), "{args:?}: {}", out.stderr);
        ensure!(!out.stderr.is_empty() && !out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
    }
    let out = driftless(&db, &["query", "listing_kard"])?;
    ensure_eq!(out.code(), Some(2), "an unknown read model");
    ensure!(out.stderr.contains("listing_card, district_stats or district_leaderboard"), "{}", out.stderr);
    ensure!(!db.exists(), "no usage error creates a database");
    Ok(())
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    // Enough rows that the output does not fit in a pipe's buffer.
    let file = generated_file(dir.path(), 6_000, 3_000)?;
    driftless(&db, &["ingest", file.to_str().ok_or("path")?])?.ok()?;
    for args in [&["query", "listing_card", "--json"][..], &["query", "listing_card"]] {
        let mut c = command(&db, args);
        let mut child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let mut first = String::new();
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        stdout.read_line(&mut first)?;
        drop(stdout);
        let status = wait_timeout(&mut child, Duration::from_secs(20))?;
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut err)?;
        }
        ensure!(!first.is_empty(), "{args:?}: no first line");
        ensure!(status.success(), "{args:?}: exit {status:?}, stderr {err}");
        ensure!(err.is_empty(), "{args:?}: stderr {err}");
    }
    Ok(())
}

#[test]
fn no_color_output_has_no_escape_codes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    ingest_fixture(&db, &[])?;
    for args in [
        &["query", "listing_card"][..],
        &["freshness"],
        &["reconcile", "--mode", "full"],
        &["--help"],
        &["query", "listing_card", "nope"],
        &["reconcile", "--mode", "partial"],
    ] {
        let mut c = command(&db, args);
        c.env("NO_COLOR", "1");
        let out = run_with(c, None)?;
        ensure!(
            !out.stdout.contains('\u{1b}') && !out.stderr.contains('\u{1b}'),
            "{args:?} printed an escape code"
        );
        ensure!(!out.stdout.is_empty() || !out.stderr.is_empty(), "{args:?} printed nothing");
    }
    Ok(())
}

#[test]
fn tampered_rows_are_found_by_reconciliation_and_verify_until_a_rebuild() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    let file = generated_file(dir.path(), 2_000, 100)?;
    driftless(&db, &["ingest", file.to_str().ok_or("path")?])?.ok()?;
    driftless(&db, &["verify"])?.ok()?;

    let tampered = driftless(
        &db,
        &["chaos", "tamper", "--read-model", "listing_card", "--rows", "5", "--seed", "11", "--json"],
    )?
    .ok()?
    .json_lines()?;
    let keys: BTreeSet<String> =
        tampered.iter().filter_map(|t| t.get("key").and_then(Value::as_str)).map(str::to_string).collect();
    ensure_eq!(keys.len(), 5, "5 distinct keys tampered");

    let report = driftless(&db, &["reconcile", "--mode", "full", "--read-model", "listing_card", "--json"])?
        .ok()?
        .json_lines()?;
    let r = report.first().ok_or("no report")?;
    ensure_eq!(report.len(), 1, "one read model");
    ensure_eq!(r.get("read_model").and_then(Value::as_str), Some("listing_card"), "read model");
    ensure_eq!(r.get("mode").and_then(Value::as_str), Some("full"), "mode");
    ensure_eq!(r.get("sampled").and_then(Value::as_u64), Some(100), "checked");
    ensure_eq!(r.get("drifted").and_then(Value::as_u64), Some(5), "drifted");
    ensure_eq!(r.get("errors").and_then(Value::as_u64), Some(0), "errors");
    ensure_eq!(r.get("breach").and_then(Value::as_bool), Some(true), "breach");
    ensure!(r.get("drift_ratio").and_then(Value::as_f64).is_some_and(|x| (x - 0.05).abs() < 1e-9), "{r}");
    ensure_eq!(r.get("state").and_then(Value::as_str), Some("shadow"), "state");
    let found: BTreeSet<String> = r
        .get("drifted_keys")
        .and_then(Value::as_array)
        .ok_or("no drifted_keys")?
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    ensure_eq!(found, keys, "the drifted keys are the tampered ones");

    let verify = driftless(&db, &["verify", "--json"])?;
    ensure_eq!(verify.code(), Some(1), "verify after tampering: {}", verify.stdout);
    ensure!(verify.stderr.contains("not clean"), "{}", verify.stderr);
    let rebuilt = driftless(&db, &["rebuild", "listing_card", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(
        rebuilt.first().and_then(|r| r.get("handler")).and_then(Value::as_str),
        Some("listing_card"),
        "rebuild"
    );
    let verify = driftless(&db, &["verify", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(
        verify.last().and_then(|v| v.get("clean")).and_then(Value::as_bool),
        Some(true),
        "verify after the rebuild"
    );
    Ok(())
}

#[test]
fn dead_letters_are_listed_retried_and_discarded() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    ingest_fixture(&db, &[])?;
    // 13 rejected lines, one of which (line 27) was applied later: 12 events, per handler.
    let list = driftless(&db, &["dead-letters", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(list.len(), 24, "dead letters");
    let retried = driftless(&db, &["dead-letters", "retry", "--json"])?.ok()?.json_lines()?;
    // The early inquiry of l-d applies now that l-d is published.
    ensure_eq!(retried, vec![serde_json::json!({"retried": 12, "applied": 1, "remaining": 22})], "retry");
    let card = driftless(&db, &["query", "listing_card", "l-d", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(card.first().and_then(|c| c.get("inquiries")).and_then(Value::as_u64), Some(1), "l-d");
    let discarded =
        driftless(&db, &["dead-letters", "discard", "--event-id", "l-zz:1:ListingPriceChanged", "--json"])?
            .ok()?
            .json_lines()?;
    ensure_eq!(discarded, vec![serde_json::json!({"discarded": 2})], "discard");
    let list =
        driftless(&db, &["dead-letters", "--handler", "listing_card", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(list.len(), 10, "dead letters of listing_card");
    ensure_eq!(driftless(&db, &["dead-letters", "discard"])?.code(), Some(2), "discard without an id");
    Ok(())
}

#[test]
fn the_kill_switch_sends_queries_to_the_source_of_truth() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    ingest_fixture(&db, &[])?;
    driftless(&db, &["kill-switch", "listing_card", "on"])?.ok()?;
    let status = driftless(&db, &["kill-switch", "listing_card", "status", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(status.first().and_then(|s| s.get("engaged")).and_then(Value::as_bool), Some(true), "status");
    let query = driftless(&db, &["query", "listing_card", "--json"])?;
    ensure_eq!(query.code(), Some(3), "a switched-off read model");
    ensure!(query.stdout.is_empty(), "{}", query.stdout);
    ensure!(
        query.stderr.contains("switched off") && query.stderr.contains("source of truth"),
        "{}",
        query.stderr
    );
    driftless(&db, &["query", "district_stats", "--json"])?.ok()?;
    driftless(&db, &["kill-switch", "listing_card", "off"])?.ok()?;
    driftless(&db, &["query", "listing_card", "--json"])?.ok()?;
    Ok(())
}

#[test]
fn freshness_and_metrics_describe_the_database() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    ingest_fixture(&db, &[])?;
    let rows = driftless(&db, &["freshness", "--json"])?.ok()?.json_lines()?;
    let names: BTreeSet<&str> =
        rows.iter().filter_map(|r| r.get("read_model").and_then(Value::as_str)).collect();
    for name in ["listing_card", "district_stats", "district_leaderboard"] {
        ensure!(names.contains(name), "freshness lacks {name}: {names:?}");
    }
    for row in &rows {
        for field in [
            "owner",
            "seconds",
            "commit_lag_ms",
            "caught_up",
            "applied",
            "dead_letters",
            "switched_off",
            "header",
        ] {
            ensure!(row.get(field).is_some(), "freshness lacks {field}: {row}");
        }
    }
    let card = rows
        .iter()
        .find(|r| r.get("read_model").and_then(Value::as_str) == Some("listing_card"))
        .ok_or("no listing_card")?;
    ensure_eq!(card.get("applied").and_then(Value::as_u64), Some(15), "applied");
    ensure_eq!(card.get("dead_letters").and_then(Value::as_u64), Some(12), "dead letters");

    let metrics = driftless(&db, &["metrics"])?.ok()?;
    for needle in [
        "driftless_journal_head 28",
        "driftless_handler_applied_events{handler=\"listing_card\"} 15",
        "driftless_read_model_promotion_state{read_model=\"listing_card\",state=\"shadow\"} 1",
        "# TYPE driftless_read_model_freshness_seconds gauge",
    ] {
        ensure!(metrics.stdout.contains(needle), "metrics lack {needle:?}:\n{}", metrics.stdout);
    }
    Ok(())
}

#[test]
fn the_demo_tells_the_whole_story_and_can_run_again() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("demo.redb");
    let out = driftless(&db, &["demo", "--events", "3000"])?.ok()?;
    let text = format!("{}\n{}", out.stdout, out.stderr).to_lowercase();
    for word in
        ["drift", "breach", "page", "promoted", "demoted", "kill switch", "shadow", "# type", "next commands"]
    {
        ensure!(text.contains(word), "the demo never says {word:?}:\n{}", out.stdout);
    }
    ensure!(
        text.contains("kill switch released: yes"),
        "the rebuild of the demoted read model does not say it released its kill switch:\n{}",
        out.stdout
    );
    // The upgrade step: the previous release's database, upgraded, its rows in VND, a line
    // of version 1 a duplicate and one of version 2 applied; the copy is gone afterwards.
    let step = out.stdout.split("8. Upgrade").nth(1).ok_or_else(|| {
        format!(
            "no upgrade step:
{}",
            out.stdout
        )
    })?;
    for words in [
        "format 1 before",
        "upgraded the file in place",
        "through the upcaster",
        "9 cards in all, in VND",
        "a line of contract version 1 that it holds: a duplicate",
        "priced in EUR: applied",
        "385,000  EUR",
        "format 2 after",
        "removed",
    ] {
        ensure!(
            step.contains(words),
            "the upgrade step never says {words:?}:
{step}"
        );
    }
    let copy = dir.path().join("demo.redb.upgrade.redb");
    ensure!(!copy.exists(), "the upgrade step left {} behind", copy.display());

    // A second run replaces the first one's database.
    let again = driftless(&db, &["demo", "--events", "3000"])?.ok()?;
    ensure!(again.stdout.contains("replacing the earlier demo database"), "{}", again.stdout);
    driftless(&db, &["verify"])?.ok()?;

    // A database the demo did not make is left alone.
    let other = dir.path().join("mine.redb");
    ingest_fixture(&other, &[])?;
    let refused = driftless(&other, &["demo", "--events", "3000"])?;
    ensure_eq!(refused.code(), Some(1), "a database with other data");
    ensure!(refused.stderr.contains("--db"), "{}", refused.stderr);
    driftless(&other, &["query", "listing_card", "l-a", "--json"])?.ok()?;

    // Nor does it replace a file where its upgrade step would write its copy.
    let fresh = dir.path().join("fresh.redb");
    let in_the_way = dir.path().join("fresh.redb.upgrade.redb");
    std::fs::write(
        &in_the_way,
        "mine
",
    )?;
    let refused = driftless(&fresh, &["demo", "--events", "3000"])?;
    ensure_eq!(refused.code(), Some(1), "a file at the upgrade step's path");
    ensure!(refused.stderr.contains("fresh.redb.upgrade.redb exists"), "{}", refused.stderr);
    ensure_eq!(
        std::fs::read_to_string(&in_the_way)?,
        "mine
",
        "the file is untouched"
    );
    ensure!(!fresh.exists(), "nothing was started");
    Ok(())
}

#[test]
fn ingest_takes_both_price_shapes_and_query_prints_the_currency() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.redb");
    let lines = [
        created_line("L-eur", 1, r#"{"amount":385000,"currency":"EUR"}"#),
        created_line("L-vnd", 2, "420000"),
        // The same event with its VND price as an object: a duplicate.
        created_line("L-vnd", 2, r#"{"currency":"VND","amount":420000}"#),
        // The same amount in another currency: a conflict.
        created_line("L-vnd", 2, r#"{"amount":420000,"currency":"EUR"}"#),
        // Unknown fields of the price object are ignored.
        created_line("L-usd", 3, r#"{"amount":5,"currency":"USD","note":"incl. fees"}"#),
        // A price change is an amount in the listing's currency.
        r#"{"aggregate_id":"L-eur","event":"ListingPriceChanged","occurred_at":4,"payload":{"price":380000}}"#.into(),
        created_line("L-bad", 5, "5.5"),
        created_line("L-bad", 5, r#""5""#),
        created_line("L-bad", 5, r#"{"amount":5}"#),
        created_line("L-bad", 5, r#"{"amount":5,"currency":"eur"}"#),
        created_line("L-bad", 5, r#"{"amount":9007199254740992,"currency":"EUR"}"#),
        created_line("L-bad", 5, r#"{"amount":-1,"currency":"EUR"}"#),
        r#"{"aggregate_id":"L-eur","event":"ListingPriceChanged","occurred_at":6,"payload":{"price":{"amount":1,"currency":"EUR"}}}"#.into(),
        // The first delivery of an id fixes its payload even when it is rejected.
        r#"{"aggregate_id":"L-x","event":"ListingPublished","occurred_at":7,"payload":{},"event_id":"pub-x"}"#.into(),
        r#"{"aggregate_id":"L-x","event":"ListingArchived","occurred_at":8,"payload":{},"event_id":"pub-x"}"#.into(),
    ];
    let file = dir.path().join("prices.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n")?;
    let out = driftless(&db, &["ingest", path_str(&file)?, "--json", "--batch", "3"])?.ok()?;
    ensure_eq!(
        out.json_lines()?,
        vec![
            serde_json::json!({"lines": 15, "applied": 4, "duplicates": 1, "conflicts": 2, "rejected": 1, "malformed": 7})
        ],
        "the summary"
    );
    let shapes = r#"must be an integer or an object {"amount": integer, "currency": "EUR"}"#;
    for line in [
        "line 4: conflict: the event id L-vnd:2:ListingCreated was first delivered with another payload".to_string(),
        "line 7: the field `payload.price` must be an integer, but is a number with a fraction or an exponent".into(),
        format!("line 8: the field `payload.price` {shapes}, but is a string"),
        "line 9: the required field `payload.price.currency` is missing".into(),
        "line 10: the field `payload.price.currency` is \"eur\", but a currency must be exactly 3 ASCII uppercase letters".into(),
        "line 11: the field `payload.price.amount` is 9007199254740992, outside the allowed range 0 to 9007199254740991".into(),
        "line 12: the field `payload.price.amount` is -1, outside the allowed range".into(),
        "line 13: the field `payload.price` must be an integer, but is an object".into(),
        "line 14: rejected: listing L-x does not exist".into(),
        "line 15: conflict: the event id pub-x was first delivered with another payload".into(),
    ] {
        ensure!(out.stderr.contains(&line), "stderr lacks {line:?}:\n{}", out.stderr);
    }

    // `--json` rows have the contract's fields in the contract's order.
    let json = driftless(&db, &["query", "listing_card", "--json"])?.ok()?;
    ensure_eq!(
        json.stdout.lines().collect::<Vec<_>>(),
        vec![
            r#"{"listing_id":"L-eur","title":"Flat L-eur","price":380000,"currency":"EUR","district":"Mitte","status":"draft","inquiries":0,"version":2}"#,
            r#"{"listing_id":"L-usd","title":"Flat L-usd","price":5,"currency":"USD","district":"Mitte","status":"draft","inquiries":0,"version":1}"#,
            r#"{"listing_id":"L-vnd","title":"Flat L-vnd","price":420000,"currency":"VND","district":"Mitte","status":"draft","inquiries":0,"version":1}"#,
        ],
        "listing_card rows"
    );
    let one = driftless(&db, &["query", "listing_card", "L-usd", "--json"])?.ok()?.json_lines()?;
    ensure_eq!(one.first().and_then(|r| r.get("currency")).and_then(Value::as_str), Some("USD"), "one row");
    let table = driftless(&db, &["query", "listing_card"])?.ok()?;
    let mut rows = table.stdout.lines();
    let header: Vec<&str> = rows.next().unwrap_or_default().split_whitespace().collect();
    ensure_eq!(
        header,
        vec!["listing_id", "title", "price", "currency", "district", "status", "inquiries", "version"],
        "the table's columns"
    );
    ensure!(
        rows.next().is_some_and(|r| r.contains("380,000") && r.contains(" EUR ")),
        "the first row: {}",
        table.stdout
    );
    // The engine's rows are what the reference model folds from the same lines.
    let mut model = ListingModel::new();
    for (_, line) in parse_jsonl(BufReader::new(std::fs::File::open(&file)?)) {
        match line {
            Ok(event) => {
                model.apply(&event);
            }
            Err(_) => model.record_malformed(),
        }
    }
    ensure_eq!(
        json.json_lines()?,
        model.cards().map(|c| c.to_json()).collect::<Vec<_>>(),
        "the engine's rows vs ListingModel"
    );
    ensure_eq!(out.json_lines()?, vec![model.summary().to_json()], "the engine's counts vs ListingModel");
    Ok(())
}

/// The database the previous release wrote, copied into `dir`.
fn previous_release_database(dir: &Path) -> TestResult<PathBuf> {
    let db = dir.join("previous-release.redb");
    std::fs::copy(asset("format1-listings.redb"), &db)?;
    Ok(db)
}

#[test]
fn a_database_of_the_previous_release_is_upgraded_and_takes_both_contracts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = previous_release_database(dir.path())?;
    // Upgraded and rebuilt as it opens; the kill switch that release engaged still holds.
    let switched_off = driftless(&db, &["query", "listing_card", "--json"])?;
    ensure_eq!(
        switched_off.code(),
        Some(3),
        "listing_card, switched off by the previous release: {}",
        switched_off.stderr
    );
    ensure!(switched_off.stderr.contains("switched off"), "{}", switched_off.stderr);
    driftless(&db, &["kill-switch", "listing_card", "off"])?.ok()?;

    // The rows that release printed, each now with its currency: VND.
    let cards = driftless(&db, &["query", "listing_card", "--json"])?.ok()?.json_lines()?;
    let mut expected = read_jsonl(&fixture("format1_listing_card.jsonl"))?;
    for row in &mut expected {
        if let Value::Object(fields) = row {
            fields.insert("currency".into(), Value::from("VND"));
        }
    }
    ensure_eq!(cards, expected, "listing_card after the upgrade");

    // Its own event files again: what it applied is a duplicate, what it rejected is tried
    // again, and the id whose second payload it applied after rejecting the first keeps
    // the applied one (its first line is now a conflict).
    let a = driftless(&db, &["ingest", path_str(&asset("format1-listings/a.jsonl"))?, "--json"])?.ok()?;
    ensure_eq!(
        a.json_lines()?,
        vec![
            serde_json::json!({"lines": 32, "applied": 0, "duplicates": 28, "conflicts": 2, "rejected": 1, "malformed": 1})
        ],
        "a.jsonl again"
    );
    ensure!(a.stderr.contains("line 29: conflict: the event id shared-id"), "{}", a.stderr);
    let b = driftless(&db, &["ingest", path_str(&asset("format1-listings/b.jsonl"))?, "--json"])?.ok()?;
    ensure_eq!(
        b.json_lines()?,
        vec![
            serde_json::json!({"lines": 9, "applied": 0, "duplicates": 8, "conflicts": 0, "rejected": 1, "malformed": 0})
        ],
        "b.jsonl again"
    );

    // Lines of contract version 2.
    let v2 = [
        created_line("L10", 1_700_000_000_900, r#"{"amount":385000,"currency":"EUR"}"#),
        r#"{"aggregate_id":"L1","event":"ListingCreated","occurred_at":1700000000010,"payload":{"title":"Sunny loft","price":{"amount":420000,"currency":"VND"},"district":"Mitte"}}"#.into(),
        r#"{"aggregate_id":"L1","event":"ListingCreated","occurred_at":1700000000010,"payload":{"title":"Sunny loft","price":{"amount":420000,"currency":"EUR"},"district":"Mitte"}}"#.into(),
    ]
    .join("\n");
    let out = run_with(command(&db, &["ingest", "-", "--json"]), Some(v2.as_bytes()))?.ok()?;
    ensure_eq!(
        out.json_lines()?,
        vec![
            serde_json::json!({"lines": 3, "applied": 1, "duplicates": 1, "conflicts": 1, "rejected": 0, "malformed": 0})
        ],
        "version-2 lines"
    );
    let l10 = driftless(&db, &["query", "listing_card", "L10", "--json"])?.ok()?;
    ensure_eq!(
        l10.stdout.trim(),
        r#"{"listing_id":"L10","title":"Flat L10","price":385000,"currency":"EUR","district":"Mitte","status":"draft","inquiries":0,"version":1}"#,
        "the new listing"
    );

    // Reconciliation reads the old journal entries through the upcaster, and both read
    // models are clean: format 1 fingerprinted rows by type name, so the upgrade rebuilt
    // every read model from the journal, district_stats too, whose 2 rows that release's
    // `chaos tamper` changed hold the journal's values again.
    let report = driftless(&db, &["reconcile", "--mode", "full", "--json"])?.ok()?.json_lines()?;
    let summary: Vec<Value> = report
        .iter()
        .map(|r| {
            let field = |name: &str| r.get(name).cloned().unwrap_or(Value::Null);
            serde_json::json!([field("read_model"), field("sampled"), field("drifted"), field("errors")])
        })
        .collect();
    ensure_eq!(
        summary,
        vec![serde_json::json!(["listing_card", 10, 0, 0]), serde_json::json!(["district_stats", 4, 0, 0])],
        "a full reconciliation"
    );
    // The rebuilt rows are the journal's: a tampered district is as that release printed it
    // before the tamper (its kill switch, engaged by the demotion, is released first).
    driftless(&db, &["kill-switch", "district_stats", "off"])?.ok()?;
    let stats = driftless(&db, &["query", "district_stats", "Kreuzberg", "--json"])?.ok()?;
    ensure_eq!(
        stats.stdout.trim(),
        r#"{"district":"Kreuzberg","listings":2,"published":1,"inquiries":0}"#,
        "a tampered district, rebuilt"
    );
    Ok(())
}
