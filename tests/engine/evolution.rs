//! Event evolution: an application's event type changes between releases, and the journal
//! written by each release stays readable by the next through upcasters.
//!
//! A small bank domain in four schema versions, one kind of change each:
//! 1. `{ account, at, amount: i64 }`;
//! 2. a field added with a default (`memo`);
//! 3. a field renamed and the fields reordered (`account` -> `account_id`, `at` first);
//! 4. one event split in two (a deposit or a withdrawal, by the amount's sign).
//!
//! Each version is its own Rust type, as an application keeps old event types around; the
//! balance projector of every release owns the same table.

use super::TestResult;
use driftless::reconcile::{ReconcileMode, RefoldReconciler};
use driftless::{
    ApplyError, BuildError, Durability, Engine, EngineBuilder, EngineOptions, Event, EventOutcome,
    HandlerName, ProjectionContext, Projector, ReadAnswer, TableDef, TableId, Timestamp, UpcastError,
    Upcasters, Views,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// `Event` for a test type with an `at: u64` field: its name, schema version and the field
/// holding its aggregate id.
macro_rules! event_impl {
    ($t:ty, $name:literal, version $version:literal, $id:ident) => {
        impl Event for $t {
            const SCHEMA_VERSION: u32 = $version;
            fn aggregate_id(&self) -> &str {
                &self.$id
            }
            fn event_name(&self) -> &str {
                $name
            }
            fn occurred_at(&self) -> Timestamp {
                Timestamp(self.at)
            }
        }
    };
}

const BALANCES: TableDef<String, i64> = TableDef::new("balances", 1);
const AUDIT: TableDef<String, i64> = TableDef::new("audit", 1);

/// Version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct V1 {
    account: String,
    at: u64,
    amount: i64,
}

/// Version 2: a field added with a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct V2 {
    account: String,
    at: u64,
    amount: i64,
    #[serde(default)]
    memo: Option<String>,
}

/// Version 3: `account` renamed, fields reordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct V3 {
    at: u64,
    account_id: String,
    memo: Option<String>,
    amount: i64,
}

/// Version 4: split into a deposit and a withdrawal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum V4 {
    Deposited { at: u64, account_id: String, memo: Option<String>, amount: u64 },
    Withdrawn { at: u64, account_id: String, memo: Option<String>, amount: u64 },
}

fn v1_to_v2(e: V1) -> V2 {
    V2 { account: e.account, at: e.at, amount: e.amount, memo: None }
}

fn v2_to_v3(e: V2) -> V3 {
    V3 { at: e.at, account_id: e.account, memo: e.memo, amount: e.amount }
}

fn v3_to_v4(e: V3) -> V4 {
    let amount = e.amount.unsigned_abs();
    if e.amount < 0 {
        V4::Withdrawn { at: e.at, account_id: e.account_id, memo: e.memo, amount }
    } else {
        V4::Deposited { at: e.at, account_id: e.account_id, memo: e.memo, amount }
    }
}

event_impl!(V1, "Moved", version 1, account);
event_impl!(V2, "Moved", version 2, account);
event_impl!(V3, "Moved", version 3, account_id);

impl V4 {
    fn signed(&self) -> (&str, i64) {
        match self {
            V4::Deposited { account_id, amount, .. } => {
                (account_id, i64::try_from(*amount).unwrap_or(i64::MAX))
            }
            V4::Withdrawn { account_id, amount, .. } => {
                (account_id, -i64::try_from(*amount).unwrap_or(i64::MAX))
            }
        }
    }
}

impl Event for V4 {
    const SCHEMA_VERSION: u32 = 4;
    fn aggregate_id(&self) -> &str {
        match self {
            V4::Deposited { account_id, .. } | V4::Withdrawn { account_id, .. } => account_id,
        }
    }
    fn event_name(&self) -> &str {
        // The id of a release-3 event (name `Moved`) must stay its id: the name is kept.
        "Moved"
    }
    fn occurred_at(&self) -> Timestamp {
        match self {
            V4::Deposited { at, .. } | V4::Withdrawn { at, .. } => Timestamp(*at),
        }
    }
}

/// The signed amount and account of an event of any version.
trait Movement: Event {
    fn movement(&self) -> (&str, i64);
}

impl Movement for V1 {
    fn movement(&self) -> (&str, i64) {
        (&self.account, self.amount)
    }
}
impl Movement for V2 {
    fn movement(&self) -> (&str, i64) {
        (&self.account, self.amount)
    }
}
impl Movement for V3 {
    fn movement(&self) -> (&str, i64) {
        (&self.account_id, self.amount)
    }
}
impl Movement for V4 {
    fn movement(&self) -> (&str, i64) {
        self.signed()
    }
}

/// The balance projector of any release: adds the signed amount; refuses to go below
/// -100 (so that rejections, and their dead letters, happen too).
struct Balances(HandlerName, TableDef<String, i64>);

impl Balances {
    fn named(name: &str) -> TestResult<Self> {
        let table = if name == "balances" { BALANCES } else { AUDIT };
        Ok(Self(HandlerName::new(name)?, table))
    }
}

impl<E: Movement> Projector<E> for Balances {
    fn handler_name(&self) -> HandlerName {
        self.0.clone()
    }
    fn tables(&self) -> Vec<TableId> {
        vec![self.1.id()]
    }
    fn apply(&self, e: &E, _: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
        let (account, amount) = e.movement();
        let mut t = views.table(&self.1)?;
        let now = t.get(&account.to_owned())?.unwrap_or(0) + amount;
        if now < -100 {
            return Err(ApplyError::rejected(format!("{account} would go below -100")));
        }
        t.put(&account.to_owned(), &now)?;
        Ok(())
    }
}

fn options() -> EngineOptions {
    EngineOptions { durability: Durability::Eventual, ..EngineOptions::default() }
}

fn builder<E: Movement>(path: &Path) -> TestResult<EngineBuilder<E>> {
    Ok(Engine::builder(path).options(options()).projector(Balances::named("balances")?))
}

fn upcasters_to_v2() -> Upcasters<V2> {
    Upcasters::new().upcast(1, v1_to_v2)
}

fn upcasters_to_v3() -> Upcasters<V3> {
    Upcasters::new().upcast(1, v1_to_v2).upcast(2, v2_to_v3)
}

fn upcasters_to_v4() -> Upcasters<V4> {
    Upcasters::new().upcast(1, v1_to_v2).upcast(2, v2_to_v3).upcast(3, v3_to_v4)
}

fn balances<E: Event>(engine: &Engine<E>) -> TestResult<BTreeMap<String, i64>> {
    match engine.read(&BALANCES)? {
        ReadAnswer::Ready(repo) => Ok(repo.iter()?.collect::<Result<BTreeMap<_, _>, _>>()?),
        ReadAnswer::UseSourceOfTruth { read_model, .. } => {
            Err(format!("{read_model} is switched off").into())
        }
    }
}

fn v1(account: &str, at: u64, amount: i64) -> V1 {
    V1 { account: account.into(), at, amount }
}

/// Release 1 writes three events (one rejected); release 2 reads them through the upcaster.
fn write_release_1(path: &Path) -> TestResult {
    let engine = builder::<V1>(path)?.open()?;
    for e in [v1("a", 1, 30), v1("b", 2, -150), v1("a", 3, 12)] {
        engine.dispatch_and_wait(e)?;
    }
    engine.shutdown()?;
    Ok(())
}

#[test]
fn an_added_field_keeps_redelivery_rebuild_catch_up_retry_and_reconciliation_working() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bank.redb");
    write_release_1(&path)?;

    // Release 2 without the upcaster is refused at open, naming what to register; the file
    // is left as it was (a later open with the upcaster works).
    let refused = builder::<V2>(&path)?.open().err().ok_or("release 2 opened without an upcaster")?;
    let text = refused.to_string();
    ensure!(
        matches!(
            &refused,
            BuildError::UnreadableEvents { source: UpcastError::Missing { version: 1, .. }, .. }
        ),
        "{refused:?}"
    );
    ensure!(text.contains("Moved") && text.contains("schema version 1"), "{text}");
    ensure!(text.contains("register one from version 1"), "{text}");

    let engine =
        builder::<V2>(&path)?.upcasters(upcasters_to_v2()).projector(Balances::named("audit")?).open()?;
    // The new handler caught up from the version-1 journal.
    engine.flush()?;
    ensure_eq!(balances(&engine)?, BTreeMap::from([("a".to_string(), 42)]), "balances after the upgrade");
    let audit = match engine.read(&AUDIT)? {
        ReadAnswer::Ready(repo) => repo.iter()?.collect::<Result<BTreeMap<_, _>, _>>()?,
        ReadAnswer::UseSourceOfTruth { .. } => return Err("audit is switched off".into()),
    };
    ensure_eq!(audit, BTreeMap::from([("a".to_string(), 42)]), "the new handler, caught up from version 1");
    // The same event, delivered by the new release: a duplicate. With another memo: a conflict.
    let again = v1_to_v2(v1("a", 1, 30));
    ensure_eq!(engine.dispatch_and_wait(again.clone())?.outcome, EventOutcome::Duplicate, "re-delivery");
    let other = V2 { memo: Some("rent".into()), ..again };
    ensure!(
        matches!(engine.dispatch_and_wait(other)?.outcome, EventOutcome::Conflict { .. }),
        "another payload under the id"
    );
    // The version-1 dead letter is retried through the upcaster (b still cannot go below).
    let (retried, fixed) = engine.retry_dead_letters(Some("balances"))?;
    ensure_eq!((retried, fixed), (1, 0), "the retry of the version-1 dead letter");
    let letters = engine.dead_letters(Some("balances"))?;
    ensure_eq!(letters.len(), 1, "dead letters after the retry");
    ensure_eq!(
        letters.first().map(|d| (d.event_name.as_str(), d.schema_version)),
        Some(("Moved", 2)),
        "the retried letter is stored at the current version"
    );
    // Rebuild and refold reconciliation read the old journal.
    engine.rebuild("balances")?;
    ensure_eq!(balances(&engine)?, BTreeMap::from([("a".to_string(), 42)]), "balances after the rebuild");
    let fold = |events: &[V2]| -> Option<i64> {
        let sum = events.iter().try_fold(0i64, |acc, e| {
            let next = acc + e.amount;
            (next >= -100).then_some(next).or(Some(acc))
        })?;
        (!events.is_empty() && sum != 0).then_some(sum)
    };
    let refold: Arc<dyn driftless::reconcile::Reconciler> =
        Arc::new(RefoldReconciler::new(Arc::clone(engine.store()), BALANCES, fold));
    let harness = engine.reconciliation().reconcilers(vec![refold]).build()?;
    let report = harness.run_once(ReconcileMode::Full, None, None)?;
    let run = report.read_model("balances").ok_or("no reconciliation of balances")?;
    ensure_eq!((run.sampled, run.drifted, run.errors), (2, 0, 0), "the refold over the old journal");
    // The journal lists current events only.
    let journal = engine.store().journal_range(1, usize::MAX)?;
    let versions: Vec<u32> = journal.iter().map(|e| e.schema_version).collect();
    ensure_eq!(versions, vec![1, 1, 1, 2], "schema versions in the journal");
    let current: Vec<V2> = journal
        .iter()
        .map(|e| engine.upcasters().decode(e.schema_version, &e.body))
        .collect::<Result<_, _>>()?;
    ensure_eq!(
        current.first(),
        Some(&V2 { account: "a".into(), at: 1, amount: 30, memo: None }),
        "the first entry, read now"
    );
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_chain_of_upcasters_composes_across_three_releases() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bank.redb");
    write_release_1(&path)?;
    {
        let engine = builder::<V2>(&path)?.upcasters(upcasters_to_v2()).open()?;
        engine.dispatch_and_wait(V2 { account: "c".into(), at: 4, amount: 7, memo: Some("tip".into()) })?;
        engine.shutdown()?;
    }
    {
        let engine = builder::<V3>(&path)?.upcasters(upcasters_to_v3()).open()?;
        engine.dispatch_and_wait(V3 { at: 5, account_id: "a".into(), memo: None, amount: -2 })?;
        engine.shutdown()?;
    }
    let engine = builder::<V4>(&path)?.upcasters(upcasters_to_v4()).open()?;
    // Events of versions 1, 2 and 3 delivered again as version 4: duplicates.
    for e in [
        v3_to_v4(v2_to_v3(v1_to_v2(v1("a", 1, 30)))),
        v3_to_v4(v2_to_v3(V2 { account: "c".into(), at: 4, amount: 7, memo: Some("tip".into()) })),
        V4::Withdrawn { at: 5, account_id: "a".into(), memo: None, amount: 2 },
    ] {
        ensure_eq!(
            engine.dispatch_and_wait(e)?.outcome,
            EventOutcome::Duplicate,
            "a re-delivery at version 4"
        );
    }
    let want = BTreeMap::from([("a".to_string(), 40), ("c".to_string(), 7)]);
    ensure_eq!(balances(&engine)?, want, "balances at version 4");
    engine.rebuild("balances")?;
    ensure_eq!(balances(&engine)?, want, "balances rebuilt at version 4");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn a_journal_newer_than_the_application_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bank.redb");
    write_release_1(&path)?;
    {
        let engine = builder::<V2>(&path)?.upcasters(upcasters_to_v2()).open()?;
        engine.dispatch_and_wait(V2 { account: "c".into(), at: 4, amount: 7, memo: None })?;
        engine.shutdown()?;
    }
    // Release 1 again (a downgrade): the version-2 entry cannot be read.
    let refused = builder::<V1>(&path)?.open().err().ok_or("a downgrade opened")?;
    ensure!(
        matches!(
            &refused,
            BuildError::UnreadableEvents { source: UpcastError::Newer { version: 2, current: 1, .. }, .. }
        ),
        "{refused:?}"
    );
    ensure!(refused.to_string().contains("newer than the version 1"), "{refused}");
    Ok(())
}

/// What a database holds, as its store reads it.
fn dump(path: &Path) -> TestResult<String> {
    let store = driftless_storage::StoreWriter::open(path, driftless_storage::StoreOptions::default())?;
    Ok(format!(
        "{:?} {:?} {:?} {:?} {:?}",
        store.journal_range(1, usize::MAX)?,
        store.handler_records()?,
        store.read_model_records()?,
        store.dead_letters(None)?,
        store.event_schemas()
    ))
}

#[test]
fn an_upcaster_reading_the_wrong_type_is_refused_at_open_and_nothing_is_written() -> TestResult {
    /// Two fields, not three: version-1 bytes do not decode as it.
    #[derive(Deserialize)]
    struct Wrong {
        account: String,
        at: u64,
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bank.redb");
    write_release_1(&path)?;
    let before = dump(&path)?;
    let refused = builder::<V2>(&path)?
        .upcast(1, |w: Wrong| V2 { account: w.account, at: w.at, amount: 0, memo: None })
        .open()
        .err()
        .ok_or("opened with an upcaster that cannot decode the journal")?;
    ensure!(
        matches!(
            &refused,
            BuildError::UnreadableEvents { source: UpcastError::Decode { version: 1, .. }, .. }
        ),
        "{refused:?}"
    );
    ensure!(
        refused.to_string().contains("journal entry at position 1 (Moved, schema version 1)"),
        "{refused}"
    );
    ensure!(dump(&path)? == before, "the refused open changed what the file holds");
    // And the right upcaster still opens it.
    builder::<V2>(&path)?.upcasters(upcasters_to_v2()).open()?.shutdown()?;
    Ok(())
}

#[test]
fn swapped_fields_of_one_type_are_never_decoded_silently_wrong() -> TestResult {
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Old {
        account: String,
        at: u64,
        credit: i64,
        debit: i64,
    }
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Swapped {
        account: String,
        at: u64,
        debit: i64,
        credit: i64,
    }
    event_impl!(Old, "Booked", version 1, account);
    event_impl!(Swapped, "Booked", version 2, account);
    impl Movement for Old {
        fn movement(&self) -> (&str, i64) {
            (&self.account, self.credit - self.debit)
        }
    }
    impl Movement for Swapped {
        fn movement(&self) -> (&str, i64) {
            (&self.account, self.credit - self.debit)
        }
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bank.redb");
    {
        let engine = builder::<Old>(&path)?.open()?;
        engine.dispatch_and_wait(Old { account: "a".into(), at: 1, credit: 50, debit: 8 })?;
        engine.shutdown()?;
    }
    // The swap is a new version: without the upcaster, refused; with it, read right.
    ensure!(
        builder::<Swapped>(&path)?.open().is_err(),
        "a swapped type read the old journal without an upcaster"
    );
    let engine = builder::<Swapped>(&path)?
        .upcast(1, |o: Old| Swapped { account: o.account, at: o.at, debit: o.debit, credit: o.credit })
        .open()?;
    engine.rebuild("balances")?;
    ensure_eq!(balances(&engine)?, BTreeMap::from([("a".to_string(), 42)]), "balances after the swap");
    engine.shutdown()?;
    Ok(())
}

#[test]
fn inconsistent_upcasters_are_refused_before_the_file_is_opened() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bank.redb");
    let broken = builder::<V3>(&path)?.upcast(1, v1_to_v2).upcast(2, |e: V1| e);
    match broken.open() {
        Err(BuildError::Upcasters(UpcastError::BrokenChain { version: 1, next: 2, .. })) => {}
        other => return Err(format!("a broken chain: {:?}", other.map(drop)).into()),
    }
    ensure!(!path.exists(), "the file was created for a refused engine");
    Ok(())
}

/// Serde shapes bincode cannot read back: refused at open (read-side), or at dispatch
/// (write-side asymmetries), never journaled.
mod shapes {
    use super::*;

    macro_rules! event_of {
        ($t:ty, $account:ident) => {
            impl Event for $t {
                fn aggregate_id(&self) -> &str {
                    &self.$account
                }
                fn event_name(&self) -> &str {
                    "Shaped"
                }
                fn occurred_at(&self) -> Timestamp {
                    Timestamp(1)
                }
            }
        };
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Extra {
        note: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Flattened {
        account: String,
        #[serde(flatten)]
        extra: Extra,
    }
    event_of!(Flattened, account);

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Loose {
        A { n: u64 },
        B { s: String },
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Untagged {
        account: String,
        loose: Loose,
    }
    event_of!(Untagged, account);

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(tag = "kind")]
    enum Tagged {
        A { n: u64 },
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Internally {
        account: String,
        tagged: Tagged,
    }
    event_of!(Internally, account);

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Skipping {
        account: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        memo: Option<String>,
        at: u64,
    }
    event_of!(Skipping, account);

    struct Nothing(HandlerName);
    impl<E: Event> Projector<E> for Nothing {
        fn handler_name(&self) -> HandlerName {
            self.0.clone()
        }
        fn tables(&self) -> Vec<TableId> {
            Vec::new()
        }
        fn apply(&self, _: &E, _: &ProjectionContext, _: &mut Views<'_>) -> Result<(), ApplyError> {
            Ok(())
        }
    }

    fn refused_at_open<E: Event>(what: &str) -> TestResult {
        let dir = tempfile::tempdir()?;
        match Engine::<E>::builder(dir.path().join("x.redb"))
            .projector(Nothing(HandlerName::new("nothing")?))
            .open()
        {
            Err(e @ BuildError::UnreadableEventType { .. }) => {
                ensure!(e.to_string().contains("self-describing"), "{what}: {e}");
                Ok(())
            }
            other => Err(format!("{what}: {:?}", other.map(drop)).into()),
        }
    }

    #[test]
    fn types_that_need_a_self_describing_format_are_refused_at_open() -> TestResult {
        refused_at_open::<Flattened>("flatten")?;
        refused_at_open::<Untagged>("an untagged enum")?;
        refused_at_open::<Internally>("an internally tagged enum")?;
        Ok(())
    }

    #[test]
    fn an_event_that_does_not_read_back_is_refused_and_the_line_goes_on() -> TestResult {
        let dir = tempfile::tempdir()?;
        let engine = Engine::<Skipping>::builder(dir.path().join("x.redb"))
            .options(options())
            .projector(Nothing(HandlerName::new("nothing")?))
            .open()?;
        let none = Skipping { account: "a".into(), memo: None, at: 1 };
        let some = Skipping { account: "b".into(), memo: Some("m".into()), at: 2 };
        let report = engine.dispatch_batch([none.clone(), some])?.wait()?;
        let outcomes: Vec<&EventOutcome> = report.iter().map(|r| &r.outcome).collect();
        match outcomes.as_slice() {
            [EventOutcome::Refused { reason }, EventOutcome::Applied] => {
                ensure!(reason.contains("does not read back as the same event"), "{reason}");
            }
            other => return Err(format!("outcomes: {other:?}").into()),
        }
        // Nothing of the refused event is stored, and its id stays free.
        ensure_eq!(engine.store().journal_head()?, 1, "journal entries");
        ensure_eq!(engine.store().offset_count()?, 1, "ids recorded");
        ensure!(engine.store().poisoned().is_none(), "a refusal poisoned the engine");
        ensure!(matches!(engine.dispatch_and_wait(none)?.outcome, EventOutcome::Refused { .. }), "again");
        engine.shutdown()?;
        Ok(())
    }
}

/// A generated release history: which releases run, in order, and what each delivers.
#[derive(Debug, Clone)]
struct History {
    /// Per release (versions 1..=4, each at most once, ascending), its deliveries: an event
    /// as (account, time, amount), or a re-delivery of an earlier one by index.
    releases: Vec<(u32, Vec<Delivery>)>,
}

#[derive(Debug, Clone)]
enum Delivery {
    New { account: u8, amount: i64, memo: bool },
    Again(usize),
}

fn history() -> impl Strategy<Value = History> {
    let delivery = prop_oneof![
        4 => (0u8..3, -80i64..80, any::<bool>()).prop_map(|(account, amount, memo)| Delivery::New { account, amount, memo }),
        1 => any::<usize>().prop_map(Delivery::Again),
    ];
    let release = proptest::collection::vec(delivery, 0..8);
    (proptest::collection::btree_set(1u32..=4, 1..=4), proptest::collection::vec(release, 4)).prop_map(
        |(versions, mut deliveries)| History {
            releases: versions.into_iter().map(|v| (v, deliveries.pop().unwrap_or_default())).collect(),
        },
    )
}

/// An event of the history in its version-3 form (every version's fields are derivable).
fn as_v3(index: usize, account: u8, amount: i64, memo: bool) -> V3 {
    V3 {
        at: 1_000 + index as u64,
        account_id: format!("acct-{account}"),
        memo: memo.then(|| format!("memo-{index}")),
        amount,
    }
}

/// Opens release `version` and delivers `events` (version-3 forms, turned into the
/// release's type; a version-1 release drops the memo, which it cannot carry).
fn run_release(path: &Path, version: u32, events: &[V3]) -> TestResult<Vec<EventOutcome>> {
    fn go<E: Movement>(b: EngineBuilder<E>, events: Vec<E>) -> TestResult<Vec<EventOutcome>> {
        let engine = b.open()?;
        let out = engine.dispatch_batch(events)?.wait()?.into_iter().map(|r| r.outcome).collect();
        engine.shutdown()?;
        Ok(out)
    }
    let down2 =
        |e: &V3| V2 { account: e.account_id.clone(), at: e.at, amount: e.amount, memo: e.memo.clone() };
    match version {
        1 => go(
            builder::<V1>(path)?,
            events.iter().map(|e| V1 { account: e.account_id.clone(), at: e.at, amount: e.amount }).collect(),
        ),
        2 => go(builder::<V2>(path)?.upcasters(upcasters_to_v2()), events.iter().map(down2).collect()),
        3 => go(builder::<V3>(path)?.upcasters(upcasters_to_v3()), events.to_vec()),
        _ => go(
            builder::<V4>(path)?.upcasters(upcasters_to_v4()),
            events.iter().cloned().map(v3_to_v4).collect(),
        ),
    }
}

/// The event as the release of `version` delivers it, read back at version 4.
fn at_v4(e: &V3, version: u32) -> V4 {
    let e = if version == 1 { V3 { memo: None, ..e.clone() } } else { e.clone() };
    v3_to_v4(e)
}

fn check_history(h: &History) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bank.redb");
    // Every distinct event, at version 4, in first-delivery order, with its first version;
    // and every delivery in order, as the index of its event.
    let mut delivered: Vec<(V3, u32)> = Vec::new();
    let mut first: Vec<V4> = Vec::new();
    let mut order: Vec<usize> = Vec::new();
    for (version, deliveries) in &h.releases {
        let mut batch = Vec::new();
        for d in deliveries {
            let index = match d {
                Delivery::New { account, amount, memo } => {
                    let index = delivered.len();
                    let e = as_v3(index, *account, *amount, *memo);
                    delivered.push((e, *version));
                    first.push(at_v4(&delivered.last().ok_or("just pushed")?.0, *version));
                    index
                }
                Delivery::Again(i) => match i.checked_rem(delivered.len()) {
                    Some(index) => index,
                    None => continue,
                },
            };
            let (e, v) = delivered.get(index).ok_or("an unknown event")?;
            // What the first release stored is what it is now.
            batch.push(if *v == 1 { V3 { memo: None, ..e.clone() } } else { e.clone() });
            order.push(index);
        }
        let outcomes = run_release(&path, *version, &batch)?;
        for (e, o) in batch.iter().zip(&outcomes) {
            ensure!(
                !matches!(o, EventOutcome::Conflict { .. } | EventOutcome::Refused { .. }),
                "release {version}: {e:?} was {o:?}"
            );
        }
    }
    // The fold of the upcast events in delivery order, with the projector's rule: an
    // applied event is a duplicate when delivered again, a rejected one is tried again.
    let mut want: BTreeMap<String, i64> = BTreeMap::new();
    let mut applied = vec![false; first.len()];
    for &index in &order {
        let (Some(e), Some(done)) = (first.get(index), applied.get_mut(index)) else { continue };
        if *done {
            continue;
        }
        let (account, amount) = e.signed();
        let now = want.get(account).copied().unwrap_or(0) + amount;
        if now >= -100 {
            want.insert(account.to_owned(), now);
            *done = true;
        }
    }
    let engine = builder::<V4>(&path)?.upcasters(upcasters_to_v4()).open()?;
    let live = balances(&engine)?;
    engine.rebuild("balances")?;
    let rebuilt = balances(&engine)?;
    let journal: Vec<V4> = engine
        .store()
        .journal_range(1, usize::MAX)?
        .iter()
        .map(|e| engine.upcasters().decode(e.schema_version, &e.body))
        .collect::<Result<_, _>>()?;
    engine.shutdown()?;
    ensure_eq!(rebuilt, want, "the rebuild against the fold of the upcast events");
    ensure_eq!(live, want, "the live read model against the fold");
    // The journal read now holds the first delivery of each event (re-deliveries of
    // rejected events are journaled again; applied ones are not).
    for e in &first {
        ensure!(journal.contains(e), "the journal lost {e:?}");
    }
    Ok(())
}

#[test]
fn random_evolutions_keep_rebuilds_equal_to_the_fold_of_the_upcast_events() -> TestResult {
    let config = ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&history(), |h| check_history(&h).map_err(|e| TestCaseError::fail(e.to_string())))
        .map_err(|e| format!("{e}").into())
}

/// Read-model row types evolve too: a changed row type is answered by a rebuild at open.
mod rows {
    use super::*;
    use driftless::ManualClock;

    mod before {
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct Balance {
            pub amount: i64,
        }
    }

    mod after {
        /// The same type name, a field more: format 1 would not have noticed.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct Balance {
            pub amount: i64,
            pub movements: u64,
        }
    }

    const BEFORE: TableDef<String, before::Balance> = TableDef::new("balance_rows", 1);
    const AFTER: TableDef<String, after::Balance> = TableDef::new("balance_rows", 1);

    struct Before(HandlerName);
    impl Projector<V1> for Before {
        fn handler_name(&self) -> HandlerName {
            self.0.clone()
        }
        fn tables(&self) -> Vec<TableId> {
            vec![BEFORE.id()]
        }
        fn apply(&self, e: &V1, _: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
            let mut t = views.table(&BEFORE)?;
            let now = t.get(&e.account)?.map_or(0, |b| b.amount) + e.amount;
            t.put(&e.account, &before::Balance { amount: now })?;
            Ok(())
        }
    }

    struct After(HandlerName);
    impl Projector<V1> for After {
        fn handler_name(&self) -> HandlerName {
            self.0.clone()
        }
        fn tables(&self) -> Vec<TableId> {
            vec![AFTER.id()]
        }
        fn apply(&self, e: &V1, _: &ProjectionContext, views: &mut Views<'_>) -> Result<(), ApplyError> {
            let mut t = views.table(&AFTER)?;
            let row = t.get(&e.account)?.unwrap_or(after::Balance { amount: 0, movements: 0 });
            t.put(
                &e.account,
                &after::Balance { amount: row.amount + e.amount, movements: row.movements + 1 },
            )?;
            Ok(())
        }
    }

    #[test]
    fn a_changed_row_type_is_rebuilt_at_open_with_offsets_freshness_and_kill_switch_intact() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("rows.redb");
        let name = HandlerName::new("balance_rows")?;
        let clock = Arc::new(ManualClock::new(Timestamp(10_000)));
        let offsets_before = {
            let engine = Engine::builder(&path)
                .options(options())
                .clock(clock.clone())
                .projector(Before(name.clone()))
                .open()?;
            for e in [v1("a", 1, 30), v1("b", 2, 5), v1("a", 3, 12)] {
                engine.dispatch_and_wait(e)?;
            }
            engine.set_kill_switch("balance_rows", true)?;
            let offsets: Vec<_> = ["a:1:Moved", "b:2:Moved", "a:3:Moved"]
                .iter()
                .map(|id| engine.store().offset(id, "balance_rows"))
                .collect::<Result<_, _>>()?;
            engine.shutdown()?;
            offsets
        };
        ensure!(offsets_before.iter().all(Option::is_some), "offsets before: {offsets_before:?}");
        clock.set(Timestamp(20_000));
        let engine =
            Engine::builder(&path).options(options()).clock(clock.clone()).projector(After(name)).open()?;
        engine.flush()?;
        // The rebuild happened: the rows have the new field, from the journal.
        let rows: BTreeMap<String, Vec<u8>> = engine
            .store()
            .raw_rows("balance_rows")?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect();
        let decoded: BTreeMap<String, after::Balance> = rows
            .iter()
            .map(|(k, v)| Ok((k.clone(), driftless::codec::decode(v)?)))
            .collect::<Result<_, driftless::CodecError>>()?;
        ensure_eq!(
            decoded,
            BTreeMap::from([
                ("a".to_string(), after::Balance { amount: 42, movements: 2 }),
                ("b".to_string(), after::Balance { amount: 5, movements: 1 }),
            ]),
            "rows after the rebuild"
        );
        // The offsets keep the times they were first applied at.
        let offsets_after: Vec<_> = ["a:1:Moved", "b:2:Moved", "a:3:Moved"]
            .iter()
            .map(|id| engine.store().offset(id, "balance_rows"))
            .collect::<Result<_, _>>()?;
        ensure_eq!(offsets_after, offsets_before, "offsets after the rebuild");
        // Freshness: caught up, every event applied, the newest event's time.
        let f = engine.freshness_of("balance_rows")?;
        ensure!(f.caught_up && f.applied == 3, "freshness after the rebuild: {f:?}");
        ensure_eq!(f.seconds, Some(20_000f64 / 1000.0 - 0.003), "seconds since the newest event");
        // The kill switch is still engaged: readers still go to the source of truth.
        ensure!(matches!(engine.read(&AFTER)?, ReadAnswer::UseSourceOfTruth { .. }), "the kill switch");
        engine.set_kill_switch("balance_rows", false)?;
        ensure!(matches!(engine.read(&AFTER)?, ReadAnswer::Ready(_)), "released");
        // A later open needs no rebuild: the new fingerprint was recorded.
        engine.shutdown()?;
        let again = Engine::builder(&path)
            .options(options())
            .projector(After(HandlerName::new("balance_rows")?))
            .open()?;
        again.flush()?;
        ensure_eq!(
            again.store().offset("a:1:Moved", "balance_rows")?,
            offsets_before.first().copied().flatten(),
            ""
        );
        again.shutdown()?;
        Ok(())
    }
}
