//! Reading event lines: one JSON object per line, validated by hand so that every refusal
//! says exactly what was wrong.

use crate::event::{default_event_id, Currency, ListingEvent, ListingEventKind, Money, MAX_SAFE_INTEGER};
use serde_json::{Map, Number, Value};
use std::io::{self, BufRead};

/// The longest line [`parse_jsonl`] reads: 1 MiB. A longer line is malformed, and is
/// skipped without being held in memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Bounds of the contract's fields.
mod limits {
    pub const AGGREGATE_ID_BYTES: usize = 128;
    pub const EVENT_ID_BYTES: usize = 256;
    pub const INQUIRY_ID_BYTES: usize = 128;
    pub const TITLE_CHARS: usize = 200;
    pub const DISTRICT_CHARS: usize = 100;
}

/// How a string field's length is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthUnit {
    /// UTF-8 bytes.
    Bytes,
    /// Unicode scalar values (`char`s).
    Characters,
}

impl LengthUnit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Bytes => "bytes",
            Self::Characters => "characters",
        }
    }
}

impl std::fmt::Display for LengthUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a line is not a well-formed listing event.
///
/// Fields are named by their path in the line: `aggregate_id`, `payload.price`, ...
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedLine {
    /// The line is empty or holds only white space.
    #[error("the line is empty")]
    Empty,
    /// The line's bytes are not UTF-8.
    #[error("the line is not valid UTF-8: the first bad byte is at offset {valid_up_to}")]
    NotUtf8 {
        /// How many bytes of the line are valid UTF-8.
        valid_up_to: usize,
    },
    /// The line is longer than [`MAX_LINE_BYTES`].
    #[error("the line is {len} bytes long, more than the {max} allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// The line is not JSON at all.
    #[error("the line is not valid JSON: {message} at column {column}")]
    BadJson {
        /// What the JSON parser said.
        message: String,
        /// The 1-based column (byte) where it gave up.
        column: usize,
    },
    /// The line is JSON, but not an object.
    #[error("the line is {found}, not a JSON object")]
    NotAnObject {
        /// What it is instead, e.g. `an array`.
        found: &'static str,
    },
    /// A required field is absent.
    #[error("the required field `{field}` is missing")]
    MissingField {
        /// The field's path.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("the field `{field}` must be {expected}, but is {found}")]
    WrongType {
        /// The field's path.
        field: &'static str,
        /// The type it must have, e.g. `a string`.
        expected: &'static str,
        /// The type it has, e.g. `a number with a fraction or an exponent`.
        found: &'static str,
    },
    /// The `event` field names no event of the domain.
    #[error(
        "the event name {name:?} is unknown: it must be ListingCreated, ListingPriceChanged, \
         ListingPublished, ListingArchived or InquiryReceived"
    )]
    UnknownEvent {
        /// The name found.
        name: String,
    },
    /// A string field is empty or too long.
    #[error("the field `{field}` is {len} {unit} long, but must be {min} to {max} {unit}")]
    Length {
        /// The field's path.
        field: &'static str,
        /// Its length.
        len: usize,
        /// How the length is measured.
        unit: LengthUnit,
        /// The least allowed.
        min: usize,
        /// The most allowed.
        max: usize,
    },
    /// A currency is not exactly 3 ASCII uppercase letters.
    #[error("the field `{field}` is {value:?}, but a currency must be exactly 3 ASCII uppercase letters, such as EUR")]
    BadCurrency {
        /// The field's path.
        field: &'static str,
        /// The value found.
        value: String,
    },
    /// An integer field is negative or larger than [`MAX_SAFE_INTEGER`].
    #[error("the field `{field}` is {value}, outside the allowed range 0 to {max}")]
    OutOfRange {
        /// The field's path.
        field: &'static str,
        /// The value as written (or as the JSON parser read it).
        value: String,
        /// The most allowed.
        max: u64,
    },
}

/// What went wrong reading one line of a JSON Lines stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsonlError {
    /// The line was read but is not a well-formed event; reading goes on.
    #[error(transparent)]
    Malformed(#[from] MalformedLine),
    /// Reading failed; the iterator ends after reporting it.
    #[error("reading the event stream failed: {0}")]
    Io(#[source] io::Error),
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "an integer",
        Value::Number(_) => "a number with a fraction or an exponent",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn field<'v>(
    object: &'v Map<String, Value>,
    key: &str,
    path: &'static str,
) -> Result<&'v Value, MalformedLine> {
    object.get(key).ok_or(MalformedLine::MissingField { field: path })
}

fn string<'v>(
    object: &'v Map<String, Value>,
    key: &str,
    path: &'static str,
    max: usize,
    unit: LengthUnit,
) -> Result<&'v str, MalformedLine> {
    let value = field(object, key, path)?;
    let Value::String(text) = value else {
        return Err(MalformedLine::WrongType { field: path, expected: "a string", found: kind_of(value) });
    };
    check_length(text, path, max, unit)?;
    Ok(text)
}

fn check_length(text: &str, path: &'static str, max: usize, unit: LengthUnit) -> Result<(), MalformedLine> {
    let len = match unit {
        LengthUnit::Bytes => text.len(),
        LengthUnit::Characters => text.chars().count(),
    };
    if len == 0 || len > max {
        return Err(MalformedLine::Length { field: path, len, unit, min: 1, max });
    }
    Ok(())
}

fn integer(object: &Map<String, Value>, key: &str, path: &'static str) -> Result<u64, MalformedLine> {
    let value = field(object, key, path)?;
    let Value::Number(number) = value else {
        return Err(MalformedLine::WrongType { field: path, expected: "an integer", found: kind_of(value) });
    };
    check_integer(number, path)
}

fn check_integer(number: &Number, path: &'static str) -> Result<u64, MalformedLine> {
    let out_of_range =
        || MalformedLine::OutOfRange { field: path, value: number.to_string(), max: MAX_SAFE_INTEGER };
    if let Some(n) = number.as_u64() {
        return if n <= MAX_SAFE_INTEGER { Ok(n) } else { Err(out_of_range()) };
    }
    if number.is_i64() {
        return Err(out_of_range());
    }
    // A float: an integer too large for u64 (JSON parsers read those as floats) is out of
    // range; anything else was written with a fraction or an exponent.
    match number.as_f64() {
        Some(f) if f.is_finite() && f.fract() == 0.0 && (f < 0.0 || f > MAX_SAFE_INTEGER as f64) => {
            Err(out_of_range())
        }
        _ => Err(MalformedLine::WrongType {
            field: path,
            expected: "an integer",
            found: "a number with a fraction or an exponent",
        }),
    }
}

/// What a `ListingCreated` price must be, for [`MalformedLine::WrongType`].
const PRICE_SHAPES: &str = r#"an integer or an object {"amount": integer, "currency": "EUR"}"#;

/// `ListingCreated`'s price: a bare integer (an amount in VND) or an object
/// `{"amount", "currency"}` (other fields of the object are ignored).
fn money(payload: &Map<String, Value>) -> Result<Money, MalformedLine> {
    const PATH: &str = "payload.price";
    match field(payload, "price", PATH)? {
        Value::Number(number) => Ok(Money::from(check_integer(number, PATH)?)),
        Value::Object(object) => {
            let amount = integer(object, "amount", "payload.price.amount")?;
            let currency_value = field(object, "currency", "payload.price.currency")?;
            let Value::String(code) = currency_value else {
                return Err(MalformedLine::WrongType {
                    field: "payload.price.currency",
                    expected: "a string",
                    found: kind_of(currency_value),
                });
            };
            let currency = Currency::new(code).map_err(|_| MalformedLine::BadCurrency {
                field: "payload.price.currency",
                value: code.clone(),
            })?;
            Ok(Money::new(amount, currency))
        }
        other => Err(MalformedLine::WrongType { field: PATH, expected: PRICE_SHAPES, found: kind_of(other) }),
    }
}

fn bad_json(error: &serde_json::Error) -> MalformedLine {
    let text = error.to_string();
    let message = match text.rsplit_once(" at line ") {
        Some((message, _)) => message.to_owned(),
        None => text,
    };
    MalformedLine::BadJson { message, column: error.column() }
}

/// Parses one event line.
///
/// Unknown fields, at the top level, in the payload or in a price object, are ignored. An
/// `event_id` of `null` counts as absent. A UTF-8 byte-order mark at the start of the line
/// is skipped. `ListingCreated`'s price is a bare integer (an amount in VND) or an object
/// `{"amount": integer, "currency": "EUR"}`; both forms of a VND price give the same event.
///
/// # Errors
/// [`MalformedLine`] saying exactly what is wrong: the line is empty, not JSON, not an
/// object, misses a field, has a field of the wrong type or out of range, or names an
/// unknown event.
///
/// ```
/// use driftless_listings::{parse_line, Currency, ListingEventKind, Money};
///
/// let e = parse_line(r#"{"aggregate_id":"l-1","event":"ListingPriceChanged","occurred_at":5,"payload":{"price":90}}"#)?;
/// assert_eq!(e.kind, ListingEventKind::ListingPriceChanged { price: 90 });
/// assert_eq!(e.event_id, "l-1:5:ListingPriceChanged");
///
/// let err = parse_line(r#"{"aggregate_id":"l-1","event":"ListingPriceChanged","occurred_at":5,"payload":{}}"#);
/// assert_eq!(err.map_err(|e| e.to_string()), Err("the required field `payload.price` is missing".to_owned()));
///
/// let created = |price: &str| {
///     parse_line(&format!(
///         r#"{{"aggregate_id":"l-1","event":"ListingCreated","occurred_at":1,"payload":{{"title":"Loft","price":{price},"district":"Mitte"}}}}"#
///     ))
/// };
/// let euros = created(r#"{"amount":5,"currency":"EUR","note":"ignored"}"#)?;
/// assert!(matches!(euros.kind, ListingEventKind::ListingCreated { price, .. } if price == Money::new(5, Currency::EUR)));
/// assert_eq!(created("5")?, created(r#"{"amount":5,"currency":"VND"}"#)?);
/// assert_eq!(
///     created(r#"{"amount":5,"currency":"eur"}"#).map_err(|e| e.to_string()).err().as_deref(),
///     Some("the field `payload.price.currency` is \"eur\", but a currency must be exactly 3 ASCII uppercase letters, such as EUR")
/// );
/// # Ok::<(), driftless_listings::MalformedLine>(())
/// ```
pub fn parse_line(line: &str) -> Result<ListingEvent, MalformedLine> {
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    if line.trim().is_empty() {
        return Err(MalformedLine::Empty);
    }
    let value: Value = serde_json::from_str(line).map_err(|e| bad_json(&e))?;
    let Value::Object(object) = value else {
        return Err(MalformedLine::NotAnObject { found: kind_of(&value) });
    };
    parse_object(&object)
}

/// Validates a JSON object as a listing event (the second half of [`parse_line`]).
///
/// # Errors
/// As [`parse_line`].
pub fn parse_object(object: &Map<String, Value>) -> Result<ListingEvent, MalformedLine> {
    let aggregate_id =
        string(object, "aggregate_id", "aggregate_id", limits::AGGREGATE_ID_BYTES, LengthUnit::Bytes)?;
    let name_value = field(object, "event", "event")?;
    let Value::String(name) = name_value else {
        return Err(MalformedLine::WrongType {
            field: "event",
            expected: "a string",
            found: kind_of(name_value),
        });
    };
    if !ListingEventKind::NAMES.contains(&name.as_str()) {
        return Err(MalformedLine::UnknownEvent { name: name.clone() });
    }
    let occurred_at = integer(object, "occurred_at", "occurred_at")?;
    let payload_value = field(object, "payload", "payload")?;
    let Value::Object(payload) = payload_value else {
        return Err(MalformedLine::WrongType {
            field: "payload",
            expected: "an object",
            found: kind_of(payload_value),
        });
    };
    let event_id = match object.get("event_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => {
            check_length(id, "event_id", limits::EVENT_ID_BYTES, LengthUnit::Bytes)?;
            Some(id.clone())
        }
        Some(other) => {
            return Err(MalformedLine::WrongType {
                field: "event_id",
                expected: "a string",
                found: kind_of(other),
            })
        }
    };
    let kind = match name.as_str() {
        "ListingCreated" => ListingEventKind::ListingCreated {
            title: string(payload, "title", "payload.title", limits::TITLE_CHARS, LengthUnit::Characters)?
                .to_owned(),
            price: money(payload)?,
            district: string(
                payload,
                "district",
                "payload.district",
                limits::DISTRICT_CHARS,
                LengthUnit::Characters,
            )?
            .to_owned(),
        },
        "ListingPriceChanged" => {
            ListingEventKind::ListingPriceChanged { price: integer(payload, "price", "payload.price")? }
        }
        "ListingPublished" => ListingEventKind::ListingPublished,
        "ListingArchived" => ListingEventKind::ListingArchived,
        "InquiryReceived" => ListingEventKind::InquiryReceived {
            inquiry_id: string(
                payload,
                "inquiry_id",
                "payload.inquiry_id",
                limits::INQUIRY_ID_BYTES,
                LengthUnit::Bytes,
            )?
            .to_owned(),
        },
        _ => return Err(MalformedLine::UnknownEvent { name: name.clone() }),
    };
    let event_id = event_id.unwrap_or_else(|| default_event_id(aggregate_id, occurred_at, kind.name()));
    Ok(ListingEvent { event_id, aggregate_id: aggregate_id.to_owned(), occurred_at, kind })
}

/// Reads a JSON Lines stream: yields each line's 1-based number with its event or the
/// reason it is malformed.
///
/// A line is everything up to a `\n` (a `\r` before it is JSON white space). A line that
/// is not UTF-8 or longer than [`MAX_LINE_BYTES`] is malformed, and reading goes on. An
/// I/O error is yielded once as [`JsonlError::Io`], and then the iterator ends.
///
/// ```
/// use driftless_listings::parse_jsonl;
///
/// let input = "{\"aggregate_id\":\"l-1\",\"event\":\"ListingPublished\",\"occurred_at\":1,\"payload\":{}}\n\nnot json\n";
/// let results: Vec<_> = parse_jsonl(input.as_bytes()).collect();
/// assert_eq!(results.len(), 3);
/// assert!(results[0].1.is_ok());
/// assert_eq!(results[1].1.as_ref().map_err(|e| e.to_string()).err().as_deref(), Some("the line is empty"));
/// assert_eq!(results[2].0, 3);
/// ```
pub fn parse_jsonl<R: BufRead>(reader: R) -> JsonlLines<R> {
    JsonlLines { reader, line_number: 0, buffer: Vec::new(), done: false }
}

/// The iterator of [`parse_jsonl`].
#[derive(Debug)]
pub struct JsonlLines<R> {
    reader: R,
    line_number: u64,
    buffer: Vec<u8>,
    done: bool,
}

enum RawLine {
    Eof,
    Line,
    TooLong(usize),
}

impl<R: BufRead> JsonlLines<R> {
    /// Reads the next line into `self.buffer`, without ever holding more than
    /// [`MAX_LINE_BYTES`] of it.
    fn read_line(&mut self) -> io::Result<RawLine> {
        self.buffer.clear();
        let mut len = 0usize;
        let mut started = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(match (started, len > MAX_LINE_BYTES) {
                    (false, _) => RawLine::Eof,
                    (true, false) => RawLine::Line,
                    (true, true) => RawLine::TooLong(len),
                });
            }
            started = true;
            let newline = available.iter().position(|&b| b == b'\n');
            let take = newline.unwrap_or(available.len());
            let chunk = available.get(..take).unwrap_or_default();
            len = len.saturating_add(take);
            if len <= MAX_LINE_BYTES {
                self.buffer.extend_from_slice(chunk);
            } else {
                self.buffer.clear();
            }
            let consumed = newline.map_or(take, |at| at + 1);
            self.reader.consume(consumed);
            if newline.is_some() {
                return Ok(if len > MAX_LINE_BYTES { RawLine::TooLong(len) } else { RawLine::Line });
            }
        }
    }
}

impl<R: BufRead> Iterator for JsonlLines<R> {
    type Item = (u64, Result<ListingEvent, JsonlError>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let number = self.line_number.saturating_add(1);
        let raw = match self.read_line() {
            Ok(raw) => raw,
            Err(e) => {
                self.done = true;
                return Some((number, Err(JsonlError::Io(e))));
            }
        };
        let result = match raw {
            RawLine::Eof => {
                self.done = true;
                return None;
            }
            RawLine::TooLong(len) => Err(MalformedLine::TooLong { len, max: MAX_LINE_BYTES }),
            RawLine::Line => match std::str::from_utf8(&self.buffer) {
                Ok(text) => parse_line(text),
                Err(e) => Err(MalformedLine::NotUtf8 { valid_up_to: e.valid_up_to() }),
            },
        };
        self.line_number = number;
        Some((number, result.map_err(JsonlError::Malformed)))
    }
}
