//! Validated identifiers: event ids, handler names, read-model names and timestamps.

use arrayvec::ArrayString;
use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Milliseconds since the Unix epoch, UTC.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp `millis` milliseconds after the Unix epoch.
    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whole milliseconds from `earlier` to `self`, or zero if `earlier` is later.
    #[must_use]
    pub const fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Why a name or id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The value was empty.
    #[error("{what} must not be empty")]
    Empty {
        /// What kind of name was checked.
        what: &'static str,
    },
    /// The value was longer than allowed.
    #[error("{what} is {len} bytes long, more than the {max} allowed")]
    TooLong {
        /// What kind of name was checked.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// The value contained a control character.
    #[error("{what} contains the control character {ch:?} at byte {at}")]
    ControlCharacter {
        /// What kind of name was checked.
        what: &'static str,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// The value contained a character reserved by driftless.
    #[error("{what} contains the reserved character {ch:?} at byte {at}")]
    Reserved {
        /// What kind of name was checked.
        what: &'static str,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
}

fn check_name(what: &'static str, value: &str, max: usize, reserved: &[char]) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > max {
        return Err(NameError::TooLong { what, len: value.len(), max });
    }
    // Printable ASCII, the common case, holds no control character: one pass over bytes.
    if reserved.is_empty() && value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    for (at, ch) in value.char_indices() {
        if ch.is_control() {
            return Err(NameError::ControlCharacter { what, ch, at });
        }
        if reserved.contains(&ch) {
            return Err(NameError::Reserved { what, ch, at });
        }
    }
    Ok(())
}

/// The identity of one domain event, the key of exactly-once delivery.
///
/// By default it is derived as `"{aggregate_id}:{occurred_at_millis}:{event_name}"`
/// ([`EventId::derive`]); an event type may override it. Two events of one aggregate with
/// the same name in the same millisecond derive the same id: driftless then reports the
/// second as a conflict (its payload hash differs) rather than silently skipping it.
///
/// An id of up to [`EventId::INLINE_LEN`] bytes is kept inside the value, without an
/// allocation of its own; default ids are usually that short. Equality, order and hash are
/// those of the text ([`EventId::as_str`]), and serde reads and writes it as a string.
#[derive(Clone)]
pub struct EventId(IdRepr);

#[derive(Clone)]
enum IdRepr {
    Inline(ArrayString<{ EventId::INLINE_LEN }>),
    Heap(Box<str>),
}

/// The empty id. [`EventId::new`] refuses it and no event carries it: it stands in for an
/// id that was moved elsewhere (as with `std::mem::take`), and allocates nothing.
impl Default for EventId {
    fn default() -> Self {
        Self(IdRepr::Inline(ArrayString::new_const()))
    }
}

impl EventId {
    /// The most bytes an event id may have.
    pub const MAX_LEN: usize = 1024;

    /// The most bytes an id is kept in without an allocation.
    pub const INLINE_LEN: usize = 48;

    /// Validates an explicit event id: 1 to [`Self::MAX_LEN`] bytes, no control characters.
    ///
    /// # Errors
    /// [`NameError`] when the id is empty, too long or holds a control character.
    pub fn new<'a>(id: impl Into<Cow<'a, str>>) -> Result<Self, NameError> {
        let id = id.into();
        check_name("an event id", &id, Self::MAX_LEN, &[])?;
        Ok(Self::from_text(id))
    }

    /// The default id, `"{aggregate_id}:{occurred_at_millis}:{event_name}"`.
    #[must_use]
    pub fn derive(aggregate_id: &str, occurred_at: Timestamp, event_name: &str) -> Self {
        let mut inline = ArrayString::new();
        if write!(inline, "{aggregate_id}:{}:{event_name}", occurred_at.0).is_ok() {
            return Self(IdRepr::Inline(inline));
        }
        Self(IdRepr::Heap(format!("{aggregate_id}:{}:{event_name}", occurred_at.0).into_boxed_str()))
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            IdRepr::Inline(s) => s.as_str(),
            IdRepr::Heap(s) => s,
        }
    }

    /// Keeps `text` inside the value when it is short enough (text already checked).
    fn from_text(text: Cow<'_, str>) -> Self {
        match ArrayString::from(&text) {
            Ok(inline) => Self(IdRepr::Inline(inline)),
            Err(_) => Self(IdRepr::Heap(text.into_owned().into_boxed_str())),
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EventId").field(&self.as_str()).finish()
    }
}

impl PartialEq for EventId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for EventId {}

impl PartialOrd for EventId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EventId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for EventId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// The form serde reads and writes: a newtype around the text, as a `String` field gives.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename = "EventId")]
struct IdWire<'a>(#[serde(borrow)] Cow<'a, str>);

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        IdWire(Cow::Borrowed(self.as_str())).serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The text is taken unchecked, as a stored id was checked when it was first made.
        IdWire::deserialize(deserializer).map(|wire| Self::from_text(wire.0))
    }
}

/// The stable name of a projector, half of every offset key.
///
/// Validated once: 1 to 128 bytes, no control characters. Renaming a handler makes it a
/// new projector, which re-projects from the start of the journal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct HandlerName(String);

impl HandlerName {
    /// The most bytes a handler name may have.
    pub const MAX_LEN: usize = 128;

    /// Validates a handler name.
    ///
    /// # Errors
    /// [`NameError`] when the name is empty, longer than 128 bytes or holds a control
    /// character.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_name("a handler name", &name, Self::MAX_LEN, &[])?;
        Ok(Self(name))
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HandlerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the name of a read-model table: 1 to 64 bytes of ASCII letters, digits and `_`.
///
/// # Errors
/// [`NameError`] for anything else.
pub fn check_table_name(name: &str) -> Result<(), NameError> {
    const WHAT: &str = "a read-model name";
    check_name(WHAT, name, 64, &[])?;
    for (at, ch) in name.char_indices() {
        if !(ch.is_ascii_alphanumeric() || ch == '_') {
            return Err(NameError::Reserved { what: WHAT, ch, at });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_event_id_has_the_documented_shape() {
        let id = EventId::derive("listing-7", Timestamp(1_700_000_000_123), "ListingCreated");
        assert_eq!(id.as_str(), "listing-7:1700000000123:ListingCreated");
    }

    #[test]
    fn handler_names_are_validated() {
        assert!(HandlerName::new("listing_card").is_ok());
        assert_eq!(HandlerName::new(""), Err(NameError::Empty { what: "a handler name" }));
        assert!(matches!(HandlerName::new("a".repeat(129)), Err(NameError::TooLong { len: 129, .. })));
        assert!(HandlerName::new("a".repeat(128)).is_ok());
        assert!(matches!(
            HandlerName::new("bad\nname"),
            Err(NameError::ControlCharacter { ch: '\n', at: 3, .. })
        ));
    }

    #[test]
    fn event_ids_are_validated() {
        assert!(EventId::new("e-1").is_ok());
        assert!(EventId::new("").is_err());
        assert!(EventId::new("x".repeat(EventId::MAX_LEN + 1)).is_err());
        assert!(EventId::new("tab\there").is_err());
    }

    /// Ids either side of the inline length, as the two representations hold them.
    fn ids_around_the_inline_length() -> Result<Vec<EventId>, NameError> {
        let n = EventId::INLINE_LEN;
        ["a".repeat(n - 1), "a".repeat(n), "a".repeat(n + 1), "b".repeat(n), "é".repeat(n)]
            .into_iter()
            .map(EventId::new)
            .collect()
    }

    #[test]
    fn long_and_short_ids_compare_hash_and_show_as_their_text() -> Result<(), NameError> {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        fn hash_of<T: Hash + ?Sized>(v: &T) -> u64 {
            let mut h = DefaultHasher::new();
            v.hash(&mut h);
            h.finish()
        }
        let ids = ids_around_the_inline_length()?;
        for a in &ids {
            assert_eq!(hash_of(a), hash_of(a.as_str()), "{a}");
            assert_eq!(format!("{a:?}"), format!("EventId({:?})", a.as_str()));
            assert_eq!(a.to_string(), a.as_str());
            for b in &ids {
                assert_eq!(a == b, a.as_str() == b.as_str(), "{a} {b}");
                assert_eq!(a.cmp(b), a.as_str().cmp(b.as_str()), "{a} {b}");
            }
        }
        let derived = EventId::derive(&"x".repeat(60), Timestamp(5), "Name");
        assert_eq!(derived.as_str(), format!("{}:5:Name", "x".repeat(60)));
        assert_eq!(EventId::default().as_str(), "");
        Ok(())
    }

    #[test]
    fn ids_encode_exactly_as_the_string_they_hold() -> Result<(), Box<dyn std::error::Error>> {
        for id in ids_around_the_inline_length()? {
            let text = id.as_str().to_string();
            let bytes = crate::codec::stable_encode(&id)?;
            assert_eq!(bytes, crate::codec::stable_encode(&text)?);
            assert_eq!(crate::codec::stable_decode::<EventId>(&bytes)?, id);
            let json = serde_json::to_string(&id)?;
            assert_eq!(json, serde_json::to_string(&text)?);
            assert_eq!(serde_json::from_str::<EventId>(&json)?, id);
        }
        // An escaped JSON string cannot be borrowed: it decodes all the same.
        assert_eq!(serde_json::from_str::<EventId>(r#""a\u0041""#)?.as_str(), "aA");
        Ok(())
    }

    #[test]
    fn table_names_are_restricted() {
        assert!(check_table_name("listing_card").is_ok());
        assert!(check_table_name("rm.x").is_err());
        assert!(check_table_name("").is_err());
        assert!(check_table_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn errors_read_as_sentences() {
        let err = HandlerName::new("").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("a handler name must not be empty"));
    }
}
