//! The serialized shape of a serde type, traced from its `Deserialize` implementation.
//!
//! driftless stores rows and events with bincode 2, which is positional and not
//! self-describing: the stored bytes carry no field names, no type tags and no lengths of
//! structs. Adding, removing, reordering or renaming a field, changing a field's type, or
//! changing an enum's variants changes what stored bytes mean, while renaming the Rust
//! type or moving it to another module does not. [`shape_of`] computes a [`Shape`] that
//! follows exactly the former, so that a table's schema fingerprint can follow it too.
//!
//! ```
//! use driftless_domain::shape_of;
//!
//! #[derive(serde::Deserialize)]
//! struct Card { id: String, price: u64, tags: Vec<String> }
//!
//! let shape = shape_of::<Card>()?;
//! assert_eq!(shape.canonical(), "struct{id:str,price:u64,tags:seq<str>}");
//! # Ok::<(), driftless_domain::ShapeError>(())
//! ```
//!
//! # How a shape is traced
//!
//! Tracing runs the type's own `Deserialize` implementation against a deserializer that
//! answers every request with a placeholder value (`0`, `false`, `""`, empty bytes, `'\0'`)
//! and records what was asked for. It reports itself as not human-readable, as bincode
//! does, so types with a compact form (addresses, for example) trace that form. A
//! sequence or a map yields one element (one entry) so that the element type is traced,
//! an `Option` is traced as `Some`, and a struct or tuple yields as many elements as it
//! names. An enum is read as the variant of a chosen index, so tracing runs repeated passes
//! over the type, choosing at every enum a variant not traced yet, until every variant of
//! every enum, at any depth, has been traced.
//!
//! A type that asks for `deserialize_any`, `deserialize_ignored_any` or
//! `deserialize_identifier` (untagged, internally or adjacently tagged enums,
//! `#[serde(flatten)]`, ...) needs a self-describing format and cannot be read back by
//! bincode at all: [`ShapeError::SelfDescribing`]. A type that contains itself has no finite
//! shape: [`ShapeError::Recursive`]. A type whose `Deserialize` validates what it reads
//! may refuse the placeholders: [`ShapeError::Rejected`].
//!
//! # The canonical text
//!
//! [`Shape::canonical`] is a compact text with this grammar (no white space anywhere):
//!
//! ```text
//! shape    = prim
//!          | "option<" shape ">"                       Option<T>: the Some value
//!          | "seq<" shape ">"                          Vec, VecDeque, sets, ...: the element
//!          | "map<" shape "," shape ">"                HashMap, BTreeMap, ...: key and value
//!          | "tuple" len "(" [shapes] ")"              tuples and arrays
//!          | "unit_struct"
//!          | "newtype(" shape ")"
//!          | "tuple_struct" len "(" [shapes] ")"
//!          | "struct" fields
//!          | "enum" variants
//!          | "nothing"                                 nothing was read here
//! prim     = "bool" | "i8" | "i16" | "i32" | "i64" | "i128"
//!          | "u8" | "u16" | "u32" | "u64" | "u128" | "f32" | "f64"
//!          | "char" | "str" | "bytes" | "unit"
//! shapes   = shape {"," shape}
//! fields   = "{" [name ":" shape {"," name ":" shape}] "}"
//!          | "(" [names] "){" [shapes] "}"
//! variants = "{" [name ":" payload {"," name ":" payload}] "}"
//!          | "(" [names] "){" [payload {"," payload}] "}"
//! payload  = "unit" | "newtype(" shape ")" | "tuple" len "(" [shapes] ")"
//!          | "struct" fields | "nothing"
//! names    = name {"," name}
//! len      = decimal digits: the length the type declares
//! name     = bare | quoted
//! bare     = one or more of A-Z a-z 0-9 _
//! quoted   = '"' {char | '\"' | '\\' | "\u{" hex "}"} '"'
//! ```
//!
//! Fields are listed in the order they are read, variants in index order. The names of
//! containers (structs and enums) are never part of the text, so renaming or moving a type
//! keeps its shape; the names of fields and variants are, because swapping two fields of
//! the same type would otherwise read old bytes silently wrong. A name that is not `bare`
//! is quoted: `"` and `\` are escaped with a backslash, control and non-ASCII characters as
//! `\u{hex}` (lower-case hex).
//!
//! `str` stands for both `deserialize_str` and `deserialize_string`, `bytes` for both
//! `deserialize_bytes` and `deserialize_byte_buf`: those pairs read the same bytes.
//! Otherwise the text records what the type asks for: `Vec<u8>` is `seq<u8>`, not
//! `bytes`; a one-field tuple variant is `tuple1(..)`, not `newtype(..)`; `Box<T>` is `T`.
//! A tuple lists the values it reads, which may be fewer than its length. A struct or an
//! enum whose declared names do not pair one to one with what it reads is written in the
//! second form of `fields` or `variants`: all names, then all values (payloads). That is
//! the case when it has aliases (`#[serde(alias)]`: serde declares them among the names,
//! so an enum names more variants than it has) or reads fewer fields than it names.

use serde::de::value::U32Deserializer;
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess,
    Visitor,
};
use std::collections::BTreeMap;
use std::fmt;

/// The most passes over a type before tracing gives up.
const MAX_PASSES: usize = 10_000;
/// The most values traced, over all passes, before tracing gives up.
const MAX_STEPS: usize = 1_000_000;
/// The deepest nesting traced; deeper nesting is taken as a recursive type.
const MAX_DEPTH: usize = 128;

/// The serialized shape of a serde type: what its bincode encoding depends on.
///
/// Two types have equal shapes when their `Deserialize` implementations read the same
/// kinds of values in the same order, with the same field and variant names; the names
/// of the types themselves do not matter. See the [module documentation](self) for the
/// canonical text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Shape {
    canonical: String,
}

impl Shape {
    /// The canonical text of the shape (stable across runs, platforms and compiler versions).
    #[must_use]
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The first 16 bytes of blake3 of the canonical text.
    #[must_use]
    pub fn fingerprint(&self) -> [u8; 16] {
        let hash = blake3::hash(self.canonical.as_bytes());
        let mut out = [0u8; 16];
        for (o, b) in out.iter_mut().zip(hash.as_bytes()) {
            *o = *b;
        }
        out
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

/// Why a type's shape could not be traced.
///
/// A `path` names where in the type the problem is: the type's name, then `.field` for a
/// field, `.0` for a tuple element or the value of a newtype struct, `::Variant` for an
/// enum variant, `[]` for the element of a sequence and `{key}` / `{value}` for a map's key
/// and value (an `Option`'s value adds nothing), as in `Card.price.amount` or `Kind::A.m`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    /// The type reads itself with `deserialize_any` or `deserialize_ignored_any` (untagged,
    /// internally or adjacently tagged enums, `#[serde(flatten)]`, ...): bincode cannot read
    /// such a type back at all. A type that asks for `deserialize_identifier` (the tag of an
    /// adjacently tagged enum, the keys of a struct with a flattened field) is refused too.
    #[error(
        "the value at {path} needs a self-describing format (it asks for deserialize_any, \
         deserialize_ignored_any or deserialize_identifier), so bincode cannot read it back"
    )]
    SelfDescribing {
        /// Where the type asks for a self-describing format.
        path: String,
    },
    /// The type contains itself (a recursive type): its shape is not finite.
    ///
    /// A type nested more than 128 levels deep (counting every struct, field, variant,
    /// sequence, map and option) is taken as recursive too.
    #[error("the type contains itself at {path}, so its shape is not finite")]
    Recursive {
        /// Where the type recurs.
        path: String,
    },
    /// The type's own `Deserialize` refused the placeholder values tracing feeds it (a type
    /// that validates what it reads).
    #[error("the value at {path} refused the placeholder that tracing fed it: {message}")]
    Rejected {
        /// Where the value was refused.
        path: String,
        /// The type's own error message.
        message: String,
    },
    /// Tracing did not finish in a bounded number of passes.
    ///
    /// Tracing makes one pass per enum variant it has not traced yet (several at once when
    /// enums sit side by side), at most 10,000, and traces at most a million values over all
    /// passes.
    #[error("the type's shape did not finish tracing within the bounded number of passes and values")]
    TooComplex,
}

/// Traces `T`'s `Deserialize` implementation.
///
/// Each call traces the type anew (one pass per enum variant, roughly): keep the result
/// rather than calling this on a hot path.
///
/// # Errors
/// [`ShapeError`] when `T` needs a self-describing format, contains itself, refuses the
/// placeholder values or is too large to trace.
pub fn shape_of<T: DeserializeOwned>() -> Result<Shape, ShapeError> {
    let mut st = State::new(short_type_name(std::any::type_name::<T>()));
    let mut merged: Slot = None;
    for _ in 0..MAX_PASSES {
        st.begin_pass();
        let mut slot = None;
        let result = T::deserialize(Probe { st: &mut st, out: &mut slot });
        if let Some(fatal) = st.fatal.take() {
            return Err(fatal);
        }
        if st.retry {
            continue;
        }
        match result {
            Ok(_) => {}
            Err(TraceError::Shape(e)) => return Err(e),
            Err(TraceError::Custom(message)) => {
                return Err(ShapeError::Rejected { path: st.path_text(), message })
            }
            Err(TraceError::Retry) => continue,
        }
        st.commit();
        merge_slot(&mut merged, slot);
        if st.complete() {
            let mut canonical = String::new();
            render_slot(&mut canonical, &merged);
            return Ok(Shape { canonical });
        }
    }
    Err(ShapeError::TooComplex)
}

// ---------------------------------------------------------------------------------------
// The traced tree.

/// What was read at one place: `None` when the type read nothing there.
type Slot = Option<Box<Node>>;

#[derive(Debug)]
enum Node {
    Prim(&'static str),
    Option(Slot),
    Seq(Slot),
    Map(Slot, Slot),
    Tuple(usize, Vec<Slot>),
    UnitStruct,
    Newtype(Slot),
    TupleStruct(usize, Vec<Slot>),
    Struct(Fields),
    /// The declared variant names and the payloads traced so far, by variant index.
    Enum(&'static [&'static str], BTreeMap<usize, Payload>),
}

/// The declared field names and the values read, in order.
#[derive(Debug)]
struct Fields {
    names: &'static [&'static str],
    values: Vec<Slot>,
}

#[derive(Debug)]
enum Payload {
    /// The variant was chosen but its payload was never read.
    Nothing,
    Unit,
    Newtype(Slot),
    Tuple(usize, Vec<Slot>),
    Struct(Fields),
}

fn merge_slot(into: &mut Slot, from: Slot) {
    match (into.as_mut(), from) {
        (None, from) => *into = from,
        (Some(_), None) => {}
        (Some(a), Some(b)) => merge_node(a, *b),
    }
}

fn merge_slots(into: &mut Vec<Slot>, from: Vec<Slot>) {
    let mut from = from.into_iter();
    for (a, b) in into.iter_mut().zip(from.by_ref()) {
        merge_slot(a, b);
    }
    into.extend(from);
}

/// Merges the tree of another pass into `into`. Both trees have the same structure except
/// for the variants chosen at enums (a type whose `Deserialize` reads differently from one
/// pass to the next keeps what the first pass read).
fn merge_node(into: &mut Node, from: Node) {
    match (into, from) {
        (Node::Option(a), Node::Option(b))
        | (Node::Seq(a), Node::Seq(b))
        | (Node::Newtype(a), Node::Newtype(b)) => merge_slot(a, b),
        (Node::Map(ak, av), Node::Map(bk, bv)) => {
            merge_slot(ak, bk);
            merge_slot(av, bv);
        }
        (Node::Tuple(_, a), Node::Tuple(_, b)) | (Node::TupleStruct(_, a), Node::TupleStruct(_, b)) => {
            merge_slots(a, b)
        }
        (Node::Struct(a), Node::Struct(b)) => merge_slots(&mut a.values, b.values),
        (Node::Enum(_, a), Node::Enum(_, b)) => {
            for (index, pb) in b {
                match a.get_mut(&index) {
                    Some(pa) => merge_payload(pa, pb),
                    None => {
                        a.insert(index, pb);
                    }
                }
            }
        }
        _ => {}
    }
}

fn merge_payload(into: &mut Payload, from: Payload) {
    match (into, from) {
        (Payload::Newtype(a), Payload::Newtype(b)) => merge_slot(a, b),
        (Payload::Tuple(_, a), Payload::Tuple(_, b)) => merge_slots(a, b),
        (Payload::Struct(a), Payload::Struct(b)) => merge_slots(&mut a.values, b.values),
        (into @ Payload::Nothing, from) => *into = from,
        _ => {}
    }
}

fn render_slot(out: &mut String, slot: &Slot) {
    match slot {
        Some(node) => render_node(out, node),
        None => out.push_str("nothing"),
    }
}

fn render_list(out: &mut String, slots: &[Slot]) {
    for (i, slot) in slots.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        render_slot(out, slot);
    }
}

fn render_sized(out: &mut String, kind: &str, len: usize, slots: &[Slot]) {
    out.push_str(kind);
    out.push_str(&len.to_string());
    out.push('(');
    render_list(out, slots);
    out.push(')');
}

fn render_names(out: &mut String, names: &[&str]) {
    out.push('(');
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        render_name(out, name);
    }
    out.push(')');
}

fn render_fields(out: &mut String, fields: &Fields) {
    if fields.values.len() == fields.names.len() {
        out.push('{');
        for (i, (name, slot)) in fields.names.iter().zip(&fields.values).enumerate() {
            if i > 0 {
                out.push(',');
            }
            render_name(out, name);
            out.push(':');
            render_slot(out, slot);
        }
        out.push('}');
    } else {
        render_names(out, fields.names);
        out.push('{');
        render_list(out, &fields.values);
        out.push('}');
    }
}

fn render_payload(out: &mut String, payload: Option<&Payload>) {
    match payload {
        None | Some(Payload::Nothing) => out.push_str("nothing"),
        Some(Payload::Unit) => out.push_str("unit"),
        Some(Payload::Newtype(slot)) => {
            out.push_str("newtype(");
            render_slot(out, slot);
            out.push(')');
        }
        Some(Payload::Tuple(len, slots)) => render_sized(out, "tuple", *len, slots),
        Some(Payload::Struct(fields)) => {
            out.push_str("struct");
            render_fields(out, fields);
        }
    }
}

fn render_enum(out: &mut String, names: &[&str], payloads: &BTreeMap<usize, Payload>) {
    // Names past the last variant traced are names without a variant (aliases).
    let count = payloads.keys().next_back().map_or(0, |last| last + 1);
    out.push_str("enum");
    if count == names.len() {
        out.push('{');
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            render_name(out, name);
            out.push(':');
            render_payload(out, payloads.get(&i));
        }
        out.push('}');
    } else {
        render_names(out, names);
        out.push('{');
        for i in 0..count {
            if i > 0 {
                out.push(',');
            }
            render_payload(out, payloads.get(&i));
        }
        out.push('}');
    }
}

fn render_node(out: &mut String, node: &Node) {
    match node {
        Node::Prim(kind) => out.push_str(kind),
        Node::Option(slot) => {
            out.push_str("option<");
            render_slot(out, slot);
            out.push('>');
        }
        Node::Seq(slot) => {
            out.push_str("seq<");
            render_slot(out, slot);
            out.push('>');
        }
        Node::Map(key, value) => {
            out.push_str("map<");
            render_slot(out, key);
            out.push(',');
            render_slot(out, value);
            out.push('>');
        }
        Node::Tuple(len, slots) => render_sized(out, "tuple", *len, slots),
        Node::UnitStruct => out.push_str("unit_struct"),
        Node::Newtype(slot) => {
            out.push_str("newtype(");
            render_slot(out, slot);
            out.push(')');
        }
        Node::TupleStruct(len, slots) => render_sized(out, "tuple_struct", *len, slots),
        Node::Struct(fields) => {
            out.push_str("struct");
            render_fields(out, fields);
        }
        Node::Enum(names, payloads) => render_enum(out, names, payloads),
    }
}

/// Writes a field or variant name: bare when it is made of ASCII letters, digits and `_`,
/// else quoted.
fn render_name(out: &mut String, name: &str) {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        out.push_str(name);
        return;
    }
    out.push('"');
    for c in name.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                out.push_str("\\u{");
                out.push_str(&format!("{:x}", u32::from(c)));
                out.push('}');
            }
        }
    }
    out.push('"');
}

/// `type_name` without module paths (`alloc::vec::Vec<u8>` becomes `Vec<u8>`), for the
/// root of error paths when the type is not a struct or enum.
fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut ident_start = 0;
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.truncate(ident_start);
        } else {
            out.push(c);
            if !(c.is_alphanumeric() || c == '_') {
                ident_start = out.len();
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The tracing deserializer.

/// One step from a value to a value inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seg {
    Field(usize, &'static str),
    Elem(usize),
    Item,
    Key,
    Value,
    Some,
    Inner,
    Variant(usize, &'static str),
}

/// A struct or enum being traced, to recognise a type that contains itself. The visitor's
/// type name tells apart types of the same serde name (generic ones among them).
#[derive(Debug, PartialEq, Eq)]
struct Container {
    visitor: &'static str,
    name: &'static str,
    kind: ContainerKind,
}

#[derive(Debug, PartialEq, Eq)]
enum ContainerKind {
    Struct(&'static [&'static str]),
    Enum(&'static [&'static str]),
    TupleStruct(usize),
    Newtype,
}

/// What tracing knows across passes and where it is in the current pass.
struct State {
    /// Every enum met so far, by its place: which variants have been traced.
    explored: BTreeMap<Vec<Seg>, Explored>,
    /// How many variants of the enums met so far have not been traced.
    untraced: usize,
    /// The variants chosen in this pass, marked traced once the pass succeeds.
    pending: Vec<(Vec<Seg>, usize)>,
    path: Vec<Seg>,
    open: Vec<Container>,
    /// A self-describing or recursive type, or too much work: ends tracing even when the
    /// type's `Deserialize` swallows the error.
    fatal: Option<ShapeError>,
    /// An enum turned out to have fewer variants than names: run the pass again.
    retry: bool,
    root: Option<&'static str>,
    fallback_root: String,
    steps: usize,
}

impl State {
    fn new(fallback_root: String) -> Self {
        State {
            explored: BTreeMap::new(),
            untraced: 0,
            pending: Vec::new(),
            path: Vec::new(),
            open: Vec::new(),
            fatal: None,
            retry: false,
            root: None,
            fallback_root,
            steps: 0,
        }
    }

    fn begin_pass(&mut self) {
        self.pending.clear();
        self.path.clear();
        self.open.clear();
        self.fatal = None;
        self.retry = false;
    }

    fn commit(&mut self) {
        for (path, index) in self.pending.drain(..) {
            if let Some(place) = self.explored.get_mut(&path) {
                if place.mark(index) {
                    self.untraced = self.untraced.saturating_sub(1);
                }
            }
        }
    }

    fn complete(&self) -> bool {
        self.untraced == 0
    }

    fn path_text(&self) -> String {
        let mut text = self.root.map_or_else(|| self.fallback_root.clone(), str::to_owned);
        for seg in &self.path {
            match seg {
                Seg::Field(_, name) => {
                    text.push('.');
                    text.push_str(name);
                }
                Seg::Elem(i) => {
                    text.push('.');
                    text.push_str(&i.to_string());
                }
                Seg::Inner => text.push_str(".0"),
                Seg::Item => text.push_str("[]"),
                Seg::Key => text.push_str("{key}"),
                Seg::Value => text.push_str("{value}"),
                Seg::Some => {}
                Seg::Variant(_, name) => {
                    text.push_str("::");
                    text.push_str(name);
                }
            }
        }
        text
    }

    fn fail(&mut self, error: ShapeError) -> TraceError {
        if self.fatal.is_none() {
            self.fatal = Some(error.clone());
        }
        TraceError::Shape(error)
    }

    /// Names the place where an error of the type's own arose.
    fn locate(&self, error: TraceError) -> TraceError {
        match error {
            TraceError::Custom(message) => {
                TraceError::Shape(ShapeError::Rejected { path: self.path_text(), message })
            }
            other => other,
        }
    }

    fn step(&mut self) -> Result<(), TraceError> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(self.fail(ShapeError::TooComplex));
        }
        Ok(())
    }

    fn descend(&mut self, seg: Seg) -> Result<(), TraceError> {
        if self.path.len() >= MAX_DEPTH {
            let path = self.path_text();
            return Err(self.fail(ShapeError::Recursive { path }));
        }
        self.path.push(seg);
        Ok(())
    }

    fn ascend(&mut self) {
        self.path.pop();
    }

    fn name_root(&mut self, name: &'static str) {
        if self.path.is_empty() && self.root.is_none() {
            self.root = Some(name);
        }
    }

    fn open(&mut self, container: Container) -> Result<(), TraceError> {
        self.name_root(container.name);
        if self.open.contains(&container) {
            let path = self.path_text();
            return Err(self.fail(ShapeError::Recursive { path }));
        }
        self.open.push(container);
        Ok(())
    }

    fn close(&mut self) {
        self.open.pop();
    }

    /// The variant to trace at the enum here: the lowest one not traced yet, else the lowest
    /// one under which an enum has a variant not traced yet, else the first.
    ///
    /// Falling back to the first variant alone would never reach an enum inside a later
    /// variant again once that variant was traced; with the second rule every pass traces
    /// at least one variant not traced before, until none is left.
    fn choose(&mut self, names: &'static [&'static str]) -> usize {
        let (untraced, count) = match self.explored.get_mut(&self.path) {
            Some(place) => (place.first_untraced(), place.traced.len()),
            None => {
                self.explored.insert(self.path.clone(), Explored::new(names.len()));
                self.untraced += names.len();
                ((!names.is_empty()).then_some(0), names.len())
            }
        };
        let index = untraced.or_else(|| (0..count).find(|v| self.incomplete_under(*v, names))).unwrap_or(0);
        self.pending.push((self.path.clone(), index));
        index
    }

    fn incomplete_under(&self, variant: usize, names: &'static [&'static str]) -> bool {
        let mut prefix = self.path.clone();
        prefix.push(Seg::Variant(variant, names.get(variant).copied().unwrap_or_default()));
        self.explored
            .range(prefix.clone()..)
            .take_while(|(place, _)| place.starts_with(&prefix))
            .any(|(_, place)| place.has_untraced())
    }

    /// The enum here has only `count` variants: the index `count` was refused.
    fn truncate_enum(&mut self, count: usize) {
        if let Some(place) = self.explored.get_mut(&self.path) {
            let dropped = place.truncate(count);
            self.untraced = self.untraced.saturating_sub(dropped);
        }
        self.retry = true;
    }

    /// Runs `visit` with a sequence access of the given layout; returns what it read.
    fn elements<R>(
        &mut self,
        layout: Layout,
        visit: impl FnOnce(&mut Elements<'_>) -> Result<R, TraceError>,
    ) -> (Result<R, TraceError>, Vec<Slot>) {
        let mut access = Elements { st: &mut *self, layout, read: Vec::new() };
        let result = visit(&mut access);
        let read = access.read;
        (result.map_err(|e| self.locate(e)), read)
    }
}

/// Traces the value one step inside the current one.
fn within<R>(
    st: &mut State,
    seg: Seg,
    trace: impl FnOnce(Probe<'_>) -> Result<R, TraceError>,
) -> (Result<R, TraceError>, Slot) {
    let mut slot = None;
    if let Err(e) = st.descend(seg) {
        return (Err(e), None);
    }
    let result = trace(Probe { st: &mut *st, out: &mut slot }).map_err(|e| st.locate(e));
    st.ascend();
    (result, slot)
}

/// Which variants of the enum at one place have been traced.
struct Explored {
    traced: Vec<bool>,
    /// No variant below this index is untraced.
    cursor: usize,
}

impl Explored {
    fn new(count: usize) -> Self {
        Explored { traced: vec![false; count], cursor: 0 }
    }

    /// The lowest variant not traced yet.
    fn first_untraced(&mut self) -> Option<usize> {
        while self.traced.get(self.cursor) == Some(&true) {
            self.cursor += 1;
        }
        (self.cursor < self.traced.len()).then_some(self.cursor)
    }

    fn has_untraced(&self) -> bool {
        self.traced.iter().skip(self.cursor).any(|t| !*t)
    }

    /// Marks a variant traced; true when it was not before.
    fn mark(&mut self, index: usize) -> bool {
        match self.traced.get_mut(index) {
            Some(traced) if !*traced => {
                *traced = true;
                true
            }
            _ => false,
        }
    }

    /// Drops the variants from `count` on; returns how many of them were untraced.
    fn truncate(&mut self, count: usize) -> usize {
        let dropped = self.traced.iter().skip(count).filter(|t| !**t).count();
        self.traced.truncate(count);
        dropped
    }
}

/// The error type of the tracing deserializer.
#[derive(Debug)]
enum TraceError {
    Shape(ShapeError),
    /// An error of the traced type's own, not yet given a place.
    Custom(String),
    /// The pass ended early and must be run again.
    Retry,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::Shape(e) => e.fmt(f),
            TraceError::Custom(message) => f.write_str(message),
            TraceError::Retry => f.write_str("the enum has fewer variants than it names"),
        }
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TraceError::Custom(msg.to_string())
    }
}

/// The deserializer for one value: records what is asked for into `out`.
struct Probe<'a> {
    st: &'a mut State,
    out: &'a mut Slot,
}

impl Probe<'_> {
    fn leaf<'de, V: Visitor<'de>>(
        self,
        kind: &'static str,
        visitor: V,
        visit: impl FnOnce(V) -> Result<V::Value, TraceError>,
    ) -> Result<V::Value, TraceError> {
        self.st.step()?;
        *self.out = Some(Box::new(Node::Prim(kind)));
        visit(visitor).map_err(|e| self.st.locate(e))
    }

    fn self_describing<T>(self) -> Result<T, TraceError> {
        let path = self.st.path_text();
        Err(self.st.fail(ShapeError::SelfDescribing { path }))
    }
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = TraceError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        self.self_describing()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        self.self_describing()
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        self.self_describing()
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("bool", visitor, |v| v.visit_bool(false))
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("i8", visitor, |v| v.visit_i8(0))
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("i16", visitor, |v| v.visit_i16(0))
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("i32", visitor, |v| v.visit_i32(0))
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("i64", visitor, |v| v.visit_i64(0))
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("i128", visitor, |v| v.visit_i128(0))
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("u8", visitor, |v| v.visit_u8(0))
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("u16", visitor, |v| v.visit_u16(0))
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("u32", visitor, |v| v.visit_u32(0))
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("u64", visitor, |v| v.visit_u64(0))
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("u128", visitor, |v| v.visit_u128(0))
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("f32", visitor, |v| v.visit_f32(0.0))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("f64", visitor, |v| v.visit_f64(0.0))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("char", visitor, |v| v.visit_char('\0'))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("str", visitor, |v| v.visit_str(""))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("str", visitor, |v| v.visit_string(String::new()))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("bytes", visitor, |v| v.visit_bytes(&[]))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("bytes", visitor, |v| v.visit_byte_buf(Vec::new()))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.leaf("unit", visitor, |v| v.visit_unit())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let Probe { st, out } = self;
        st.step()?;
        let (result, slot) = within(st, Seg::Some, |p| visitor.visit_some(p));
        *out = Some(Box::new(Node::Option(slot)));
        result
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let Probe { st, out } = self;
        st.step()?;
        st.name_root(name);
        *out = Some(Box::new(Node::UnitStruct));
        visitor.visit_unit().map_err(|e| st.locate(e))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let Probe { st, out } = self;
        st.step()?;
        st.open(Container { visitor: std::any::type_name::<V>(), name, kind: ContainerKind::Newtype })?;
        let (result, slot) = within(st, Seg::Inner, |p| visitor.visit_newtype_struct(p));
        st.close();
        *out = Some(Box::new(Node::Newtype(slot)));
        result
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let Probe { st, out } = self;
        st.step()?;
        let (result, read) = st.elements(Layout::One, |access| visitor.visit_seq(access));
        *out = Some(Box::new(Node::Seq(read.into_iter().next().flatten())));
        result
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, TraceError> {
        let Probe { st, out } = self;
        st.step()?;
        let (result, read) = st.elements(Layout::Tuple(len), |access| visitor.visit_seq(access));
        *out = Some(Box::new(Node::Tuple(len, read)));
        result
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let Probe { st, out } = self;
        st.step()?;
        st.open(Container {
            visitor: std::any::type_name::<V>(),
            name,
            kind: ContainerKind::TupleStruct(len),
        })?;
        let (result, read) = st.elements(Layout::Tuple(len), |access| visitor.visit_seq(access));
        st.close();
        *out = Some(Box::new(Node::TupleStruct(len, read)));
        result
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let Probe { st, out } = self;
        st.step()?;
        let mut access = Entries { st: &mut *st, key: None, value: None };
        let result = visitor.visit_map(&mut access);
        let (key, value) = (access.key.flatten(), access.value.flatten());
        *out = Some(Box::new(Node::Map(key, value)));
        result.map_err(|e| st.locate(e))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let Probe { st, out } = self;
        st.step()?;
        st.open(Container {
            visitor: std::any::type_name::<V>(),
            name,
            kind: ContainerKind::Struct(fields),
        })?;
        let (result, values) = st.elements(Layout::Fields(fields), |access| visitor.visit_seq(access));
        st.close();
        *out = Some(Box::new(Node::Struct(Fields { names: fields, values })));
        result
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let Probe { st, out } = self;
        st.step()?;
        st.open(Container {
            visitor: std::any::type_name::<V>(),
            name,
            kind: ContainerKind::Enum(variants),
        })?;
        let index = st.choose(variants);
        let mut payload = None;
        let result = visitor.visit_enum(Chosen { st: &mut *st, names: variants, index, out: &mut payload });
        let result = result.map_err(|e| st.locate(e));
        st.close();
        let mut payloads = BTreeMap::new();
        if index < variants.len() {
            payloads.insert(index, payload.unwrap_or(Payload::Nothing));
        }
        *out = Some(Box::new(Node::Enum(variants, payloads)));
        result
    }
}

/// How many elements a sequence access yields, and how they are named.
#[derive(Clone, Copy)]
enum Layout {
    /// One per field name.
    Fields(&'static [&'static str]),
    /// A tuple of this length.
    Tuple(usize),
    /// A sequence: one element.
    One,
}

impl Layout {
    fn len(self) -> usize {
        match self {
            Layout::Fields(names) => names.len(),
            Layout::Tuple(len) => len,
            Layout::One => 1,
        }
    }
}

struct Elements<'a> {
    st: &'a mut State,
    layout: Layout,
    read: Vec<Slot>,
}

impl<'de> SeqAccess<'de> for Elements<'_> {
    type Error = TraceError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, TraceError> {
        let i = self.read.len();
        let seg = match self.layout {
            Layout::Fields(names) => match names.get(i) {
                Some(name) => Seg::Field(i, name),
                None => return Ok(None),
            },
            Layout::Tuple(len) if i < len => Seg::Elem(i),
            Layout::One if i == 0 => Seg::Item,
            _ => return Ok(None),
        };
        let (result, slot) = within(self.st, seg, |p| seed.deserialize(p));
        self.read.push(slot);
        result.map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.layout.len().saturating_sub(self.read.len()))
    }
}

/// A map access that yields one entry. `Some(slot)` once the key (value) was read.
struct Entries<'a> {
    st: &'a mut State,
    key: Option<Slot>,
    value: Option<Slot>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = TraceError;

    fn next_key_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<Option<S::Value>, TraceError> {
        if self.key.is_some() {
            return Ok(None);
        }
        let (result, slot) = within(self.st, Seg::Key, |p| seed.deserialize(p));
        self.key = Some(slot);
        result.map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, TraceError> {
        if self.value.is_some() {
            return Err(self.st.locate(TraceError::Custom("the map's one value was read twice".to_owned())));
        }
        let (result, slot) = within(self.st, Seg::Value, |p| seed.deserialize(p));
        self.value = Some(slot);
        result
    }

    fn size_hint(&self) -> Option<usize> {
        Some(if self.key.is_some() { 0 } else { 1 })
    }
}

/// The enum and variant access for the variant chosen at an enum.
struct Chosen<'a> {
    st: &'a mut State,
    names: &'static [&'static str],
    index: usize,
    out: &'a mut Option<Payload>,
}

impl Chosen<'_> {
    fn seg(&self) -> Seg {
        Seg::Variant(self.index, self.names.get(self.index).copied().unwrap_or_default())
    }
}

impl<'de> EnumAccess<'de> for Chosen<'_> {
    type Error = TraceError;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), TraceError> {
        let Ok(index) = u32::try_from(self.index) else {
            return Err(self.st.locate(TraceError::Custom("the enum has too many variants".to_owned())));
        };
        match seed.deserialize(U32Deserializer::<TraceError>::new(index)) {
            Ok(value) => Ok((value, self)),
            // An enum with aliases names more variants than it has: the first index past
            // its last variant is refused.
            Err(TraceError::Custom(_)) if self.index > 0 => {
                self.st.truncate_enum(self.index);
                Err(TraceError::Retry)
            }
            Err(e) => Err(self.st.locate(e)),
        }
    }
}

impl<'de> VariantAccess<'de> for Chosen<'_> {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        *self.out = Some(Payload::Unit);
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<S::Value, TraceError> {
        let seg = self.seg();
        let (result, slot) = within(self.st, seg, |p| seed.deserialize(p));
        *self.out = Some(Payload::Newtype(slot));
        result
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, TraceError> {
        let seg = self.seg();
        self.st.descend(seg)?;
        let (result, read) = self.st.elements(Layout::Tuple(len), |access| visitor.visit_seq(access));
        self.st.ascend();
        *self.out = Some(Payload::Tuple(len, read));
        result
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let seg = self.seg();
        self.st.descend(seg)?;
        let (result, values) = self.st.elements(Layout::Fields(fields), |access| visitor.visit_seq(access));
        self.st.ascend();
        *self.out = Some(Payload::Struct(Fields { names: fields, values }));
        result
    }
}

#[cfg(test)]
#[allow(dead_code, reason = "the test types exist for their Deserialize implementations only")]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;
    use serde::Deserialize;
    use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
    use std::marker::PhantomData;
    use std::num::{NonZeroU64, NonZeroU8};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn text<T: DeserializeOwned>() -> Result<String, ShapeError> {
        Ok(shape_of::<T>()?.canonical().to_owned())
    }

    // A representative row type.

    #[derive(Deserialize)]
    struct Card {
        id: String,
        price: u64,
        tags: Vec<String>,
        note: Option<char>,
        kind: Kind,
        seen: BTreeMap<String, (u8, bool)>,
    }

    #[derive(Deserialize)]
    enum Kind {
        Plain,
        Sale(u32),
        Bundle { items: u16, label: String },
    }

    #[test]
    fn canonical_text_of_a_representative_struct() -> TestResult {
        assert_eq!(
            text::<Card>()?,
            "struct{id:str,price:u64,tags:seq<str>,note:option<char>,\
             kind:enum{Plain:unit,Sale:newtype(u32),Bundle:struct{items:u16,label:str}},\
             seen:map<str,tuple2(u8,bool)>}"
        );
        Ok(())
    }

    #[test]
    fn display_and_fingerprint_follow_the_canonical_text() -> TestResult {
        let shape = shape_of::<Card>()?;
        assert_eq!(shape.to_string(), shape.canonical());
        let hash = blake3::hash(shape.canonical().as_bytes());
        assert_eq!(Some(&shape.fingerprint()[..]), hash.as_bytes().get(..16));
        Ok(())
    }

    #[test]
    fn tracing_is_deterministic() -> TestResult {
        let (a, b) = (shape_of::<Card>()?, shape_of::<Card>()?);
        assert_eq!(a, b);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(shape_of::<Outer>()?, shape_of::<Outer>()?);
        Ok(())
    }

    // Field changes.

    #[derive(Deserialize)]
    struct Base {
        id: u64,
        name: String,
        count: Option<u64>,
    }

    mod changed {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub struct Added {
            pub id: u64,
            pub name: String,
            pub count: Option<u64>,
            pub extra: u64,
        }
        #[derive(Deserialize)]
        pub struct Removed {
            pub id: u64,
            pub name: String,
        }
        #[derive(Deserialize)]
        pub struct Reordered {
            pub name: String,
            pub id: u64,
            pub count: Option<u64>,
        }
        #[derive(Deserialize)]
        pub struct Renamed {
            pub ident: u64,
            pub name: String,
            pub count: Option<u64>,
        }
        #[derive(Deserialize)]
        pub struct Signed {
            pub id: i64,
            pub name: String,
            pub count: Option<u64>,
        }
        #[derive(Deserialize)]
        pub struct Stringly {
            pub id: String,
            pub name: String,
            pub count: Option<u64>,
        }
        #[derive(Deserialize)]
        pub struct Required {
            pub id: u64,
            pub name: String,
            pub count: u64,
        }
        #[derive(Deserialize)]
        pub struct SwappedSameType {
            pub id: u64,
            pub count: Option<u64>,
            pub name: String,
        }
    }

    mod elsewhere {
        use serde::Deserialize;

        /// The shape of `Base` under another name, in another module.
        #[derive(Deserialize)]
        pub struct Other {
            pub id: u64,
            pub name: String,
            pub count: Option<u64>,
        }

        /// The shape of `Base` again, through a generic type.
        #[derive(Deserialize)]
        pub struct Generic<T> {
            pub id: T,
            pub name: String,
            pub count: Option<T>,
        }
    }

    #[test]
    fn every_field_change_changes_the_fingerprint() -> TestResult {
        let base = shape_of::<Base>()?;
        assert_eq!(base.canonical(), "struct{id:u64,name:str,count:option<u64>}");
        let changes = [
            ("a field added", shape_of::<changed::Added>()?),
            ("a field removed", shape_of::<changed::Removed>()?),
            ("two fields reordered", shape_of::<changed::Reordered>()?),
            ("a field renamed", shape_of::<changed::Renamed>()?),
            ("u64 -> i64", shape_of::<changed::Signed>()?),
            ("u64 -> String", shape_of::<changed::Stringly>()?),
            ("Option<u64> -> u64", shape_of::<changed::Required>()?),
            ("fields moved", shape_of::<changed::SwappedSameType>()?),
        ];
        for (change, shape) in &changes {
            assert_ne!(shape.fingerprint(), base.fingerprint(), "{change}: {shape}");
        }
        for (i, (a, sa)) in changes.iter().enumerate() {
            for (b, sb) in changes.iter().skip(i + 1) {
                assert_ne!(sa.fingerprint(), sb.fingerprint(), "{a} and {b}");
            }
        }
        Ok(())
    }

    #[test]
    fn the_name_and_module_of_a_type_do_not_matter() -> TestResult {
        let base = shape_of::<Base>()?;
        assert_eq!(shape_of::<elsewhere::Other>()?, base);
        assert_eq!(shape_of::<elsewhere::Generic<u64>>()?.fingerprint(), base.fingerprint());
        assert_ne!(shape_of::<elsewhere::Generic<u32>>()?.fingerprint(), base.fingerprint());
        Ok(())
    }

    // Enums.

    #[derive(Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
    enum Inner {
        X,
        Y(u8),
        Z { z: bool },
    }

    #[derive(Deserialize)]
    enum Deep {
        P(u16),
        Q(Vec<Inner>),
    }

    #[derive(Deserialize)]
    enum Outer {
        A,
        B(Inner),
        C { m: Option<Deep> },
        D(BTreeMap<String, Inner>),
        E(u8, Deep),
    }

    #[derive(Deserialize)]
    struct Holder {
        list: Vec<Outer>,
        by_id: HashMap<Inner, Option<Inner>>,
    }

    const INNER: &str = "enum{X:unit,Y:newtype(u8),Z:struct{z:bool}}";

    fn deep() -> String {
        format!("enum{{P:newtype(u16),Q:newtype(seq<{INNER}>)}}")
    }

    fn outer() -> String {
        let deep = deep();
        format!(
            "enum{{A:unit,B:newtype({INNER}),C:struct{{m:option<{deep}>}},D:newtype(map<str,{INNER}>),\
             E:tuple2(u8,{deep})}}"
        )
    }

    #[test]
    fn every_variant_of_every_enum_at_any_depth_is_traced() -> TestResult {
        assert_eq!(text::<Inner>()?, INNER);
        assert_eq!(text::<Deep>()?, deep());
        assert_eq!(text::<Outer>()?, outer());
        assert_eq!(
            text::<Holder>()?,
            format!("struct{{list:seq<{}>,by_id:map<{INNER},option<{INNER}>>}}", outer())
        );
        Ok(())
    }

    mod variants {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub enum Base {
            A,
            B(u8),
            C { c: String },
        }
        #[derive(Deserialize)]
        pub enum Added {
            A,
            B(u8),
            C { c: String },
            D,
        }
        #[derive(Deserialize)]
        pub enum Reordered {
            B(u8),
            A,
            C { c: String },
        }
        #[derive(Deserialize)]
        pub enum PayloadChanged {
            A,
            B(u16),
            C { c: String },
        }
        #[derive(Deserialize)]
        pub enum PayloadWidened {
            A,
            B(u8, u8),
            C { c: String },
        }
        #[derive(Deserialize)]
        pub enum Renamed {
            A,
            Bee(u8),
            C { c: String },
        }
        #[derive(Deserialize)]
        pub enum NestedChanged {
            A,
            B(u8),
            C { c: Option<super::Inner> },
        }
        #[derive(Deserialize)]
        pub enum NestedChangedAgain {
            A,
            B(u8),
            C { c: Option<super::Deep> },
        }
    }

    #[test]
    fn every_variant_change_changes_the_fingerprint() -> TestResult {
        let base = shape_of::<variants::Base>()?;
        assert_eq!(base.canonical(), "enum{A:unit,B:newtype(u8),C:struct{c:str}}");
        let changes = [
            ("a variant added", shape_of::<variants::Added>()?),
            ("variants reordered", shape_of::<variants::Reordered>()?),
            ("a payload changed", shape_of::<variants::PayloadChanged>()?),
            ("a payload widened", shape_of::<variants::PayloadWidened>()?),
            ("a variant renamed", shape_of::<variants::Renamed>()?),
            ("a nested enum", shape_of::<variants::NestedChanged>()?),
            ("another nested enum", shape_of::<variants::NestedChangedAgain>()?),
        ];
        for (change, shape) in &changes {
            assert_ne!(shape.fingerprint(), base.fingerprint(), "{change}: {shape}");
        }
        for (i, (a, sa)) in changes.iter().enumerate() {
            for (b, sb) in changes.iter().skip(i + 1) {
                assert_ne!(sa.fingerprint(), sb.fingerprint(), "{a} and {b}");
            }
        }
        Ok(())
    }

    // Standard containers and primitive kinds.

    #[derive(Deserialize)]
    struct Marker;

    #[derive(Deserialize)]
    struct Meters(f64);

    #[derive(Deserialize)]
    struct Pair(i128, u128);

    /// Reads itself as a byte buffer, as `serde_bytes::ByteBuf` does.
    struct RawBytes;

    impl<'de> Deserialize<'de> for RawBytes {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct BytesVisitor;
            impl Visitor<'_> for BytesVisitor {
                type Value = RawBytes;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<RawBytes, E> {
                    Ok(RawBytes)
                }
            }
            deserializer.deserialize_byte_buf(BytesVisitor)
        }
    }

    #[test]
    fn containers_and_primitives_trace_as_serde_reads_them() -> TestResult {
        let v6 = format!("tuple16({})", ["u8"; 16].join(","));
        let cases: Vec<(Result<Shape, ShapeError>, String)> = vec![
            (shape_of::<Vec<u32>>(), "seq<u32>".into()),
            (shape_of::<VecDeque<u8>>(), "seq<u8>".into()),
            (shape_of::<HashSet<i16>>(), "seq<i16>".into()),
            (shape_of::<HashMap<String, u64>>(), "map<str,u64>".into()),
            (shape_of::<BTreeMap<u8, bool>>(), "map<u8,bool>".into()),
            (shape_of::<(u8, String, char)>(), "tuple3(u8,str,char)".into()),
            (shape_of::<[u16; 2]>(), "tuple2(u16,u16)".into()),
            (shape_of::<()>(), "unit".into()),
            (shape_of::<Marker>(), "unit_struct".into()),
            (shape_of::<PhantomData<u8>>(), "unit_struct".into()),
            (shape_of::<Meters>(), "newtype(f64)".into()),
            (shape_of::<Pair>(), "tuple_struct2(i128,u128)".into()),
            (shape_of::<(i8, i16, i32, i64)>(), "tuple4(i8,i16,i32,i64)".into()),
            (shape_of::<(u16, u32, u64)>(), "tuple3(u16,u32,u64)".into()),
            (shape_of::<(f32, f64, bool, char)>(), "tuple4(f32,f64,bool,char)".into()),
            (shape_of::<Box<i32>>(), "i32".into()),
            (shape_of::<Option<Option<i8>>>(), "option<option<i8>>".into()),
            (shape_of::<String>(), "str".into()),
            (shape_of::<Box<str>>(), "str".into()),
            (shape_of::<Vec<u8>>(), "seq<u8>".into()),
            (shape_of::<RawBytes>(), "bytes".into()),
            (shape_of::<std::time::Duration>(), "struct{secs:u64,nanos:u32}".into()),
            (
                shape_of::<std::net::IpAddr>(),
                format!("enum{{V4:newtype(tuple4(u8,u8,u8,u8)),V6:newtype({v6})}}"),
            ),
        ];
        for (shape, expected) in cases {
            assert_eq!(shape?.canonical(), expected);
        }
        assert_ne!(shape_of::<String>()?.fingerprint(), shape_of::<Vec<u8>>()?.fingerprint());
        assert_ne!(shape_of::<Vec<u8>>()?.fingerprint(), shape_of::<RawBytes>()?.fingerprint());
        Ok(())
    }

    #[derive(Deserialize)]
    struct Odd {
        #[serde(rename = "a b")]
        ab: u8,
        #[serde(rename = "q\"\\\u{e9}\n")]
        q: u8,
        #[serde(rename = "")]
        empty: u8,
        r#type: u8,
    }

    #[test]
    fn names_that_are_not_bare_are_quoted() -> TestResult {
        assert_eq!(text::<Odd>()?, r#"struct{"a b":u8,"q\"\\\u{e9}\u{a}":u8,"":u8,type:u8}"#);
        Ok(())
    }

    #[derive(Deserialize)]
    struct AliasedFields {
        #[serde(alias = "z")]
        a: u8,
        b: u16,
    }

    #[derive(Deserialize)]
    enum AliasedVariants {
        #[serde(alias = "Zed")]
        A(u8),
        B,
    }

    #[test]
    fn aliases_list_all_names_then_all_values() -> TestResult {
        assert_eq!(text::<AliasedFields>()?, "struct(a,z,b){u8,u16}");
        assert_eq!(text::<AliasedVariants>()?, "enum(A,Zed,B){newtype(u8),unit}");
        Ok(())
    }

    // Self-describing types.

    #[derive(Deserialize)]
    struct Holds<T> {
        id: u64,
        x: T,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Untagged {
        Num(u64),
        Text(String),
    }

    #[derive(Deserialize)]
    #[serde(tag = "t")]
    enum Internal {
        A { x: u64 },
        B,
    }

    #[derive(Deserialize)]
    #[serde(tag = "t", content = "c")]
    enum Adjacent {
        A(u64),
        B,
    }

    #[derive(Deserialize)]
    struct Extra {
        a: u8,
    }

    #[derive(Deserialize)]
    struct Flattened {
        id: u64,
        #[serde(flatten)]
        rest: Extra,
    }

    /// Reads `T` and keeps going without it when that fails.
    struct Lenient<T>(Option<T>);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            Ok(Lenient(T::deserialize(deserializer).ok()))
        }
    }

    fn self_describing_at(result: Result<Shape, ShapeError>) -> Option<String> {
        match result {
            Err(ShapeError::SelfDescribing { path }) => Some(path),
            _ => None,
        }
    }

    #[test]
    fn self_describing_types_are_refused_with_their_path() {
        let cases = [
            (shape_of::<Holds<Untagged>>(), "Holds.x"),
            (shape_of::<Holds<Internal>>(), "Holds.x"),
            (shape_of::<Holds<Adjacent>>(), "Holds.x.t"),
            (shape_of::<Holds<Flattened>>(), "Holds.x{key}"),
            (shape_of::<Holds<IgnoredAny>>(), "Holds.x"),
            (shape_of::<Holds<Vec<Lenient<Untagged>>>>(), "Holds.x[]"),
            (shape_of::<Untagged>(), "Untagged"),
        ];
        for (result, path) in cases {
            assert_eq!(self_describing_at(result), Some(path.to_owned()));
        }
    }

    // Recursive types.

    #[derive(Deserialize)]
    struct Tree {
        children: Vec<Tree>,
    }

    #[derive(Deserialize)]
    enum List {
        Nil,
        Cons(u64, Box<List>),
    }

    #[derive(Deserialize)]
    struct Ping {
        pong: Option<Box<Pong>>,
    }

    #[derive(Deserialize)]
    struct Pong {
        pings: Vec<Ping>,
    }

    #[derive(Deserialize)]
    struct Nat(Option<Box<Nat>>);

    /// Reads itself as a sequence of itself, through no struct or enum.
    struct Endless;

    impl<'de> Deserialize<'de> for Endless {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct EndlessVisitor;
            impl<'de> Visitor<'de> for EndlessVisitor {
                type Value = Endless;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a sequence of itself")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Endless, A::Error> {
                    while seq.next_element::<Endless>()?.is_some() {}
                    Ok(Endless)
                }
            }
            deserializer.deserialize_seq(EndlessVisitor)
        }
    }

    #[test]
    fn recursive_types_are_refused_without_overflowing_the_stack() {
        let cases = [
            (shape_of::<Tree>(), "Tree.children[]"),
            (shape_of::<List>(), "List::Cons.1"),
            (shape_of::<Holds<List>>(), "Holds.x::Cons.1"),
            (shape_of::<Ping>(), "Ping.pong.pings[]"),
            (shape_of::<Nat>(), "Nat.0"),
        ];
        for (result, path) in cases {
            assert_eq!(result, Err(ShapeError::Recursive { path: path.to_owned() }));
        }
        let endless = shape_of::<Endless>();
        assert!(matches!(endless, Err(ShapeError::Recursive { .. })), "{endless:?}");
    }

    mod same_name {
        use serde::Deserialize;

        pub mod inner {
            use serde::Deserialize;

            #[derive(Deserialize)]
            pub struct Id(pub u64);
        }

        #[derive(Deserialize)]
        pub struct Id(pub inner::Id);
    }

    #[derive(Deserialize)]
    struct Wrap<T> {
        inner: T,
    }

    #[test]
    fn same_named_types_inside_each_other_are_not_recursive() -> TestResult {
        assert_eq!(text::<same_name::Id>()?, "newtype(newtype(u64))");
        assert_eq!(text::<Wrap<Wrap<u8>>>()?, "struct{inner:struct{inner:u8}}");
        Ok(())
    }

    // Types that validate what they read.

    #[derive(Deserialize)]
    struct Counted {
        count: NonZeroU64,
    }

    #[derive(Deserialize)]
    #[serde(try_from = "String")]
    struct Label(String);

    impl TryFrom<String> for Label {
        type Error = &'static str;
        fn try_from(text: String) -> Result<Self, Self::Error> {
            if text.is_empty() {
                Err("a label must not be empty")
            } else {
                Ok(Label(text))
            }
        }
    }

    #[derive(Deserialize)]
    struct Tagged {
        id: u64,
        label: Label,
    }

    #[derive(Deserialize)]
    enum Guarded {
        Open,
        Closed { m: NonZeroU64 },
    }

    #[derive(Deserialize)]
    struct Prices {
        by_id: HashMap<String, NonZeroU8>,
    }

    fn rejected_at(result: Result<Shape, ShapeError>) -> Option<String> {
        match result {
            Err(ShapeError::Rejected { path, .. }) => Some(path),
            _ => None,
        }
    }

    #[test]
    fn validating_types_are_refused_with_their_path() {
        let cases = [
            (shape_of::<Counted>(), "Counted.count"),
            (shape_of::<Tagged>(), "Tagged.label"),
            (shape_of::<Guarded>(), "Guarded::Closed.m"),
            (shape_of::<Prices>(), "Prices.by_id{value}"),
            (shape_of::<NonZeroU64>(), "NonZero<u64>"),
            (shape_of::<Label>(), "Label"),
        ];
        for (result, path) in cases {
            assert_eq!(rejected_at(result), Some(path.to_owned()));
        }
        assert_eq!(
            shape_of::<Tagged>(),
            Err(ShapeError::Rejected {
                path: "Tagged.label".to_owned(),
                message: "a label must not be empty".to_owned()
            })
        );
    }

    // Bounds.

    /// A tuple of 16 tuples of 16 ... five levels deep: more than a million values.
    struct Fan;

    #[derive(Clone, Copy)]
    struct FanSeed(u32);

    impl<'de> Deserialize<'de> for Fan {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            FanSeed(5).deserialize(deserializer)
        }
    }

    impl<'de> DeserializeSeed<'de> for FanSeed {
        type Value = Fan;
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Fan, D::Error> {
            if self.0 == 0 {
                u8::deserialize(deserializer).map(|_| Fan)
            } else {
                deserializer.deserialize_tuple(16, self)
            }
        }
    }

    impl<'de> Visitor<'de> for FanSeed {
        type Value = Fan;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a fan")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Fan, A::Error> {
            for _ in 0..16 {
                seq.next_element_seed(FanSeed(self.0.saturating_sub(1)))?;
            }
            Ok(Fan)
        }
    }

    /// An enum of more variants than tracing makes passes.
    struct Many;

    static MANY: [&str; MAX_PASSES + 1] = ["v"; MAX_PASSES + 1];

    impl<'de> Deserialize<'de> for Many {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct ManyVisitor;
            impl<'de> Visitor<'de> for ManyVisitor {
                type Value = Many;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("one of many")
                }
                fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Many, A::Error> {
                    let (_, variant): (u32, _) = data.variant()?;
                    variant.unit_variant()?;
                    Ok(Many)
                }
            }
            deserializer.deserialize_enum("Many", &MANY, ManyVisitor)
        }
    }

    #[test]
    fn a_type_of_too_many_values_is_refused() {
        assert_eq!(shape_of::<Fan>(), Err(ShapeError::TooComplex));
    }

    #[test]
    fn an_enum_of_more_variants_than_passes_is_refused() {
        assert_eq!(shape_of::<Many>(), Err(ShapeError::TooComplex));
    }

    #[test]
    fn errors_read_as_sentences() {
        let cases = [
            (
                ShapeError::SelfDescribing { path: "Row.kind".into() },
                "the value at Row.kind needs a self-describing format (it asks for deserialize_any, \
                 deserialize_ignored_any or deserialize_identifier), so bincode cannot read it back",
            ),
            (
                ShapeError::Recursive { path: "Tree.children[]".into() },
                "the type contains itself at Tree.children[], so its shape is not finite",
            ),
            (
                ShapeError::Rejected { path: "Row.count".into(), message: "zero".into() },
                "the value at Row.count refused the placeholder that tracing fed it: zero",
            ),
            (
                ShapeError::TooComplex,
                "the type's shape did not finish tracing within the bounded number of passes and values",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn tracing_never_panics() {
        let outcomes = [
            shape_of::<u8>().is_ok(),
            shape_of::<Card>().is_ok(),
            shape_of::<Holder>().is_ok(),
            shape_of::<Option<Vec<HashMap<String, Outer>>>>().is_ok(),
            shape_of::<Tree>().is_err(),
            shape_of::<Endless>().is_err(),
            shape_of::<Holds<Untagged>>().is_err(),
            shape_of::<Holds<Lenient<Internal>>>().is_err(),
            shape_of::<Counted>().is_err(),
            shape_of::<serde_json::Value>().is_err(),
            shape_of::<AliasedVariants>().is_ok(),
            shape_of::<std::net::SocketAddr>().is_ok(),
            shape_of::<std::time::SystemTime>().is_ok(),
        ];
        assert!(outcomes.iter().all(|ok| *ok), "{outcomes:?}");
    }
}
