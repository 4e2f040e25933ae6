//! The event bound of the dispatch queue: how many dispatched events may wait for the
//! writer, over all queued messages.

use crate::error::DispatchError;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

/// How long a blocked producer waits before it checks again that the writer lives.
const RECHECK: Duration = Duration::from_millis(100);

/// Room for queued events. Taking and giving back room are one atomic operation each;
/// the lock and condition variable are touched only while a producer waits for room.
#[derive(Debug)]
pub(crate) struct EventRoom {
    capacity: usize,
    queued: AtomicUsize,
    /// Producers waiting for room: the writer signals only when there are some.
    waiters: AtomicUsize,
    lock: Mutex<()>,
    freed: Condvar,
}

impl EventRoom {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            queued: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            lock: Mutex::new(()),
            freed: Condvar::new(),
        }
    }

    /// Takes room for `n` events if there is some. A message of more events than the
    /// capacity fits only an empty queue, so that it is taken at all.
    fn try_take(&self, n: usize) -> bool {
        let mut current = self.queued.load(SeqCst);
        loop {
            let wanted = current.saturating_add(n);
            if current != 0 && wanted > self.capacity {
                return false;
            }
            match self.queued.compare_exchange_weak(current, wanted, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes room for `n` events: at once, or after waiting while `block` and `alive()`
    /// hold.
    ///
    /// # Errors
    /// [`DispatchError::QueueFull`] when there is no room and `block` is false,
    /// [`DispatchError::ShutDown`] when `alive()` turns false while waiting.
    pub(crate) fn take(&self, n: usize, block: bool, alive: impl Fn() -> bool) -> Result<(), DispatchError> {
        if self.try_take(n) {
            return Ok(());
        }
        if !block {
            return Err(DispatchError::QueueFull { capacity: self.capacity });
        }
        let mut guard = self.lock.lock();
        // Counted before the last look, so that a give-back after that look signals.
        self.waiters.fetch_add(1, SeqCst);
        let taken = loop {
            if self.try_take(n) {
                break Ok(());
            }
            if !alive() {
                break Err(DispatchError::ShutDown);
            }
            self.freed.wait_for(&mut guard, RECHECK);
        };
        self.waiters.fetch_sub(1, SeqCst);
        taken
    }

    /// Gives back the room of `n` events (the writer took their message, or it was never
    /// sent) and wakes waiting producers.
    pub(crate) fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        let _ = self.queued.fetch_update(SeqCst, SeqCst, |q| Some(q.saturating_sub(n)));
        if self.waiters.load(SeqCst) > 0 {
            // Taking the lock waits until a producer that counted itself is asleep.
            let _guard = self.lock.lock();
            self.freed.notify_all();
        }
    }

    /// Events that hold room now.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn room_is_taken_up_to_the_capacity_and_an_oversized_message_fits_an_empty_queue() {
        let room = EventRoom::new(5);
        assert!(room.take(3, false, || true).is_ok());
        assert!(room.take(2, false, || true).is_ok());
        assert!(matches!(room.take(1, false, || true), Err(DispatchError::QueueFull { capacity: 5 })));
        room.give_back(5);
        assert_eq!(room.queued(), 0);
        assert!(room.take(9, false, || true).is_ok(), "an oversized message fits an empty queue");
        assert!(room.take(1, false, || true).is_err());
        room.give_back(9);
        assert!(room.take(1, false, || true).is_ok());
    }

    #[test]
    fn a_blocked_producer_wakes_when_room_is_given_back_and_gives_up_when_the_writer_is_gone() {
        let room = Arc::new(EventRoom::new(2));
        assert!(room.take(2, true, || true).is_ok());
        let waiting = {
            let room = Arc::clone(&room);
            std::thread::spawn(move || room.take(2, true, || true))
        };
        while room.waiters.load(SeqCst) == 0 {
            std::thread::yield_now();
        }
        assert_eq!(room.queued(), 2, "the waiting producer took nothing yet");
        room.give_back(2);
        assert!(matches!(waiting.join(), Ok(Ok(()))));
        assert_eq!(room.queued(), 2);
        assert!(matches!(room.take(1, true, || false), Err(DispatchError::ShutDown)));
    }
}
