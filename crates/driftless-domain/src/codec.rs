//! The one codec of driftless: every stored value goes through here.
//!
//! A stored value is an *envelope*:
//!
//! ```text
//! +---------+------------------------------+--------------------------------+
//! | version | body: bincode 2 (standard)   | checksum of version||body      |
//! | 1 byte  | 0 ..= MAX_BODY_LEN bytes     | 8 bytes                        |
//! +---------+------------------------------+--------------------------------+
//! ```
//!
//! The checksum makes a flipped byte in a stored value a [`CodecError::Checksum`] instead
//! of silently wrong data (redb verifies its page checksums only in its integrity check, not
//! on ordinary reads). Version 2, which this build writes, checksums with XXH3-64 (little
//! endian); version 1 used the first 8 bytes of blake3 and is still read. Both detect
//! damage equally well (a changed value passes with probability 2^-64); XXH3 costs about
//! 9 ns for a typical 61-byte row where blake3 costs about 100 ns, and every read and
//! write of a value pays it. The body is decoded with a size limit, so a length prefix that claims
//! gigabytes is refused without allocating them. bincode is pinned to 2.0.1 and used nowhere
//! else in driftless.

use serde::{Deserialize, Serialize};

/// The envelope version this build writes: an XXH3-64 checksum.
pub const ENVELOPE_VERSION: u8 = 2;
/// The first envelope version: a blake3 checksum (its first 8 bytes). Still read.
pub const ENVELOPE_VERSION_BLAKE3: u8 = 1;
/// The envelope version of a value whose checksum also covers the key it is stored under:
/// XXH3-64 of `version || body`, seeded with XXH3-64 of the key. Read with [`decode_keyed`].
pub const ENVELOPE_VERSION_KEYED: u8 = 3;
/// Bytes of checksum at the end of every envelope.
pub const CHECKSUM_LEN: usize = 8;
/// The largest body the codec encodes or decodes: 16 MiB.
pub const MAX_BODY_LEN: usize = 16 << 20;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_BODY_LEN>,
>;

const fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_BODY_LEN>()
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The stored bytes are shorter than an envelope can be.
    #[error("the stored value is {len} bytes long, too short to be a driftless value")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// The stored value was written by a newer or unknown envelope version.
    #[error(
        "the stored value has envelope version {found}, this build reads versions 1 and {ENVELOPE_VERSION}"
    )]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The checksum does not match: the stored bytes were changed after they were written.
    #[error("the stored value fails its checksum: it was changed after it was written")]
    Checksum,
    /// The checksum of a value that covers its key does not match: the value was changed,
    /// or it is filed under another key than the one it was written for.
    #[error(
        "the stored value fails its checksum against its key: it was changed, or it is filed under \
         another key than the one it was written for"
    )]
    KeyChecksum,
    /// A value whose checksum covers its key was read without the key.
    #[error("the stored value is checked against its key, and was read without it")]
    NeedsKey,
    /// The body is larger than [`MAX_BODY_LEN`].
    #[error("the value is {len} bytes long, more than the {MAX_BODY_LEN} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The body does not decode as the expected type.
    #[error("the stored value does not decode as {type_name}: {message}")]
    Decode {
        /// The expected type.
        type_name: &'static str,
        /// What bincode said.
        message: String,
    },
    /// The body decoded but left bytes over.
    #[error("the stored value decodes as {type_name} but leaves {extra} bytes over")]
    TrailingBytes {
        /// The expected type.
        type_name: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// The value could not be encoded.
    #[error("a value of type {type_name} could not be encoded: {message}")]
    Encode {
        /// The type.
        type_name: &'static str,
        /// What bincode said.
        message: String,
    },
}

/// The checksum of `version || body` under `version`'s algorithm: blake3 for version 1,
/// XXH3-64 for version 2 and any later one.
fn checksum(version: u8, version_and_body: &[u8]) -> [u8; CHECKSUM_LEN] {
    if version == ENVELOPE_VERSION_BLAKE3 {
        let hash = blake3::hash(version_and_body);
        let mut out = [0u8; CHECKSUM_LEN];
        out.copy_from_slice(hash.as_bytes().get(..CHECKSUM_LEN).unwrap_or(&[0; CHECKSUM_LEN]));
        out
    } else {
        xxhash_rust::xxh3::xxh3_64(version_and_body).to_le_bytes()
    }
}

/// Encodes `value` as a checksummed envelope, appending to `out`.
///
/// # Errors
/// [`CodecError::Encode`] if serde refuses the value, [`CodecError::TooLarge`] if its body
/// exceeds [`MAX_BODY_LEN`].
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.push(ENVELOPE_VERSION);
    if let Err(e) = stable_encode_into(value, out) {
        out.truncate(start);
        return Err(e);
    }
    finish_envelope(out, start)
}

/// Wraps an already-encoded body (from [`stable_encode_into`]) in an envelope, appending
/// to `out`.
///
/// # Errors
/// [`CodecError::TooLarge`] if the body exceeds [`MAX_BODY_LEN`].
pub fn seal_into(body: &[u8], out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(body);
    finish_envelope(out, start)
}

/// As [`seal_into`], into a new vector.
///
/// # Errors
/// As [`seal_into`].
pub fn seal(body: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(body.len() + 1 + CHECKSUM_LEN);
    seal_into(body, &mut out)?;
    Ok(out)
}

fn finish_envelope(out: &mut Vec<u8>, start: usize) -> Result<(), CodecError> {
    let body_len = out.len() - start - 1;
    if body_len > MAX_BODY_LEN {
        out.truncate(start);
        return Err(CodecError::TooLarge { len: body_len });
    }
    let sum = checksum(ENVELOPE_VERSION, out.get(start..).unwrap_or_default());
    out.extend_from_slice(&sum);
    Ok(())
}

/// Encodes `value` as a checksummed envelope.
///
/// # Errors
/// As [`encode_into`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Checks an envelope's length, version and checksum and returns its body.
///
/// # Errors
/// [`CodecError::Truncated`], [`CodecError::UnknownVersion`] or [`CodecError::Checksum`].
pub fn verify(bytes: &[u8]) -> Result<&[u8], CodecError> {
    let len = bytes.len();
    if len < 1 + CHECKSUM_LEN {
        return Err(CodecError::Truncated { len });
    }
    let (head, sum) = bytes.split_at(len - CHECKSUM_LEN);
    let Some((&version, body)) = head.split_first() else {
        return Err(CodecError::Truncated { len });
    };
    if version == ENVELOPE_VERSION_KEYED {
        return Err(CodecError::NeedsKey);
    }
    if checksum(version, head) != sum {
        return Err(CodecError::Checksum);
    }
    if version != ENVELOPE_VERSION && version != ENVELOPE_VERSION_BLAKE3 {
        return Err(CodecError::UnknownVersion { found: version });
    }
    if body.len() > MAX_BODY_LEN {
        return Err(CodecError::TooLarge { len: body.len() });
    }
    Ok(body)
}

/// Decodes a checksummed envelope written by [`encode`]. `T` may borrow from `bytes` (a
/// `&str` or `&[u8]` field then decodes without copying).
///
/// # Errors
/// Any [`CodecError`] except `Encode`: never a panic, and never an allocation larger than
/// [`MAX_BODY_LEN`], whatever the input.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    stable_decode(verify(bytes)?)
}

/// Checks an envelope and decodes only the leading fields of its body as `T`, ignoring
/// the rest (a struct whose fields are a prefix of the stored struct's fields). As with
/// [`decode`], `T` may borrow from `bytes`, so that a hot read can look at a stored value
/// without allocating.
///
/// # Errors
/// As [`decode`], except that trailing bytes are allowed.
pub fn decode_prefix<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    let body = verify(bytes)?;
    bincode::serde::borrow_decode_from_slice::<T, _>(body, config())
        .map(|(value, _)| value)
        .map_err(|e| CodecError::Decode { type_name: std::any::type_name::<T>(), message: e.to_string() })
}

/// The checksum of a keyed envelope: XXH3-64 of `version || body` seeded with XXH3-64 of
/// the key, little-endian.
fn keyed_checksum(key: &[u8], version_and_body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let seed = xxhash_rust::xxh3::xxh3_64(key);
    xxhash_rust::xxh3::xxh3_64_with_seed(version_and_body, seed).to_le_bytes()
}

/// Encodes `value` as an envelope whose checksum also covers `key`, the key it is stored
/// under, appending to `out`: read back under another key, it fails its checksum.
///
/// # Errors
/// As [`encode_into`].
pub fn encode_keyed_into<T: Serialize + ?Sized>(
    key: &[u8],
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), CodecError> {
    let start = out.len();
    out.push(ENVELOPE_VERSION_KEYED);
    if let Err(e) = stable_encode_into(value, out) {
        out.truncate(start);
        return Err(e);
    }
    let body_len = out.len() - start - 1;
    if body_len > MAX_BODY_LEN {
        out.truncate(start);
        return Err(CodecError::TooLarge { len: body_len });
    }
    let sum = keyed_checksum(key, out.get(start..).unwrap_or_default());
    out.extend_from_slice(&sum);
    Ok(())
}

/// As [`encode_keyed_into`], into a new vector.
///
/// # Errors
/// As [`encode_into`].
pub fn encode_keyed<T: Serialize + ?Sized>(key: &[u8], value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    encode_keyed_into(key, value, &mut out)?;
    Ok(out)
}

/// Checks a keyed envelope (written by [`encode_keyed_into`]) against the key it was found
/// under, and returns its body.
///
/// # Errors
/// [`CodecError::Truncated`], [`CodecError::UnknownVersion`] for any other envelope
/// version, [`CodecError::KeyChecksum`] when the value or its key changed.
pub fn verify_keyed<'a>(key: &[u8], bytes: &'a [u8]) -> Result<&'a [u8], CodecError> {
    let len = bytes.len();
    if len < 1 + CHECKSUM_LEN {
        return Err(CodecError::Truncated { len });
    }
    let (head, sum) = bytes.split_at(len - CHECKSUM_LEN);
    let Some((&version, body)) = head.split_first() else {
        return Err(CodecError::Truncated { len });
    };
    if keyed_checksum(key, head) != sum {
        return Err(CodecError::KeyChecksum);
    }
    if version != ENVELOPE_VERSION_KEYED {
        return Err(CodecError::UnknownVersion { found: version });
    }
    if body.len() > MAX_BODY_LEN {
        return Err(CodecError::TooLarge { len: body.len() });
    }
    Ok(body)
}

/// Decodes a keyed envelope found under `key`. `T` may borrow from `bytes`.
///
/// # Errors
/// As [`verify_keyed`] and [`decode`].
pub fn decode_keyed<'a, T: Deserialize<'a>>(key: &[u8], bytes: &'a [u8]) -> Result<T, CodecError> {
    stable_decode(verify_keyed(key, bytes)?)
}

/// As [`decode_prefix`], for a keyed envelope found under `key`.
///
/// # Errors
/// As [`verify_keyed`]; trailing bytes are allowed.
pub fn decode_prefix_keyed<'a, T: Deserialize<'a>>(key: &[u8], bytes: &'a [u8]) -> Result<T, CodecError> {
    let body = verify_keyed(key, bytes)?;
    bincode::serde::borrow_decode_from_slice::<T, _>(body, config())
        .map(|(value, _)| value)
        .map_err(|e| CodecError::Decode { type_name: std::any::type_name::<T>(), message: e.to_string() })
}

/// Appends the stable encoding of `value` (bincode 2 standard, no envelope): the bytes
/// that payload hashes are computed over.
///
/// # Errors
/// [`CodecError::Encode`] if serde refuses the value.
pub fn stable_encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map_err(|e| CodecError::Encode { type_name: std::any::type_name::<T>(), message: e.to_string() })?;
    Ok(())
}

/// The stable encoding of `value` in a new vector (see [`stable_encode_into`]).
///
/// # Errors
/// As [`stable_encode_into`].
pub fn stable_encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    stable_encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes bytes written by [`stable_encode_into`], with the size limit and a check that
/// every byte was used. `T` may borrow from `body`.
///
/// # Errors
/// [`CodecError::Decode`] or [`CodecError::TrailingBytes`].
pub fn stable_decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, CodecError> {
    let type_name = std::any::type_name::<T>();
    if body.len() > MAX_BODY_LEN {
        return Err(CodecError::TooLarge { len: body.len() });
    }
    let (value, used) = bincode::serde::borrow_decode_from_slice::<T, _>(body, config())
        .map_err(|e| CodecError::Decode { type_name, message: e.to_string() })?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes { type_name, extra: body.len() - used });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Row {
        title: String,
        price: u64,
        tags: Vec<String>,
    }

    fn row() -> Row {
        Row { title: "Loft".into(), price: 420_000, tags: vec!["a".into(), "b".into()] }
    }

    #[test]
    fn round_trips() -> Result<(), CodecError> {
        let bytes = encode(&row())?;
        assert_eq!(bytes.first(), Some(&ENVELOPE_VERSION));
        assert_eq!(decode::<Row>(&bytes)?, row());
        Ok(())
    }

    #[test]
    fn every_single_byte_flip_is_detected() -> Result<(), CodecError> {
        let bytes = encode(&row())?;
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                if let Some(b) = damaged.get_mut(at) {
                    *b ^= 1 << bit;
                }
                let got = decode::<Row>(&damaged);
                assert!(got.is_err(), "flip of bit {bit} at byte {at} went unnoticed");
            }
        }
        Ok(())
    }

    #[test]
    fn a_length_claiming_gigabytes_is_refused_without_allocating() {
        // A body whose varint length prefix claims 2^32 bytes of string data, correctly
        // checksummed so that only the size limit stands between it and the allocator.
        let mut body = vec![ENVELOPE_VERSION, 0xFC];
        body.extend_from_slice(&(1u32 << 31).to_le_bytes());
        body.extend_from_slice(b"abc");
        let sum = checksum(ENVELOPE_VERSION, &body);
        body.extend_from_slice(&sum);
        let err = decode::<String>(&body);
        assert!(matches!(err, Err(CodecError::Decode { .. })), "{err:?}");
        let nine = [0xFFu8; 9];
        assert!(stable_decode::<Vec<Vec<u64>>>(&nine).is_err());
    }

    #[test]
    fn short_and_foreign_inputs_are_clear_errors() {
        assert_eq!(decode::<u64>(&[]), Err(CodecError::Truncated { len: 0 }));
        assert_eq!(decode::<u64>(&[1; 8]), Err(CodecError::Truncated { len: 8 }));
        assert_eq!(decode::<u64>(b"not a driftless value"), Err(CodecError::Checksum));
    }

    #[test]
    fn a_newer_version_byte_is_named() -> Result<(), CodecError> {
        let mut bytes = vec![7u8, 1];
        let sum = checksum(7, &bytes);
        bytes.extend_from_slice(&sum);
        assert_eq!(decode::<u8>(&bytes), Err(CodecError::UnknownVersion { found: 7 }));
        Ok(())
    }

    #[test]
    fn a_version_1_envelope_with_its_blake3_checksum_is_still_read() -> Result<(), CodecError> {
        let mut bytes = vec![ENVELOPE_VERSION_BLAKE3];
        stable_encode_into(&row(), &mut bytes)?;
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(sum.as_bytes().get(..CHECKSUM_LEN).unwrap_or_default());
        assert_eq!(decode::<Row>(&bytes)?, row());
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            if let Some(b) = damaged.get_mut(at) {
                *b ^= 0x10;
            }
            assert!(decode::<Row>(&damaged).is_err(), "a flip at byte {at} went unnoticed");
        }
        Ok(())
    }

    #[test]
    fn the_checksum_is_xxh3_of_version_and_body() -> Result<(), CodecError> {
        let bytes = encode(&row())?;
        let (head, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        assert_eq!(sum, xxhash_rust::xxh3::xxh3_64(head).to_le_bytes());
        Ok(())
    }

    #[test]
    fn sealing_a_body_equals_encoding_the_value() -> Result<(), CodecError> {
        let mut body = Vec::new();
        stable_encode_into(&row(), &mut body)?;
        assert_eq!(seal(&body)?, encode(&row())?);
        Ok(())
    }

    #[test]
    fn trailing_bytes_are_refused() -> Result<(), CodecError> {
        let mut body = Vec::new();
        stable_encode_into(&5u8, &mut body)?;
        body.push(0);
        assert!(matches!(stable_decode::<u8>(&body), Err(CodecError::TrailingBytes { extra: 1, .. })));
        Ok(())
    }

    #[test]
    fn a_keyed_value_fails_under_another_key() -> Result<(), CodecError> {
        let bytes = encode_keyed(b"key-1", &row())?;
        assert_eq!(bytes.first(), Some(&ENVELOPE_VERSION_KEYED));
        assert_eq!(decode_keyed::<Row>(b"key-1", &bytes)?, row());
        assert_eq!(decode_keyed::<Row>(b"key-2", &bytes), Err(CodecError::KeyChecksum));
        assert_eq!(decode_keyed::<Row>(b"key-", &bytes), Err(CodecError::KeyChecksum));
        assert_eq!(decode::<Row>(&bytes), Err(CodecError::NeedsKey));
        // An unkeyed envelope is not taken for a keyed one.
        assert!(decode_keyed::<Row>(b"key-1", &encode(&row())?).is_err());
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            if let Some(b) = damaged.get_mut(at) {
                *b ^= 0x21;
            }
            assert!(decode_keyed::<Row>(b"key-1", &damaged).is_err(), "a flip at byte {at} went unnoticed");
        }
        let head: (String, u64) = decode_prefix_keyed(b"key-1", &bytes)?;
        assert_eq!(head, ("Loft".to_owned(), 420_000));
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Row>(&bytes);
            let _ = stable_decode::<Row>(&bytes);
            let _ = stable_decode::<Vec<String>>(&bytes);
        }

        #[test]
        fn round_trip_any_row(title in ".{0,40}", price in any::<u64>(), tags in proptest::collection::vec(".{0,8}", 0..5)) {
            let r = Row { title, price, tags };
            let bytes = encode(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(decode::<Row>(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?, r);
        }
    }
}
