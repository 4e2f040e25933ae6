//! Typed read-model table definitions and their key encoding.

use crate::ids::{check_table_name, NameError};
use serde::{de::DeserializeOwned, Serialize};
use std::borrow::Cow;
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
}

impl ViewKey for String {
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
/// The table's *fingerprint* combines the key and row type names with the version. It is
/// recorded in the database; a table opened with a different fingerprint is reported as a
/// schema change (answered with a rebuild), never decoded as garbage. Bump `version` when
/// the row type's serialized shape changes.
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
        let mut hasher = blake3::Hasher::new();
        hasher.update(std::any::type_name::<K>().as_bytes());
        hasher.update(&[0]);
        hasher.update(std::any::type_name::<V>().as_bytes());
        hasher.update(&self.version.to_le_bytes());
        let mut fingerprint = [0u8; 16];
        fingerprint.copy_from_slice(hasher.finalize().as_bytes().get(..16).unwrap_or(&[0; 16]));
        TableId { name: self.name, fingerprint }
    }
}

/// The type-erased identity of a read-model table: its name and schema fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableId {
    /// The table's name.
    pub name: &'static str,
    /// blake3 of the key type, the row type and the version (16 bytes).
    pub fingerprint: [u8; 16],
}

impl TableId {
    /// Checks the table's name.
    ///
    /// # Errors
    /// [`NameError`] when the name is not 1 to 64 ASCII letters, digits or `_`.
    pub fn validate(&self) -> Result<(), NameError> {
        check_table_name(self.name)
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
        assert_ne!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
        assert_eq!(a, TableDef::<String, u64>::new("t", 1).id());
    }
}
