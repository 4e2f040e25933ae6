//! The corruption campaign: a sample-domain database damaged every way we can think of,
//! and a backward-compatibility fixture.
//!
//! The promise under test: whatever the bytes of the file, driftless never panics or
//! aborts, and never returns silently wrong data — each damaged image is refused at open,
//! makes a read fail, is found by the checksum scan or by redb's integrity check, or reads
//! back exactly as the original.
//!
//! The default run samples (every byte of the first 512, 16 offsets in every later page that
//! holds data and 2 in every page of zeros, every 4 KiB truncation, foreign files). `DRIFTLESS_CORRUPTION_FULL=1`
//! flips every bit of the first 4 KiB and 256 offsets per page; run it in release:
//!
//! ```text
//! DRIFTLESS_CORRUPTION_FULL=1 cargo test --release -p driftless-tests --test integration \
//!     corruption_campaign -- --nocapture
//! ```
//!
//! Each test runs its cases in a child process (this test binary, filtered to the test), so
//! that a process abort — a panic while unwinding, a stack overflow — fails the case it hit
//! instead of the whole run, and a new child goes on from the next case. Other switches:
//! `DRIFTLESS_CAMPAIGN_ONLY=TEXT` runs the cases whose description contains `TEXT`;
//! `DRIFTLESS_CAMPAIGN_FROM=0` runs the cases in the test process itself (the child's
//! mode, printing one protocol line per case), where `DRIFTLESS_CAMPAIGN_TRACE=1` prints
//! each case and panic as it happens and `DRIFTLESS_CAMPAIGN_BACKTRACE=1` adds where each
//! panic came from.

mod compat;
mod damage;
mod fixture;

use damage::{foreign_cases, header_cases, page_cases, truncation_cases, Case, Scratch, Tally};
use fixture::{build_at, fixture_events, Fixture, TestError};
use std::process::Command;
use std::sync::OnceLock;

type TestResult = Result<(), TestError>;

/// The campaign's fixture, built once per test binary: 320 events in commits of 40.
fn fixture() -> Result<&'static Fixture, TestError> {
    static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();
    FIXTURE
        .get_or_init(|| {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            build_at(&dir.path().join("fixture.redb"), &fixture_events(320, 11), 40)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| e.clone().into())
}

/// Set in a child process: the index of the first case it runs.
const CHILD_FROM: &str = "DRIFTLESS_CAMPAIGN_FROM";

/// The test's name as the harness knows it (without the crate name).
fn test_name(function: &str) -> String {
    let module = module_path!().split_once("::").map_or(module_path!(), |(_, rest)| rest);
    format!("{module}::{function}")
}

/// Runs the cases of one test in child processes (this test binary, filtered to the test):
/// a process that aborts — a panic during unwinding, a stack overflow, an allocation
/// failure — fails the case it was running, and a new child goes on with the next one.
fn campaign(function: &str, title: &str, cases: &[Case]) -> TestResult {
    // DRIFTLESS_CAMPAIGN_ONLY=TEXT runs only the cases whose description contains TEXT.
    let only = std::env::var("DRIFTLESS_CAMPAIGN_ONLY").ok();
    let selected: Vec<Case>;
    let cases = match &only {
        Some(text) => {
            selected = cases.iter().filter(|c| c.description.contains(text.as_str())).cloned().collect();
            selected.as_slice()
        }
        None => cases,
    };
    let fixture = fixture()?;
    let fingerprint = blake3::hash(&fixture.bytes).to_hex().to_string();
    if let Ok(from) = std::env::var(CHILD_FROM) {
        return child(from.parse()?, cases, fixture, &fingerprint);
    }
    let started = std::time::Instant::now();
    let mut tally = Tally::default();
    let mut next = 0;
    let mut children = 0;
    while next < cases.len() {
        children += 1;
        let output = Command::new(std::env::current_exe()?)
            .args([test_name(function).as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_FROM, next.to_string())
            .output()?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut running: Option<usize> = None;
        for line in stdout.lines() {
            let mut words = line.splitn(3, ' ');
            let (tag, index, rest) = (words.next(), words.next(), words.next().unwrap_or(""));
            let index: Option<usize> = index.and_then(|i| i.parse().ok());
            match (tag, index) {
                (Some("@fixture"), _) if line != format!("@fixture {fingerprint}") => {
                    return Err(format!("the child built another fixture: {line}").into());
                }
                (Some("@start"), Some(i)) => running = Some(i),
                (Some("@done"), Some(i)) => {
                    let case = cases.get(i).ok_or("a result for an unknown case")?;
                    tally.record(case, Ok(parse_verdict(rest)?));
                    running = None;
                    next = i + 1;
                }
                (Some("@fail"), Some(i)) => {
                    let case = cases.get(i).ok_or("a result for an unknown case")?;
                    tally.record(case, Err(rest.to_string()));
                    running = None;
                    next = i + 1;
                }
                _ => {}
            }
        }
        match running {
            Some(i) => {
                let case = cases.get(i).ok_or("an unknown case aborted")?;
                let stderr = String::from_utf8_lossy(&output.stderr);
                let tail: Vec<&str> = stderr.lines().rev().take(4).collect();
                tally.record(
                    case,
                    Err(format!(
                        "{}: the process ABORTED ({}): {}",
                        case.description,
                        output.status,
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    )),
                );
                next = i + 1;
            }
            None if output.status.success() && next == cases.len() => {}
            None => {
                return Err(format!(
                    "a child process failed outside any case ({}):\n{stdout}\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                )
                .into())
            }
        }
    }
    println!(
        "{}({} cases over a {}-byte file in {:.1?}, {children} child processes)",
        tally.table(title),
        tally.total(),
        fixture.bytes.len(),
        started.elapsed()
    );
    if tally.total() != cases.len() {
        return Err(format!("{} of {} cases ran", tally.total(), cases.len()).into());
    }
    match tally.failures() {
        [] => Ok(()),
        failures => {
            let shown: Vec<&str> = failures.iter().take(20).map(String::as_str).collect();
            Err(format!("{} of {} cases failed:\n{}", failures.len(), cases.len(), shown.join("\n")).into())
        }
    }
}

/// The child's side: runs the cases from `from` on, one protocol line per step.
fn child(from: usize, cases: &[Case], fixture: &Fixture, fingerprint: &str) -> TestResult {
    let scratch = Scratch::new()?;
    println!("@fixture {fingerprint}");
    for (i, case) in cases.iter().enumerate().skip(from) {
        println!("@start {i}");
        match damage::run_case(case, fixture, &scratch) {
            Ok(v) => {
                let code = damage::Outcome::ALL.iter().position(|o| *o == v.outcome).unwrap_or(usize::MAX);
                println!(
                    "@done {i} {code} {} {} {} {}",
                    u8::from(v.reads_differed),
                    v.contained_panics,
                    u8::from(v.write_committed),
                    one_line(&v.detail)
                );
            }
            Err(failure) => println!("@fail {i} {}", one_line(&failure)),
        }
    }
    Ok(())
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

fn parse_verdict(rest: &str) -> Result<damage::Verdict, TestError> {
    let mut words = rest.splitn(5, ' ');
    let mut number =
        || -> Result<usize, TestError> { Ok(words.next().ok_or("a short result line")?.parse()?) };
    let outcome = *damage::Outcome::ALL.get(number()?).ok_or("an unknown outcome")?;
    let reads_differed = number()? == 1;
    let contained_panics = number()?;
    let write_committed = number()? == 1;
    let detail = words.next().unwrap_or("").to_string();
    Ok(damage::Verdict { outcome, reads_differed, contained_panics, write_committed, detail })
}

#[test]
fn the_fixture_matches_the_reference_model_and_reads_back_unchanged() -> TestResult {
    let fixture = fixture()?;
    let last = fixture.last().ok_or("no final state")?;
    if last.cards.as_ref() != Some(&fixture.model.listing_cards()) {
        return Err("listing_card differs from the reference model".into());
    }
    let summary = fixture.model.summary();
    if summary.applied == 0 || summary.rejected == 0 || summary.duplicates == 0 || summary.conflicts == 0 {
        return Err(format!("the fixture misses a case: {summary}").into());
    }
    if last.dead.is_empty() || last.journal.len() < 300 {
        return Err(
            format!("{} dead letters, {} journal entries", last.dead.len(), last.journal.len()).into()
        );
    }
    // The undamaged bytes go through the whole campaign path as "unaffected".
    let case = Case {
        class: damage::Class::PageFlip,
        description: "the undamaged file".into(),
        damage: damage::Damage::None,
    };
    let verdict = damage::run_case(&case, fixture, &Scratch::new()?)?;
    if verdict.outcome != damage::Outcome::UnaffectedEqual || !verdict.write_committed {
        return Err(format!("the undamaged file: {verdict:?}").into());
    }
    Ok(())
}

#[test]
fn a_changed_byte_in_the_header_is_never_a_panic_or_silently_wrong_data() -> TestResult {
    campaign(
        "a_changed_byte_in_the_header_is_never_a_panic_or_silently_wrong_data",
        "header flips",
        &header_cases(&fixture()?.bytes),
    )
}

#[test]
fn a_changed_byte_in_any_page_is_never_a_panic_or_silently_wrong_data() -> TestResult {
    campaign(
        "a_changed_byte_in_any_page_is_never_a_panic_or_silently_wrong_data",
        "page flips",
        &page_cases(&fixture()?.bytes, 0xC0FF_EE11),
    )
}

#[test]
fn a_truncated_file_is_never_a_panic_or_silently_wrong_data() -> TestResult {
    campaign(
        "a_truncated_file_is_never_a_panic_or_silently_wrong_data",
        "truncations",
        &truncation_cases(&fixture()?.bytes),
    )
}

#[test]
fn a_foreign_file_is_refused_without_a_panic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cases = foreign_cases(dir.path())?;
    let fixture = fixture()?;
    let scratch = Scratch::new()?;
    for case in &cases {
        let verdict = damage::run_case(case, fixture, &scratch)?;
        if verdict.outcome != damage::Outcome::RefusedAtOpen || verdict.write_committed {
            return Err(format!("{}: {verdict:?}", case.description).into());
        }
    }
    campaign("a_foreign_file_is_refused_without_a_panic", "foreign files", &cases)
}
