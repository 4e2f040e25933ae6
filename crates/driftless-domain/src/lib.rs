//! # driftless-domain
//!
//! The pure core of driftless: identifiers, the [`Event`] and [`Projector`] contracts, the
//! [`codec`] every stored value goes through, the [`shape`] of a stored type, the
//! offset-store port, and the reconciliation policy (sampling, drift, cadences, promotion).
//! It does no I/O, starts no threads and knows nothing of redb.
//!
//! ```
//! use driftless_domain::{Event, EventId, Timestamp};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Renamed { user: String, at: u64, name: String }
//!
//! impl Event for Renamed {
//!     fn aggregate_id(&self) -> &str { &self.user }
//!     fn event_name(&self) -> &str { "Renamed" }
//!     fn occurred_at(&self) -> Timestamp { Timestamp(self.at) }
//! }
//!
//! let e = Renamed { user: "u1".into(), at: 1_000, name: "Ada".into() };
//! assert_eq!(e.event_id(), EventId::derive("u1", Timestamp(1_000), "Renamed"));
//! assert_eq!(e.event_id().as_str(), "u1:1000:Renamed");
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod clock;
pub mod codec;
pub mod event;
pub mod ids;
pub mod offsets;
pub mod projector;
pub mod reconcile;
pub mod shape;
pub mod table;
pub mod upcast;

pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::CodecError;
pub use event::{Event, PayloadHash, PreparedEvent};
pub use ids::{EventId, HandlerName, NameError, Timestamp};
pub use offsets::{InMemoryOffsetStore, OffsetOutcome, OffsetRecord, OffsetStore};
pub use projector::{
    ApplyError, CommittedRows, ProjectionContext, Projector, TableMut, TableSlot, ViewError, Views, WriteSet,
};
pub use shape::{shape_of, Shape, ShapeError};
pub use table::{Fingerprint, FingerprintScheme, KeyDecodeError, TableDef, TableId, ViewKey, ViewValue};
pub use upcast::{UpcastError, Upcasters};

/// The text of a panic payload (`panic!` with a message carries a `&str` or a `String`),
/// or `None` for any other payload. Pass the payload itself (`&*boxed`), not the box.
#[must_use]
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}

// Reconciliation policy.
pub use reconcile::{
    Cadence, DriftPolicy, PromotionPolicy, PromotionState, ReadModelHealth, ReconcileError, ReconcileMode,
    ReconcilePolicy, ReconcileResult, RunSummary, SampleKey, SamplingPolicy,
};
