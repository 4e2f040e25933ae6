//! Shared workload and the two hand-written baselines that driftless is measured against.
//!
//! Baseline A is the projection loop a user would write on redb; baseline B the same loop
//! on SQLite (WAL, `synchronous=FULL`). Both run the two sample projectors
//! (`listing_card` and `district_stats`) with the same business rules as driftless, keep a
//! `(handler, event id)` offset per projector, and encode rows with bincode.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use driftless_listings::{
    decide, DistrictStats, Effect, ListingCard, ListingEvent, ListingMembership, ListingStatus,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The listing stream: `events` events over `listings` listings, default ids, no
/// re-deliveries, conflicts or invalid lines.
#[must_use]
pub fn workload(events: usize, listings: usize, seed: u64) -> Vec<ListingEvent> {
    driftless_listings::generate_events(driftless_listings::GenConfig {
        events,
        listings,
        districts: 24,
        seed,
        redeliveries: 0.0,
        conflicts: 0,
        invalid_lines: 0,
    })
}

const HANDLERS: [&str; 2] = ["listing_card", "district_stats"];

fn bincode_cfg() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(v, bincode_cfg()).unwrap()
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> T {
    bincode::serde::decode_from_slice(b, bincode_cfg()).unwrap().0
}

fn payload_hash(e: &ListingEvent) -> [u8; 32] {
    *blake3_hash(&enc(e)).as_bytes()
}

fn blake3_hash(b: &[u8]) -> driftless::PayloadHash {
    driftless::PayloadHash::of_bytes(b)
}

trait Blake3Bytes {
    fn as_bytes(&self) -> &[u8; 32];
}
impl Blake3Bytes for driftless::PayloadHash {
    fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// What a baseline's storage needs to offer: get/put of rows and offsets inside a batch.
trait Rows {
    fn offset_absent_then_insert(&mut self, handler: &str, id: &str, hash: [u8; 32]) -> bool;
    fn get(&mut self, table: &'static str, key: &str) -> Option<Vec<u8>>;
    fn put(&mut self, table: &'static str, key: &str, value: &[u8]);
}

/// The two sample projectors, written by hand against [`Rows`].
fn project_by_hand(rows: &mut impl Rows, e: &ListingEvent) {
    let id = e.event_id.as_str();
    let hash = payload_hash(e);
    let key = e.aggregate_id.as_str();
    // listing_card
    if rows.offset_absent_then_insert(HANDLERS[0], id, hash) {
        let card: Option<ListingCard> = rows.get("listing_card", key).map(|b| dec(&b));
        if let Ok(effect) = decide(key, card.as_ref().map(|c| c.status), &e.kind) {
            if let Some(card) = effect.apply_to_card(key, card) {
                rows.put("listing_card", key, &enc(&card));
            }
        }
    }
    // district_stats
    if rows.offset_absent_then_insert(HANDLERS[1], id, hash) {
        let m: Option<ListingMembership> = rows.get("district_stats_listings", key).map(|b| dec(&b));
        if let Ok(effect) = decide(key, m.as_ref().map(|m| m.status), &e.kind) {
            let m = match (&effect, m) {
                (Effect::Create { district, .. }, _) => {
                    ListingMembership { district: (*district).to_owned(), status: ListingStatus::Draft }
                }
                (_, Some(m)) => m,
                (_, None) => return,
            };
            let after = effect.status_after(m.status);
            rows.put(
                "district_stats_listings",
                key,
                &enc(&ListingMembership { status: after, district: m.district.clone() }),
            );
            if effect.touches_stats() {
                let mut s: DistrictStats = rows
                    .get("district_stats", &m.district)
                    .map(|b| dec(&b))
                    .unwrap_or_else(|| DistrictStats::empty(&m.district));
                effect.apply_to_stats(&mut s);
                rows.put("district_stats", &m.district, &enc(&s));
            }
        }
    }
}

const A_OFFSETS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("offsets");

/// Baseline A: the hand-written loop on redb.
pub struct RedbBaseline {
    db: redb::Database,
}

struct RedbRows<'t> {
    offsets: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    tables: Vec<(&'static str, redb::Table<'t, &'static str, &'static [u8]>)>,
}

impl Rows for RedbRows<'_> {
    fn offset_absent_then_insert(&mut self, handler: &str, id: &str, hash: [u8; 32]) -> bool {
        if self.offsets.get((handler, id)).unwrap().is_some() {
            return false;
        }
        let mut v = Vec::with_capacity(40);
        v.extend_from_slice(&0u64.to_le_bytes());
        v.extend_from_slice(&hash);
        self.offsets.insert((handler, id), v.as_slice()).unwrap();
        true
    }
    fn get(&mut self, table: &'static str, key: &str) -> Option<Vec<u8>> {
        let t = &self.tables.iter().find(|(n, _)| *n == table).unwrap().1;
        t.get(key).unwrap().map(|g| g.value().to_vec())
    }
    fn put(&mut self, table: &'static str, key: &str, value: &[u8]) {
        let t = &mut self.tables.iter_mut().find(|(n, _)| *n == table).unwrap().1;
        t.insert(key, value).unwrap();
    }
}

const A_TABLES: [&str; 3] = ["listing_card", "district_stats_listings", "district_stats"];

impl RedbBaseline {
    pub fn create(path: &Path) -> Result<Self, Error> {
        Ok(Self { db: redb::Database::create(path)? })
    }

    /// Projects `events` in write transactions of `batch` events each.
    pub fn ingest(&self, events: &[ListingEvent], batch: usize) -> Result<(), Error> {
        for chunk in events.chunks(batch.max(1)) {
            let txn = self.db.begin_write()?;
            {
                let mut rows = RedbRows {
                    offsets: txn.open_table(A_OFFSETS)?,
                    tables: A_TABLES
                        .iter()
                        .map(|n| Ok((*n, txn.open_table(TableDefinition::<&str, &[u8]>::new(n))?)))
                        .collect::<Result<_, Error>>()?,
                };
                for e in chunk {
                    project_by_hand(&mut rows, e);
                }
            }
            txn.commit()?;
        }
        Ok(())
    }

    /// Point read and decode of one `listing_card` row.
    pub fn reader(&self) -> Result<RedbReader, Error> {
        let txn = self.db.begin_read()?;
        Ok(RedbReader { table: txn.open_table(TableDefinition::<&str, &[u8]>::new("listing_card"))? })
    }
}

/// Raw redb get-and-decode of `listing_card`.
pub struct RedbReader {
    table: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl RedbReader {
    pub fn get(&self, key: &str) -> Option<ListingCard> {
        self.table.get(key).unwrap().map(|g| dec(g.value()))
    }
}

/// Baseline B: the hand-written loop on SQLite (WAL, synchronous=FULL, prepared statements).
pub struct SqliteBaseline {
    conn: rusqlite::Connection,
}

struct SqliteRows<'c> {
    tx: &'c rusqlite::Transaction<'c>,
}

impl Rows for SqliteRows<'_> {
    fn offset_absent_then_insert(&mut self, handler: &str, id: &str, hash: [u8; 32]) -> bool {
        let mut st = self
            .tx
            .prepare_cached(
                "INSERT INTO offsets(handler, event_id, applied_at, hash) VALUES (?1, ?2, 0, ?3) ON CONFLICT DO NOTHING",
            )
            .unwrap();
        st.execute(rusqlite::params![handler, id, &hash[..]]).unwrap() == 1
    }
    fn get(&mut self, table: &'static str, key: &str) -> Option<Vec<u8>> {
        let sql = format!("SELECT v FROM {table} WHERE k = ?1");
        let mut st = self.tx.prepare_cached(&sql).unwrap();
        let mut rows = st.query([key]).unwrap();
        rows.next().unwrap().map(|r| r.get::<_, Vec<u8>>(0).unwrap())
    }
    fn put(&mut self, table: &'static str, key: &str, value: &[u8]) {
        let sql =
            format!("INSERT INTO {table}(k, v) VALUES (?1, ?2) ON CONFLICT(k) DO UPDATE SET v = excluded.v");
        let mut st = self.tx.prepare_cached(&sql).unwrap();
        st.execute(rusqlite::params![key, value]).unwrap();
    }
}

impl SqliteBaseline {
    pub fn create(path: &Path) -> Result<Self, Error> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE offsets(handler TEXT NOT NULL, event_id TEXT NOT NULL, applied_at INTEGER NOT NULL,
                 hash BLOB NOT NULL, PRIMARY KEY(handler, event_id)) WITHOUT ROWID;
             CREATE TABLE listing_card(k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE district_stats_listings(k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE district_stats(k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
        )?;
        Ok(Self { conn })
    }

    pub fn ingest(&mut self, events: &[ListingEvent], batch: usize) -> Result<(), Error> {
        for chunk in events.chunks(batch.max(1)) {
            let tx = self.conn.transaction()?;
            {
                let mut rows = SqliteRows { tx: &tx };
                for e in chunk {
                    project_by_hand(&mut rows, e);
                }
            }
            tx.commit()?;
        }
        Ok(())
    }
}

/// Opens a driftless engine on the sample domain with `batch` events per commit and every
/// other setting at its default (a queue of 1,024 messages that blocks when full, a 64 MiB
/// page cache, synced commits, the journal on).
pub fn open_engine(path: &Path, batch: usize) -> Result<driftless::Engine<ListingEvent>, Error> {
    open_engine_with(path, batch, driftless::Durability::Immediate)
}

/// As [`open_engine`], with the given commit durability.
pub fn open_engine_with(
    path: &Path,
    batch: usize,
    durability: driftless::Durability,
) -> Result<driftless::Engine<ListingEvent>, Error> {
    let mut b = driftless::Engine::builder(path).max_batch_events(batch.max(1)).durability(durability);
    for p in driftless_listings::projectors() {
        b = b.projector_arc(std::sync::Arc::from(p));
    }
    Ok(b.open()?)
}

/// Ingests through the engine: batches of `batch` events per commit (one event per commit,
/// waited for, when `batch` is 1).
///
/// The engine takes its events by value, as an application hands over the events it has
/// just received; callers copy the stream before they start the clock, so that the copy
/// is not counted (the baselines read the stream in place).
pub fn driftless_ingest(
    engine: &driftless::Engine<ListingEvent>,
    events: Vec<ListingEvent>,
    batch: usize,
) -> Result<(), Error> {
    if batch <= 1 {
        for e in events {
            engine.dispatch_and_wait(e)?;
        }
    } else {
        engine.dispatch_batch(events)?.wait()?;
    }
    Ok(())
}

/// Ingests `events` events through the engine, 1,000 per commit, generating the stream in
/// slices of `slice` events as a producer reading a stream would, so that the bench does
/// not hold the whole stream (each slice has its own listings, 20 events each).
pub fn ingest_in_slices(
    engine: &driftless::Engine<ListingEvent>,
    events: usize,
    slice: usize,
) -> Result<(), Error> {
    let slice = slice.max(1);
    let (mut done, mut seed) = (0usize, 1u64);
    // Each slice is generated from the same start time; shifted, the times keep increasing
    // from one slice to the next, as a stream's do.
    let mut shift = 0u64;
    while done < events {
        let n = slice.min(events - done);
        let part: Vec<ListingEvent> = workload(n, (n / 20).max(1), seed)
            .into_iter()
            .map(|mut e| {
                e.occurred_at += shift;
                e.aggregate_id = format!("s{seed}-{}", e.aggregate_id);
                e.event_id = format!("{}:{}:{}", e.aggregate_id, e.occurred_at, e.kind.name());
                e
            })
            .collect();
        let last = part.iter().map(|e| e.occurred_at).max().unwrap_or(0);
        shift = last.saturating_sub(driftless_listings::GENERATED_START_MILLIS) + 1;
        driftless_ingest(engine, part, 1000)?;
        done += n;
        seed += 1;
    }
    Ok(())
}

/// Events per commit with which the databases that re-delivery, point reads, rebuild and
/// reconciliation start from are filled.
pub const FILL_BATCH: usize = 1_000;

/// Baseline A's database at `path` with `stream` projected, [`FILL_BATCH`] events per commit.
pub fn filled_redb(path: &Path, stream: &[ListingEvent]) -> Result<RedbBaseline, Error> {
    let base = RedbBaseline::create(path)?;
    base.ingest(stream, FILL_BATCH)?;
    Ok(base)
}

/// Baseline B's database at `path` with `stream` projected, [`FILL_BATCH`] events per commit.
pub fn filled_sqlite(path: &Path, stream: &[ListingEvent]) -> Result<SqliteBaseline, Error> {
    let mut sq = SqliteBaseline::create(path)?;
    sq.ingest(stream, FILL_BATCH)?;
    Ok(sq)
}

/// An engine on a new database at `path` with `stream` ingested, [`FILL_BATCH`] events per
/// commit.
pub fn filled_engine(path: &Path, stream: &[ListingEvent]) -> Result<driftless::Engine<ListingEvent>, Error> {
    let engine = open_engine(path, FILL_BATCH)?;
    driftless_ingest(&engine, stream.to_vec(), FILL_BATCH)?;
    Ok(engine)
}

/// The events of `stream` that the business rules accept, in order. Re-delivering them is
/// re-delivering applied events (a re-delivered rejected event is tried again, by the
/// contract, so it is not a re-delivery of an applied event).
#[must_use]
pub fn applied_events(stream: &[ListingEvent]) -> Vec<ListingEvent> {
    let mut model = driftless_listings::ListingModel::new();
    stream
        .iter()
        .filter(|e| matches!(model.apply(e), driftless_listings::Outcome::Applied))
        .cloned()
        .collect()
}

/// `reads` listing ids of `stream` to look up, spread over all its listings.
#[must_use]
pub fn lookup_keys(stream: &[ListingEvent], reads: usize) -> Vec<String> {
    let mut keys: Vec<&String> = stream.iter().map(|e| &e.aggregate_id).collect();
    keys.sort();
    keys.dedup();
    (0..reads).map(|i| keys[(i * 7919) % keys.len()].clone()).collect()
}

/// Reads and decodes the `listing_card` row of every key with raw redb.
pub fn redb_point_reads(reader: &RedbReader, keys: &[String]) {
    for k in keys {
        std::hint::black_box(reader.get(k).unwrap());
    }
}

/// The engine's `listing_card` read repository.
pub fn listing_cards(
    engine: &driftless::Engine<ListingEvent>,
) -> Result<driftless::ReadRepository<String, ListingCard>, Error> {
    match engine.read(&driftless_listings::LISTING_CARD)? {
        driftless::ReadAnswer::Ready(repo) => Ok(repo),
        driftless::ReadAnswer::UseSourceOfTruth { .. } => Err("listing_card is switched off".into()),
    }
}

/// Reads the `listing_card` row of every key through the engine's read repository.
pub fn driftless_point_reads(
    repo: &driftless::ReadRepository<String, ListingCard>,
    keys: &[String],
) -> Result<(), Error> {
    for k in keys {
        std::hint::black_box(repo.get(k)?.unwrap());
    }
    Ok(())
}

/// Producer threads of the concurrent-producers figure.
pub const PRODUCERS: usize = 8;

/// Splits `stream` into one part per producer, by aggregate, so that each listing's events
/// stay in order.
#[must_use]
pub fn producer_parts(stream: &[ListingEvent], producers: usize) -> Vec<Vec<ListingEvent>> {
    let mut parts: Vec<Vec<ListingEvent>> = vec![Vec::new(); producers.max(1)];
    let n = parts.len();
    for e in stream {
        let h = e.aggregate_id.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        parts[h % n].push(e.clone());
    }
    parts
}

/// Runs one producer thread per part, each keeping up to `window` receipts in flight and
/// waiting for every one of them. Returns the dispatch-to-commit latency of every event.
pub fn run_producers(
    engine: &Arc<driftless::Engine<ListingEvent>>,
    parts: Vec<Vec<ListingEvent>>,
    window: usize,
) -> Vec<Duration> {
    let handles: Vec<_> = parts
        .into_iter()
        .map(|part| {
            let engine = Arc::clone(engine);
            std::thread::spawn(move || -> Vec<Duration> {
                let mut lat = Vec::with_capacity(part.len());
                let mut inflight = std::collections::VecDeque::new();
                for e in part {
                    if inflight.len() >= window {
                        let (at, r): (Instant, driftless::Receipt) = inflight.pop_front().unwrap();
                        r.wait().unwrap();
                        lat.push(at.elapsed());
                    }
                    inflight.push_back((Instant::now(), engine.dispatch(e).unwrap()));
                }
                for (at, r) in inflight {
                    r.wait().unwrap();
                    lat.push(at.elapsed());
                }
                lat
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

/// The `q` quantile (0 to 1) of sorted latencies, in milliseconds; 0 for none.
#[must_use]
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Rebuilds `listing_card` from the journal.
pub fn rebuild_listing_card(engine: &driftless::Engine<ListingEvent>) -> Result<(), Error> {
    engine.rebuild("listing_card")?;
    Ok(())
}

/// An engine on a new database at `path` holding `events` events over `listings` listings,
/// and a reconciliation harness with the refold reconciler of `listing_card` on 2 workers.
/// The journal tail is already filed, as every run does first, so that a run measures the
/// checking. Drop the harness before shutting the engine down.
pub fn reconcile_fixture(
    path: &Path,
    listings: usize,
    events: usize,
) -> Result<(driftless::Engine<ListingEvent>, driftless::reconcile::ReconcileHarness), Error> {
    let engine = filled_engine(path, &workload(events, listings, 11))?;
    let store = Arc::clone(engine.store());
    let harness = engine
        .reconciliation()
        .reconciler(Arc::new(driftless_listings::embed::listing_card_reconciler(Arc::clone(&store))))
        .workers(2)
        .build()?;
    store.file_aggregates()?;
    Ok((engine, harness))
}

/// One full refold reconciliation of `listing_card`; returns the number of keys checked.
pub fn reconcile_listing_card(harness: &driftless::reconcile::ReconcileHarness) -> Result<u64, Error> {
    let report = harness.run_once(driftless::reconcile::ReconcileMode::Full, Some("listing_card"), None)?;
    Ok(report.read_models.iter().map(|r| r.sampled).sum())
}

/// CPU time each thread of this process has run, by thread name, in nanoseconds (from
/// `/proc/self/task/*/schedstat`; empty where that is not available). Differences of two
/// readings tell how busy each thread was, which a noisy machine's wall-clock figures hide.
#[must_use]
pub fn thread_cpu_nanos() -> Vec<(String, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim().to_string();
        if let Some(ran) = ran_nanos(&dir.join("schedstat")) {
            out.push((name, ran));
        }
    }
    out
}

/// CPU time the calling thread has run, in nanoseconds (Linux), if known.
#[must_use]
pub fn this_thread_cpu_nanos() -> Option<u64> {
    ran_nanos(Path::new("/proc/thread-self/schedstat"))
}

/// The first field of a `schedstat` file: nanoseconds the task has run on a CPU.
fn ran_nanos(schedstat: &Path) -> Option<u64> {
    std::fs::read_to_string(schedstat).ok()?.split_whitespace().next()?.parse().ok()
}

/// CPU time this process has used, user and system, in nanoseconds (Linux), if known: the
/// threads that have exited included, unlike [`thread_cpu_nanos`].
#[must_use]
pub fn process_cpu_nanos() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which is in parentheses and may hold spaces):
    // utime and stime are the 12th and 13th of them, in clock ticks (100 per second here).
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 10_000_000)
}

/// Peak resident set size of this process, in bytes (Linux), if known.
#[must_use]
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
