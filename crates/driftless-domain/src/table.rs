//! Typed read-model table definitions and their key encoding.

use crate::ids::{check_table_name, NameError};
use serde::{de::DeserializeOwned, Serialize};
use std::any::TypeId;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Debug;
use std::marker::PhantomData;

/// Why stored key bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stored key does not decode as {type_name}: {reason}")]
pub struct KeyDecodeError {
    /// The expected key type.
    pub type_name: &'static str,
    /// What was wrong.
    pub reason: &'static str,
}

/// A read-model key: encoded so that byte order is the key's natural order.
///
/// `String` keys are their UTF-8 bytes (so iteration is in byte order of the UTF-8 key);
/// integers are big-endian (signed ones with the sign bit flipped).
pub trait ViewKey: Sized + Clone + Debug + Send + Sync + 'static {
    /// Appends the order-preserving encoding of `self`.
    fn encode_key(&self, out: &mut Vec<u8>);
    /// Decodes a key written by [`Self::encode_key`].
    ///
    /// # Errors
    /// [`KeyDecodeError`] when the bytes are not such a key.
    fn decode_key(bytes: &[u8]) -> Result<Self, KeyDecodeError>;

    /// The encoding as a new vector.
    fn to_key_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_key(&mut out);
        out
    }

    /// The encoding, borrowed from `self` when the key's bytes are its encoding (strings
    /// and byte vectors), so that a lookup does not allocate.
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.to_key_bytes())
    }

    /// A name for the key encoding, part of a table's fingerprint: keys encoded alike have
    /// the same name. The default is the Rust type name.
    fn encoding_name() -> &'static str {
        std::any::type_name::<Self>()
    }
}

impl ViewKey for String {
    fn encoding_name() -> &'static str {
        "utf8"
    }
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self.as_bytes())
    }
    fn decode_key(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| KeyDecodeError { type_name: "String", reason: "the bytes are not UTF-8" })
    }
}

impl ViewKey for Vec<u8> {
    fn encoding_name() -> &'static str {
        "bytes"
    }
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn key_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(self)
    }
    fn decode_key(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        Ok(bytes.to_vec())
    }
}

impl ViewKey for u64 {
    fn encoding_name() -> &'static str {
        "u64-be"
    }
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn decode_key(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        let arr: [u8; 8] = bytes
            .try_into()
            .map_err(|_| KeyDecodeError { type_name: "u64", reason: "the key is not 8 bytes long" })?;
        Ok(u64::from_be_bytes(arr))
    }
}

impl ViewKey for i64 {
    fn encoding_name() -> &'static str {
        "i64-be-flipped"
    }
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&((*self as u64) ^ (1 << 63)).to_be_bytes());
    }
    fn decode_key(bytes: &[u8]) -> Result<Self, KeyDecodeError> {
        let arr: [u8; 8] = bytes
            .try_into()
            .map_err(|_| KeyDecodeError { type_name: "i64", reason: "the key is not 8 bytes long" })?;
        Ok((u64::from_be_bytes(arr) ^ (1 << 63)) as i64)
    }
}

/// A read-model row type: any serde type, stored through [`crate::codec`].
pub trait ViewValue: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Debug + Send + Sync + 'static> ViewValue for T {}

/// A typed read-model table: its name, the key and row types, and a schema version.
///
/// The table's *fingerprint* follows the serialized shape of its key and row types (field
/// names, order and types, enum variants; see [`crate::shape`]) and the version. It is
/// recorded in the database; a table opened with a different fingerprint is reported as a
/// schema change, answered with a rebuild from the journal, never decoded as garbage. Adding
/// a field to the row type is such a change; moving or renaming the type is not. Raise
/// `version` to force a rebuild without a change of shape (the rows' meaning changed).
///
/// A row type whose shape cannot be traced (a `Deserialize` that validates what it reads,
/// or a recursive type) is fingerprinted by its Rust type names and the version instead,
/// as format 1 did: then only a raised `version` marks a change of shape.
///
/// ```
/// use driftless_domain::TableDef;
/// const CARDS: TableDef<String, u64> = TableDef::new("cards", 1);
/// assert_eq!(CARDS.name(), "cards");
/// ```
pub struct TableDef<K, V> {
    name: &'static str,
    version: u32,
    marker: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for TableDef<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for TableDef<K, V> {}

impl<K, V> Debug for TableDef<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableDef").field("name", &self.name).field("version", &self.version).finish()
    }
}

impl<K: ViewKey, V: ViewValue> TableDef<K, V> {
    /// Defines a table. The name is checked when the table is registered with an engine.
    #[must_use]
    pub const fn new(name: &'static str, version: u32) -> Self {
        Self { name, version, marker: PhantomData }
    }

    /// The table's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The schema version given at definition.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The erased identity of this table, as projectors declare it.
    #[must_use]
    pub fn id(&self) -> TableId {
        TableId {
            name: self.name,
            version: self.version,
            types: TypeId::of::<(K, V)>(),
            fingerprint_of: fingerprint_of::<K, V>,
            named_of: named_fingerprint::<K, V>,
        }
    }
}

/// How a table's fingerprint was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FingerprintScheme {
    /// blake3 of the key and row Rust type names and the version: what format 1 recorded,
    /// and what a type whose shape cannot be traced gets.
    #[default]
    Named,
    /// blake3 of the serialized shapes of the key and row types and the version.
    Shape,
}

/// A table's schema fingerprint: 16 bytes and how they were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    /// How it was made.
    pub scheme: FingerprintScheme,
    /// The fingerprint.
    pub bytes: [u8; 16],
}

fn first_16(hash: &blake3::Hash) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(hash.as_bytes().get(..16).unwrap_or(&[0; 16]));
    out
}

/// The fingerprint of format 1: the key and row type names and the version.
fn named_fingerprint<K: 'static, V: 'static>(version: u32) -> [u8; 16] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(std::any::type_name::<K>().as_bytes());
    hasher.update(&[0]);
    hasher.update(std::any::type_name::<V>().as_bytes());
    hasher.update(&version.to_le_bytes());
    first_16(&hasher.finalize())
}

/// The fingerprint of the key and row types' shapes and the version, computed once per
/// process for each (types, version).
fn fingerprint_of<K: ViewKey, V: ViewValue>(version: u32) -> Fingerprint {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<HashMap<(TypeId, u32), Fingerprint>>> =
        std::sync::OnceLock::new();
    let key = (TypeId::of::<(K, V)>(), version);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(found) = cache.lock().ok().and_then(|c| c.get(&key).copied()) {
        return found;
    }
    let computed = compute_fingerprint::<K, V>(version);
    if let Ok(mut c) = cache.lock() {
        c.insert(key, computed);
    }
    computed
}

fn compute_fingerprint<K: ViewKey, V: ViewValue>(version: u32) -> Fingerprint {
    // A `Deserialize` of the application's that panics on a placeholder value leaves the
    // type untraceable, like one that refuses it.
    let traced = std::panic::catch_unwind(crate::shape::shape_of::<V>)
        .unwrap_or(Err(crate::shape::ShapeError::TooComplex));
    match traced {
        Ok(row) => {
            let mut hasher = blake3::Hasher::new();
            hasher.update(b"shape\0");
            hasher.update(K::encoding_name().as_bytes());
            hasher.update(&[0]);
            hasher.update(row.canonical().as_bytes());
            hasher.update(&version.to_le_bytes());
            Fingerprint { scheme: FingerprintScheme::Shape, bytes: first_16(&hasher.finalize()) }
        }
        Err(_) => Fingerprint { scheme: FingerprintScheme::Named, bytes: named_fingerprint::<K, V>(version) },
    }
}

/// The type-erased identity of a read-model table: its name, version and types.
#[derive(Clone, Copy)]
pub struct TableId {
    /// The table's name.
    pub name: &'static str,
    version: u32,
    types: TypeId,
    fingerprint_of: fn(u32) -> Fingerprint,
    named_of: fn(u32) -> [u8; 16],
}

impl Debug for TableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableId").field("name", &self.name).field("version", &self.version).finish()
    }
}

impl PartialEq for TableId {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.version == other.version && self.types == other.types
    }
}
impl Eq for TableId {}

impl std::hash::Hash for TableId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.version.hash(state);
        self.types.hash(state);
    }
}

impl TableId {
    /// Checks the table's name.
    ///
    /// # Errors
    /// [`NameError`] when the name is not 1 to 64 ASCII letters, digits or `_`.
    pub fn validate(&self) -> Result<(), NameError> {
        check_table_name(self.name)
    }

    /// The schema version given at definition.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Whether `other` declares the same table with the same key and row types.
    #[must_use]
    pub fn same_types(&self, other: &TableId) -> bool {
        self == other
    }

    /// The schema fingerprint (computed once per process and cached).
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        (self.fingerprint_of)(self.version)
    }

    /// The fingerprint format 1 recorded: blake3 of the type names and the version.
    #[must_use]
    pub fn named_fingerprint(&self) -> [u8; 16] {
        (self.named_of)(self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_encodings_preserve_order() -> Result<(), KeyDecodeError> {
        let ints = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let enc: Vec<Vec<u8>> = ints.iter().map(ViewKey::to_key_bytes).collect();
        assert!(enc.windows(2).all(|w| w.first() < w.get(1)));
        for (i, bytes) in ints.iter().zip(&enc) {
            assert_eq!(i64::decode_key(bytes)?, *i);
        }
        assert!(7u64.to_key_bytes() < 300u64.to_key_bytes());
        assert_eq!(String::decode_key("abc".as_bytes())?, "abc");
        assert!(String::decode_key(&[0xff]).is_err());
        assert!(u64::decode_key(&[1, 2]).is_err());
        Ok(())
    }

    #[test]
    fn borrowed_key_bytes_are_the_encoding() {
        fn same<K: ViewKey>(key: K) {
            assert_eq!(key.key_bytes().as_ref(), key.to_key_bytes().as_slice(), "{key:?}");
        }
        same("listing-é1".to_owned());
        same(String::new());
        same(vec![0u8, 255, 7]);
        same(300u64);
        same(-5i64);
        assert!(matches!("k".to_owned().key_bytes(), Cow::Borrowed(b"k")));
    }

    #[test]
    fn fingerprint_depends_on_types_and_version() {
        let a = TableDef::<String, u64>::new("t", 1).id();
        let b = TableDef::<String, u64>::new("t", 2).id();
        let c = TableDef::<String, i64>::new("t", 1).id();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().scheme, FingerprintScheme::Shape);
        assert_eq!(a, TableDef::<String, u64>::new("t", 1).id());
        assert_eq!(a.fingerprint(), TableDef::<String, u64>::new("t", 1).id().fingerprint());
        assert_ne!(a.named_fingerprint(), c.named_fingerprint());
    }

    mod before {
        #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
        pub struct Card {
            pub title: String,
            pub price: u64,
        }
    }
    mod moved {
        #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
        pub struct Card {
            pub title: String,
            pub price: u64,
        }
        #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
        pub struct Renamed {
            pub title: String,
            pub price: u64,
        }
    }
    mod grown {
        #[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
        pub struct Card {
            pub title: String,
            pub price: u64,
            pub currency: String,
        }
    }

    #[test]
    fn the_fingerprint_follows_the_row_shape_not_its_name() {
        let before = TableDef::<String, before::Card>::new("cards", 1).id().fingerprint();
        let moved = TableDef::<String, moved::Card>::new("cards", 1).id().fingerprint();
        let renamed = TableDef::<String, moved::Renamed>::new("cards", 1).id().fingerprint();
        let grown = TableDef::<String, grown::Card>::new("cards", 1).id().fingerprint();
        assert_eq!(before, moved);
        assert_eq!(before, renamed);
        assert_ne!(before, grown);
        // The named fingerprint of format 1 saw only the path.
        let named = |id: TableId| id.named_fingerprint();
        assert_ne!(
            named(TableDef::<String, before::Card>::new("cards", 1).id()),
            named(TableDef::<String, moved::Card>::new("cards", 1).id())
        );
    }
}
