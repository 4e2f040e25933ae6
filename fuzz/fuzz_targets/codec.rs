//! The one codec of driftless, on arbitrary bytes and arbitrary values.
//!
//! Properties:
//! * `verify`, `decode`, `decode_prefix` and `stable_decode` never panic and never allocate
//!   beyond the body limit (run with `-rss_limit_mb=256 -malloc_limit_mb=256`), for the
//!   stored record types of the sample domain and of storage, and for plain types;
//! * a body sealed with a valid checksum decodes exactly as `stable_decode` decodes the body,
//!   so the checksum never hides the decoder from the fuzzer;
//! * a value built from the input encodes, and decodes back equal; a changed byte of its
//!   envelope is always refused.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use driftless_domain::{codec, CodecError, PayloadHash, Timestamp};
use driftless_listings::{
    DistrictStats, ListingCard, ListingEvent, ListingEventKind, ListingMembership, ListingStatus,
};
use driftless_storage::{
    DeadLetter, HandlerRecord, JournalEntry, KillSwitch, ReadModelKind, ReadModelRecord,
};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// Decodes `bytes` as `T` every way the codec offers.
fn decode_all<T: DeserializeOwned + Serialize + PartialEq + Debug>(bytes: &[u8]) {
    let _ = codec::verify(bytes);
    let decoded = codec::decode::<T>(bytes);
    let _ = codec::decode_prefix::<T>(bytes);
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

fn refuses_changes<T: DeserializeOwned + Serialize + PartialEq + Debug>(value: &T, at: usize, xor: u8) {
    let mut bytes = codec::encode(value).expect("a value encodes");
    let len = bytes.len();
    if let Some(b) = bytes.get_mut(at % len) {
        *b ^= xor.max(1);
    }
    let got = codec::decode::<T>(&bytes);
    assert!(
        matches!(got, Err(CodecError::Checksum | CodecError::UnknownVersion { .. })),
        "a changed byte at {} of {len} gave {got:?}",
        at % len
    );
    // A cut envelope is refused too.
    let cut = codec::decode::<T>(bytes.get(..at % len).unwrap_or_default());
    assert!(cut.is_err(), "an envelope cut to {} of {len} bytes decoded: {cut:?}", at % len);
}

fn text(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    String::arbitrary(u)
}

fn status(u: &mut Unstructured<'_>) -> arbitrary::Result<ListingStatus> {
    Ok(*u.choose(&[ListingStatus::Draft, ListingStatus::Published, ListingStatus::Archived])?)
}

fn currency(u: &mut Unstructured<'_>) -> arbitrary::Result<driftless_listings::Currency> {
    let letters: [u8; 3] = u.arbitrary()?;
    let code: String = letters.iter().map(|b| char::from(b'A' + b % 26)).collect();
    driftless_listings::Currency::new(&code).map_err(|_| arbitrary::Error::IncorrectFormat)
}

fn money(u: &mut Unstructured<'_>) -> arbitrary::Result<driftless_listings::Money> {
    Ok(driftless_listings::Money::new(u.arbitrary()?, currency(u)?))
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

fn timestamp(u: &mut Unstructured<'_>) -> arbitrary::Result<Timestamp> {
    Ok(Timestamp(u.arbitrary()?))
}

fn opt_timestamp(u: &mut Unstructured<'_>) -> arbitrary::Result<Option<Timestamp>> {
    Ok(if u.arbitrary()? { Some(timestamp(u)?) } else { None })
}

/// Builds one value of the type `selector` names from the input, checks its round trip and
/// that a change to its envelope is refused.
fn values(selector: u8, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let at: usize = u.arbitrary()?;
    let xor: u8 = u.arbitrary()?;
    macro_rules! check {
        ($value:expr) => {{
            let value = $value;
            round_trip(&value);
            refuses_changes(&value, at, xor);
        }};
    }
    match selector % 12 {
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
            let event = listing_event(u)?;
            let body = codec::encode(&event).map_err(|_| arbitrary::Error::IncorrectFormat)?;
            check!(JournalEntry {
                position: u.arbitrary()?,
                aggregate_id: event.aggregate_id.clone(),
                occurred_at: Timestamp(event.occurred_at),
                accepted_at: timestamp(u)?,
                body,
            })
        }
        5 => check!(DeadLetter {
            handler: text(u)?,
            event_id: text(u)?,
            reason: text(u)?,
            attempts: u.arbitrary()?,
            first_failed_at: timestamp(u)?,
            last_failed_at: timestamp(u)?,
            position: u.arbitrary()?,
            body: u.arbitrary()?,
        }),
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
        }),
        8 => check!(text(u)?),
        9 => check!(Vec::<u64>::arbitrary(u)?),
        10 => check!(<(u64, Option<i64>, Vec<String>, bool, char)>::arbitrary(u)?),
        _ => check!(PayloadHash(u.arbitrary()?)),
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    // Arbitrary bytes as every stored type.
    match selector % 14 {
        0 => decode_all::<ListingCard>(rest),
        1 => decode_all::<DistrictStats>(rest),
        2 => decode_all::<ListingMembership>(rest),
        3 => decode_all::<ListingEvent>(rest),
        4 => decode_all::<JournalEntry>(rest),
        5 => decode_all::<DeadLetter>(rest),
        6 => decode_all::<HandlerRecord>(rest),
        7 => decode_all::<ReadModelRecord>(rest),
        8 => decode_all::<String>(rest),
        9 => decode_all::<Vec<u64>>(rest),
        10 => decode_all::<Vec<String>>(rest),
        11 => decode_all::<(u64, Option<i64>, Vec<String>, bool, char)>(rest),
        12 => decode_all::<Vec<Vec<u8>>>(rest),
        _ => decode_all::<u64>(rest),
    }
    // The same bytes as the description of a value.
    let mut u = Unstructured::new(rest);
    let _ = values(selector / 14, &mut u);
});
