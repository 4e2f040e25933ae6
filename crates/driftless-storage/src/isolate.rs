//! Running a call into the storage engine on a thread of its own, so that a panic during
//! unwinding halts that thread instead of aborting the process.
//!
//! On some damage redb panics twice: once on the inconsistency, and again in a destructor
//! that runs while the first panic unwinds (a damaged freed-pages tree at the first durable
//! commit after open, or at the close: see `docs/RELIABILITY.md`). The runtime answers a
//! panic in a destructor during unwinding by aborting the process, and no `catch_unwind`
//! can stop that. What can: the panic hook runs for the second panic, on the panicking
//! thread, before the runtime goes on to the abort; a hook that never returns keeps the
//! runtime from getting there.
//!
//! So [`run`] moves the call to a new thread and waits for its answer. A single panic there
//! unwinds that thread and is caught, and comes back as [`Stopped::Panicked`]. For the second
//! one, a panic hook installed once per process (chained to the hook before it, and doing
//! nothing else outside these threads) sends [`Stopped::Halted`] to the waiting caller and
//! parks the thread for good. The halted thread keeps whatever it held: the caller must never
//! touch that again nor wait for it (for a database, its write lock; see `store.rs`).
//!
//! Halting has a cost beyond the thread: the runtime calls panic hooks holding its hook lock
//! for reading, and the halted thread keeps holding it. Panics elsewhere still run the hooks,
//! but `std::panic::set_hook` and `take_hook` block forever from then on, in any thread (and
//! once one waits, so does every later panic). Nothing in driftless calls them after this
//! module's hook is installed; the test harness does, when its tests are done, so a test
//! process in which a thread halted must leave with `std::process::exit`. A hook set after
//! this one must chain to it, or a double panic aborts again.

use crate::error::panic_message;
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe, PanicHookInfo};
use std::sync::mpsc;
use std::sync::{Arc, Once};

/// Why an isolated call gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Stopped {
    /// The call panicked; its thread unwound and ended. The text is the panic's.
    #[error("{0}")]
    Panicked(String),
    /// The call panicked, and panicked again while that panic unwound: its thread is parked
    /// for good, still holding whatever the call held. The text names both panics.
    #[error("the storage engine stopped twice on damage; its thread is halted ({0})")]
    Halted(String),
}

/// What an isolated thread sends back.
enum Answer<T> {
    Done(T),
    Panicked(String),
    Halted(String),
}

/// The state of an isolated thread, seen by the panic hook.
struct Region {
    /// The first panic's text, once there was one.
    first: Option<String>,
    /// Tells the waiting caller that the thread halts (taken at the second panic).
    report: Option<Report>,
}

/// Sends the reason of a halt to the waiting caller.
type Report = Box<dyn FnOnce(String)>;

thread_local! {
    /// Set while this thread runs an isolated call.
    static REGION: RefCell<Option<Region>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Runs `f` on a new thread named `name` and returns its result, or how it stopped: a
/// panic, or a double panic that halted the thread (see the module's notes).
///
/// Costs one thread start and two channel hand-offs. When no thread can be started, `f`
/// runs on the calling thread, with a panic contained as before this module existed (a
/// double panic then aborts).
pub(crate) fn run<T, F>(name: &str, f: F) -> Result<T, Stopped>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    install_hook();
    let (tx, rx) = mpsc::channel::<Answer<T>>();
    // The call stays reachable from here until the thread takes it, so that it can still run
    // on this thread if the thread does not start.
    let slot = Arc::new(parking_lot::Mutex::new(Some(f)));
    let job = Arc::clone(&slot);
    let spawned = std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let Some(f) = job.lock().take() else { return };
        drop(job);
        let halted = tx.clone();
        REGION.set(Some(Region {
            first: None,
            report: Some(Box::new(move |reason| {
                let _ = halted.send(Answer::Halted(reason));
            })),
        }));
        let result = catch_unwind(AssertUnwindSafe(f));
        REGION.take();
        let _ = tx.send(match result {
            Ok(v) => Answer::Done(v),
            Err(payload) => Answer::Panicked(panic_message(&*payload)),
        });
    });
    let handle = match spawned {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(error = %e, thread = name, "no thread for an isolated call; it runs unisolated");
            let Some(f) = slot.lock().take() else {
                return Err(Stopped::Panicked(format!("the thread {name} could not be started: {e}")));
            };
            return catch_unwind(AssertUnwindSafe(f)).map_err(|p| Stopped::Panicked(panic_message(&*p)));
        }
    };
    match rx.recv() {
        Ok(Answer::Done(v)) => {
            let _ = handle.join();
            Ok(v)
        }
        Ok(Answer::Panicked(reason)) => {
            let _ = handle.join();
            Err(Stopped::Panicked(reason))
        }
        // Never joined: the thread is parked for good.
        Ok(Answer::Halted(reason)) => Err(Stopped::Halted(reason)),
        Err(mpsc::RecvError) => {
            let _ = handle.join();
            Err(Stopped::Panicked(format!("the thread {name} ended without an answer")))
        }
    }
}

/// Installs (once per process) the hook that halts an isolated thread at its second panic,
/// chained to the hook installed before it.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let halt = on_panic(info);
            previous(info);
            if let Some((reason, report)) = halt {
                report(reason);
                park_forever();
            }
        }));
    });
}

/// Counts a panic of an isolated thread; at the second, returns the reason to report and
/// the way to report it. `None` on any other thread. Never panics (a panic inside a panic
/// hook aborts the process).
fn on_panic(info: &PanicHookInfo<'_>) -> Option<(String, Report)> {
    let text = driftless_domain::panic_text(info.payload())
        .unwrap_or_else(|| "a panic without a message".to_string());
    REGION
        .try_with(|region| {
            let mut region = region.try_borrow_mut().ok()?;
            let region = region.as_mut()?;
            match &region.first {
                None => {
                    region.first = Some(text);
                    None
                }
                Some(first) => {
                    let reason = format!("{first}; then, while unwinding: {text}");
                    region.report.take().map(|report| (reason, report))
                }
            }
        })
        .ok()
        .flatten()
}

/// Never returns: returning from the hook of a panic during unwinding aborts the process.
fn park_forever() -> ! {
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
#[expect(clippy::panic, reason = "the tests need calls that panic, once and twice")]
mod tests {
    use super::{run, Stopped};

    /// Panics when dropped.
    struct PanicsOnDrop;

    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            std::panic::panic_any("the second panic, in a destructor during unwinding");
        }
    }

    #[test]
    fn a_call_that_returns_gives_its_result() -> Result<(), Stopped> {
        let v = run("isolate-test-ok", || 6 * 7)?;
        if v == 42 {
            Ok(())
        } else {
            Err(Stopped::Panicked(format!("got {v}")))
        }
    }

    #[test]
    fn a_panic_comes_back_as_an_error_with_its_text() -> Result<(), String> {
        let result = run("isolate-test-panic", || -> u32 { std::panic::panic_any("a single panic") });
        match result {
            Err(Stopped::Panicked(text)) if text == "a single panic" => {}
            other => return Err(format!("{other:?}")),
        }
        // The process goes on, and so do later isolated calls.
        match run("isolate-test-after-panic", || 1) {
            Ok(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }

    /// Set in the child process of the double-panic test.
    const CHILD: &str = "DRIFTLESS_ISOLATE_CHILD";

    /// A double panic on an isolated thread: the caller gets [`Stopped::Halted`], and the
    /// process goes on. Runs in a child process (this test binary, filtered to this test):
    /// an abort then fails the test instead of ending the run, and the halted thread keeps
    /// the runtime's panic-hook lock, which the test harness would wait for when its tests
    /// are done (it takes the hook), so the child leaves with `std::process::exit`.
    #[test]
    fn a_panic_during_unwinding_halts_the_thread_instead_of_aborting() -> Result<(), String> {
        if std::env::var_os(CHILD).is_some() {
            let outcome = double_panic();
            println!(
                "\n@isolate {}",
                outcome.as_ref().err().map_or("halted, and the process went on", String::as_str)
            );
            std::process::exit(i32::from(outcome.is_err()));
        }
        let name = "a_panic_during_unwinding_halts_the_thread_instead_of_aborting";
        let test = format!("{}::{name}", module_path!().split_once("::").map_or(module_path!(), |(_, m)| m));
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(exe)
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the child process did not end within 60 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout).map_err(|e| e.to_string())?;
        }
        let said = stdout.lines().find_map(|l| l.strip_prefix("@isolate ")).unwrap_or("nothing");
        if status.success() {
            Ok(())
        } else {
            Err(format!("the child process ended with {status} and said: {said}"))
        }
    }

    /// The child's side.
    fn double_panic() -> Result<(), String> {
        let result = run("isolate-test-double-panic", || -> u32 {
            let _bomb = PanicsOnDrop;
            std::panic::panic_any("the first panic")
        });
        match &result {
            Err(Stopped::Halted(reason))
                if reason.contains("the first panic") && reason.contains("the second panic") => {}
            other => return Err(format!("{other:?}")),
        }
        let shown = result.err().map(|e| e.to_string()).unwrap_or_default();
        if !shown.starts_with("the storage engine stopped twice on damage; its thread is halted") {
            return Err(shown);
        }
        // The process goes on: panics elsewhere are left to the previous hook and caught as
        // usual, and later isolated calls work, their single panics included.
        if std::panic::catch_unwind(|| std::panic::panic_any("an ordinary panic")).is_ok() {
            return Err("the ordinary panic was not a panic".into());
        }
        match run("isolate-test-after-halt", || -> u32 { std::panic::panic_any("a single panic") }) {
            Err(Stopped::Panicked(_)) => {}
            other => return Err(format!("a single panic after the halt: {other:?}")),
        }
        match run("isolate-test-after-halt", || 2) {
            Ok(2) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    }
}
