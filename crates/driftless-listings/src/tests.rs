use crate::*;
use driftless_domain::{
    codec, CommittedRows, Event, HandlerName, PayloadHash, PreparedEvent, ProjectionContext, Projector,
    TableSlot, Timestamp, ViewError, WriteSet,
};
use proptest::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn created(id: &str, at: u64, title: &str, price: u64, district: &str) -> ListingEvent {
    created_in(id, at, title, Money::from(price), district)
}

fn created_in(id: &str, at: u64, title: &str, price: Money, district: &str) -> ListingEvent {
    ListingEvent::new(
        id,
        at,
        ListingEventKind::ListingCreated { title: title.into(), price, district: district.into() },
    )
}

fn price(id: &str, at: u64, price: u64) -> ListingEvent {
    ListingEvent::new(id, at, ListingEventKind::ListingPriceChanged { price })
}

fn published(id: &str, at: u64) -> ListingEvent {
    ListingEvent::new(id, at, ListingEventKind::ListingPublished)
}

fn archived(id: &str, at: u64) -> ListingEvent {
    ListingEvent::new(id, at, ListingEventKind::ListingArchived)
}

fn inquiry(id: &str, at: u64, inquiry_id: &str) -> ListingEvent {
    ListingEvent::new(id, at, ListingEventKind::InquiryReceived { inquiry_id: inquiry_id.into() })
}

// ---------------------------------------------------------------------------------------
// Parsing

const CREATED: &str = r#"{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":10,"payload":{"title":"Loft","price":100,"district":"Mitte"}}"#;

fn check_malformed(line: &str, expected: &str) {
    let got = parse_line(line).map_err(|e| e.to_string());
    assert_eq!(got.as_ref().err().map(String::as_str), Some(expected), "for the line {line:?}: {got:?}");
}

#[test]
fn malformed_lines_say_exactly_what_is_wrong() {
    let long_title = "é".repeat(201);
    let ok_title = "é".repeat(200);
    let long_district = "ß".repeat(101);
    let long_id = "a".repeat(129);
    let long_event_id = "e".repeat(257);
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "the line is empty"),
        ("   \t ".into(), "the line is empty"),
        ("\r".into(), "the line is empty"),
        ("{".into(), "the line is not valid JSON: EOF while parsing an object at column 1"),
        ("{\"a\":}".into(), "the line is not valid JSON: expected value at column 6"),
        (r#"{"a":1} x"#.into(), "the line is not valid JSON: trailing characters at column 9"),
        ("[1,2]".into(), "the line is an array, not a JSON object"),
        ("null".into(), "the line is null, not a JSON object"),
        ("\"text\"".into(), "the line is a string, not a JSON object"),
        ("42".into(), "the line is an integer, not a JSON object"),
        (
            r#"{"event":"ListingPublished","occurred_at":1,"payload":{}}"#.into(),
            "the required field `aggregate_id` is missing",
        ),
        (
            r#"{"aggregate_id":"l-1","occurred_at":1,"payload":{}}"#.into(),
            "the required field `event` is missing",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPublished","payload":{}}"#.into(),
            "the required field `occurred_at` is missing",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":1}"#.into(),
            "the required field `payload` is missing",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPriceChanged","occurred_at":1,"payload":{}}"#.into(),
            "the required field `payload.price` is missing",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":1,"payload":{"price":1,"district":"M"}}"#
                .into(),
            "the required field `payload.title` is missing",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":1,"payload":{"title":"T","price":1}}"#
                .into(),
            "the required field `payload.district` is missing",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"InquiryReceived","occurred_at":1,"payload":{}}"#.into(),
            "the required field `payload.inquiry_id` is missing",
        ),
        (
            r#"{"aggregate_id":7,"event":"ListingPublished","occurred_at":1,"payload":{}}"#.into(),
            "the field `aggregate_id` must be a string, but is an integer",
        ),
        (
            r#"{"aggregate_id":"l-1","event":["ListingPublished"],"occurred_at":1,"payload":{}}"#.into(),
            "the field `event` must be a string, but is an array",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":"1","payload":{}}"#.into(),
            "the field `occurred_at` must be an integer, but is a string",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":1.5,"payload":{}}"#.into(),
            "the field `occurred_at` must be an integer, but is a number with a fraction or an exponent",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":null,"payload":{}}"#.into(),
            "the field `occurred_at` must be an integer, but is null",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":1,"payload":[]}"#.into(),
            "the field `payload` must be an object, but is an array",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":1,"payload":"{}"}"#.into(),
            "the field `payload` must be an object, but is a string",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":1,"payload":{},"event_id":5}"#.into(),
            "the field `event_id` must be a string, but is an integer",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPriceChanged","occurred_at":1,"payload":{"price":true}}"#.into(),
            "the field `payload.price` must be an integer, but is a boolean",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"InquiryReceived","occurred_at":1,"payload":{"inquiry_id":{}}}"#.into(),
            "the field `payload.inquiry_id` must be a string, but is an object",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingTeleported","occurred_at":1,"payload":{}}"#.into(),
            "the event name \"ListingTeleported\" is unknown: it must be ListingCreated, ListingPriceChanged, \
             ListingPublished, ListingArchived or InquiryReceived",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"listingpublished","occurred_at":1,"payload":{}}"#.into(),
            "the event name \"listingpublished\" is unknown: it must be ListingCreated, ListingPriceChanged, \
             ListingPublished, ListingArchived or InquiryReceived",
        ),
        (
            r#"{"aggregate_id":"","event":"ListingPublished","occurred_at":1,"payload":{}}"#.into(),
            "the field `aggregate_id` is 0 bytes long, but must be 1 to 128 bytes",
        ),
        (
            format!(r#"{{"aggregate_id":"{long_id}","event":"ListingPublished","occurred_at":1,"payload":{{}}}}"#),
            "the field `aggregate_id` is 129 bytes long, but must be 1 to 128 bytes",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":1,"payload":{},"event_id":""}"#.into(),
            "the field `event_id` is 0 bytes long, but must be 1 to 256 bytes",
        ),
        (
            format!(
                r#"{{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":1,"payload":{{}},"event_id":"{long_event_id}"}}"#
            ),
            "the field `event_id` is 257 bytes long, but must be 1 to 256 bytes",
        ),
        (
            format!(
                r#"{{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":1,"payload":{{"title":"{long_title}","price":1,"district":"M"}}}}"#
            ),
            "the field `payload.title` is 201 characters long, but must be 1 to 200 characters",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":1,"payload":{"title":"","price":1,"district":"M"}}"#
                .into(),
            "the field `payload.title` is 0 characters long, but must be 1 to 200 characters",
        ),
        (
            format!(
                r#"{{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":1,"payload":{{"title":"T","price":1,"district":"{long_district}"}}}}"#
            ),
            "the field `payload.district` is 101 characters long, but must be 1 to 100 characters",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":1,"payload":{"title":"T","price":1,"district":""}}"#
                .into(),
            "the field `payload.district` is 0 characters long, but must be 1 to 100 characters",
        ),
        (
            format!(
                r#"{{"aggregate_id":"l-1","event":"InquiryReceived","occurred_at":1,"payload":{{"inquiry_id":"{}"}}}}"#,
                "ü".repeat(65)
            ),
            "the field `payload.inquiry_id` is 130 bytes long, but must be 1 to 128 bytes",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPriceChanged","occurred_at":1,"payload":{"price":-5}}"#.into(),
            "the field `payload.price` is -5, outside the allowed range 0 to 9007199254740991",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPriceChanged","occurred_at":1,"payload":{"price":9007199254740992}}"#
                .into(),
            "the field `payload.price` is 9007199254740992, outside the allowed range 0 to 9007199254740991",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":18446744073709551616,"payload":{}}"#
                .into(),
            "the field `occurred_at` is 1.8446744073709552e+19, outside the allowed range 0 to 9007199254740991",
        ),
        (
            r#"{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":-1e30,"payload":{}}"#.into(),
            "the field `occurred_at` is -1e+30, outside the allowed range 0 to 9007199254740991",
        ),
    ];
    for (line, expected) in &cases {
        check_malformed(line, expected);
    }
    // At the edges of the ranges, the same lines are fine.
    let edges = [
        format!(
            r#"{{"aggregate_id":"{}","event":"ListingCreated","occurred_at":9007199254740991,"payload":{{"title":"{ok_title}","price":9007199254740991,"district":"{}"}},"event_id":"{}"}}"#,
            "a".repeat(128),
            "ß".repeat(100),
            "e".repeat(256)
        ),
        r#"{"aggregate_id":"l","event":"ListingPriceChanged","occurred_at":0,"payload":{"price":0}}"#.into(),
    ];
    for line in &edges {
        assert!(parse_line(line).is_ok(), "{line} should parse: {:?}", parse_line(line));
    }
}

#[test]
fn a_parsed_line_has_every_field() -> TestResult {
    let e = parse_line(CREATED)?;
    assert_eq!(e, created("l-1", 10, "Loft", 100, "Mitte"));
    assert_eq!(e.event_id, "l-1:10:ListingCreated");
    assert_eq!(e.event_name(), "ListingCreated");
    assert_eq!(Event::aggregate_id(&e), "l-1");
    assert_eq!(Event::occurred_at(&e), Timestamp(10));
    assert_eq!(Event::event_id(&e).as_str(), "l-1:10:ListingCreated");
    let explicit = parse_line(
        r#"{"aggregate_id":"l-1","event":"ListingArchived","occurred_at":3,"payload":{},"event_id":"evt-42"}"#,
    )?;
    assert_eq!(explicit.event_id, "evt-42");
    assert_eq!(Event::event_id(&explicit).as_str(), "evt-42");
    let null_id = parse_line(
        r#"{"aggregate_id":"l-1","event":"ListingArchived","occurred_at":3,"payload":{},"event_id":null}"#,
    )?;
    assert_eq!(null_id.event_id, "l-1:3:ListingArchived");
    Ok(())
}

#[test]
fn an_event_id_with_a_control_character_stays_the_id() -> TestResult {
    let e = parse_line(
        r#"{"aggregate_id":"l-1","event":"ListingArchived","occurred_at":3,"payload":{},"event_id":"a\tb"}"#,
    )?;
    assert_eq!(Event::event_id(&e).as_str(), "a\tb");
    Ok(())
}

#[test]
fn unknown_fields_are_ignored() -> TestResult {
    let line = r#"{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":10,"source":"crm","v":[1,{}],
        "payload":{"title":"Loft","price":100,"district":"Mitte","rooms":3,"tags":["x"]}}"#;
    assert_eq!(parse_line(line)?, parse_line(CREATED)?);
    let published =
        r#"{"aggregate_id":"l-1","event":"ListingPublished","occurred_at":11,"payload":{"by":"ada"}}"#;
    assert_eq!(parse_line(published)?.kind, ListingEventKind::ListingPublished);
    Ok(())
}

/// A `ListingCreated` line whose price is the JSON text `price`.
fn created_line(price: &str) -> String {
    format!(
        r#"{{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":10,"payload":{{"title":"Loft","price":{price},"district":"Mitte"}}}}"#
    )
}

#[test]
fn a_price_is_an_integer_in_vnd_or_an_amount_with_a_currency() -> TestResult {
    fn check(price: &str, expected: Money) -> TestResult {
        let event = parse_line(&created_line(price))?;
        assert_eq!(event, created_in("l-1", 10, "Loft", expected, "Mitte"), "price {price}");
        Ok(())
    }
    let cases = [
        ("5", Money::new(5, Currency::VND)),
        ("0", Money::new(0, Currency::VND)),
        ("9007199254740991", Money::new(MAX_SAFE_INTEGER, Currency::VND)),
        (r#"{"amount":5,"currency":"EUR"}"#, Money::new(5, Currency::EUR)),
        (r#"{"amount":5,"currency":"VND"}"#, Money::new(5, Currency::VND)),
        (r#"{"currency":"USD","amount":0}"#, Money::new(0, Currency::USD)),
        (
            r#"{"amount":9007199254740991,"currency":"JPY"}"#,
            Money::new(MAX_SAFE_INTEGER, Currency::new("JPY")?),
        ),
        // Unknown fields of the price object are ignored like any other.
        (
            r#"{"amount":7,"currency":"CHF","note":"incl. VAT","minor_units":[0]}"#,
            Money::new(7, Currency::new("CHF")?),
        ),
        (r#" { "amount" : 7 , "currency" : "GBP" } "#, Money::new(7, Currency::new("GBP")?)),
    ];
    for (price, expected) in cases {
        check(price, expected)?;
    }
    // A price change stays a bare amount, in the listing's currency.
    let change =
        r#"{"aggregate_id":"l-1","event":"ListingPriceChanged","occurred_at":11,"payload":{"price":90}}"#;
    assert_eq!(parse_line(change)?.kind, ListingEventKind::ListingPriceChanged { price: 90 });
    Ok(())
}

#[test]
fn a_price_of_any_other_shape_is_malformed() {
    let shapes = r#"must be an integer or an object {"amount": integer, "currency": "EUR"}"#;
    let currency = |value: &str| {
        format!(
            "the field `payload.price.currency` is {value:?}, but a currency must be exactly 3 ASCII uppercase letters, such as EUR"
        )
    };
    let cases: Vec<(&str, String)> = vec![
        ("5.5", "the field `payload.price` must be an integer, but is a number with a fraction or an exponent".into()),
        ("5e3", "the field `payload.price` must be an integer, but is a number with a fraction or an exponent".into()),
        ("-5", "the field `payload.price` is -5, outside the allowed range 0 to 9007199254740991".into()),
        (
            "9007199254740992",
            "the field `payload.price` is 9007199254740992, outside the allowed range 0 to 9007199254740991".into(),
        ),
        (r#""5""#, format!("the field `payload.price` {shapes}, but is a string")),
        ("null", format!("the field `payload.price` {shapes}, but is null")),
        ("true", format!("the field `payload.price` {shapes}, but is a boolean")),
        (r#"[5,"EUR"]"#, format!("the field `payload.price` {shapes}, but is an array")),
        ("{}", "the required field `payload.price.amount` is missing".into()),
        (r#"{"currency":"EUR"}"#, "the required field `payload.price.amount` is missing".into()),
        (r#"{"amount":5}"#, "the required field `payload.price.currency` is missing".into()),
        (
            r#"{"amount":"5","currency":"EUR"}"#,
            "the field `payload.price.amount` must be an integer, but is a string".into(),
        ),
        (
            r#"{"amount":5.0,"currency":"EUR"}"#,
            "the field `payload.price.amount` must be an integer, but is a number with a fraction or an exponent".into(),
        ),
        (r#"{"amount":null,"currency":"EUR"}"#, "the field `payload.price.amount` must be an integer, but is null".into()),
        (
            r#"{"amount":-1,"currency":"EUR"}"#,
            "the field `payload.price.amount` is -1, outside the allowed range 0 to 9007199254740991".into(),
        ),
        (
            r#"{"amount":9007199254740992,"currency":"EUR"}"#,
            "the field `payload.price.amount` is 9007199254740992, outside the allowed range 0 to 9007199254740991".into(),
        ),
        (
            r#"{"amount":{"units":5},"currency":"EUR"}"#,
            "the field `payload.price.amount` must be an integer, but is an object".into(),
        ),
        (r#"{"amount":5,"currency":978}"#, "the field `payload.price.currency` must be a string, but is an integer".into()),
        (r#"{"amount":5,"currency":null}"#, "the field `payload.price.currency` must be a string, but is null".into()),
        (r#"{"amount":5,"currency":["EUR"]}"#, "the field `payload.price.currency` must be a string, but is an array".into()),
        (r#"{"amount":5,"currency":"eur"}"#, currency("eur")),
        (r#"{"amount":5,"currency":"Eur"}"#, currency("Eur")),
        (r#"{"amount":5,"currency":"EU"}"#, currency("EU")),
        (r#"{"amount":5,"currency":"EURO"}"#, currency("EURO")),
        (r#"{"amount":5,"currency":""}"#, currency("")),
        (r#"{"amount":5,"currency":" EUR"}"#, currency(" EUR")),
        (r#"{"amount":5,"currency":"E1R"}"#, currency("E1R")),
        (r#"{"amount":5,"currency":"ÉUR"}"#, currency("ÉUR")),
        (r#"{"amount":5,"currency":"ＥＵＲ"}"#, currency("ＥＵＲ")),
    ];
    for (price, expected) in &cases {
        check_malformed(&created_line(price), expected);
    }
    // A price change takes no object: its amount is in the listing's currency.
    check_malformed(
        r#"{"aggregate_id":"l-1","event":"ListingPriceChanged","occurred_at":1,"payload":{"price":{"amount":5,"currency":"EUR"}}}"#,
        "the field `payload.price` must be an integer, but is an object",
    );
}

#[test]
fn currencies_are_three_ascii_uppercase_letters() -> TestResult {
    for code in ["VND", "EUR", "USD", "XAU", "AAA", "ZZZ"] {
        let currency: Currency = code.parse()?;
        assert_eq!(currency.as_str(), code);
        assert_eq!(currency.to_string(), code);
        assert_eq!(serde_json::to_value(currency)?, json!(code));
        assert_eq!(serde_json::from_value::<Currency>(json!(code))?, currency);
        assert_eq!(codec::stable_decode::<Currency>(&codec::stable_encode(&currency)?)?, currency);
    }
    for code in ["", "E", "EU", "EURO", "eur", "EuR", "E R", "E-R", "ÄUR", "€"] {
        let err = Currency::new(code).map(|c| c.to_string()).map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err(format!(
                "{code:?} is not a currency: a currency is exactly 3 ASCII uppercase letters, such as EUR"
            )),
        );
        // JSON cannot smuggle one in; stored bytes are read as written (they were checked
        // when they were parsed), so that the row type can be traced.
        assert!(serde_json::from_value::<Currency>(json!(code)).is_err(), "{code:?}");
    }
    assert_eq!(codec::stable_decode::<Currency>(&codec::stable_encode("EU")?)?.as_str(), "EU?");
    let card = driftless_domain::shape_of::<crate::ListingCard>()?;
    assert!(card.canonical().contains("currency:str"), "{card}");
    assert_eq!(format!("{:?}", Currency::EUR), "Currency(EUR)");
    // The stable encoding of a currency is its 3-letter string: a length and 3 bytes.
    assert_eq!(codec::stable_encode(&Currency::EUR)?, b"\x03EUR".to_vec());
    Ok(())
}

#[test]
fn both_forms_of_a_vnd_price_are_the_same_event() -> TestResult {
    let bare = hash(&created_line("5"))?;
    for same in [
        r#"{"amount":5,"currency":"VND"}"#,
        r#"{"currency":"VND","amount":5}"#,
        r#"{"amount":5,"currency":"VND","note":"ignored"}"#,
    ] {
        assert_eq!(hash(&created_line(same))?, bare, "{same}");
        assert_eq!(parse_line(&created_line(same))?, parse_line(&created_line("5"))?, "{same}");
    }
    for other in [r#"{"amount":5,"currency":"EUR"}"#, r#"{"amount":6,"currency":"VND"}"#, "6"] {
        assert_ne!(hash(&created_line(other))?, bare, "{other}");
    }
    // Through the model: a duplicate in the other form, a conflict in another currency.
    let mut m = ListingModel::new();
    assert_eq!(m.apply_line(&created_line("5")), Ok(Outcome::Applied));
    assert_eq!(m.apply_line(&created_line(r#"{"amount":5,"currency":"VND"}"#)), Ok(Outcome::Duplicate));
    assert_eq!(
        m.apply_line(&created_line(r#"{"amount":5,"currency":"EUR"}"#)),
        Ok(Outcome::Conflict { event_id: "l-1:10:ListingCreated".into() })
    );
    assert_eq!(m.card("l-1").map(|c| (c.price, c.currency)), Some((5, Currency::VND)));
    // Written back, a VND price is a bare integer and any other an object.
    let vnd = parse_line(&created_line(r#"{"amount":5,"currency":"VND"}"#))?;
    assert_eq!(vnd.kind.payload_json(), json!({"title": "Loft", "price": 5, "district": "Mitte"}));
    let written: serde_json::Value = serde_json::from_str(&vnd.to_json_line_compact())?;
    assert_eq!(written, serde_json::from_str::<serde_json::Value>(&created_line("5"))?);
    let eur = parse_line(&created_line(r#"{"currency":"EUR","amount":5}"#))?;
    assert_eq!(
        eur.kind.payload_json(),
        json!({"title": "Loft", "price": {"amount": 5, "currency": "EUR"}, "district": "Mitte"})
    );
    assert_eq!(parse_line(&eur.to_json_line())?, eur);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Schema versions

/// Every kind of event at version 1, as the release before contract version 2 wrote it,
/// with the event it is at version 2.
fn v1_events() -> Vec<(v1::ListingEventV1, ListingEvent)> {
    use v1::{ListingEventKindV1 as K1, ListingEventV1};
    let old = |id: &str, at: u64, kind: K1| {
        let name = ListingEventKind::from(kind.clone()).name();
        ListingEventV1 {
            event_id: default_event_id(id, at, name),
            aggregate_id: id.into(),
            occurred_at: at,
            kind,
        }
    };
    let created_v1 = |title: &str, price: u64, district: &str| K1::ListingCreated {
        title: title.into(),
        price,
        district: district.into(),
    };
    vec![
        (old("l-1", 1, created_v1("Loft", 420_000, "Mitte")), created("l-1", 1, "Loft", 420_000, "Mitte")),
        (old("l-1", 2, K1::ListingPriceChanged { price: 410_000 }), price("l-1", 2, 410_000)),
        (old("l-1", 3, K1::ListingPublished), published("l-1", 3)),
        (old("l-1", 4, K1::InquiryReceived { inquiry_id: "q-1".into() }), inquiry("l-1", 4, "q-1")),
        (old("l-1", 5, K1::ListingArchived), archived("l-1", 5)),
        (
            ListingEventV1 { event_id: "explicit".into(), ..old("l-2", 6, created_v1("T", 0, "D")) },
            created("l-2", 6, "T", 0, "D").with_event_id("explicit"),
        ),
    ]
}

#[test]
fn version_1_events_are_upcast_with_their_price_in_vnd() -> TestResult {
    let upcasters = embed::upcasters();
    upcasters.check()?;
    assert_eq!(ListingEvent::SCHEMA_VERSION, 2);
    assert!(upcasters.reads(1) && upcasters.reads(2) && !upcasters.reads(3));
    for (old, expected) in v1_events() {
        let stored = codec::stable_encode(&old)?;
        let event = upcasters.decode(1, &stored)?;
        assert_eq!(event, expected, "{old:?}");
        assert_eq!(ListingEvent::from(old.clone()), expected);
        // An upcast event is judged as the current one: a re-delivery of the same line is
        // the same event.
        assert_eq!(parse_line(&expected.to_json_line())?, event);
    }
    // Version-1 bytes, pinned: what bincode (standard configuration) wrote for the earlier
    // `ListingEvent` — strings with a varint length, a varint time, the variant index, the
    // price as a bare varint.
    let pinned: &[u8] = &[1, b'e', 1, b'a', 1, 0, 1, b'T', 5, 1, b'D'];
    let old = v1::ListingEventV1 {
        event_id: "e".into(),
        aggregate_id: "a".into(),
        occurred_at: 1,
        kind: v1::ListingEventKindV1::ListingCreated { title: "T".into(), price: 5, district: "D".into() },
    };
    assert_eq!(codec::stable_encode(&old)?, pinned);
    let expected = created_in("a", 1, "T", Money::new(5, Currency::VND), "D").with_event_id("e");
    assert_eq!(upcasters.decode(1, pinned)?, expected);
    // The same bytes read as version 2 do not make an event: that is what the version says.
    assert!(upcasters.decode(2, pinned).is_err());
    assert!(codec::stable_decode::<ListingEvent>(pinned).is_err());
    // And version 2 writes the price with its currency after the amount.
    assert_eq!(
        codec::stable_encode(&expected)?,
        [1, b'e', 1, b'a', 1, 0, 1, b'T', 5, 3, b'V', b'N', b'D', 1, b'D']
    );
    Ok(())
}

fn hash(line: &str) -> Result<PayloadHash, Box<dyn std::error::Error>> {
    Ok(PreparedEvent::new(parse_line(line)?)?.hash)
}

#[test]
fn key_order_white_space_and_ignored_fields_do_not_change_the_hash() -> TestResult {
    let base = hash(CREATED)?;
    let variants = [
        r#"{"payload":{"district":"Mitte","price":100,"title":"Loft"},"occurred_at":10,"event":"ListingCreated","aggregate_id":"l-1"}"#,
        "  {\n \"aggregate_id\" : \"l-1\" ,\t\"event\":\"ListingCreated\",\"occurred_at\":10,\r\n\"payload\":{ \"title\":\"Loft\", \"price\": 100, \"district\": \"Mitte\" } }  ",
        r#"{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":10,"payload":{"title":"Loft","price":100,"district":"Mitte","extra":null},"trace":"x"}"#,
        r#"{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":10,"payload":{"title":"Loft","price":100,"district":"Mitte"},"event_id":"l-1:10:ListingCreated"}"#,
        r#"{"aggregate_id":"l\u002d1","event":"ListingCreated","occurred_at":10,"payload":{"title":"Loft","price":100,"district":"Mitte"}}"#,
    ];
    for line in variants {
        assert_eq!(hash(line)?, base, "{line}");
    }
    let different = [
        r#"{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":10,"payload":{"title":"Loft","price":101,"district":"Mitte"}}"#,
        r#"{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":10,"payload":{"title":"Loft","price":100,"district":"Mitte"},"event_id":"other"}"#,
        r#"{"aggregate_id":"l-2","event":"ListingCreated","occurred_at":10,"payload":{"title":"Loft","price":100,"district":"Mitte"},"event_id":"l-1:10:ListingCreated"}"#,
    ];
    for line in different {
        assert_ne!(hash(line)?, base, "{line}");
    }
    Ok(())
}

#[test]
fn json_lines_round_trip() -> TestResult {
    let events = [
        created("l-1", 1, "Loft \"A\" — Neukölln", 100, "Neukölln"),
        price("l-1", 2, 0),
        published("l-1", 3),
        archived("l-1", 4).with_event_id("explicit"),
        inquiry("l-1", 5, "q-1"),
    ];
    for e in &events {
        assert_eq!(&parse_line(&e.to_json_line())?, e);
        assert_eq!(&parse_line(&e.to_json_line_compact())?, e);
    }
    assert!(!events.iter().take(3).any(|e| e.to_json_line_compact().contains("event_id")));
    assert!(events.iter().all(|e| e.to_json_line().contains("\"event_id\"")));
    let value: serde_json::Value = serde_json::from_str(&inquiry("l-1", 5, "q-1").to_json_line())?;
    assert_eq!(
        value,
        json!({"aggregate_id": "l-1", "event": "InquiryReceived", "occurred_at": 5,
               "payload": {"inquiry_id": "q-1"}, "event_id": "l-1:5:InquiryReceived"})
    );
    Ok(())
}

#[test]
fn the_stable_encoding_round_trips_through_the_journal_form() -> TestResult {
    let e = parse_line(CREATED)?.with_event_id("x");
    let prepared = PreparedEvent::new(e.clone())?;
    // A new event's bytes are made when it is journaled; they are what its hash covers.
    assert_eq!(prepared.encoded, None);
    let bytes = prepared.encoding()?;
    assert_eq!(PayloadHash::of_bytes(&bytes), prepared.hash);
    let back = PreparedEvent::<ListingEvent>::from_encoded(bytes.clone())?;
    assert_eq!(back.event, e);
    assert_eq!(back.hash, prepared.hash);
    assert_eq!(back.id.as_str(), "x");
    assert_eq!(back.encoding()?, bytes);
    let mut appended = b"head".to_vec();
    back.encode_into(&mut appended)?;
    prepared.encode_into(&mut appended)?;
    assert_eq!(appended, [b"head".as_slice(), &bytes, &bytes].concat());
    Ok(())
}

/// Serves `data` in small reads, then fails.
struct FailingReader {
    data: Vec<u8>,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            return Err(io::Error::other("disk on fire"));
        }
        let n = self.data.len().min(buf.len());
        let rest = self.data.split_off(n);
        buf.get_mut(..n).unwrap_or_default().copy_from_slice(&self.data);
        self.data = rest;
        Ok(n)
    }
}

#[test]
fn jsonl_streams_report_lines_by_number() {
    let mut input = Vec::new();
    input.extend_from_slice(CREATED.as_bytes());
    input.extend_from_slice(b"\r\n\n");
    input.extend_from_slice(b"{\"aggregate_id\":\"l-\xff\"}\n");
    input.extend_from_slice(&vec![b' '; MAX_LINE_BYTES + 10]);
    input.push(b'\n');
    input.extend_from_slice(b"\xef\xbb\xbf");
    input.extend_from_slice(CREATED.as_bytes());
    let got: Vec<(u64, Result<ListingEvent, String>)> =
        parse_jsonl(io::Cursor::new(input)).map(|(n, r)| (n, r.map_err(|e| e.to_string()))).collect();
    let reasons: Vec<(u64, Option<String>)> =
        got.iter().map(|(n, r)| (*n, r.as_ref().err().cloned())).collect();
    assert_eq!(
        reasons,
        vec![
            (1, None),
            (2, Some("the line is empty".to_owned())),
            (3, Some("the line is not valid UTF-8: the first bad byte is at offset 19".to_owned())),
            (
                4,
                Some(format!(
                    "the line is {} bytes long, more than the {MAX_LINE_BYTES} allowed",
                    MAX_LINE_BYTES + 10
                ))
            ),
            (5, None),
        ]
    );
}

#[test]
fn an_io_error_is_reported_once_and_ends_the_stream() {
    let data = format!("{CREATED}\n{CREATED}").into_bytes();
    let reader = io::BufReader::with_capacity(8, FailingReader { data });
    let got: Vec<(u64, bool, bool)> =
        parse_jsonl(reader).map(|(n, r)| (n, r.is_ok(), matches!(r, Err(JsonlError::Io(_))))).collect();
    assert_eq!(got, vec![(1, true, false), (2, false, true)]);
    let mut lines = parse_jsonl(io::BufReader::new(FailingReader { data: Vec::new() }));
    let first = lines.next().map(|(_, r)| r.map_err(|e| e.to_string()));
    assert!(
        matches!(first, Some(Err(ref m)) if m == "reading the event stream failed: disk on fire"),
        "{first:?}"
    );
    assert!(lines.next().is_none());
}

#[test]
fn an_empty_stream_has_no_lines() {
    assert_eq!(parse_jsonl(io::empty()).count(), 0);
    let last_line_without_newline = format!("{CREATED}\n{CREATED}");
    assert_eq!(parse_jsonl(last_line_without_newline.as_bytes()).count(), 2);
}

// ---------------------------------------------------------------------------------------
// Business rules, through the reference model

fn rejected(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Rejected(r) => Some(r.to_string()),
        _ => None,
    }
}

#[test]
fn every_rule_applies_and_rejects_as_the_contract_says() {
    let mut m = ListingModel::new();
    // Everything but a creation is rejected while the listing is missing.
    for e in [price("l-1", 1, 5), published("l-1", 1), archived("l-1", 1), inquiry("l-1", 1, "q")] {
        assert_eq!(rejected(&m.apply(&e)).as_deref(), Some("listing l-1 does not exist"), "{e:?}");
    }
    assert_eq!(m.apply(&created("l-1", 2, "Loft", 100, "Mitte")), Outcome::Applied);
    let card = m.card("l-1").cloned();
    assert_eq!(
        card,
        Some(ListingCard {
            listing_id: "l-1".into(),
            title: "Loft".into(),
            price: 100,
            currency: Currency::VND,
            district: "Mitte".into(),
            status: ListingStatus::Draft,
            inquiries: 0,
            version: 1,
        })
    );
    assert_eq!(
        m.district("Mitte"),
        Some(&DistrictStats { district: "Mitte".into(), listings: 1, published: 0, inquiries: 0 })
    );
    assert_eq!(
        rejected(&m.apply(&created("l-1", 3, "Other", 1, "Wedding"))).as_deref(),
        Some("listing l-1 already exists")
    );
    assert_eq!(
        rejected(&m.apply(&inquiry("l-1", 3, "q"))).as_deref(),
        Some("listing l-1 is draft, not published, so it cannot receive inquiries")
    );
    // A draft's price may change.
    assert_eq!(m.apply(&price("l-1", 4, 90)), Outcome::Applied);
    assert_eq!(m.card("l-1").map(|c| (c.price, c.version)), Some((90, 2)));
    assert_eq!(m.apply(&published("l-1", 5)), Outcome::Applied);
    assert_eq!(
        rejected(&m.apply(&published("l-1", 6))).as_deref(),
        Some("listing l-1 is published, not a draft, so it cannot be published")
    );
    assert_eq!(m.district("Mitte").map(|d| d.published), Some(1));
    assert_eq!(m.apply(&inquiry("l-1", 7, "q-1")), Outcome::Applied);
    assert_eq!(m.apply(&inquiry("l-1", 8, "q-2")), Outcome::Applied);
    assert_eq!(m.apply(&price("l-1", 9, 80)), Outcome::Applied);
    assert_eq!(
        m.card("l-1").map(|c| (c.status, c.inquiries, c.price, c.version)),
        Some((ListingStatus::Published, 2, 80, 6))
    );
    assert_eq!(m.district("Mitte").map(|d| (d.listings, d.published, d.inquiries)), Some((1, 1, 2)));
    // Archiving a published listing drops the district's published count.
    assert_eq!(m.apply(&archived("l-1", 10)), Outcome::Applied);
    assert_eq!(m.district("Mitte").map(|d| (d.listings, d.published, d.inquiries)), Some((1, 0, 2)));
    assert_eq!(m.card("l-1").map(|c| (c.status, c.version)), Some((ListingStatus::Archived, 7)));
    for (e, reason) in [
        (price("l-1", 11, 1), "listing l-1 is archived, so its price cannot change"),
        (published("l-1", 11), "listing l-1 is archived, not a draft, so it cannot be published"),
        (archived("l-1", 11), "listing l-1 is already archived"),
        (inquiry("l-1", 11, "q-3"), "listing l-1 is archived, not published, so it cannot receive inquiries"),
        (created("l-1", 11, "Again", 1, "Mitte"), "listing l-1 already exists"),
    ] {
        assert_eq!(rejected(&m.apply(&e)).as_deref(), Some(reason));
    }
    // Archiving a draft leaves the published count alone.
    assert_eq!(m.apply(&created("l-2", 20, "Flat", 50, "Mitte")), Outcome::Applied);
    assert_eq!(m.apply(&archived("l-2", 21)), Outcome::Applied);
    assert_eq!(m.district("Mitte").map(|d| (d.listings, d.published, d.inquiries)), Some((2, 0, 2)));
    // Nothing rejected changed a row.
    assert_eq!(m.card("l-1").map(|c| (c.price, c.version)), Some((80, 7)));
    assert_eq!(
        m.summary(),
        Summary { lines: 21, applied: 9, duplicates: 0, conflicts: 0, rejected: 12, malformed: 0 }
    );
}

#[test]
fn duplicates_and_conflicts_are_told_apart() {
    let mut m = ListingModel::new();
    let e = created("l-1", 1, "Loft", 100, "Mitte");
    assert_eq!(m.apply(&e), Outcome::Applied);
    assert_eq!(m.apply(&e), Outcome::Duplicate);
    // Same default id (same aggregate, name and millisecond), other payload.
    let twin = created("l-1", 1, "Loft", 101, "Mitte");
    assert_eq!(twin.event_id, e.event_id);
    assert_eq!(m.apply(&twin), Outcome::Conflict { event_id: "l-1:1:ListingCreated".into() });
    // An explicit id shared by a different event is a conflict too, even for another listing.
    let other = published("l-2", 5).with_event_id(e.event_id.clone());
    assert_eq!(m.apply(&other), Outcome::Conflict { event_id: e.event_id.clone() });
    // A conflict precedes the rules: the twin would also be rejected, but it is a conflict.
    assert_eq!(m.apply(&e), Outcome::Duplicate);
    assert_eq!(m.card("l-1").map(|c| (c.price, c.version)), Some((100, 1)));
    assert_eq!(
        m.summary(),
        Summary { lines: 5, applied: 1, duplicates: 2, conflicts: 2, rejected: 0, malformed: 0 }
    );
    assert_eq!(
        m.summary().to_string(),
        "5 lines: 1 applied, 2 duplicates, 2 conflicts, 0 rejected, 0 malformed"
    );
    assert_eq!(
        Outcome::Conflict { event_id: "x".into() }.to_string(),
        "a conflict: event id x was first delivered with another payload"
    );
}

#[test]
fn a_rejected_event_is_tried_again_when_redelivered() {
    let mut m = ListingModel::new();
    let publish = published("l-1", 5);
    assert!(rejected(&m.apply(&publish)).is_some());
    assert!(rejected(&m.apply(&publish)).is_some(), "still missing: rejected again, not a duplicate");
    assert_eq!(m.apply(&created("l-1", 1, "Loft", 100, "Mitte")), Outcome::Applied);
    assert_eq!(m.apply(&publish), Outcome::Applied);
    assert_eq!(m.apply(&publish), Outcome::Duplicate);
    assert_eq!(m.applied_event(&publish.event_id), Some(&publish));
}

/// The conflict rule of contract version 2: the first well-formed delivery of an id,
/// applied or rejected, fixes its payload.
#[test]
fn the_first_delivery_of_an_id_fixes_its_payload_even_when_rejected() {
    struct Case {
        what: &'static str,
        deliveries: Vec<ListingEvent>,
        expected: Vec<&'static str>,
    }
    fn word(outcome: &Outcome) -> &'static str {
        match outcome {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Conflict { .. } => "conflict",
            Outcome::Rejected(_) => "rejected",
        }
    }
    let loft = created("l-9", 0, "Loft", 100, "Mitte");
    let cases = [
        Case {
            what: "rejected, then another payload: a conflict, also once the rules would accept it",
            deliveries: vec![price("l-9", 1, 5), price("l-9", 1, 6), loft.clone(), price("l-9", 1, 6)],
            expected: vec!["rejected", "conflict", "applied", "conflict"],
        },
        Case {
            what: "rejected, then the same payload: tried again, applied once the listing exists",
            deliveries: vec![
                price("l-9", 1, 5),
                price("l-9", 1, 5),
                loft.clone(),
                price("l-9", 1, 5),
                price("l-9", 1, 5),
            ],
            expected: vec!["rejected", "rejected", "applied", "applied", "duplicate"],
        },
        Case {
            what: "an explicit id shared by another event of another listing, the first rejected",
            deliveries: vec![
                published("l-x", 1).with_event_id("evt-1"),
                loft.clone().with_event_id("evt-1"),
                published("l-x", 1).with_event_id("evt-1"),
            ],
            expected: vec!["rejected", "conflict", "rejected"],
        },
        Case {
            what: "applied, then another payload: a conflict, as in version 1",
            deliveries: vec![loft.clone(), created("l-9", 0, "Loft", 101, "Mitte"), loft.clone()],
            expected: vec!["applied", "conflict", "duplicate"],
        },
        Case {
            what: "the same amount in another currency is another payload",
            deliveries: vec![
                loft.clone(),
                created_in("l-9", 0, "Loft", Money::new(100, Currency::EUR), "Mitte"),
            ],
            expected: vec!["applied", "conflict"],
        },
    ];
    for case in cases {
        let mut m = ListingModel::new();
        let got: Vec<&str> = case.deliveries.iter().map(|e| word(&m.apply(e))).collect();
        assert_eq!(got, case.expected, "{}", case.what);
    }
    // The payload that fixed an id is kept whether it was applied or not.
    let mut m = ListingModel::new();
    assert!(rejected(&m.apply(&price("l-9", 1, 5))).is_some());
    assert_eq!(m.accepted_event("l-9:1:ListingPriceChanged"), Some(&price("l-9", 1, 5)));
    assert_eq!(m.applied_event("l-9:1:ListingPriceChanged"), None);
    assert_eq!(
        m.apply(&price("l-9", 1, 6)).to_string(),
        "a conflict: event id l-9:1:ListingPriceChanged was first delivered with another payload"
    );
}

/// A journal never holds a conflict, but one written under contract version 1 may hold a
/// payload rejected first and another, applied later, under the same id: refolding it
/// keeps that outcome, as the upgraded database does.
#[test]
fn a_journal_replays_with_the_outcomes_it_was_written_with() {
    let early = inquiry("l-8", 1, "q-shared").with_event_id("shared-id");
    let publish = published("l-8", 2).with_event_id("shared-id");
    let journal = [created("l-8", 0, "Room", 99_000, "Mitte"), early.clone(), publish.clone()];
    let mut replayed = ListingModel::new();
    let outcomes: Vec<Outcome> = journal.iter().map(|e| replayed.replay(e)).collect();
    assert!(
        matches!(outcomes.as_slice(), [Outcome::Applied, Outcome::Rejected(_), Outcome::Applied]),
        "{outcomes:?}"
    );
    assert_eq!(replayed.card("l-8").map(|c| c.status), Some(ListingStatus::Published));
    assert_eq!(fold_listing(&journal).map(|c| (c.status, c.version)), Some((ListingStatus::Published, 2)));
    assert_eq!(replayed.replay(&publish), Outcome::Duplicate);
    assert_eq!(replayed.replay(&early), Outcome::Conflict { event_id: "shared-id".into() });
    // Delivered under version 2, the same lines end differently.
    let mut delivered = ListingModel::new();
    let outcomes: Vec<Outcome> = journal.iter().map(|e| delivered.apply(e)).collect();
    assert_eq!(outcomes.get(2), Some(&Outcome::Conflict { event_id: "shared-id".into() }));
    assert_eq!(delivered.card("l-8").map(|c| c.status), Some(ListingStatus::Draft));
    // For what an engine of version 2 journals (no conflicts), replay and apply agree.
    let config = GenConfig { events: 2_000, listings: 150, districts: 6, seed: 12, ..GenConfig::default() };
    let mut applied = ListingModel::new();
    let mut journal = ListingModel::new();
    for event in generate_events(config) {
        if !matches!(applied.apply(&event), Outcome::Conflict { .. }) {
            journal.replay(&event);
        }
    }
    assert_eq!(journal.listing_cards(), applied.listing_cards());
    assert_eq!(journal.district_stats(), applied.district_stats());
}

#[test]
fn apply_line_counts_malformed_lines() {
    let mut m = ListingModel::new();
    assert_eq!(m.apply_line(CREATED), Ok(Outcome::Applied));
    assert_eq!(m.apply_line(""), Err(MalformedLine::Empty));
    m.record_malformed();
    assert_eq!(
        m.summary(),
        Summary { lines: 3, applied: 1, duplicates: 0, conflicts: 0, rejected: 0, malformed: 2 }
    );
    assert_eq!(
        serde_json::to_value(m.summary()).ok(),
        Some(
            json!({"lines": 3, "applied": 1, "duplicates": 0, "conflicts": 0, "rejected": 0, "malformed": 2})
        )
    );
    assert_eq!(serde_json::to_value(m.summary()).ok(), Some(m.summary().to_json()));
}

#[test]
fn rows_serialize_with_exactly_the_contract_fields() -> TestResult {
    let card = ListingCard {
        listing_id: "l".into(),
        title: "t".into(),
        price: 1,
        currency: Currency::EUR,
        district: "d".into(),
        status: ListingStatus::Archived,
        inquiries: 2,
        version: 3,
    };
    let expected = json!({"listing_id": "l", "title": "t", "price": 1, "currency": "EUR", "district": "d",
                          "status": "archived", "inquiries": 2, "version": 3});
    assert_eq!(card.to_json(), expected);
    assert_eq!(serde_json::to_value(&card)?, expected);
    // In the contract's order, and back from the stored (bincode) form exactly.
    assert_eq!(
        serde_json::to_string(&card)?,
        r#"{"listing_id":"l","title":"t","price":1,"currency":"EUR","district":"d","status":"archived","inquiries":2,"version":3}"#
    );
    assert_eq!(codec::decode::<ListingCard>(&codec::encode(&card)?)?, card);
    let stats = DistrictStats { district: "d".into(), listings: 4, published: 1, inquiries: 9 };
    let expected = json!({"district": "d", "listings": 4, "published": 1, "inquiries": 9});
    assert_eq!(stats.to_json(), expected);
    assert_eq!(serde_json::to_value(&stats)?, expected);
    for (status, text) in [
        (ListingStatus::Draft, "draft"),
        (ListingStatus::Published, "published"),
        (ListingStatus::Archived, "archived"),
    ] {
        assert_eq!(serde_json::to_value(status)?, json!(text));
        assert_eq!(status.to_string(), text);
    }
    let row = LeaderboardRow { rank: 1, district: "d".into(), inquiries: 9, listings: 4, published: 1 };
    let expected = json!({"rank": 1, "district": "d", "inquiries": 9, "listings": 4, "published": 1});
    assert_eq!(row.to_json(), expected);
    assert_eq!(serde_json::to_value(&row)?, expected);
    Ok(())
}

#[test]
fn names_of_handlers_and_tables_are_valid() -> TestResult {
    let all = projectors();
    let names: Vec<String> = all.iter().map(|p| p.handler_name().to_string()).collect();
    assert_eq!(names, ["listing_card", "district_stats"]);
    HandlerName::new(LISTING_CARD_HANDLER)?;
    HandlerName::new(DISTRICT_STATS_HANDLER)?;
    let tables: Vec<&str> = all.iter().flat_map(|p| p.tables()).map(|t| t.name).collect();
    assert_eq!(tables, ["listing_card", "district_stats", "district_stats_listings"]);
    for id in all.iter().flat_map(|p| p.tables()).chain([DISTRICT_LEADERBOARD.id()]) {
        id.validate()?;
    }
    assert_eq!(DISTRICT_LEADERBOARD.name(), "district_leaderboard");
    Ok(())
}

#[test]
fn the_leaderboard_ranks_by_inquiries_then_name() {
    let s = |d: &str, inquiries| DistrictStats { district: d.into(), listings: 1, published: 0, inquiries };
    let rows = leaderboard([s("b", 3), s("a", 3), s("c", 10), s("Z", 0), s("ä", 3)]);
    let got: Vec<(u64, &str, u64)> =
        rows.iter().map(|r| (r.rank, r.district.as_str(), r.inquiries)).collect();
    assert_eq!(got, [(1, "c", 10), (2, "a", 3), (3, "b", 3), (4, "ä", 3), (5, "Z", 0)]);
    assert!(leaderboard(Vec::new()).is_empty());
}

// ---------------------------------------------------------------------------------------
// The projectors against the model

struct Committed(HashMap<(usize, Vec<u8>), Vec<u8>>);

impl CommittedRows for Committed {
    fn get(&self, slot: usize, key: &[u8]) -> Result<Option<Vec<u8>>, ViewError> {
        Ok(self.0.get(&(slot, key.to_vec())).cloned())
    }
}

struct Registered {
    projector: Box<dyn Projector<ListingEvent>>,
    name: HandlerName,
    slots: Vec<TableSlot>,
}

/// A miniature engine: the first accepted payload hash of every event id, per-handler
/// offsets of applied ids, one write set per batch, committed into a map every few events.
struct Harness {
    registered: Vec<Registered>,
    first: HashMap<String, PayloadHash>,
    offsets: HashMap<(String, HandlerName), PayloadHash>,
    committed: Committed,
    set: WriteSet,
    tables: usize,
    position: u64,
}

/// One projector's verdict, in the model's terms (rejections by their text).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Duplicate,
    Conflict,
    Rejected(String),
    Applied,
}

impl From<&Outcome> for Verdict {
    fn from(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Duplicate => Verdict::Duplicate,
            Outcome::Conflict { .. } => Verdict::Conflict,
            Outcome::Rejected(r) => Verdict::Rejected(r.to_string()),
            Outcome::Applied => Verdict::Applied,
        }
    }
}

impl Harness {
    fn new() -> Self {
        let mut registered = Vec::new();
        let mut tables = 0;
        for projector in projectors() {
            let slots = projector
                .tables()
                .into_iter()
                .map(|id| {
                    tables += 1;
                    TableSlot { id, slot: tables - 1 }
                })
                .collect();
            registered.push(Registered { name: projector.handler_name(), projector, slots });
        }
        Self {
            registered,
            first: HashMap::new(),
            offsets: HashMap::new(),
            committed: Committed(HashMap::new()),
            set: WriteSet::new(tables),
            tables,
            position: 0,
        }
    }

    fn dispatch(&mut self, event: &ListingEvent) -> Result<Vec<Verdict>, Box<dyn std::error::Error>> {
        let prepared = PreparedEvent::new(event.clone())?;
        let first = *self.first.entry(prepared.id.as_str().to_owned()).or_insert(prepared.hash);
        if first != prepared.hash {
            return Ok(vec![Verdict::Conflict; self.registered.len()]);
        }
        self.position += 1;
        let mut verdicts = Vec::new();
        for r in &self.registered {
            let key = (prepared.id.as_str().to_owned(), r.name.clone());
            // Every applied offset has the id's first payload hash, checked above.
            if self.offsets.contains_key(&key) {
                verdicts.push(Verdict::Duplicate);
                continue;
            }
            let ctx = ProjectionContext {
                event_id: prepared.id.clone(),
                handler: r.name.clone(),
                occurred_at: event.occurred_at(),
                applied_at: Timestamp(0),
                payload_hash: prepared.hash,
                position: self.position,
            };
            let result = {
                let mut views = self.set.views(&r.name, &r.slots, &self.committed);
                r.projector.apply(event, &ctx, &mut views)
            };
            match result {
                Ok(()) => {
                    self.set.keep_pending();
                    self.offsets.insert(key, prepared.hash);
                    verdicts.push(Verdict::Applied);
                }
                Err(e) => {
                    self.set.discard_pending();
                    verdicts.push(Verdict::Rejected(e.to_string()));
                }
            }
        }
        Ok(verdicts)
    }

    fn commit(&mut self) -> Result<(), driftless_domain::CodecError> {
        for (slot, writes) in self.set.take().into_iter().enumerate() {
            for (key, write) in writes {
                match write {
                    Some(body) => self.committed.0.insert((slot, key), driftless_domain::codec::seal(&body)?),
                    None => self.committed.0.remove(&(slot, key)),
                };
            }
        }
        Ok(())
    }

    fn rows<V: serde::de::DeserializeOwned>(
        &self,
        slot: usize,
    ) -> Result<BTreeMap<String, V>, Box<dyn std::error::Error>> {
        let mut out = BTreeMap::new();
        for ((s, key), bytes) in &self.committed.0 {
            if *s == slot {
                out.insert(String::from_utf8(key.clone())?, codec::decode(bytes)?);
            }
        }
        Ok(out)
    }
}

fn projectors_match_the_model(config: GenConfig, batch: usize) -> TestResult {
    let events = generate_events(config);
    let mut harness = Harness::new();
    assert_eq!(harness.tables, 3);
    let mut model = ListingModel::new();
    for (i, event) in events.iter().enumerate() {
        let expected = Verdict::from(&model.apply(event));
        let verdicts = harness.dispatch(event)?;
        assert_eq!(verdicts, vec![expected.clone(); 2], "event {i}: {event:?}");
        if i % batch == batch - 1 {
            harness.commit()?;
        }
    }
    harness.commit()?;
    let cards: BTreeMap<String, ListingCard> = harness.rows(0)?;
    let stats: BTreeMap<String, DistrictStats> = harness.rows(1)?;
    let memberships: BTreeMap<String, ListingMembership> = harness.rows(2)?;
    assert_eq!(cards, model.listing_cards());
    assert_eq!(stats, model.district_stats());
    let expected_memberships: BTreeMap<String, ListingMembership> = model
        .cards()
        .map(|c| (c.listing_id.clone(), ListingMembership { district: c.district.clone(), status: c.status }))
        .collect();
    assert_eq!(memberships, expected_memberships);
    // The stream exercised every outcome and every status.
    let s = model.summary();
    assert!(s.applied > 0 && s.duplicates > 0 && s.conflicts > 0 && s.rejected > 0, "{s:?}");
    for status in [ListingStatus::Draft, ListingStatus::Published, ListingStatus::Archived] {
        assert!(model.cards().any(|c| c.status == status), "no {status} listing in {s:?}");
    }
    Ok(())
}

#[test]
fn projectors_build_the_same_rows_as_the_model() -> TestResult {
    let config = GenConfig {
        events: 4_000,
        listings: 300,
        districts: 30,
        seed: 1,
        redeliveries: 0.05,
        conflicts: 25,
        invalid_lines: 0,
    };
    projectors_match_the_model(config, 64)?;
    projectors_match_the_model(GenConfig { seed: 2, ..config }, 1)?;
    projectors_match_the_model(GenConfig { seed: 3, events: 3_000, listings: 50, ..config }, 1_000)
}

#[test]
fn projectors_reject_the_same_hand_made_events_as_the_model() -> TestResult {
    let stream = [
        inquiry("l-1", 1, "q"),
        created("l-1", 2, "Loft", 100, "Mitte"),
        created("l-1", 2, "Loft", 100, "Mitte"),
        created("l-1", 2, "Loft", 999, "Mitte"),
        created("l-1", 3, "Loft", 100, "Wedding"),
        inquiry("l-1", 4, "q"),
        published("l-1", 5),
        published("l-1", 6),
        inquiry("l-1", 7, "q"),
        archived("l-1", 8),
        archived("l-1", 9),
        price("l-1", 10, 5),
        inquiry("l-1", 11, "q"),
        price("l-2", 12, 5),
        price("l-2", 12, 6),
        created_in("l-2", 13, "Flat", Money::new(90, Currency::EUR), "Mitte"),
        price("l-2", 12, 5),
        price("l-2", 12, 6),
        created("l-2", 13, "Flat", 90, "Mitte"),
        created_in("l-2", 13, "Flat", Money::new(90, Currency::EUR), "Mitte"),
    ];
    let mut harness = Harness::new();
    let mut model = ListingModel::new();
    for event in &stream {
        let expected = Verdict::from(&model.apply(event));
        assert_eq!(harness.dispatch(event)?, vec![expected.clone(); 2], "{event:?}");
        harness.commit()?;
    }
    assert_eq!(harness.rows::<ListingCard>(0)?, model.listing_cards());
    assert_eq!(harness.rows::<DistrictStats>(1)?, model.district_stats());
    Ok(())
}

#[test]
fn a_listing_refolds_from_its_own_events() {
    let config = GenConfig { events: 3_000, listings: 200, districts: 8, seed: 9, ..GenConfig::default() };
    let events = generate_events(config);
    let mut model = ListingModel::new();
    let mut by_listing: BTreeMap<String, Vec<ListingEvent>> = BTreeMap::new();
    for e in &events {
        model.apply(e);
        by_listing.entry(e.aggregate_id.clone()).or_default().push(e.clone());
    }
    for (id, own) in &by_listing {
        assert_eq!(fold_listing(own).as_ref(), model.card(id), "{id}");
    }
    assert_eq!(fold_listing(&[]), None);
    assert_eq!(fold_listing(&[published("l-1", 1)]), None);
}

// ---------------------------------------------------------------------------------------
// The generator

#[test]
fn the_generator_is_deterministic() {
    let config = GenConfig { events: 2_000, listings: 100, seed: 77, ..GenConfig::default() };
    let a = generate(config);
    assert_eq!(a, generate(config));
    assert_ne!(a, generate(GenConfig { seed: 78, ..config }));
    assert_eq!(generate_events(config), generate_events(config));
    assert!(
        generate(GenConfig { events: 0, listings: 0, districts: 0, ..config }).len() <= config.invalid_lines
    );
}

#[test]
fn the_generated_stream_has_the_configured_shape() -> TestResult {
    let config = GenConfig {
        events: 5_000,
        listings: 400,
        districts: 30,
        seed: 5,
        redeliveries: 0.03,
        conflicts: 12,
        invalid_lines: 40,
    };
    let lines = generate(config);
    let events = generate_events(config);
    let mut model = ListingModel::new();
    let mut parsed = Vec::new();
    for line in &lines {
        assert!(!line.contains('\n'));
        if let Ok(event) = parse_line(line) {
            parsed.push(event);
        }
        let _ = model.apply_line(line);
    }
    assert_eq!(parsed, events, "generate_events is generate without its malformed lines");
    let s = model.summary();
    assert_eq!(s.lines, lines.len() as u64);
    assert_eq!(s.lines, s.applied + s.duplicates + s.conflicts + s.rejected + s.malformed);
    assert_eq!((s.duplicates, s.conflicts, s.malformed), (150, 12, 40), "{s:?}");
    assert!(s.rejected > 0 && s.rejected < 200, "about 1 % late inquiries: {s:?}");
    assert_eq!(model.listing_cards().len(), 400);
    // Distinct events never share an id; times grow.
    let mut seen = std::collections::HashSet::new();
    let base: Vec<&ListingEvent> = events.iter().filter(|e| seen.insert(e.event_id.clone())).collect();
    assert!(base.windows(2).all(|w| w.first().map(|e| e.occurred_at) < w.get(1).map(|e| e.occurred_at)));
    assert!(events.iter().all(|e| e.occurred_at >= GENERATED_START_MILLIS && e.has_default_id()));
    // Districts past the real 24 get a number; some listings are archived.
    let districts = model.district_stats();
    assert!(districts.contains_key("Mitte") && districts.contains_key("Neukölln"), "{:?}", districts.keys());
    assert!(districts.keys().any(|d| d.ends_with(" 2")), "{:?}", districts.keys());
    assert!(districts.len() <= 30);
    assert!(model.cards().any(|c| c.status == ListingStatus::Archived));
    assert!(model.cards().any(|c| c.inquiries > 0));
    // Lines come both with and without their (default) event id.
    assert!(lines.iter().any(|l| l.contains("\"event_id\"")));
    assert!(lines.iter().any(|l| l.starts_with('{') && !l.contains("\"event_id\"") && parse_line(l).is_ok()));
    // Listings are priced in several currencies; prices outside VND are objects, VND ones
    // come in both forms.
    let cards = model.listing_cards();
    let share = |currency: Currency| cards.values().filter(|c| c.currency == currency).count();
    let (vnd, eur, usd) = (share(Currency::VND), share(Currency::EUR), share(Currency::USD));
    assert_eq!(vnd + eur + usd, 400);
    assert!(vnd > 200 && eur > 40 && usd > 15, "VND {vnd}, EUR {eur}, USD {usd}");
    let creations: Vec<&String> = lines.iter().filter(|l| l.contains("\"ListingCreated\"")).collect();
    assert!(creations.iter().any(|l| l.contains(r#""currency":"EUR""#)));
    assert!(creations.iter().any(|l| l.contains(r#""currency":"USD""#)));
    assert!(creations.iter().any(|l| l.contains(r#""currency":"VND""#)));
    assert!(creations.iter().any(|l| l.contains(r#""price":"#) && !l.contains(r#""price":{"#)));
    Ok(())
}

#[test]
fn redeliveries_in_the_other_form_of_a_vnd_price_are_duplicates() -> TestResult {
    // Every line of a creation, in whichever form, parses to the event of its id; the
    // model counts the configured duplicates whatever form each took.
    let config = GenConfig {
        events: 3_000,
        listings: 300,
        districts: 8,
        seed: 21,
        redeliveries: 0.5,
        conflicts: 30,
        invalid_lines: 0,
    };
    let lines = generate(config);
    let mut forms: HashMap<String, std::collections::BTreeSet<bool>> = HashMap::new();
    for line in &lines {
        let event = parse_line(line)?;
        if let ListingEventKind::ListingCreated { price, .. } = &event.kind {
            if price.currency == Currency::VND {
                forms.entry(event.event_id.clone()).or_default().insert(line.contains(r#""price":{"#));
            }
        }
    }
    assert!(forms.values().any(|f| f.len() == 2), "some VND creation is delivered in both forms");
    let mut model = ListingModel::new();
    for line in &lines {
        model.apply_line(line)?;
    }
    let s = model.summary();
    assert_eq!((s.duplicates, s.conflicts), (1_500, 30), "{s:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Properties

proptest! {
    #[test]
    fn any_text_parses_or_is_malformed_without_panicking(line in ".{0,200}") {
        let _ = parse_line(&line);
    }

    #[test]
    fn any_json_object_parses_or_is_malformed_without_panicking(
        aggregate in proptest::option::of(".{0,4}"),
        name in proptest::sample::select(vec!["ListingCreated", "ListingPriceChanged", "ListingPublished", "ListingArchived", "InquiryReceived", "Nope"]),
        at in proptest::option::of(any::<i64>()),
        price in any::<f64>(),
        currency in ".{0,4}",
        title in ".{0,3}",
    ) {
        let mut line = serde_json::Map::new();
        if let Some(a) = aggregate { line.insert("aggregate_id".into(), json!(a)); }
        line.insert("event".into(), json!(name));
        if let Some(at) = at { line.insert("occurred_at".into(), json!(at)); }
        line.insert("payload".into(), json!({"title": title, "price": price, "district": "d", "inquiry_id": "q"}));
        let _ = parse_line(&serde_json::Value::Object(line.clone()).to_string());
        line.insert("payload".into(), json!({"title": title, "price": {"amount": price, "currency": currency}, "district": "d"}));
        let _ = parse_line(&serde_json::Value::Object(line).to_string());
    }

    #[test]
    fn events_round_trip_through_json_lines(
        id in "[a-z0-9-]{1,20}",
        at in 0..=MAX_SAFE_INTEGER,
        price in 0..=MAX_SAFE_INTEGER,
        currency in "[A-Z]{3}",
        title in "\\PC{1,50}",
        explicit in proptest::option::of("\\PC{1,30}"),
        which in 0..5usize,
    ) {
        let kind = match which {
            0 => {
                let currency = Currency::new(&currency).map_err(|e| TestCaseError::fail(e.to_string()))?;
                ListingEventKind::ListingCreated { title: title.clone(), price: Money::new(price, currency), district: title }
            }
            1 => ListingEventKind::ListingPriceChanged { price },
            2 => ListingEventKind::ListingPublished,
            3 => ListingEventKind::ListingArchived,
            _ => ListingEventKind::InquiryReceived { inquiry_id: id.clone() },
        };
        let mut event = ListingEvent::new(id, at, kind);
        if let Some(explicit) = explicit {
            event = event.with_event_id(explicit);
        }
        prop_assert_eq!(parse_line(&event.to_json_line()).ok(), Some(event.clone()));
        prop_assert_eq!(parse_line(&event.to_json_line_compact()).ok(), Some(event));
    }
}
