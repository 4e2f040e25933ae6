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
/// event what it is (aggregate, name, time and payload). The encoding is bincode 2
/// (standard configuration) of that representation ([`codec::stable_encode`]), and must be
/// a function of the event's value: driftless hashes it when the event is dispatched and
/// encodes it again when it journals the event.
///
/// # Schema versions
///
/// bincode is positional: stored bytes mean something only to the type that wrote them.
/// [`Event::SCHEMA_VERSION`] names the shape of this type's encoding, and every journal
/// entry and dead letter records the version it was written at. When the type changes in a
/// way that changes its encoding (a field added, removed, reordered or retyped, a variant
/// added or moved), raise the version, keep the old type under another name, and register
/// an upcaster from the old version (`Upcasters`, or the engine builder's `upcast`).
/// Every reader of the journal then sees current events only, and a re-delivery is judged
/// a duplicate or a conflict after upcasting.
///
/// The encoding must also read back as the same event: serde shapes that bincode cannot
/// read (`#[serde(flatten)]`, untagged or internally tagged enums) or that write something
/// other than what they read (`skip_serializing_if`) are refused before they are journaled.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The version of this type's stable encoding (1 unless raised).
    const SCHEMA_VERSION: u32 = 1;

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
}

/// An event with its id and payload hash computed once.
#[derive(Debug, Clone)]
pub struct PreparedEvent<E> {
    /// The event.
    pub event: E,
    /// Its id.
    pub id: EventId,
    /// Its stable encoding, when the event came as those bytes (read back from the journal
    /// or a dead letter). `None` for a new event: its bytes are made again where they are
    /// stored ([`PreparedEvent::encode_into`]), which most deliveries, re-deliveries among
    /// them, never need.
    pub encoded: Option<Vec<u8>>,
    /// blake3 of the stable encoding.
    pub hash: PayloadHash,
    /// The length of the stable encoding in bytes.
    pub size: usize,
}

impl<E: Event> PreparedEvent<E> {
    /// Computes the id and the hash of the stable encoding of `event`. The encoding is made
    /// in a buffer kept per thread, so preparing allocates nothing but the id.
    ///
    /// # Errors
    /// [`CodecError`] when the event cannot be encoded.
    pub fn new(event: E) -> Result<Self, CodecError> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let (hash, size) = SCRATCH.with(|scratch| -> Result<(PayloadHash, usize), CodecError> {
            // A `Serialize` impl that prepares another event re-enters: it gets its own buffer.
            let mut own = Vec::new();
            let mut shared = scratch.try_borrow_mut().ok();
            let buf = shared.as_deref_mut().unwrap_or(&mut own);
            buf.clear();
            codec::stable_encode_into(&event, buf)?;
            let hash = PayloadHash::of_bytes(buf);
            let size = buf.len();
            // A rare huge event does not pin its size in every thread that prepared it.
            if buf.capacity() > SCRATCH_KEPT {
                *buf = Vec::new();
            }
            Ok((hash, size))
        })?;
        Ok(Self { id: event.event_id(), event, encoded: None, hash, size })
    }

    /// Rebuilds a prepared event from its stable encoding at the current
    /// [`Event::SCHEMA_VERSION`] (as the journal stores it).
    ///
    /// # Errors
    /// [`CodecError`] when the bytes do not decode as `E`.
    pub fn from_encoded(encoded: Vec<u8>) -> Result<Self, CodecError> {
        let prepared = Self::from_body(&encoded)?;
        Ok(Self { encoded: Some(encoded), ..prepared })
    }

    /// Decodes an event from its stable encoding at the current [`Event::SCHEMA_VERSION`]
    /// without keeping the bytes (they are made again if they are needed, see
    /// [`PreparedEvent::encode_into`]).
    ///
    /// # Errors
    /// [`CodecError`] when the bytes do not decode as `E`.
    pub fn from_body(body: &[u8]) -> Result<Self, CodecError> {
        let event: E = codec::stable_decode(body)?;
        let hash = PayloadHash::of_bytes(body);
        Ok(Self { id: event.event_id(), event, encoded: None, hash, size: body.len() })
    }

    /// Checks that `encoding`, a stable encoding of an `E`, reads back as itself: decoding
    /// it as `E` and encoding the result gives the same bytes. An event for which this
    /// fails could be journaled but never replayed as itself (see [`Event`]).
    ///
    /// # Errors
    /// [`CodecError::Decode`] when the bytes do not decode, or decode as another event.
    pub fn check_reads_back(encoding: &[u8]) -> Result<(), CodecError> {
        let back: E = codec::stable_decode(encoding)?;
        let again = codec::stable_encode(&back)?;
        if again != encoding {
            return Err(CodecError::Decode {
                type_name: std::any::type_name::<E>(),
                message: format!(
                    "its encoding ({} bytes) reads back as another value ({} bytes when encoded again)",
                    encoding.len(),
                    again.len()
                ),
            });
        }
        Ok(())
    }

    /// Appends the event's stable encoding to `out`: the bytes it came as, or the event
    /// encoded again, which gives the bytes its hash was computed over (the encoding is a
    /// function of the event's value).
    ///
    /// # Errors
    /// [`CodecError`] when the event cannot be encoded.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match &self.encoded {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
            None => codec::stable_encode_into(&self.event, out),
        }
    }

    /// The event's stable encoding, as [`PreparedEvent::encode_into`] appends it.
    ///
    /// # Errors
    /// [`CodecError`] when the event cannot be encoded.
    pub fn encoding(&self) -> Result<Vec<u8>, CodecError> {
        match &self.encoded {
            Some(bytes) => Ok(bytes.clone()),
            None => codec::stable_encode(&self.event),
        }
    }
}

/// The most capacity a thread keeps in its buffer for preparing events.
const SCRATCH_KEPT: usize = 64 << 10;
