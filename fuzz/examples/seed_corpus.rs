//! Writes the hand-made seeds of the `jsonl_decoder` and `codec` corpora (the `engine_model`
//! seeds are inputs libFuzzer found, kept after `cargo fuzz cmin`).
//!
//! ```text
//! cd fuzz && cargo run --example seed_corpus
//! ```

use driftless_domain::{codec, Timestamp};
use driftless_listings::{
    generate, DistrictStats, GenConfig, ListingCard, ListingEvent, ListingEventKind, ListingStatus,
};
use driftless_storage::{DeadLetter, JournalEntry};
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

    // codec: the first byte picks the type (selector % 14) and the value builder
    // (selector / 14 % 12); the rest is the encoded value.
    let dir = root.join("codec");
    let card = ListingCard {
        listing_id: "listing-1".into(),
        title: "Loft".into(),
        price: 420_000,
        currency: driftless_listings::Currency::EUR,
        district: "Mitte".into(),
        status: ListingStatus::Published,
        inquiries: 3,
        version: 5,
    };
    let event = ListingEvent::new(
        "listing-1",
        1_700_000_000_000,
        ListingEventKind::ListingCreated { title: "Loft".into(), price: 1.into(), district: "Mitte".into() },
    );
    let body = codec::stable_encode(&event)?;
    let entry = JournalEntry {
        position: 7,
        aggregate_id: "listing-1".into(),
        occurred_at: Timestamp(1),
        accepted_at: Timestamp(2),
        body: body.clone(),
    };
    let letter = DeadLetter {
        handler: "listing_card".into(),
        event_id: event.event_id.clone(),
        reason: "listing listing-1 does not exist".into(),
        attempts: 2,
        first_failed_at: Timestamp(3),
        last_failed_at: Timestamp(4),
        position: 9,
        body: body.clone(),
    };
    let stats = DistrictStats { district: "Mitte".into(), listings: 4, published: 2, inquiries: 9 };
    let seeds: Vec<(&str, u8, Vec<u8>)> = vec![
        ("card-envelope", 0, codec::encode(&card)?),
        ("stats-envelope", 1, codec::encode(&stats)?),
        ("event-envelope", 3, codec::encode(&event)?),
        ("event-body", 3, body.clone()),
        ("journal-envelope", 4, codec::encode(&entry)?),
        ("dead-letter-envelope", 5, codec::encode(&letter)?),
        ("string-envelope", 8, codec::encode("Neukölln")?),
        ("vec-u64-envelope", 9, codec::encode(&vec![1u64, 300, u64::MAX])?),
        // A string length prefix claiming 2^34 bytes.
        ("huge-length-body", 8, [vec![0xFD], (1u64 << 34).to_le_bytes().to_vec(), b"abc".to_vec()].concat()),
        ("value-builder-card", 0, vec![0x55; 64]),
        ("value-builder-journal", 4 + 14 * 4, vec![0xA7; 96]),
    ];
    for (name, selector, bytes) in seeds {
        let mut input = vec![selector];
        input.extend_from_slice(&bytes);
        write(&dir, &format!("seed-{name}.bin"), &input)?;
    }
    Ok(())
}
