//! Writes the hand-made seeds of the `jsonl_decoder` and `codec` corpora (the `engine_model`
//! seeds are inputs libFuzzer found, kept after `cargo fuzz cmin`).
//!
//! ```text
//! cd fuzz && cargo run --example seed_corpus
//! ```

use driftless_domain::{codec, Event, FingerprintScheme, Timestamp};
use driftless_listings::v1::{ListingEventKindV1, ListingEventV1};
use driftless_listings::{
    generate, Currency, DistrictStats, GenConfig, ListingCard, ListingEvent, ListingEventKind, ListingStatus,
    Money,
};
use driftless_storage::{DeadLetter, EventSchema, JournalEntry, ReadModelKind, ReadModelRecord};
use std::fs;
use std::path::Path;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(name), bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let jsonl = root.join("jsonl_decoder");
    let lines = [
        r#"{"aggregate_id":"listing-1","event":"ListingCreated","occurred_at":1700000000000,"payload":{"title":"Bright 2-room flat","price":420000,"district":"Neukölln"}}"#,
        r#"{"event":"ListingPublished","aggregate_id":"listing-1","occurred_at":1700000000005,"payload":{}}"#,
        r#"{"aggregate_id":"listing-1","event":"InquiryReceived","occurred_at":1700000000009,"payload":{"inquiry_id":"q-1","channel":"web"}}"#,
        r#"{"aggregate_id":"listing-1","event":"ListingPublished","occurred_at":1700000000005,"payload":{},"event_id":"listing-1:1700000000005:ListingPublished"}"#,
        r#"{"aggregate_id":"l-1","event":"ListingPriceChanged","occurred_at":5,"payload":{"price":90}}"#,
        r#"{"aggregate_id":"l-1","event":"ListingArchived","occurred_at":9007199254740991,"payload":{},"event_id":null}"#,
        r#"{"aggregate_id":"listing-2","event":"ListingCreated","occurred_at":1700000000000,"payload":{"title":"Loft","price":{"amount":420000,"currency":"EUR"},"district":"Mitte"}}"#,
        r#"{"aggregate_id":"listing-3","event":"ListingCreated","occurred_at":1700000000001,"payload":{"title":"Loft","price":{"currency":"VND","amount":5},"district":"Mitte"},"event_id":"c-3"}"#,
    ];
    for (i, line) in lines.iter().enumerate() {
        write(&jsonl, &format!("seed-line-{i}.jsonl"), line.as_bytes())?;
    }
    let malformed = "\u{feff}{\"aggregate_id\":\"l-2\",\"event\":\"ListingCreated\",\"occurred_at\":1,\"payload\":{}}\n\
        \n   \nnot json\n[1,2]\n{\"aggregate_id\":\"\",\"event\":\"Nope\",\"occurred_at\":-1,\"payload\":[]}\r\n\
        {\"aggregate_id\":\"l-3\",\"event\":\"ListingPriceChanged\",\"occurred_at\":1e3,\"payload\":{\"price\":9007199254740992}}";
    write(&jsonl, "seed-malformed.jsonl", malformed.as_bytes())?;
    let stream = generate(GenConfig {
        events: 12,
        listings: 3,
        districts: 2,
        seed: 3,
        redeliveries: 0.1,
        conflicts: 1,
        invalid_lines: 2,
    });
    write(&jsonl, "seed-stream.jsonl", (stream.join("\n") + "\n").as_bytes())?;

    // codec: the first byte picks the type (selector % 17) and the value builder
    // (selector / 17 % 16); the rest is the encoded value. For the keyed envelope, the rest
    // is the key's length, the key, then the keyed envelope.
    let dir = root.join("codec");
    let card = ListingCard {
        listing_id: "listing-1".into(),
        title: "Loft".into(),
        price: 420_000,
        currency: Currency::EUR,
        district: "Mitte".into(),
        status: ListingStatus::Published,
        inquiries: 3,
        version: 5,
    };
    let event = ListingEvent::new(
        "listing-1",
        1_700_000_000_000,
        ListingEventKind::ListingCreated {
            title: "Loft".into(),
            price: Money::new(1, Currency::EUR),
            district: "Mitte".into(),
        },
    );
    let body = codec::stable_encode(&event)?;
    let old = ListingEventV1 {
        event_id: "listing-1:1700000000000:ListingCreated".into(),
        aggregate_id: "listing-1".into(),
        occurred_at: 1_700_000_000_000,
        kind: ListingEventKindV1::ListingCreated { title: "Loft".into(), price: 1, district: "Mitte".into() },
    };
    let old_body = codec::stable_encode(&old)?;
    let entry = JournalEntry {
        position: 7,
        aggregate_id: "listing-1".into(),
        occurred_at: Timestamp(1),
        accepted_at: Timestamp(2),
        event_name: "ListingCreated".into(),
        schema_version: ListingEvent::SCHEMA_VERSION,
        body: body.clone(),
    };
    let old_entry = JournalEntry { schema_version: 1, body: old_body.clone(), ..entry.clone() };
    let letter = DeadLetter {
        handler: "listing_card".into(),
        event_id: event.event_id.clone(),
        reason: "listing listing-1 does not exist".into(),
        attempts: 2,
        first_failed_at: Timestamp(3),
        last_failed_at: Timestamp(4),
        position: 9,
        body: old_body.clone(),
        event_name: "ListingCreated".into(),
        schema_version: 1,
    };
    let stats = DistrictStats { district: "Mitte".into(), listings: 4, published: 2, inquiries: 9 };
    let record = ReadModelRecord {
        owner: "listing_card".into(),
        kind: ReadModelKind::Projected,
        fingerprint: [7; 16],
        kill_switch: None,
        refreshed_at: Some(Timestamp(5)),
        fingerprint_scheme: FingerprintScheme::Shape,
    };
    let schema = EventSchema { name: "ListingCreated".into(), version: 1 };
    // An offset-index row (the fields of storage's `IndexRow`) under its key: the filing
    // time, big-endian, then the event id.
    let row = (9u64, 5u64, [3u8; 32], vec![0b11u8], 2u32, vec![(1u32, 6u64)]);
    let row_key = [1_700_000_000_000u64.to_be_bytes().as_slice(), b"evt-1"].concat();
    let keyed = |key: &[u8], envelope: Vec<u8>| -> Vec<u8> {
        [vec![u8::try_from(key.len()).unwrap_or(0)], key.to_vec(), envelope].concat()
    };
    let seeds: Vec<(&str, u8, Vec<u8>)> = vec![
        ("card-envelope", 0, codec::encode(&card)?),
        ("stats-envelope", 1, codec::encode(&stats)?),
        ("event-envelope", 3, codec::encode(&event)?),
        ("event-body", 3, body.clone()),
        ("journal-envelope", 4, codec::encode(&entry)?),
        ("journal-v1-envelope", 4, codec::encode(&old_entry)?),
        ("dead-letter-envelope", 5, codec::encode(&letter)?),
        ("read-model-record-envelope", 7, codec::encode(&record)?),
        ("string-envelope", 8, codec::encode("Neukölln")?),
        ("vec-u64-envelope", 9, codec::encode(&vec![1u64, 300, u64::MAX])?),
        // A string length prefix claiming 2^34 bytes.
        ("huge-length-body", 8, [vec![0xFD], (1u64 << 34).to_le_bytes().to_vec(), b"abc".to_vec()].concat()),
        ("event-v1-body", 14, old_body.clone()),
        ("event-v1-envelope", 14, codec::encode(&old)?),
        ("event-schema-envelope", 15, codec::encode(&schema)?),
        ("index-row-keyed", 16, keyed(&row_key, codec::encode_keyed(&row_key, &row)?)),
        ("event-id-time-keyed", 13, keyed(b"x1", codec::encode_keyed(b"x1", &1_700_000_000_000u64)?)),
        ("value-builder-card", 0, vec![0x55; 64]),
        ("value-builder-journal", 4 + 17 * 4, vec![0xA7; 96]),
        ("value-builder-dead-letter", 5 + 17 * 5, vec![0x3C; 128]),
        ("value-builder-event-v1", 14 + 17 * 12, vec![0x91; 64]),
        ("value-builder-index-row", 16 + 17 * 14, vec![0x6B; 96]),
    ];
    for (name, selector, bytes) in seeds {
        let mut input = vec![selector];
        input.extend_from_slice(&bytes);
        write(&dir, &format!("seed-{name}.bin"), &input)?;
    }
    Ok(())
}
