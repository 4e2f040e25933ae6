//! The JSON Lines decoder of the sample domain, on arbitrary bytes.
//!
//! Properties:
//! * `parse_jsonl` and `parse_line` never panic, whatever the bytes;
//! * one line without a newline gives exactly one item from `parse_jsonl`, and that item is
//!   what `parse_line` says about the same text;
//! * every event that parses re-encodes (`to_json_line`, `to_json_line_compact`) to a line
//!   that parses back to an equal event, and its stable encoding round-trips through the
//!   codec;
//! * folding the parsed events into the reference model keeps its summary consistent.
#![no_main]

use driftless_domain::{codec, Event};
use driftless_listings::{
    parse_jsonl, parse_line, JsonlError, ListingEvent, ListingModel, MalformedLine, MAX_LINE_BYTES,
    MAX_SAFE_INTEGER,
};
use libfuzzer_sys::fuzz_target;

fn check_event(event: &ListingEvent) {
    assert!(event.occurred_at <= MAX_SAFE_INTEGER, "an out-of-range time parsed: {event:?}");
    assert!(!event.event_id.is_empty() && !event.aggregate_id.is_empty(), "an empty id parsed: {event:?}");

    let line = event.to_json_line();
    match parse_line(&line) {
        Ok(back) => assert_eq!(&back, event, "the line {line:?} parsed back differently"),
        Err(e) => panic!("the re-encoded line {line:?} of {event:?} does not parse: {e}"),
    }
    let compact = event.to_json_line_compact();
    match parse_line(&compact) {
        Ok(back) => assert_eq!(&back, event, "the compact line {compact:?} parsed back differently"),
        Err(e) => panic!("the compact line {compact:?} of {event:?} does not parse: {e}"),
    }

    // The stable encoding (what the journal stores and the payload hash covers).
    let body = codec::stable_encode(&event).expect("a parsed event encodes");
    let back: ListingEvent = codec::stable_decode(&body).expect("a stable encoding decodes");
    assert_eq!(&back, event, "the stable encoding does not round-trip");
    let envelope = codec::encode(event).expect("a parsed event encodes as an envelope");
    let back: ListingEvent = codec::decode(&envelope).expect("an envelope decodes");
    assert_eq!(&back, event, "the envelope does not round-trip");
    // The id the engine deduplicates by is the stored id.
    assert_eq!(event.event_id().as_str(), event.event_id, "the engine's id differs from the line's");
}

fuzz_target!(|data: &[u8]| {
    let mut model = ListingModel::new();
    let mut items = 0u64;
    for (number, result) in parse_jsonl(data) {
        items += 1;
        assert_eq!(number, items, "line numbers are 1, 2, 3, ...");
        match result {
            Ok(event) => {
                check_event(&event);
                model.apply(&event);
            }
            Err(JsonlError::Malformed(m)) => {
                // Every refusal renders as text.
                assert!(!m.to_string().is_empty());
                model.record_malformed();
            }
            Err(other) => panic!("reading a slice failed: {other}"),
        }
    }
    let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    let expected = newlines + u64::from(!data.is_empty() && data.last() != Some(&b'\n'));
    assert_eq!(items, expected, "one item per line");
    let s = model.summary();
    assert_eq!(s.lines, items);
    assert_eq!(s.lines, s.applied + s.duplicates + s.conflicts + s.rejected + s.malformed);

    // One line: parse_jsonl and parse_line agree.
    if !data.is_empty() && !data.contains(&b'\n') {
        let mut one = parse_jsonl(data);
        let (_, from_stream) = one.next().expect("one line gives one item");
        assert!(one.next().is_none(), "one line gives one item");
        match std::str::from_utf8(data) {
            Ok(_) if data.len() > MAX_LINE_BYTES => {
                assert!(matches!(from_stream, Err(JsonlError::Malformed(MalformedLine::TooLong { .. }))))
            }
            Ok(text) => {
                let direct = parse_line(text);
                match (&from_stream, &direct) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b),
                    (Err(JsonlError::Malformed(a)), Err(b)) => assert_eq!(a, b),
                    _ => panic!("parse_jsonl says {from_stream:?}, parse_line says {direct:?}"),
                }
            }
            Err(e) => match from_stream {
                Err(JsonlError::Malformed(MalformedLine::NotUtf8 { valid_up_to })) => {
                    assert_eq!(valid_up_to, e.valid_up_to());
                }
                other => panic!("a non-UTF-8 line gave {other:?}"),
            },
        }
    }
});
