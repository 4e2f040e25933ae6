//! The offset-store port: exactly-once bookkeeping of `(event id, handler)` pairs.

use crate::event::PayloadHash;
use crate::ids::{EventId, HandlerName, Timestamp};
use std::collections::HashMap;

/// What recording an offset found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetOutcome {
    /// No offset existed; it is now recorded and the event is to be applied.
    Applied,
    /// The same event (same id, same payload hash) was already applied: skip it.
    Duplicate,
    /// The id was already applied with a different payload: skip it and report it.
    Conflict {
        /// The hash recorded when the id was first applied.
        recorded: PayloadHash,
    },
}

/// One recorded offset: when the pair was applied and what was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRecord {
    /// When the event was applied by this handler.
    pub applied_at: Timestamp,
    /// The payload hash of what was applied.
    pub payload_hash: PayloadHash,
}

/// The `projection_offset(event_id, handler_name, applied_at, payload_hash)` record.
pub trait OffsetStore {
    /// The store's error type.
    type Error;

    /// Records the pair unless it is already recorded, and says which case it was.
    ///
    /// # Errors
    /// The store's error when it cannot be read or written.
    fn record_if_absent(
        &mut self,
        event_id: &EventId,
        handler: &HandlerName,
        payload_hash: PayloadHash,
        applied_at: Timestamp,
    ) -> Result<OffsetOutcome, Self::Error>;

    /// The recorded offset of the pair, if any.
    ///
    /// # Errors
    /// The store's error when it cannot be read.
    fn get(&self, event_id: &EventId, handler: &HandlerName) -> Result<Option<OffsetRecord>, Self::Error>;
}

/// Decides the outcome of a delivery given what is recorded for the pair.
#[must_use]
pub fn outcome_for(recorded: Option<PayloadHash>, incoming: PayloadHash) -> OffsetOutcome {
    match recorded {
        None => OffsetOutcome::Applied,
        Some(h) if h == incoming => OffsetOutcome::Duplicate,
        Some(recorded) => OffsetOutcome::Conflict { recorded },
    }
}

/// An in-memory offset store, for unit tests and as a model.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InMemoryOffsetStore {
    records: HashMap<(EventId, HandlerName), OffsetRecord>,
}

impl InMemoryOffsetStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// How many pairs are recorded.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing is recorded.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Forgets a pair (used by models of rebuilds).
    pub fn remove(&mut self, event_id: &EventId, handler: &HandlerName) {
        self.records.remove(&(event_id.clone(), handler.clone()));
    }

    /// Every recorded pair.
    pub fn iter(&self) -> impl Iterator<Item = (&(EventId, HandlerName), &OffsetRecord)> {
        self.records.iter()
    }
}

impl OffsetStore for InMemoryOffsetStore {
    type Error = std::convert::Infallible;

    fn record_if_absent(
        &mut self,
        event_id: &EventId,
        handler: &HandlerName,
        payload_hash: PayloadHash,
        applied_at: Timestamp,
    ) -> Result<OffsetOutcome, Self::Error> {
        let key = (event_id.clone(), handler.clone());
        let outcome = outcome_for(self.records.get(&key).map(|r| r.payload_hash), payload_hash);
        if outcome == OffsetOutcome::Applied {
            self.records.insert(key, OffsetRecord { applied_at, payload_hash });
        }
        Ok(outcome)
    }

    fn get(&self, event_id: &EventId, handler: &HandlerName) -> Result<Option<OffsetRecord>, Self::Error> {
        Ok(self.records.get(&(event_id.clone(), handler.clone())).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_if_absent_distinguishes_the_three_outcomes() -> Result<(), Box<dyn std::error::Error>> {
        let mut store = InMemoryOffsetStore::new();
        let id = EventId::new("e1")?;
        let h = HandlerName::new("h")?;
        let p1 = PayloadHash::of_bytes(b"one");
        let p2 = PayloadHash::of_bytes(b"two");
        assert_eq!(store.record_if_absent(&id, &h, p1, Timestamp(5))?, OffsetOutcome::Applied);
        assert_eq!(store.record_if_absent(&id, &h, p1, Timestamp(6))?, OffsetOutcome::Duplicate);
        assert_eq!(
            store.record_if_absent(&id, &h, p2, Timestamp(7))?,
            OffsetOutcome::Conflict { recorded: p1 }
        );
        assert_eq!(store.get(&id, &h)?, Some(OffsetRecord { applied_at: Timestamp(5), payload_hash: p1 }));
        let other = HandlerName::new("other")?;
        assert_eq!(store.record_if_absent(&id, &other, p2, Timestamp(8))?, OffsetOutcome::Applied);
        assert_eq!(store.len(), 2);
        Ok(())
    }
}
