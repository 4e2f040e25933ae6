//! Opening files that are not driftless databases, a database in use, and what creation
//! leaves on disk.

use super::support::{fast_options, prepare_all, projectors, Faults, Op, TestError, TestResult};
use driftless_domain::Upcasters;
use driftless_domain::{codec, Timestamp};
use driftless_storage::StoreWriter;
use driftless_storage::{OpenError, StoreOptions};
use redb::{ReadableDatabase, TableDefinition};
use std::path::Path;

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Opens `path`, which must be refused as not driftless or damaged, with a message. A file
/// that is not a redb database must not have been changed by the attempt (redb itself may
/// rewrite the header of one of its own databases).
fn refused(path: &Path) -> Result<OpenError, TestError> {
    let before = std::fs::read(path)?;
    let foreign = !before.starts_with(b"redb");
    let err = match StoreWriter::open(path, StoreOptions::default()) {
        Ok(_) => return Err(format!("{} opened as a driftless database", path.display()).into()),
        Err(e) => e,
    };
    ensure!(
        matches!(err, OpenError::NotDriftless { .. } | OpenError::Corrupted { .. }),
        "{} gave {err:?}",
        path.display()
    );
    let text = err.to_string();
    ensure!(text.contains(&path.display().to_string()) && text.len() > path.as_os_str().len() + 10, "{text}");
    ensure!(!foreign || std::fs::read(path)? == before, "opening {} changed the file", path.display());
    Ok(err)
}

#[test]
fn an_empty_file_is_not_driftless() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("empty.redb");
    std::fs::write(&path, b"")?;
    let err = refused(&path)?;
    ensure!(matches!(err, OpenError::NotDriftless { .. }), "{err:?}");
    Ok(())
}

#[test]
fn random_bytes_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    for (i, len) in [1usize, 7, 64, 511, 4096, 5000, 70_000].into_iter().enumerate() {
        let path = dir.path().join(format!("noise{i}.redb"));
        std::fs::write(&path, noise(len, 0x9E37_79B9_7F4A_7C15 ^ len as u64))?;
        refused(&path)?;
    }
    Ok(())
}

#[test]
fn a_directory_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    match StoreWriter::open(dir.path(), StoreOptions::default()) {
        Err(OpenError::NotDriftless { .. }) => Ok(()),
        other => Err(format!("opening a directory: {other:?}").into()),
    }
}

#[test]
fn a_plain_redb_database_is_not_driftless() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("plain.redb");
    {
        let db = redb::Database::create(&path)?;
        let txn = db.begin_write()?;
        txn.open_table(TableDefinition::<&str, u64>::new("things"))?.insert("a", &1)?;
        txn.commit()?;
    }
    let err = refused(&path)?;
    ensure!(
        matches!(&err, OpenError::NotDriftless { reason, .. } if reason.contains("driftless metadata")),
        "{err:?}"
    );
    // It is still a working redb database afterwards.
    let db = redb::Database::open(&path)?;
    let txn = db.begin_read()?;
    ensure_eq!(
        txn.open_table(TableDefinition::<&str, u64>::new("things"))?.get("a")?.map(|v| v.value()),
        Some(1),
        "the plain database's row"
    );
    Ok(())
}

#[derive(serde::Serialize)]
struct Format<'a> {
    magic: &'a str,
    version: u32,
}

/// A redb database whose `driftless.meta` table holds `format` = `record`, if any.
fn with_meta(path: &Path, record: Option<Vec<u8>>) -> TestResult {
    let db = redb::Database::create(path)?;
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(TableDefinition::<&str, &[u8]>::new("driftless.meta"))?;
        if let Some(bytes) = record {
            meta.insert("format", bytes.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[test]
fn foreign_and_damaged_metadata_are_named() -> TestResult {
    let dir = tempfile::tempdir()?;

    let typed = dir.path().join("typed.redb");
    {
        let db = redb::Database::create(&typed)?;
        let txn = db.begin_write()?;
        txn.open_table(TableDefinition::<u64, u64>::new("driftless.meta"))?.insert(1, 2)?;
        txn.commit()?;
    }
    ensure!(matches!(refused(&typed)?, OpenError::NotDriftless { .. }), "a meta table of another type");

    let bare = dir.path().join("bare.redb");
    with_meta(&bare, None)?;
    ensure!(matches!(refused(&bare)?, OpenError::NotDriftless { .. }), "no format record");

    let magic = dir.path().join("magic.redb");
    with_meta(&magic, Some(codec::encode(&Format { magic: "otherthing", version: 1 })?))?;
    ensure!(matches!(refused(&magic)?, OpenError::NotDriftless { .. }), "another magic string");

    let damaged = dir.path().join("damaged.redb");
    let mut bytes = codec::encode(&Format { magic: "driftless", version: 1 })?;
    if let Some(b) = bytes.get_mut(3) {
        *b ^= 1;
    }
    with_meta(&damaged, Some(bytes))?;
    ensure!(matches!(refused(&damaged)?, OpenError::Corrupted { .. }), "a damaged format record");

    let newer = dir.path().join("newer.redb");
    with_meta(&newer, Some(codec::encode(&Format { magic: "driftless", version: 99 })?))?;
    match StoreWriter::open(&newer, StoreOptions::default()) {
        Err(OpenError::NewerFormat { found: 99, supported, .. }) => {
            ensure_eq!(supported, driftless_storage::FORMAT_VERSION, "the supported version");
        }
        other => return Err(format!("a newer format: {other:?}").into()),
    }
    Ok(())
}

#[test]
fn a_truncated_database_is_an_error_not_a_panic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("full.redb");
    {
        let store = StoreWriter::open(&path, StoreOptions::default())?;
        let registry = store.register(projectors(&Faults::default())?, &[], Upcasters::new())?;
        let ops: Vec<Op> =
            (0..200).map(|i| Op::new(&format!("e{i}"), &format!("k{}", i % 7), i, 1)).collect();
        store.project(&registry, &prepare_all(&ops)?, Timestamp(1))?;
    }
    let full = std::fs::read(&path)?;
    // Every cut inside the header, then a few cuts in the body.
    let lengths = (1..=600).chain([4096, full.len() / 3, full.len() / 2, full.len() - 1]);
    let cut = dir.path().join("cut.redb");
    for keep in lengths {
        std::fs::write(&cut, full.get(..keep).unwrap_or_default())?;
        match StoreWriter::open(&cut, StoreOptions::default()) {
            Err(OpenError::NotDriftless { .. } | OpenError::Corrupted { .. }) => {}
            other => return Err(format!("a file cut to {keep} of {} bytes: {other:?}", full.len()).into()),
        }
    }
    Ok(())
}

#[test]
fn a_second_open_of_an_open_database_is_in_use() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("busy.redb");
    let first = StoreWriter::open(&path, fast_options())?;
    match StoreWriter::open(&path, fast_options()) {
        Err(OpenError::InUse { path: p }) => ensure_eq!(p, path, "the path in the error"),
        other => return Err(format!("a second open: {other:?}").into()),
    }
    drop(first);
    StoreWriter::open(&path, fast_options())?;
    Ok(())
}

#[test]
fn creation_is_private_and_leaves_no_temporary_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("new.redb");
    let store = StoreWriter::open(&path, StoreOptions::default())?;
    let names = || -> Result<Vec<String>, TestError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir.path())? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    };
    ensure_eq!(names()?, vec!["new.redb".to_string()], "files beside a newly created database");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        ensure_eq!(mode, 0o600, "the mode of a new database (octal {mode:o})");
    }
    drop(store);
    ensure_eq!(names()?, vec!["new.redb".to_string()], "files after closing it");
    // Reopening an existing database creates nothing either.
    drop(StoreWriter::open(&path, StoreOptions::default())?);
    ensure_eq!(names()?, vec!["new.redb".to_string()], "files after reopening it");
    Ok(())
}

#[test]
fn a_path_in_a_missing_directory_is_an_io_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("missing").join("db.redb");
    match StoreWriter::open(&path, StoreOptions::default()) {
        Err(OpenError::Io { path: p, .. }) => ensure_eq!(p, path, "the path in the error"),
        other => return Err(format!("opening in a missing directory: {other:?}").into()),
    }
    ensure!(!dir.path().join("missing").exists(), "the directory was created");
    Ok(())
}
