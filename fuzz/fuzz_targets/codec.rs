//! The one codec of driftless, on arbitrary bytes and arbitrary values.
//!
//! Properties:
//! * `verify`, `decode`, `decode_prefix` and `stable_decode` never panic and never allocate
//!   beyond the body limit (run with `-rss_limit_mb=256 -malloc_limit_mb=256`), for the
//!   stored record types of the sample domain and of storage, and for plain types;
//! * so do `verify_keyed`, `decode_keyed` and `decode_prefix_keyed` (the keyed envelope,
//!   version 3, of the offset index) under a key taken from the input; the unkeyed reader
//!   refuses a keyed envelope (`NeedsKey`), and a keyed envelope that verifies under its key
//!   fails under any other;
//! * a body sealed with a valid checksum, plain or keyed (the keyed one built here from its
//!   description in `docs/FORMAT.md`), decodes exactly as `stable_decode` decodes the body,
//!   so the checksum never hides the decoder from the fuzzer;
//! * the sample domain's upcasters (`embed::upcasters`) read arbitrary bytes at schema
//!   versions 0 to 3 without panicking: versions 0 and 3 are refused, version 2 reads as
//!   `stable_decode` of `ListingEvent` does, version 1 as `ListingEventV1` made current;
//! * a value built from the input encodes, and decodes back equal; a changed byte of its
//!   envelope is always refused, and so is a cut envelope. Encoded keyed, it decodes back
//!   under its key and fails (`KeyChecksum`, `Truncated` or `UnknownVersion`) under any other
//!   key or with any changed byte. Journal entries and dead letters built from an event at
//!   schema version 1 or 2 read back through the upcasters as that event made current.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use driftless_domain::{codec, CodecError, Event, FingerprintScheme, PayloadHash, Timestamp, UpcastError, Upcasters};
use driftless_listings::v1::{ListingEventKindV1, ListingEventV1};
use driftless_listings::{
    embed, Currency, DistrictStats, ListingCard, ListingEvent, ListingEventKind, ListingMembership,
    ListingStatus, Money,
};
use driftless_storage::{
    DeadLetter, EventSchema, HandlerRecord, JournalEntry, KillSwitch, ReadModelKind, ReadModelRecord,
};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::fmt::Debug;
use std::sync::OnceLock;

/// The shape of the offset index's row (`IndexRow`, private to storage), which `event_index`
/// stores in keyed envelopes: the same fields, in the same order, of the same types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IndexRowShape {
    position: u64,
    applied_at: u64,
    hash: [u8; 32],
    applied: Vec<u8>,
    version: u32,
    late: Vec<(u32, u64)>,
}

/// The longest key the input gives the keyed envelope.
const MAX_KEY_LEN: u8 = 24;

fn upcasters() -> &'static Upcasters<ListingEvent> {
    static UPCASTERS: OnceLock<Upcasters<ListingEvent>> = OnceLock::new();
    UPCASTERS.get_or_init(embed::upcasters)
}

/// A keyed envelope as `docs/FORMAT.md` describes it: version 3, the body, and XXH3-64 of
/// `version || body` seeded with XXH3-64 of the key, little-endian.
fn seal_keyed(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 1 + codec::CHECKSUM_LEN);
    out.push(codec::ENVELOPE_VERSION_KEYED);
    out.extend_from_slice(body);
    let seed = xxhash_rust::xxh3::xxh3_64(key);
    let sum = xxhash_rust::xxh3::xxh3_64_with_seed(&out, seed);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// A key other than `key`.
fn other_key(key: &[u8]) -> Vec<u8> {
    let mut other = key.to_vec();
    match other.last_mut() {
        Some(b) => *b ^= 1,
        None => other.push(0),
    }
    other
}

/// Decodes `bytes` as `T` every way the codec offers.
fn decode_all<T: DeserializeOwned + Serialize + PartialEq + Debug>(bytes: &[u8]) {
    let _ = codec::verify(bytes);
    let decoded = codec::decode::<T>(bytes);
    let _ = codec::decode_prefix::<T>(bytes);
    if bytes.len() > codec::CHECKSUM_LEN && bytes.first() == Some(&codec::ENVELOPE_VERSION_KEYED) {
        assert_eq!(codec::verify(bytes), Err(CodecError::NeedsKey), "a keyed envelope read without its key");
    }
    if let Ok(value) = &decoded {
        round_trip(value);
    }
    // The body path, with and without an envelope around it.
    let direct = codec::stable_decode::<T>(bytes);
    if let Ok(value) = &direct {
        round_trip(value);
    }
    let sealed = codec::seal(bytes).expect("a short body seals");
    let through_envelope = codec::decode::<T>(&sealed);
    match (&direct, &through_envelope) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "sealing changed the decoded value"),
        (Err(_), Err(_)) => {}
        _ => panic!("stable_decode says {direct:?}, the sealed envelope {through_envelope:?}"),
    }
    let _ = codec::decode_prefix::<T>(&sealed);
}

/// Decodes `bytes` as `T` in a keyed envelope found under `key`, every way the codec offers.
fn decode_keyed_all<T: DeserializeOwned + Serialize + PartialEq + Debug>(key: &[u8], bytes: &[u8]) {
    let verified = codec::verify_keyed(key, bytes);
    let decoded = codec::decode_keyed::<T>(key, bytes);
    let _ = codec::decode_prefix_keyed::<T>(key, bytes);
    match &verified {
        Ok(body) => {
            assert_eq!(bytes.first(), Some(&codec::ENVELOPE_VERSION_KEYED), "a keyed envelope of another version");
            assert_eq!(body.len(), bytes.len() - 1 - codec::CHECKSUM_LEN);
            let elsewhere = codec::verify_keyed(&other_key(key), bytes);
            assert_eq!(elsewhere, Err(CodecError::KeyChecksum), "a keyed envelope verified under two keys");
            match (codec::stable_decode::<T>(body), &decoded) {
                (Ok(a), Ok(b)) => assert_eq!(&a, b),
                (Err(a), Err(b)) => assert_eq!(&a, b),
                (a, b) => panic!("the body decodes as {a:?}, the keyed envelope as {b:?}"),
            }
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    CodecError::Truncated { .. }
                        | CodecError::KeyChecksum
                        | CodecError::UnknownVersion { .. }
                        | CodecError::TooLarge { .. }
                ),
                "verify_keyed refused with {e:?}"
            );
            assert_eq!(decoded.as_ref().err(), Some(e), "decode_keyed and verify_keyed disagree");
        }
    }
    if let Ok(value) = &decoded {
        round_trip_keyed(key, value);
    }
    // The body path behind a keyed checksum.
    let direct = codec::stable_decode::<T>(bytes);
    let sealed = seal_keyed(key, bytes);
    let through_envelope = codec::decode_keyed::<T>(key, &sealed);
    match (&direct, &through_envelope) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "sealing keyed changed the decoded value"),
        (Err(_), Err(_)) => {}
        _ => panic!("stable_decode says {direct:?}, the keyed envelope {through_envelope:?}"),
    }
    let _ = codec::decode_prefix_keyed::<T>(key, &sealed);
}

/// Arbitrary bytes as an event stored at schema versions 0 to 3, read through the sample
/// domain's upcasters.
fn upcast_all(bytes: &[u8]) {
    let up = upcasters();
    let current = ListingEvent::SCHEMA_VERSION;
    assert_eq!(current, 2, "the sample domain's contract version moved: update this target");
    let zero = up.decode(0, bytes);
    assert!(matches!(zero, Err(UpcastError::Missing { version: 0, .. })), "version 0 gave {zero:?}");
    let newer = up.decode(3, bytes);
    assert!(matches!(newer, Err(UpcastError::Newer { version: 3, current: 2, .. })), "version 3 gave {newer:?}");

    let at_two = up.decode(2, bytes);
    match (&at_two, codec::stable_decode::<ListingEvent>(bytes)) {
        (Ok(a), Ok(b)) => assert_eq!(a, &b, "version 2 read through the upcasters differs"),
        (Err(UpcastError::Decode { version: 2, .. }), Err(_)) => {}
        (a, b) => panic!("the upcasters read version 2 as {a:?}, stable_decode as {b:?}"),
    }
    let at_one = up.decode(1, bytes);
    match (&at_one, codec::stable_decode::<ListingEventV1>(bytes)) {
        (Ok(a), Ok(old)) => assert_eq!(a, &ListingEvent::from(old), "version 1 upcast differs from From"),
        (Err(UpcastError::Decode { version: 1, .. }), Err(_)) => {}
        (a, b) => panic!("the upcasters read version 1 as {a:?}, stable_decode as {b:?}"),
    }
    // An upcast event is a current event: its encoding reads back as itself.
    if let Ok(event) = &at_one {
        let body = codec::stable_encode(event).expect("an upcast event encodes");
        assert_eq!(up.decode(2, &body).as_ref(), Ok(event), "an upcast event does not read back");
    }
}

/// encode -> decode gives the value back, and every single-byte change of the envelope is
/// refused.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + Debug>(value: &T) {
    let bytes = codec::encode(value).expect("a decoded value encodes again");
    let back: T = codec::decode(&bytes).expect("an encoded value decodes");
    assert_eq!(&back, value, "encode -> decode changed the value");
    assert_eq!(codec::verify(&bytes).map(<[u8]>::len), Ok(bytes.len() - 1 - codec::CHECKSUM_LEN));
    let mut body = Vec::new();
    codec::stable_encode_into(value, &mut body).expect("a value encodes");
    assert_eq!(codec::seal(&body).as_deref(), Ok(bytes.as_slice()), "seal(stable) != encode");
}

/// encode_keyed -> decode_keyed under the same key gives the value back; the unkeyed reader
/// refuses it; the bytes are the documented layout.
fn round_trip_keyed<T: DeserializeOwned + Serialize + PartialEq + Debug>(key: &[u8], value: &T) {
    let bytes = codec::encode_keyed(key, value).expect("a decoded value encodes keyed");
    let back: T = codec::decode_keyed(key, &bytes).expect("a keyed value decodes under its key");
    assert_eq!(&back, value, "encode_keyed -> decode_keyed changed the value");
    let prefix: T = codec::decode_prefix_keyed(key, &bytes).expect("a keyed value decodes as its own prefix");
    assert_eq!(&prefix, value, "decode_prefix_keyed changed the value");
    assert_eq!(codec::verify_keyed(key, &bytes).map(<[u8]>::len), Ok(bytes.len() - 1 - codec::CHECKSUM_LEN));
    assert_eq!(codec::decode::<T>(&bytes), Err(CodecError::NeedsKey), "a keyed value read without its key");
    let body = codec::stable_encode(value).expect("a value encodes");
    assert_eq!(seal_keyed(key, &body), bytes, "encode_keyed is not the documented layout");
}

fn refuses_changes<T: DeserializeOwned + Serialize + PartialEq + Debug>(value: &T, at: usize, xor: u8) {
    let mut bytes = codec::encode(value).expect("a value encodes");
    let len = bytes.len();
    if let Some(b) = bytes.get_mut(at % len) {
        *b ^= xor.max(1);
    }
    let got = codec::decode::<T>(&bytes);
    // A version byte changed to the keyed envelope's asks for a key before any checksum.
    assert!(
        matches!(got, Err(CodecError::Checksum | CodecError::UnknownVersion { .. } | CodecError::NeedsKey)),
        "a changed byte at {} of {len} gave {got:?}",
        at % len
    );
    // A cut envelope is refused too.
    let cut = codec::decode::<T>(bytes.get(..at % len).unwrap_or_default());
    assert!(cut.is_err(), "an envelope cut to {} of {len} bytes decoded: {cut:?}", at % len);
}

/// A keyed envelope fails under another key, with any byte changed, and cut.
fn keyed_refuses_changes<T: DeserializeOwned + Serialize + PartialEq + Debug>(
    value: &T,
    key: &[u8],
    other: &[u8],
    at: usize,
    xor: u8,
) {
    let refused = |got: &Result<T, CodecError>| {
        matches!(got, Err(CodecError::KeyChecksum | CodecError::Truncated { .. } | CodecError::UnknownVersion { .. }))
    };
    let mut bytes = codec::encode_keyed(key, value).expect("a value encodes keyed");
    let len = bytes.len();
    if other != key {
        let got = codec::decode_keyed::<T>(other, &bytes);
        assert!(refused(&got), "a keyed value read under another key gave {got:?}");
        let got = codec::decode_prefix_keyed::<T>(other, &bytes);
        assert!(refused(&got), "a keyed value's prefix read under another key gave {got:?}");
    }
    let cut = codec::decode_keyed::<T>(key, bytes.get(..at % len).unwrap_or_default());
    assert!(refused(&cut), "a keyed envelope cut to {} of {len} bytes gave {cut:?}", at % len);
    if let Some(b) = bytes.get_mut(at % len) {
        *b ^= xor.max(1);
    }
    let got = codec::decode_keyed::<T>(key, &bytes);
    assert!(refused(&got), "a changed byte at {} of {len} of a keyed envelope gave {got:?}", at % len);
    let got = codec::decode_prefix_keyed::<T>(key, &bytes);
    assert!(refused(&got), "a changed byte at {} of {len} of a keyed envelope gave {got:?} as a prefix", at % len);
}

fn text(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    String::arbitrary(u)
}

fn status(u: &mut Unstructured<'_>) -> arbitrary::Result<ListingStatus> {
    Ok(*u.choose(&[ListingStatus::Draft, ListingStatus::Published, ListingStatus::Archived])?)
}

fn currency(u: &mut Unstructured<'_>) -> arbitrary::Result<Currency> {
    let letters: [u8; 3] = u.arbitrary()?;
    let code: String = letters.iter().map(|b| char::from(b'A' + b % 26)).collect();
    Currency::new(&code).map_err(|_| arbitrary::Error::IncorrectFormat)
}

fn money(u: &mut Unstructured<'_>) -> arbitrary::Result<Money> {
    Ok(Money::new(u.arbitrary()?, currency(u)?))
}

fn listing_event(u: &mut Unstructured<'_>) -> arbitrary::Result<ListingEvent> {
    let kind = match u.int_in_range(0..=4u8)? {
        0 => ListingEventKind::ListingCreated { title: text(u)?, price: money(u)?, district: text(u)? },
        1 => ListingEventKind::ListingPriceChanged { price: u.arbitrary()? },
        2 => ListingEventKind::ListingPublished,
        3 => ListingEventKind::ListingArchived,
        _ => ListingEventKind::InquiryReceived { inquiry_id: text(u)? },
    };
    let event = ListingEvent::new(text(u)?, u.arbitrary()?, kind);
    Ok(if u.arbitrary()? { event.with_event_id(text(u)?) } else { event })
}

fn listing_event_v1(u: &mut Unstructured<'_>) -> arbitrary::Result<ListingEventV1> {
    let kind = match u.int_in_range(0..=4u8)? {
        0 => ListingEventKindV1::ListingCreated { title: text(u)?, price: u.arbitrary()?, district: text(u)? },
        1 => ListingEventKindV1::ListingPriceChanged { price: u.arbitrary()? },
        2 => ListingEventKindV1::ListingPublished,
        3 => ListingEventKindV1::ListingArchived,
        _ => ListingEventKindV1::InquiryReceived { inquiry_id: text(u)? },
    };
    let aggregate_id = text(u)?;
    let occurred_at: u64 = u.arbitrary()?;
    let name = ListingEventKind::from(kind.clone()).name();
    let event_id = if u.arbitrary()? {
        text(u)?
    } else {
        driftless_listings::default_event_id(&aggregate_id, occurred_at, name)
    };
    Ok(ListingEventV1 { event_id, aggregate_id, occurred_at, kind })
}

/// An event as a journal entry or dead letter stores it: its stable encoding at schema
/// version 1 or 2, that version, and the current event it reads back as.
fn stored_event(u: &mut Unstructured<'_>) -> arbitrary::Result<(Vec<u8>, u32, ListingEvent)> {
    let (body, version, current) = if u.arbitrary()? {
        let old = listing_event_v1(u)?;
        (codec::stable_encode(&old), 1, ListingEvent::from(old))
    } else {
        let event = listing_event(u)?;
        (codec::stable_encode(&event), ListingEvent::SCHEMA_VERSION, event)
    };
    let body = body.map_err(|_| arbitrary::Error::IncorrectFormat)?;
    let read = upcasters().decode(version, &body);
    assert_eq!(read.as_ref(), Ok(&current), "an event stored at version {version} reads back differently");
    Ok((body, version, current))
}

fn timestamp(u: &mut Unstructured<'_>) -> arbitrary::Result<Timestamp> {
    Ok(Timestamp(u.arbitrary()?))
}

fn opt_timestamp(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<Timestamp>> {
    Ok(if u.arbitrary()? { Some(timestamp(u)?) } else { None })
}

/// How many value builders [`values`] has.
const VALUE_BUILDERS: u8 = 16;

/// Builds one value of the type `selector` names from the input, checks its round trip,
/// plain and keyed, and that a change to its envelope is refused.
fn values(selector: u8, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let at: usize = u.arbitrary()?;
    let xor: u8 = u.arbitrary()?;
    let key: Vec<u8> = u.arbitrary()?;
    let mut other: Vec<u8> = u.arbitrary()?;
    if other == key {
        other = other_key(&key);
    }
    macro_rules! check {
        ($value:expr) => {{
            let value = $value;
            round_trip(&value);
            refuses_changes(&value, at, xor);
            round_trip_keyed(&key, &value);
            keyed_refuses_changes(&value, &key, &other, at, xor);
        }};
    }
    match selector % VALUE_BUILDERS {
        0 => check!(ListingCard {
            listing_id: text(u)?,
            title: text(u)?,
            price: u.arbitrary()?,
            currency: currency(u)?,
            district: text(u)?,
            status: status(u)?,
            inquiries: u.arbitrary()?,
            version: u.arbitrary()?,
        }),
        1 => check!(DistrictStats {
            district: text(u)?,
            listings: u.arbitrary()?,
            published: u.arbitrary()?,
            inquiries: u.arbitrary()?,
        }),
        2 => check!(ListingMembership { district: text(u)?, status: status(u)? }),
        3 => check!(listing_event(u)?),
        4 => {
            let (body, schema_version, event) = stored_event(u)?;
            check!(JournalEntry {
                position: u.arbitrary()?,
                aggregate_id: event.aggregate_id.clone(),
                occurred_at: Timestamp(event.occurred_at),
                accepted_at: timestamp(u)?,
                event_name: event.kind.name().to_owned(),
                schema_version,
                body,
            })
        }
        5 => {
            let (body, schema_version, event) = stored_event(u)?;
            check!(DeadLetter {
                handler: text(u)?,
                event_id: event.event_id.clone(),
                reason: text(u)?,
                attempts: u.arbitrary()?,
                first_failed_at: timestamp(u)?,
                last_failed_at: timestamp(u)?,
                position: u.arbitrary()?,
                body,
                event_name: event.kind.name().to_owned(),
                schema_version,
            })
        }
        6 => check!(HandlerRecord {
            slot: u.arbitrary()?,
            seen: u.arbitrary()?,
            applied: u.arbitrary()?,
            last_occurred_at: opt_timestamp(u)?,
            last_applied_at: opt_timestamp(u)?,
            last_commit_lag_ms: u.arbitrary()?,
            dead_letters: u.arbitrary()?,
            tables: u.arbitrary()?,
            paused: u.arbitrary()?,
        }),
        7 => check!(ReadModelRecord {
            owner: text(u)?,
            kind: *u.choose(&[ReadModelKind::Projected, ReadModelKind::View])?,
            fingerprint: u.arbitrary()?,
            kill_switch: if u.arbitrary()? {
                Some(KillSwitch { engaged_at: timestamp(u)?, pause_projection: u.arbitrary()? })
            } else {
                None
            },
            refreshed_at: opt_timestamp(u)?,
            fingerprint_scheme: *u.choose(&[FingerprintScheme::Named, FingerprintScheme::Shape])?,
        }),
        8 => check!(text(u)?),
        9 => check!(Vec::<u64>::arbitrary(u)?),
        10 => check!(<(u64, Option<i64>, Vec<String>, bool, char)>::arbitrary(u)?),
        11 => check!(PayloadHash(u.arbitrary()?)),
        12 => check!(listing_event_v1(u)?),
        13 => check!(EventSchema { name: text(u)?, version: u.arbitrary()? }),
        14 => check!(IndexRowShape {
            position: u.arbitrary()?,
            applied_at: u.arbitrary()?,
            hash: u.arbitrary()?,
            applied: u.arbitrary()?,
            version: u.arbitrary()?,
            late: u.arbitrary()?,
        }),
        _ => check!(money(u)?),
    }
    Ok(())
}

/// How many types the input's bytes are decoded as.
const DECODED_TYPES: u8 = 17;

/// Decodes `rest` as `T` in a plain envelope, and the part of it after a key as `T` in a
/// keyed envelope under that key.
fn decode_both<T: DeserializeOwned + Serialize + PartialEq + Debug>(rest: &[u8]) {
    decode_all::<T>(rest);
    // The keyed path: the first byte is the key's length, then the key, then the value.
    if let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len % (MAX_KEY_LEN + 1)).min(tail.len());
        let (key, bytes) = tail.split_at(len);
        decode_keyed_all::<T>(key, bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    // Arbitrary bytes as every stored type.
    match selector % DECODED_TYPES {
        0 => decode_both::<ListingCard>(rest),
        1 => decode_both::<DistrictStats>(rest),
        2 => decode_both::<ListingMembership>(rest),
        3 => decode_both::<ListingEvent>(rest),
        4 => decode_both::<JournalEntry>(rest),
        5 => decode_both::<DeadLetter>(rest),
        6 => decode_both::<HandlerRecord>(rest),
        7 => decode_both::<ReadModelRecord>(rest),
        8 => decode_both::<String>(rest),
        9 => decode_both::<Vec<u64>>(rest),
        10 => decode_both::<Vec<String>>(rest),
        11 => decode_both::<(u64, Option<i64>, Vec<String>, bool, char)>(rest),
        12 => decode_both::<Vec<Vec<u8>>>(rest),
        13 => decode_both::<u64>(rest),
        14 => decode_both::<ListingEventV1>(rest),
        15 => decode_both::<EventSchema>(rest),
        _ => decode_both::<IndexRowShape>(rest),
    }
    // The same bytes as an event stored at some schema version.
    upcast_all(rest);
    // The same bytes as the description of a value.
    let mut u = Unstructured::new(rest);
    let _ = values(selector / DECODED_TYPES, &mut u);
});
