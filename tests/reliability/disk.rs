//! A simulated disk under redb: a live image, a durable image, and injected faults.
//!
//! [`SimDisk`] is a redb [`StorageBackend`] that keeps two images of the file:
//!
//! * the **live** image is what reads see (the operating system's page cache): every
//!   `write` and `set_len` lands there at once;
//! * the **durable** image is what survives a power loss: a `write` or `set_len` is only
//!   *pending* until the next `sync_data`, which applies every pending operation to it.
//!
//! Every `write`, `set_len` and `sync_data` is counted (1-based), and a [`Fault`] says what
//! happens at operation N:
//!
//! * [`Fault::CrashAt`]: the power goes at N: that operation and every later mutating one
//!   fail, and [`SimDisk::crash_image`] builds what a reboot finds — the durable image plus
//!   each pending write independently *kept*, *dropped* or *torn* (only a prefix or a
//!   suffix of its 512-byte sectors written; a sector itself is atomic), chosen by a damage
//!   seed (seed 0 drops every pending operation, seed 1 keeps them all, as a killed process
//!   on a machine that stays up would, other seeds mix);
//! * [`Fault::FailOnce`]: operation N returns an I/O error (a generic one or an OS error
//!   such as ENOSPC) and later ones succeed;
//! * [`Fault::FailFrom`]: operation N and every later mutating one return the error (a
//!   full or dead disk).
//!
//! Reads are always served from the live image, as a process that still runs would see it.

use driftless_storage::StorageBackend;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io;
use std::sync::Arc;

/// The size of an atomic sector write.
pub(crate) const SECTOR: u64 = 512;

/// What the disk does at its N-th mutating operation (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Fault {
    /// Nothing fails.
    #[default]
    None,
    /// The power goes at operation N: it and every later mutating operation fail.
    CrashAt(u64),
    /// Operation N fails with the error; later ones succeed.
    FailOnce(u64, ErrorKind),
    /// Operation N and every later one fail with the error.
    FailFrom(u64, ErrorKind),
}

/// Which I/O error a failing operation returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// `io::Error::other` with a message naming the operation.
    Generic,
    /// ENOSPC: no space left on device.
    NoSpace,
}

impl ErrorKind {
    /// Text that the error's display contains, and so must any error a user sees for it.
    pub(crate) fn marker(self) -> &'static str {
        match self {
            Self::Generic => "injected I/O failure",
            Self::NoSpace => "No space left on device",
        }
    }

    fn error(self, what: &str, n: u64) -> io::Error {
        match self {
            Self::Generic => io::Error::other(format!("injected I/O failure of {what} (operation {n})")),
            Self::NoSpace => io::Error::from_raw_os_error(28),
        }
    }
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct State {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    ops: u64,
    fault: Fault,
    /// The operation at which the fault first fired (for a crash: the power went).
    fired: Option<u64>,
    /// The operation counts at each completed `sync_data`.
    syncs: Vec<u64>,
}

/// A simulated disk; clones share the same images (so the "disk" outlives a database).
#[derive(Debug, Clone, Default)]
pub(crate) struct SimDisk(Arc<Mutex<State>>);

fn put(image: &mut Vec<u8>, offset: u64, data: &[u8]) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(io::Error::other)?;
    let end = start.checked_add(data.len()).ok_or_else(|| io::Error::other("offset overflow"))?;
    if image.len() < end {
        image.resize(end, 0);
    }
    if let Some(dst) = image.get_mut(start..end) {
        dst.copy_from_slice(data);
    }
    Ok(())
}

fn resize(image: &mut Vec<u8>, len: u64) -> io::Result<()> {
    image.resize(usize::try_from(len).map_err(io::Error::other)?, 0);
    Ok(())
}

impl SimDisk {
    /// An empty disk with no fault.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A disk holding `image`, durably, with the given fault.
    pub(crate) fn from_image(image: Vec<u8>, fault: Fault) -> Self {
        let state = State { live: image.clone(), durable: image, fault, ..State::default() };
        Self(Arc::new(Mutex::new(state)))
    }

    /// An empty disk with the given fault.
    pub(crate) fn with_fault(fault: Fault) -> Self {
        Self::from_image(Vec::new(), fault)
    }

    /// Mutating operations so far (failed ones included).
    pub(crate) fn ops(&self) -> u64 {
        self.0.lock().ops
    }

    /// Whether the fault fired.
    pub(crate) fn fired(&self) -> bool {
        self.0.lock().fired.is_some()
    }

    /// Completed syncs so far.
    pub(crate) fn syncs(&self) -> usize {
        self.0.lock().syncs.len()
    }

    /// What a process reading the file sees now (and what a restart without a power loss
    /// finds).
    pub(crate) fn live_image(&self) -> Vec<u8> {
        self.0.lock().live.clone()
    }

    /// What a reboot after a power loss finds: the durable image, plus each pending
    /// operation kept, dropped or torn as the damage seed says.
    pub(crate) fn crash_image(&self, damage_seed: u64) -> io::Result<Vec<u8>> {
        let state = self.0.lock();
        let mut image = state.durable.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(damage_seed);
        for op in &state.pending {
            // 0: drop, 1: keep, 2: tear.
            let fate = match damage_seed {
                0 => 0,
                1 => 1,
                _ => rng.random_range(0..3u8),
            };
            match op {
                Pending::SetLen(len) => {
                    if fate != 0 {
                        resize(&mut image, *len)?;
                    }
                }
                Pending::Write { offset, data } => match fate {
                    0 => {}
                    1 => put(&mut image, *offset, data)?,
                    _ => {
                        // The sector boundaries strictly inside the write.
                        let end = offset + data.len() as u64;
                        let first = (offset / SECTOR + 1) * SECTOR;
                        let cuts: Vec<u64> = (first..end).step_by(SECTOR as usize).collect();
                        if cuts.is_empty() {
                            // One sector: written whole or not at all.
                            if rng.random::<bool>() {
                                put(&mut image, *offset, data)?;
                            }
                            continue;
                        }
                        let cut = cuts.get(rng.random_range(0..cuts.len())).copied().unwrap_or(first);
                        let split = usize::try_from(cut - offset).map_err(io::Error::other)?;
                        let (head, tail) = data.split_at(split.min(data.len()));
                        if rng.random::<bool>() {
                            put(&mut image, *offset, head)?;
                        } else {
                            put(&mut image, cut, tail)?;
                        }
                    }
                },
            }
        }
        Ok(image)
    }

    /// Counts one mutating operation and says whether it must fail.
    fn tick(state: &mut State, what: &str) -> io::Result<()> {
        state.ops += 1;
        let n = state.ops;
        match state.fault {
            Fault::None => Ok(()),
            Fault::CrashAt(at) if n >= at => {
                state.fired.get_or_insert(n);
                Err(io::Error::other(format!("the power went out before {what} (operation {n})")))
            }
            Fault::FailOnce(at, kind) if n == at => {
                state.fired.get_or_insert(n);
                Err(kind.error(what, n))
            }
            Fault::FailFrom(at, kind) if n >= at => {
                state.fired.get_or_insert(n);
                Err(kind.error(what, n))
            }
            _ => Ok(()),
        }
    }
}

impl StorageBackend for SimDisk {
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.lock().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let state = self.0.lock();
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = start
            .checked_add(out.len())
            .and_then(|end| state.live.get(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the disk"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.0.lock();
        Self::tick(&mut state, "set_len")?;
        resize(&mut state.live, len)?;
        state.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.0.lock();
        Self::tick(&mut state, "sync_data")?;
        let state = &mut *state;
        for op in state.pending.drain(..) {
            match op {
                Pending::Write { offset, data } => put(&mut state.durable, offset, &data)?,
                Pending::SetLen(len) => resize(&mut state.durable, len)?,
            }
        }
        state.syncs.push(state.ops);
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut state = self.0.lock();
        Self::tick(&mut state, "write")?;
        put(&mut state.live, offset, data)?;
        state.pending.push(Pending::Write { offset, data: data.to_vec() });
        Ok(())
    }
}
