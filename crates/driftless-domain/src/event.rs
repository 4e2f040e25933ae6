//! The event contract and its payload hash.

use crate::codec::{self, CodecError};
use crate::ids::{EventId, Timestamp};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;

/// A blake3 hash of an event's stable encoding.
///
/// Two deliveries with the same [`EventId`] are the same event only if their payload hashes
/// are equal; otherwise the second is a conflict.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct PayloadHash(pub [u8; 32]);

impl PayloadHash {
    /// Hashes already-encoded stable bytes.
    #[must_use]
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// The hash as lowercase hex.
    #[must_use]
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Debug for PayloadHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        write!(f, "PayloadHash({})", hex.get(..16).unwrap_or(&hex))
    }
}

/// A domain event that driftless can project, journal and deduplicate.
///
/// The serde representation is the event's *stable encoding*: it is what the journal stores
/// and what the payload hash is computed over, so it must cover everything that makes the
/// event what it is (aggregate, name, time and payload) and must not change for a stored
/// event. Adding a field changes the hash of new events only.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The aggregate (entity) the event belongs to.
    fn aggregate_id(&self) -> &str;

    /// The event's type name, e.g. `ListingCreated`.
    fn event_name(&self) -> &str;

    /// When the event happened in the write model.
    fn occurred_at(&self) -> Timestamp;

    /// The event's identity. The default is
    /// `"{aggregate_id}:{occurred_at_millis}:{event_name}"`; override it where the write
    /// model has its own ids.
    fn event_id(&self) -> EventId {
        EventId::derive(self.aggregate_id(), self.occurred_at(), self.event_name())
    }

    /// The stable encoding (bincode 2, standard configuration) of the whole event.
    ///
    /// # Errors
    /// [`CodecError::Encode`] when serde refuses the value.
    fn stable_encoding(&self) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::with_capacity(96);
        codec::stable_encode_into(self, &mut out)?;
        Ok(out)
    }
}

/// An event with its id, stable encoding and payload hash computed once.
#[derive(Debug, Clone)]
pub struct PreparedEvent<E> {
    /// The event.
    pub event: E,
    /// Its id.
    pub id: EventId,
    /// Its stable encoding.
    pub encoded: Vec<u8>,
    /// blake3 of `encoded`.
    pub hash: PayloadHash,
}

impl<E: Event> PreparedEvent<E> {
    /// Computes the id, stable encoding and hash of `event`.
    ///
    /// # Errors
    /// [`CodecError`] when the event cannot be encoded.
    pub fn new(event: E) -> Result<Self, CodecError> {
        let encoded = event.stable_encoding()?;
        let hash = PayloadHash::of_bytes(&encoded);
        Ok(Self { id: event.event_id(), event, encoded, hash })
    }

    /// Rebuilds a prepared event from its stable encoding (as the journal stores it).
    ///
    /// # Errors
    /// [`CodecError`] when the bytes do not decode as `E`.
    pub fn from_encoded(encoded: Vec<u8>) -> Result<Self, CodecError> {
        let event: E = codec::stable_decode(&encoded)?;
        let hash = PayloadHash::of_bytes(&encoded);
        Ok(Self { id: event.event_id(), event, encoded, hash })
    }
}
