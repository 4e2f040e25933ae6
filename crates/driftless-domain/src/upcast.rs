//! Upcasters: reading events written under an older schema version.
//!
//! The journal keeps every accepted event as the stable encoding of the application's event
//! type at the time, with the [`Event::SCHEMA_VERSION`] it was written at. When the type
//! changes, the application keeps the old type under another name and registers how to turn
//! it into the next version. A chain `v1 -> v2 -> v3` composes: an event stored at version 1
//! is decoded as the version-1 type, passed through each step in turn, and arrives as the
//! current type. Steps are typed; [`Upcasters::check`] verifies, once, that each step's
//! result is what the next step (or the current type) takes, so a broken chain is an error
//! when the engine opens, never a surprise per event.
//!
//! ```
//! use driftless_domain::{Event, Timestamp, Upcasters};
//!
//! // Version 1 of the event, as the journal still holds it.
//! #[derive(serde::Deserialize)]
//! struct DepositedV1 { account: String, at: u64, amount: u64 }
//!
//! // Version 2: the amount gained a currency.
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Deposited { account: String, at: u64, amount: u64, currency: String }
//!
//! impl Event for Deposited {
//!     const SCHEMA_VERSION: u32 = 2;
//!     fn aggregate_id(&self) -> &str { &self.account }
//!     fn event_name(&self) -> &str { "Deposited" }
//!     fn occurred_at(&self) -> Timestamp { Timestamp(self.at) }
//! }
//!
//! let upcasters = Upcasters::<Deposited>::new().upcast(1, |old: DepositedV1| Deposited {
//!     account: old.account,
//!     at: old.at,
//!     amount: old.amount,
//!     currency: "EUR".into(),
//! });
//! upcasters.check()?;
//!
//! # #[derive(serde::Serialize)]
//! # struct V1Out { account: String, at: u64, amount: u64 }
//! let stored = driftless_domain::codec::stable_encode(&V1Out { account: "a".into(), at: 1, amount: 5 })?;
//! let event = upcasters.decode(1, &stored)?;
//! assert_eq!(event.currency, "EUR");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::codec::{self, CodecError};
use crate::event::Event;
use serde::de::DeserializeOwned;
use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Why an event stored under some schema version could not be read as the current one, or
/// why a set of upcasters is inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// No upcaster reads the stored version.
    #[error(
        "no upcaster reads version {version} of {type_name} (the current version is {current}); \
         register one from version {version}"
    )]
    Missing {
        /// The stored version.
        version: u32,
        /// The current version.
        current: u32,
        /// The current event type.
        type_name: &'static str,
    },
    /// The stored version is newer than the current one: the application was downgraded.
    #[error(
        "the event was written at version {version} of {type_name}, newer than the version \
         {current} this build declares; run the application release that wrote it, or a newer one"
    )]
    Newer {
        /// The stored version.
        version: u32,
        /// The current version.
        current: u32,
        /// The current event type.
        type_name: &'static str,
    },
    /// The stored bytes do not decode as the type registered for their version.
    #[error("an event stored at version {version} does not decode as {reads_as}: {source}")]
    Decode {
        /// The stored version.
        version: u32,
        /// The type it was decoded as.
        reads_as: &'static str,
        /// What the codec said.
        #[source]
        source: CodecError,
    },
    /// An upcaster panicked.
    #[error("the upcaster from version {version} panicked: {message}")]
    Panicked {
        /// The version it upcasts from.
        version: u32,
        /// The panic's text.
        message: String,
    },
    /// Two upcasters were registered from the same version.
    #[error("two upcasters are registered from version {version}; keep one")]
    Duplicate {
        /// The version.
        version: u32,
    },
    /// An upcaster was registered from a version that is not older than the current one.
    #[error(
        "an upcaster is registered from version {version}, but the current version is {current}: \
         upcasters go from an older version (1 or more) to the next"
    )]
    OutOfRange {
        /// The version it was registered from.
        version: u32,
        /// The current version.
        current: u32,
    },
    /// One step produces a type the next step does not take.
    #[error(
        "the upcaster from version {version} produces {produces}, but the upcaster from version {next} \
         takes {next_takes}"
    )]
    BrokenChain {
        /// The version of the first step.
        version: u32,
        /// What it produces.
        produces: &'static str,
        /// The next version.
        next: u32,
        /// What the next step takes.
        next_takes: &'static str,
    },
    /// The last step produces something other than the current event type.
    #[error(
        "the upcaster from version {version} produces {produces}, not the current event type {expected}"
    )]
    WrongResult {
        /// The version of the last step.
        version: u32,
        /// What it produces.
        produces: &'static str,
        /// The current event type.
        expected: &'static str,
    },
    /// The event type declares schema version 0.
    #[error("{type_name} declares schema version 0; versions start at 1")]
    VersionZero {
        /// The event type.
        type_name: &'static str,
    },
}

type DecodeFn = fn(&[u8]) -> Result<Box<dyn Any>, CodecError>;
type ApplyFn = dyn Fn(Box<dyn Any>) -> Option<Box<dyn Any>> + Send + Sync;

/// One registered step: from `from` to `from + 1`.
struct Step {
    takes: TypeId,
    takes_name: &'static str,
    produces: TypeId,
    produces_name: &'static str,
    decode: DecodeFn,
    apply: Box<ApplyFn>,
}

fn decode_as<T: DeserializeOwned + 'static>(body: &[u8]) -> Result<Box<dyn Any>, CodecError> {
    Ok(Box::new(codec::stable_decode::<T>(body)?))
}

/// The upcasters of one event type `E`: how to read each older schema version.
pub struct Upcasters<E> {
    steps: BTreeMap<u32, Step>,
    duplicate: Option<u32>,
    marker: PhantomData<fn() -> E>,
}

impl<E> Default for Upcasters<E> {
    fn default() -> Self {
        Self { steps: BTreeMap::new(), duplicate: None, marker: PhantomData }
    }
}

impl<E> fmt::Debug for Upcasters<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<String> =
            self.steps.iter().map(|(v, s)| format!("{v}: {} -> {}", s.takes_name, s.produces_name)).collect();
        f.debug_struct("Upcasters").field("steps", &steps).finish()
    }
}

impl<E: Event> Upcasters<E> {
    /// No upcasters: only the current version is read.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the step from `from_version` to `from_version + 1`: events stored at
    /// `from_version` are decoded as `Old` and turned into `New` by `step`. `New` is the
    /// type of the next version: the `Old` of the step from `from_version + 1`, or `E` when
    /// `from_version + 1` is [`Event::SCHEMA_VERSION`].
    #[must_use]
    pub fn upcast<Old, New>(
        mut self,
        from_version: u32,
        step: impl Fn(Old) -> New + Send + Sync + 'static,
    ) -> Self
    where
        Old: DeserializeOwned + 'static,
        New: 'static,
    {
        let apply = move |old: Box<dyn Any>| -> Option<Box<dyn Any>> {
            let old = old.downcast::<Old>().ok()?;
            Some(Box::new(step(*old)))
        };
        let added = Step {
            takes: TypeId::of::<Old>(),
            takes_name: std::any::type_name::<Old>(),
            produces: TypeId::of::<New>(),
            produces_name: std::any::type_name::<New>(),
            decode: decode_as::<Old>,
            apply: Box::new(apply),
        };
        if self.steps.insert(from_version, added).is_some() {
            self.duplicate.get_or_insert(from_version);
        }
        self
    }

    /// Checks that the steps fit together: no version registered twice, every step from an
    /// older version than the current one, each step producing what the next takes, and the
    /// last producing `E`. It says nothing of versions no step starts from: those are
    /// [`UpcastError::Missing`] only if the journal holds them.
    ///
    /// # Errors
    /// The first inconsistency found.
    pub fn check(&self) -> Result<(), UpcastError> {
        let current = E::SCHEMA_VERSION;
        if current == 0 {
            return Err(UpcastError::VersionZero { type_name: std::any::type_name::<E>() });
        }
        if let Some(version) = self.duplicate {
            return Err(UpcastError::Duplicate { version });
        }
        for (&version, step) in &self.steps {
            if version == 0 || version >= current {
                return Err(UpcastError::OutOfRange { version, current });
            }
            let next = version + 1;
            if next == current {
                if step.produces != TypeId::of::<E>() {
                    return Err(UpcastError::WrongResult {
                        version,
                        produces: step.produces_name,
                        expected: std::any::type_name::<E>(),
                    });
                }
            } else if let Some(following) = self.steps.get(&next) {
                if following.takes != step.produces {
                    return Err(UpcastError::BrokenChain {
                        version,
                        produces: step.produces_name,
                        next,
                        next_takes: following.takes_name,
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether an event stored at `version` can be read: the current version, or one from
    /// which a chain of steps reaches it.
    #[must_use]
    pub fn reads(&self, version: u32) -> bool {
        self.missing_step(version).is_none()
    }

    /// The first version on the way from `version` to the current one that has no step, or
    /// `None` when `version` can be read.
    fn missing_step(&self, version: u32) -> Option<u32> {
        let current = E::SCHEMA_VERSION;
        if version > current || version == 0 {
            return Some(version);
        }
        (version..current).find(|v| !self.steps.contains_key(v))
    }

    /// A fingerprint of the chain: the event type, its current version and every step's
    /// version and types. Whoever checked stored events against a chain can tell by it
    /// whether the chain changed since (type names are not stable across compilers, so a
    /// new compiler may only cause a check to run again).
    #[must_use]
    pub fn signature(&self) -> [u8; 16] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(std::any::type_name::<E>().as_bytes());
        hasher.update(&E::SCHEMA_VERSION.to_le_bytes());
        for (version, step) in &self.steps {
            hasher.update(&version.to_le_bytes());
            hasher.update(step.takes_name.as_bytes());
            hasher.update(&[0]);
            hasher.update(step.produces_name.as_bytes());
            hasher.update(&[0]);
        }
        let mut out = [0u8; 16];
        out.copy_from_slice(hasher.finalize().as_bytes().get(..16).unwrap_or(&[0; 16]));
        out
    }

    /// The versions steps are registered from, in order.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.steps.keys().copied()
    }

    /// Decodes an event stored at `version` and upcasts it to the current version.
    ///
    /// # Errors
    /// [`UpcastError::Newer`] for a version newer than the current one,
    /// [`UpcastError::Missing`] when a step of the chain is not registered,
    /// [`UpcastError::Decode`] when the bytes do not decode as the type of their version,
    /// [`UpcastError::Panicked`] when a step panics, [`UpcastError::WrongResult`] or
    /// [`UpcastError::BrokenChain`] for a chain that [`Upcasters::check`] would refuse.
    pub fn decode(&self, version: u32, body: &[u8]) -> Result<E, UpcastError> {
        let current = E::SCHEMA_VERSION;
        let type_name = std::any::type_name::<E>();
        if version == current {
            return codec::stable_decode::<E>(body).map_err(|source| UpcastError::Decode {
                version,
                reads_as: type_name,
                source,
            });
        }
        if version > current {
            return Err(UpcastError::Newer { version, current, type_name });
        }
        if let Some(missing) = self.missing_step(version) {
            return Err(UpcastError::Missing { version: missing, current, type_name });
        }
        let first = self.steps.get(&version).ok_or(UpcastError::Missing { version, current, type_name })?;
        let mut value = (first.decode)(body).map_err(|source| UpcastError::Decode {
            version,
            reads_as: first.takes_name,
            source,
        })?;
        for v in version..current {
            let step = self.steps.get(&v).ok_or(UpcastError::Missing { version: v, current, type_name })?;
            let taken = value;
            value = match catch_unwind(AssertUnwindSafe(|| (step.apply)(taken))) {
                Ok(Some(next)) => next,
                Ok(None) => {
                    return Err(UpcastError::BrokenChain {
                        version: v.saturating_sub(1),
                        produces: "another type",
                        next: v,
                        next_takes: step.takes_name,
                    })
                }
                Err(panic) => {
                    return Err(UpcastError::Panicked {
                        version: v,
                        message: crate::panic_text(&*panic)
                            .unwrap_or_else(|| "a non-text panic payload".to_owned()),
                    })
                }
            };
        }
        let last = current.saturating_sub(1);
        value.downcast::<E>().map(|e| *e).map_err(|_| UpcastError::WrongResult {
            version: last,
            produces: self.steps.get(&last).map_or("another type", |s| s.produces_name),
            expected: type_name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Timestamp;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V1 {
        id: String,
        amount: u64,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V2 {
        id: String,
        amount: u64,
        memo: Option<String>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V3 {
        memo: Option<String>,
        id: String,
        cents: u64,
    }

    impl Event for V3 {
        const SCHEMA_VERSION: u32 = 3;
        fn aggregate_id(&self) -> &str {
            &self.id
        }
        fn event_name(&self) -> &str {
            "Paid"
        }
        fn occurred_at(&self) -> Timestamp {
            Timestamp(0)
        }
    }

    fn chain() -> Upcasters<V3> {
        Upcasters::new()
            .upcast(1, |v: V1| V2 { id: v.id, amount: v.amount, memo: None })
            .upcast(2, |v: V2| V3 { memo: v.memo, id: v.id, cents: v.amount * 100 })
    }

    #[test]
    fn a_chain_reads_every_version() -> Result<(), Box<dyn std::error::Error>> {
        let upcasters = chain();
        upcasters.check()?;
        let v1 = codec::stable_encode(&V1 { id: "a".into(), amount: 2 })?;
        let v2 = codec::stable_encode(&V2 { id: "a".into(), amount: 2, memo: Some("m".into()) })?;
        let v3 = codec::stable_encode(&V3 { memo: None, id: "a".into(), cents: 5 })?;
        assert_eq!(upcasters.decode(1, &v1)?, V3 { memo: None, id: "a".into(), cents: 200 });
        assert_eq!(upcasters.decode(2, &v2)?, V3 { memo: Some("m".into()), id: "a".into(), cents: 200 });
        assert_eq!(upcasters.decode(3, &v3)?, V3 { memo: None, id: "a".into(), cents: 5 });
        assert!(upcasters.reads(1) && upcasters.reads(2) && upcasters.reads(3));
        assert!(!upcasters.reads(4) && !upcasters.reads(0));
        Ok(())
    }

    #[test]
    fn errors_name_the_version_and_what_to_register() -> Result<(), Box<dyn std::error::Error>> {
        let only_two =
            Upcasters::<V3>::new().upcast(2, |v: V2| V3 { memo: v.memo, id: v.id, cents: v.amount });
        only_two.check()?;
        let v1 = codec::stable_encode(&V1 { id: "a".into(), amount: 2 })?;
        let missing = only_two.decode(1, &v1);
        assert!(matches!(missing, Err(UpcastError::Missing { version: 1, current: 3, .. })), "{missing:?}");
        let text = missing.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("register one from version 1"), "{text}");
        assert!(matches!(only_two.decode(4, &v1), Err(UpcastError::Newer { version: 4, current: 3, .. })));
        // Version-1 bytes read as version 2 are too short.
        assert!(matches!(only_two.decode(2, &v1), Err(UpcastError::Decode { version: 2, .. })));
        Ok(())
    }

    #[test]
    fn inconsistent_chains_are_refused_by_check() {
        let broken = Upcasters::<V3>::new()
            .upcast(1, |v: V1| v) // produces V1, but step 2 takes V2
            .upcast(2, |v: V2| V3 { memo: v.memo, id: v.id, cents: v.amount });
        assert!(matches!(broken.check(), Err(UpcastError::BrokenChain { version: 1, next: 2, .. })));
        let wrong_end = Upcasters::<V3>::new().upcast(2, |v: V2| v);
        assert!(matches!(wrong_end.check(), Err(UpcastError::WrongResult { version: 2, .. })));
        let twice = chain().upcast(1, |v: V1| V2 { id: v.id, amount: 0, memo: None });
        assert!(matches!(twice.check(), Err(UpcastError::Duplicate { version: 1 })));
        let future = chain().upcast(3, |v: V3| v);
        assert!(matches!(future.check(), Err(UpcastError::OutOfRange { version: 3, current: 3 })));
    }

    #[test]
    #[expect(clippy::panic, reason = "an upcaster that panics, to show the panic is contained")]
    fn a_panicking_upcaster_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
        let upcasters = Upcasters::<V3>::new()
            .upcast(1, |_: V1| -> V2 { std::panic::panic_any("no".to_owned()) })
            .upcast(2, |v: V2| V3 { memo: v.memo, id: v.id, cents: v.amount });
        let v1 = codec::stable_encode(&V1 { id: "a".into(), amount: 2 })?;
        let got = upcasters.decode(1, &v1);
        assert!(
            matches!(&got, Err(UpcastError::Panicked { version: 1, message }) if message == "no"),
            "{got:?}"
        );
        Ok(())
    }
}
