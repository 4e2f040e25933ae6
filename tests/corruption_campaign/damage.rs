//! Damaged images of the fixture, and what driftless makes of each.
//!
//! Each image is written to a file and put through every public read path in turn: open,
//! read every read model and the journal and the bookkeeping, the checksum scan, redb's
//! integrity check; then a second copy goes through a write (register, project). Every call
//! runs under `catch_unwind`, so that a panic is reported as a failed case with its
//! description instead of ending the test. A case passes when nothing panicked and either
//! some step complained, or everything read equals the undamaged original.

use super::fixture::{listing_projectors, probe_options, redeliver, Fixture, OpenCheck, Snapshot, TestError};
use driftless_domain::Upcasters;
use driftless_domain::{PreparedEvent, Timestamp};
use driftless_listings::{ListingEvent, ListingEventKind};
use driftless_storage::OpenError;
use driftless_storage::StoreWriter;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// redb's page size, and the unit of the campaign's offsets.
pub const PAGE: usize = 4096;

thread_local! {
    /// While set, panics on this thread are recorded instead of printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// The panics recorded on this thread (message with location).
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

static HOOK: Once = Once::new();

/// The panics recorded on driftless's isolated storage-engine threads (which run the first
/// commit after an open, and the close), drained by [`quietly`] with its own thread's.
static ISOLATED_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Whether this thread is one of driftless's isolated storage-engine threads.
fn isolated_thread() -> bool {
    std::thread::current().name().is_some_and(|n| n == "driftless-commit" || n == "driftless-close")
}

/// Installs (once) a panic hook that records the panics of a quiet thread (and of
/// driftless's isolated storage-engine threads, which also go on to the previous hook) and
/// leaves every other thread's panics to the previous hook.
fn install_quiet_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let isolated = isolated_thread();
            if QUIET.with(Cell::get) || isolated {
                let mut text = info.to_string().replace('\n', " ");
                // DRIFTLESS_CAMPAIGN_BACKTRACE=1 adds where each panic came from.
                if std::env::var_os("DRIFTLESS_CAMPAIGN_BACKTRACE").is_some() {
                    text.push_str(&format!("\n{}", std::backtrace::Backtrace::force_capture()));
                }
                if tracing() {
                    eprintln!("panic: {text}");
                }
                if isolated {
                    if let Ok(mut panics) = ISOLATED_PANICS.lock() {
                        panics.push(text);
                    }
                    // driftless's own hook may come after this one: it halts such a thread
                    // at its second panic (which would otherwise abort the process).
                    previous(info);
                } else {
                    PANICS.with(|p| p.borrow_mut().push(text));
                }
            } else {
                previous(info);
            }
        }));
    });
}

/// Whether `DRIFTLESS_CAMPAIGN_TRACE` asks for each case and panic on stderr as it happens
/// (to find the case when the process aborts).
fn tracing() -> bool {
    std::env::var_os("DRIFTLESS_CAMPAIGN_TRACE").is_some()
}

/// Runs `f` with this thread's panics recorded; returns its result (or the panic) and the
/// panics seen meanwhile, caught inside driftless or not.
fn quietly<T>(f: impl FnOnce() -> T) -> (std::thread::Result<T>, Vec<String>) {
    install_quiet_hook();
    QUIET.with(|q| q.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    let mut seen = PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if let Ok(mut isolated) = ISOLATED_PANICS.lock() {
        seen.append(&mut isolated);
    }
    (result, seen)
}

/// The kinds of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// A changed byte in the first 4 KiB (redb's header and commit slots).
    HeaderFlip,
    /// A changed byte in any later page.
    PageFlip,
    /// The file cut short.
    Truncation,
    /// Not a driftless file at all.
    Foreign,
}

/// What is done to the original bytes (applied only when the case runs, so that a
/// campaign of many cases holds one copy of the file at a time).
#[derive(Debug, Clone)]
pub enum Damage {
    /// The original, unchanged.
    None,
    /// One byte XORed with a non-zero pattern.
    Flip {
        /// The offset.
        at: usize,
        /// The pattern.
        xor: u8,
    },
    /// The file cut to a length.
    Cut {
        /// The length kept.
        len: usize,
    },
    /// Other bytes altogether.
    Replace(Vec<u8>),
}

/// One damaged image.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its kind.
    pub class: Class,
    /// What was done, for reports.
    pub description: String,
    /// The damage.
    pub damage: Damage,
}

impl Case {
    /// The damaged bytes.
    pub fn bytes(&self, original: &[u8]) -> Vec<u8> {
        match &self.damage {
            Damage::None => original.to_vec(),
            Damage::Flip { at, xor } => flipped(original, *at, *xor),
            Damage::Cut { len } => original.get(..*len).unwrap_or(original).to_vec(),
            Damage::Replace(bytes) => bytes.clone(),
        }
    }
}

/// The first step that complained, or what the data was when none did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// `Store::open` returned an error.
    RefusedAtOpen,
    /// A read returned an error.
    ErrorOnRead,
    /// The checksum scan found damaged values (or failed).
    DetectedByScan,
    /// redb's integrity check found damage (or failed).
    DetectedByIntegrity,
    /// Nothing complained, and everything read equals the original.
    UnaffectedEqual,
    /// Nothing complained, and everything read equals the state before the last commit:
    /// redb fell back to its other commit slot, as after a crash during that commit.
    RolledBack,
}

impl Outcome {
    /// Every outcome, in order.
    pub const ALL: [Self; 6] = [
        Self::RefusedAtOpen,
        Self::ErrorOnRead,
        Self::DetectedByScan,
        Self::DetectedByIntegrity,
        Self::UnaffectedEqual,
        Self::RolledBack,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::RefusedAtOpen => "refused at open",
            Self::ErrorOnRead => "error on read",
            Self::DetectedByScan => "detected by checksum scan",
            Self::DetectedByIntegrity => "detected by check_integrity",
            Self::UnaffectedEqual => "unaffected, equal",
            Self::RolledBack => "rolled back one commit",
        }
    }
}

/// What became of one case.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The outcome.
    pub outcome: Outcome,
    /// Whether ordinary reads returned data that differs from the original without an
    /// error (caught later by the scan or the integrity check).
    pub reads_differed: bool,
    /// Panics caught inside driftless on the way (e.g. by `Store::open`).
    pub contained_panics: usize,
    /// Whether the write probe committed.
    pub write_committed: bool,
    /// Whether the write probe stopped the storage engine twice on damage: its thread was
    /// halted (instead of the process aborting), the write failed and the store was poisoned.
    pub write_halted: bool,
    /// The first complaint, for reports (and the write probe's error when it halted).
    pub detail: String,
}

/// A scratch file for damaged images.
pub struct Scratch {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Scratch {
    /// A scratch directory in memory where there is one.
    ///
    /// # Errors
    /// When no temporary directory can be made.
    pub fn new() -> Result<Self, TestError> {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::Builder::new().prefix("driftless-campaign").tempdir_in(shm)?
        } else {
            tempfile::tempdir()?
        };
        let path = dir.path().join("damaged.redb");
        Ok(Self { _dir: dir, path })
    }

    /// Writes `bytes` to a new file at the scratch path (a new file, not the old one
    /// overwritten: a store whose storage-engine thread was halted keeps its file open and
    /// locked until the process exits).
    fn write(&self, bytes: &[u8]) -> Result<&Path, String> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing the scratch file: {e}")),
        }
        std::fs::write(&self.path, bytes).map_err(|e| format!("writing the scratch file: {e}"))?;
        Ok(&self.path)
    }
}

fn open_error_kind(e: &OpenError) -> Result<&'static str, String> {
    Ok(match e {
        OpenError::NotDriftless { .. } => "not driftless",
        OpenError::Corrupted { .. } => "corrupted",
        OpenError::NewerFormat { .. } => "newer format",
        OpenError::Io { .. } => "i/o",
        OpenError::Storage(_) => "storage",
        OpenError::InUse { .. } => return Err(format!("a damaged file is 'in use': {e}")),
        other => return Err(format!("an unexpected open error: {other}")),
    })
}

/// Runs one case: every step under `catch_unwind`, on stores opened with or without the
/// integrity check. `Err` is a failed case (a panic, or differing data that nothing
/// complained about).
pub fn run_case(
    case: &Case,
    fixture: &Fixture,
    scratch: &Scratch,
    check: OpenCheck,
) -> Result<Verdict, String> {
    let original = fixture.last().ok_or("the fixture has no state")?;
    let previous = fixture.history.len().checked_sub(2).and_then(|i| fixture.history.get(i));
    if tracing() {
        eprintln!("case: {}", case.description);
    }
    let bytes = case.bytes(&fixture.bytes);
    let path = scratch.write(&bytes)?;
    let mut contained = 0usize;
    let panicked = |step: &str, payload: &(dyn std::any::Any + Send), seen: &[String]| {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("{}: PANIC in {step}: {text} [{}]", case.description, seen.join(" | "))
    };

    let (opened, seen) = quietly(|| StoreWriter::open(path, probe_options(check)));
    contained += seen.len();
    let mut store = match opened {
        Err(p) => return Err(panicked("Store::open", &*p, &seen)),
        Ok(Err(e)) => {
            let kind = open_error_kind(&e).map_err(|m| format!("{}: {m}", case.description))?;
            let probe = write_probe(case, &bytes, scratch, check, fixture)?;
            return Ok(Verdict {
                outcome: Outcome::RefusedAtOpen,
                reads_differed: false,
                contained_panics: contained,
                write_committed: probe.committed,
                write_halted: probe.halted,
                detail: probe.with_detail(format!("{kind}: {e}")),
            });
        }
        Ok(Ok(store)) => store,
    };

    let (read, seen) = quietly(|| Snapshot::read(&store, &fixture.ids));
    contained += seen.len();
    let read = read.map_err(|p| panicked("the reads", &*p, &seen))?;

    let (scan, seen) = quietly(|| store.scan_values());
    contained += seen.len();
    let scan = scan.map_err(|p| panicked("scan_values", &*p, &seen))?;

    let (integrity, seen) = quietly(|| store.check_integrity());
    contained += seen.len();
    let integrity = integrity.map_err(|p| panicked("check_integrity", &*p, &seen))?;

    let (closed, seen) = quietly(move || drop(store));
    contained += seen.len();
    closed.map_err(|p| panicked("closing the store", &*p, &seen))?;

    let reads_differed = match &read {
        Ok(snapshot) => snapshot != original && previous != Some(snapshot),
        Err(_) => false,
    };
    let (outcome, detail) = match (&read, &scan, &integrity) {
        (Err(f), _, _) => (Outcome::ErrorOnRead, format!("{}: {}", f.step, f.error)),
        (Ok(_), Err(e), _) => (Outcome::DetectedByScan, format!("the scan failed: {e}")),
        (Ok(_), Ok(s), _) if !s.damaged.is_empty() => (
            Outcome::DetectedByScan,
            format!("{} damaged values, first {:?}", s.damaged.len(), s.damaged.first()),
        ),
        (Ok(_), Ok(_), Ok(false)) => (Outcome::DetectedByIntegrity, "check_integrity: false".to_string()),
        (Ok(_), Ok(_), Err(e)) => (Outcome::DetectedByIntegrity, format!("check_integrity: {e}")),
        (Ok(snapshot), Ok(_), Ok(true)) => {
            if snapshot == original {
                (Outcome::UnaffectedEqual, String::new())
            } else if previous == Some(snapshot) {
                (Outcome::RolledBack, String::new())
            } else {
                return Err(format!(
                    "{}: SILENTLY WRONG DATA: every step succeeded, but {} differs from the original",
                    case.description,
                    snapshot.first_difference(original)
                ));
            }
        }
    };
    let detail = match (&read, reads_differed) {
        (Ok(snapshot), true) => {
            format!("{detail}; the reads had returned other {}", snapshot.first_difference(original))
        }
        _ => detail,
    };
    let probe = write_probe(case, &bytes, scratch, check, fixture)?;
    Ok(Verdict {
        outcome,
        reads_differed,
        contained_panics: contained,
        write_committed: probe.committed,
        write_halted: probe.halted,
        detail: probe.with_detail(detail),
    })
}

/// What became of the write probe.
struct WriteProbe {
    committed: bool,
    /// The write failed because the storage engine's thread was halted, and the store is
    /// poisoned.
    halted: bool,
    /// The write's error (empty when it committed).
    error: String,
}

impl WriteProbe {
    /// `detail`, with the write's error when it halted the storage engine's thread.
    fn with_detail(&self, detail: String) -> String {
        if self.halted {
            format!("{detail}; the write probe: {}", self.error)
        } else {
            detail
        }
    }
}

/// Opens a fresh copy of the damaged image and writes to it: registers the projectors,
/// delivers every fixture event again, then projects a new event and a re-delivery of it.
/// Errors are fine; a panic is a failure, and so is an event the re-delivery applies where
/// the undamaged copy applied it no more (a second application: a damaged offset index
/// taken for a missing offset). Returns whether the write committed, or how it failed.
/// When the write halted the storage engine's thread, the same store is then read (which
/// must neither hang nor panic) and written again (which must be refused as poisoned,
/// without waiting for the halted commit).
fn write_probe(
    case: &Case,
    bytes: &[u8],
    scratch: &Scratch,
    check: OpenCheck,
    fixture: &Fixture,
) -> Result<WriteProbe, String> {
    let path = scratch.write(bytes)?;
    let (result, seen) = quietly(|| -> Result<Result<(), (TestError, bool)>, String> {
        let store = match StoreWriter::open(path, probe_options(check)) {
            Ok(store) => store,
            Err(e) => return Ok(Err((e.into(), false))),
        };
        let write = || -> Result<Result<(), String>, TestError> {
            let registry = store.register(listing_projectors(), &[], Upcasters::new())?;
            let reapplied = redeliver(&store, &registry, &fixture.events)?;
            for ((e, now), clean) in fixture.events.iter().zip(&reapplied).zip(&fixture.reapplied) {
                if *now && !*clean {
                    return Ok(Err(format!(
                        "SECOND APPLICATION: event {} was applied again by the re-delivery",
                        e.event_id
                    )));
                }
            }
            let fresh = ListingEvent::new(
                "probe-listing",
                1_900_000_000_000,
                ListingEventKind::ListingCreated {
                    title: "Probe".into(),
                    price: 1.into(),
                    district: "Mitte".into(),
                },
            );
            let events = [PreparedEvent::new(fresh.clone())?, PreparedEvent::new(fresh)?];
            store.project(&registry, &events, Timestamp(1_900_000_000_001))?;
            store.journal_range(1, 8)?;
            Ok(Ok(()))
        };
        match write() {
            Ok(Ok(())) => Ok(Ok(())),
            Ok(Err(second)) => Err(second),
            Err(e) if store.poisoned().is_some() && e.to_string().contains("its thread is halted") => {
                let after = after_a_halt(&store, fixture)?;
                Ok(Err((format!("{e}; {after}").into(), true)))
            }
            Err(e) => Ok(Err((e, store.poisoned().is_some()))),
        }
    });
    match result {
        Ok(Err(failure)) => Err(format!("{}: {failure}", case.description)),
        Ok(Ok(Ok(()))) => Ok(WriteProbe { committed: true, halted: false, error: String::new() }),
        Ok(Ok(Err((e, poisoned)))) => {
            let error = e.to_string();
            let halted = poisoned && error.contains("its thread is halted");
            Ok(WriteProbe { committed: false, halted, error })
        }
        Err(p) => {
            let text = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("{}: PANIC in the write probe: {text} [{}]", case.description, seen.join(" | ")))
        }
    }
}

/// Reads and writes a store whose commit halted the storage engine's thread: every read
/// must answer (the halted commit holds redb's write lock, not the readers'), and a write
/// must be refused as poisoned. Returns what the reads said; `Err` fails the case.
fn after_a_halt(store: &StoreWriter, fixture: &Fixture) -> Result<String, String> {
    let reads = match Snapshot::read(store, &fixture.ids) {
        Ok(snapshot) if fixture.last() == Some(&snapshot) => {
            "the reads afterwards equal the original".to_string()
        }
        Ok(snapshot) => {
            let original = fixture.last().ok_or("the fixture has no state")?;
            format!("the reads afterwards differ in {}", snapshot.first_difference(original))
        }
        Err(f) => format!("a read afterwards failed: {}: {}", f.step, f.error),
    };
    let scan = match store.scan_values() {
        Ok(scan) => format!("the scan afterwards found {} damaged values", scan.damaged.len()),
        Err(e) => format!("the scan afterwards failed: {e}"),
    };
    match store.register(listing_projectors(), &[], Upcasters::new()) {
        Err(driftless_storage::RegisterError::Poisoned(_)) => {
            Ok(format!("{reads}; {scan}; writes are refused"))
        }
        Err(e) => Err(format!("a write after the halt failed otherwise than poisoned: {e}")),
        Ok(_) => Err("a write after the halt committed".into()),
    }
}

/// A small deterministic generator (splitmix64).
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        let n64 = u64::try_from(n).unwrap_or(u64::MAX);
        usize::try_from(self.next_u64().checked_rem(n64).unwrap_or(0)).unwrap_or(0)
    }

    /// A non-zero byte.
    pub fn nonzero_byte(&mut self) -> u8 {
        u8::try_from(self.below(255) + 1).unwrap_or(0xFF)
    }
}

fn flipped(bytes: &[u8], at: usize, xor: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if let Some(b) = out.get_mut(at) {
        *b ^= xor;
    }
    out
}

/// Whether the exhaustive campaign was asked for.
pub fn full_mode() -> bool {
    std::env::var("DRIFTLESS_CORRUPTION_FULL").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Changed bytes in the first page: every byte of the first 512 (all bits of even bytes, one
/// bit of odd ones); in full mode every bit of every byte of the first 4 KiB.
pub fn header_cases(bytes: &[u8]) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut push = |at: usize, xor: u8| {
        cases.push(Case {
            class: Class::HeaderFlip,
            description: format!("byte {at} of the header xor {xor:#04x}"),
            damage: Damage::Flip { at, xor },
        });
    };
    let end = PAGE.min(bytes.len());
    if full_mode() {
        for at in 0..end {
            for bit in 0..8 {
                push(at, 1 << bit);
            }
        }
    } else {
        // All bits of even bytes, one bit (moving with the offset) of odd ones.
        for at in 0..512.min(end) {
            push(at, if at % 2 == 0 { 0xFF } else { 1 << ((at / 2) % 8) });
        }
    }
    cases
}

/// Changed bytes in every later page: 16 spread offsets with random patterns in every page
/// that holds data, and 2 in every page of zeros (never written, or freed and zeroed); 256
/// per page, whatever it holds, when `exhaustive`.
pub fn page_cases(bytes: &[u8], seed: u64, exhaustive: bool) -> Vec<Case> {
    let mut rng = Rng::new(seed);
    let mut cases = Vec::new();
    let pages = bytes.len().div_ceil(PAGE);
    for page in 1..pages {
        let zeros = bytes
            .get(page * PAGE..((page + 1) * PAGE).min(bytes.len()))
            .is_some_and(|p| p.iter().all(|&b| b == 0));
        let per_page = match (exhaustive, zeros) {
            (true, _) => 256,
            (false, false) => 16,
            (false, true) => 2,
        };
        let stride = PAGE / per_page;
        for k in 0..per_page {
            let at = page * PAGE + k * stride + rng.below(stride);
            if at >= bytes.len() {
                continue;
            }
            let xor = rng.nonzero_byte();
            cases.push(Case {
                class: Class::PageFlip,
                description: format!(
                    "byte {at} (page {page}{}) xor {xor:#04x}",
                    if zeros { ", zeros" } else { "" }
                ),
                damage: Damage::Flip { at, xor },
            });
        }
    }
    cases
}

/// The file cut at lengths 0, 1, 9, 4095 and every 4 KiB boundary.
pub fn truncation_cases(bytes: &[u8]) -> Vec<Case> {
    let mut lengths = vec![0, 1, 9, PAGE - 1];
    lengths.extend((1..).map(|p| p * PAGE).take_while(|&len| len < bytes.len()));
    lengths.sort_unstable();
    lengths.dedup();
    lengths
        .into_iter()
        .filter(|&len| len < bytes.len())
        .map(|len| Case {
            class: Class::Truncation,
            description: format!("cut to {len} of {} bytes", bytes.len()),
            damage: Damage::Cut { len },
        })
        .collect()
}

/// Files that are not driftless databases.
///
/// # Errors
/// When the plain redb database cannot be made.
pub fn foreign_cases(scratch_dir: &Path) -> Result<Vec<Case>, TestError> {
    let mut rng = Rng::new(0xF0E1_D2C3);
    let random: Vec<u8> = (0..4 * PAGE).map(|_| rng.next_u64().to_le_bytes()[0]).collect();
    let mut sqlite = b"SQLite format 3\0".to_vec();
    sqlite.extend_from_slice(&[0x10, 0x00, 0x01, 0x01, 0x00, 0x40, 0x20, 0x20]);
    sqlite.resize(2 * PAGE, 0);
    let text =
        "listing-1,Bright flat,420000,Mitte\nlisting-2,Loft,990000,Kreuzberg\n".repeat(100).into_bytes();
    let plain_redb = {
        let path = scratch_dir.join("plain.redb");
        {
            let db = redb::Database::create(&path)?;
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(redb::TableDefinition::<&str, u64>::new("other"))?;
                t.insert("a", 1)?;
            }
            txn.commit()?;
        }
        std::fs::read(&path)?
    };
    let mut redb_magic_garbage = plain_redb.get(..64).unwrap_or_default().to_vec();
    redb_magic_garbage.extend(random.iter().take(PAGE));
    Ok([
        ("random bytes (16 KiB)", random.clone()),
        ("random bytes (1 byte)", random.get(..1).unwrap_or_default().to_vec()),
        ("a text file", text),
        ("a SQLite header", sqlite),
        ("an empty file", Vec::new()),
        ("a page of zeros", vec![0; PAGE]),
        ("a redb database of another application", plain_redb),
        ("redb's first 64 bytes, then random bytes", redb_magic_garbage),
    ]
    .into_iter()
    .map(|(name, bytes)| Case {
        class: Class::Foreign,
        description: name.to_string(),
        damage: Damage::Replace(bytes),
    })
    .collect())
}

/// Outcome counts of a run, by class.
#[derive(Debug, Default)]
pub struct Tally {
    counts: BTreeMap<(Class, Outcome), (usize, usize)>,
    contained_panics: BTreeMap<Class, usize>,
    writes: BTreeMap<Class, (usize, usize)>,
    halted: Vec<String>,
    failures: Vec<String>,
    examples: BTreeMap<(Class, Outcome), String>,
    differed: Vec<String>,
}

impl Tally {
    /// Counts what became of one case.
    pub fn record(&mut self, case: &Case, result: Result<Verdict, String>) {
        match result {
            Ok(v) => {
                let entry = self.counts.entry((case.class, v.outcome)).or_default();
                entry.0 += 1;
                entry.1 += usize::from(v.reads_differed);
                *self.contained_panics.entry(case.class).or_default() += v.contained_panics;
                let w = self.writes.entry(case.class).or_default();
                if v.write_committed {
                    w.0 += 1;
                } else {
                    w.1 += 1;
                }
                if v.reads_differed {
                    self.differed.push(format!("{}: {}", case.description, v.detail));
                }
                if v.write_halted {
                    self.halted.push(format!("{}: {}", case.description, v.detail));
                }
                self.examples
                    .entry((case.class, v.outcome))
                    .or_insert_with(|| format!("{}: {}", case.description, v.detail));
            }
            Err(failure) => self.failures.push(failure),
        }
    }

    /// The table, one row per class and outcome.
    pub fn table(&self, title: &str) -> String {
        let mut out = format!("\n{title}\n");
        out.push_str(&format!("{:<12} {:<28} {:>7} {:>15}\n", "class", "outcome", "cases", "reads differed"));
        for ((class, outcome), (n, differed)) in &self.counts {
            out.push_str(&format!(
                "{:<12} {:<28} {:>7} {:>15}\n",
                format!("{class:?}"),
                outcome.label(),
                n,
                differed
            ));
        }
        for (class, n) in &self.contained_panics {
            out.push_str(&format!("{class:?}: {n} panics contained inside driftless\n"));
        }
        for (class, (ok, refused)) in &self.writes {
            out.push_str(&format!("{class:?}: write probe committed {ok}, refused {refused}\n"));
        }
        if !self.halted.is_empty() {
            out.push_str(&format!(
                "write probes that halted the storage engine's thread (contained, store poisoned): {}\n",
                self.halted.len()
            ));
        }
        for h in self.halted.iter().take(5) {
            let short: String = h.chars().take(400).collect();
            out.push_str(&format!("  halted: {short}\n"));
        }
        let mut differed_in: BTreeMap<&str, usize> = BTreeMap::new();
        for d in &self.differed {
            let what = d.rsplit_once("the reads had returned other ").map_or("?", |(_, w)| w);
            *differed_in.entry(what).or_default() += 1;
        }
        for (what, n) in differed_in {
            out.push_str(&format!("reads differed in {what}: {n} cases (all caught by a later step)\n"));
        }
        out.push_str(&format!("failed cases: {}\n", self.failures.len()));
        for d in self.differed.iter().take(20) {
            let short: String = d.chars().take(240).collect();
            out.push_str(&format!("  reads differed, caught later: {short}\n"));
        }
        for ((class, outcome), example) in &self.examples {
            let short: String = example.chars().take(200).collect();
            out.push_str(&format!("  e.g. {class:?} / {}: {short}\n", outcome.label()));
        }
        out
    }

    /// The failed cases.
    pub fn failures(&self) -> &[String] {
        &self.failures
    }

    /// How many cases of `class` ended with `outcome`.
    pub fn count(&self, class: Class, outcome: Outcome) -> usize {
        self.counts.get(&(class, outcome)).map_or(0, |(n, _)| *n)
    }

    /// How many write probes committed, over every class.
    pub fn writes_committed(&self) -> usize {
        self.writes.values().map(|(ok, _)| ok).sum()
    }

    /// How many write probes halted the storage engine's thread, over every class.
    pub fn writes_halted(&self) -> usize {
        self.halted.len()
    }

    /// How many cases ran.
    pub fn total(&self) -> usize {
        self.counts.values().map(|(n, _)| n).sum::<usize>() + self.failures.len()
    }
}
