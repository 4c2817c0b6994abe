//! What the fuzz tests share: the case count (CI's default, or
//! `PROPTEST_CASES` for a long run), inputs made by mutating valid encodings,
//! and a per-thread allocation meter that bounds what a decoder may hold.
//!
//! Included by `tests/fuzz_protocol.rs` and, by path, by the dev server's
//! `devserver/tests/fuzz.rs` and `fuzz_socket.rs`: one copy for both crates.
#![allow(dead_code)] // each fuzz file uses its own subset

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use proptest::sample::Index;

/// The configuration of one fuzz property: `default_cases` in a normal
/// `cargo test`, or as many as `PROPTEST_CASES` says when it is set (a long
/// run). No failure files: a failure prints its shrunk input, and a bug it
/// finds becomes a named regression test beside the property instead of a
/// `proptest-regressions/` file that appears in the work tree unasked.
pub fn config(default_cases: u32) -> ProptestConfig {
    // `ProptestConfig::default()` has already read PROPTEST_CASES (and the
    // other PROPTEST_* variables); only its built-in 256 is replaced
    let base = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        base.cases
    } else {
        default_cases
    };
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..base
    }
}

/// One edit of an input. Positions are [`Index`]es, resolved against the
/// input's length at the time of the edit, so a sequence of edits always
/// applies.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flips one bit.
    Flip(Index, u8),
    /// Overwrites one byte.
    Set(Index, u8),
    /// Inserts bytes: random ones, or a token that decoders treat specially.
    Insert(Index, Vec<u8>),
    /// Deletes up to this many bytes.
    Delete(Index, usize),
    /// Cuts the input short.
    Truncate(Index),
    /// Repeats a slice of the input a number of times in place: grows
    /// repeated fields and nesting, so inputs reach the bounds.
    Repeat(Index, usize, usize),
}

/// Byte strings that decoders of protobuf and JSON treat specially: large or
/// unterminated varints, length prefixes far past the end, wire types 3 to 7,
/// JSON structure, escapes, numbers out of range, and invalid UTF-8.
const TOKENS: &[&[u8]] = &[
    // varints: unterminated, the largest u64, a 2^31 length, an 11-byte one
    b"\x80",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80\x80\x80\x80\x08",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    // field 1 length-delimited with a huge length; groups; fixed widths
    b"\x0a\xff\xff\xff\xff\x0f",
    b"\x0b",
    b"\x0c",
    b"\x0d\x00\x00\xc0\x7f",
    b"\x11\x00\x00\x00\x00\x00\x00\xf8\x7f",
    b"\x0f",
    // JSON
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"-",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b"\"NaN\"",
    b"\"Infinity\"",
    b"\\u",
    b"\\ud800",
    b"\"\\uD83D\\uDE00\"",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":{",
    b"\"JT_ROOM\"",
    b"\"JS_RUNNING\"",
    b"\"AAAA\"",
    // not UTF-8: a lone continuation byte, an overlong NUL, a surrogate
    b"\x80\x80",
    b"\xc0\x80",
    b"\xed\xa0\x80",
];

fn insertion() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::sample::select(TOKENS).prop_map(<[u8]>::to_vec),
        proptest::collection::vec(any::<u8>(), 1..16),
    ]
}

/// One edit.
pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        3 => (any::<Index>(), insertion()).prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        2 => (any::<Index>(), 1usize..32).prop_map(|(at, len)| Mutation::Delete(at, len)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..64, 2usize..64)
            .prop_map(|(at, len, times)| Mutation::Repeat(at, len, times)),
    ]
}

/// Applies the edits in order.
pub fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    // a position in 0..=len (insertions may go at the end)
    let at = |index: &Index, len: usize| index.index(len + 1);
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::Flip(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
            Mutation::Set(i, byte) if len > 0 => bytes[i.index(len)] = *byte,
            Mutation::Flip(..) | Mutation::Set(..) => {}
            Mutation::Insert(i, more) => {
                let at = at(i, len);
                bytes.splice(at..at, more.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let at = at(i, len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Truncate(i) => bytes.truncate(at(i, len)),
            Mutation::Repeat(i, n, times) => {
                let at = at(i, len);
                let slice = bytes[at..(at + n).min(len)].to_vec();
                let copies = slice.repeat(times - 1);
                bytes.splice(at..at, copies);
            }
        }
    }
    bytes
}

/// One of `seeds`, edited by one to `max_edits` mutations.
pub fn mutated(seeds: Vec<Vec<u8>>, max_edits: usize) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(mutation(), 1..=max_edits),
    )
        .prop_map(|(seed, edits)| apply(seed, &edits))
}

/// Inputs for a decoder whose valid encodings are `seeds`: mostly mutated
/// seeds (they get past the first byte and into the message), lightly
/// (one or two edits, so that many still decode and reach what reads the
/// message) or heavily; some seeds as they are, some random bytes.
pub fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => mutated(seeds.clone(), 2),
        3 => mutated(seeds.clone(), 8),
        1 => proptest::sample::select(seeds),
        2 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Inputs for a decoder of text (protojson, JSON): as [`inputs`], but most
/// made valid UTF-8 again after the edits (invalid sequences replaced), as
/// a text frame must be, since raw bytes would mostly stop at the UTF-8
/// check; and seeds that are JSON edited as JSON too (see [`json_edited`]),
/// which gets past the parser into what reads the fields.
pub fn text_inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let mut json: Vec<serde_json::Value> = seeds
        .iter()
        .filter_map(|seed| serde_json::from_slice(seed).ok())
        .collect();
    if json.is_empty() {
        json.push(serde_json::json!({}));
    }
    prop_oneof![
        3 => json_edited(json),
        4 => inputs(seeds.clone())
            .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned().into_bytes()),
        1 => inputs(seeds),
    ]
}

/// One edit of a JSON document, at the node a path of [`Index`]es leads
/// to (it stops early at a leaf).
#[derive(Clone, Debug)]
pub enum JsonEdit {
    /// The node becomes this value.
    Replace(Vec<Index>, serde_json::Value),
    /// An object's field or an array's element goes.
    Remove(Vec<Index>, Index),
    /// An object gains (or changes) this field; an array gains an element.
    Add(Vec<Index>, String, serde_json::Value),
}

/// A small JSON value of any type, with the values decoders trip on: huge
/// and negative numbers, numbers in strings, `"NaN"`, unknown enum names,
/// bad base64, empty containers.
pub fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        proptest::sample::select(vec![
            "",
            "0",
            "-1",
            "1.5",
            "1e999",
            "18446744073709551616",
            "-9223372036854775809",
            "NaN",
            "Infinity",
            "-Infinity",
            "JT_ROOM",
            "JS_RUNNING",
            "WS_FULL",
            "NOT_AN_ENUM",
            "AAAA",
            "not base64!",
            "\0",
            "2024-01-01T00:00:00Z",
            "3.5s",
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            proptest::collection::vec(("[a-z_A-Z]{0,12}", inner), 0..3)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn json_edit(keys: Vec<String>) -> impl Strategy<Value = JsonEdit> {
    let path = || proptest::collection::vec(any::<Index>(), 0..6);
    prop_oneof![
        3 => (path(), json_value()).prop_map(|(path, value)| JsonEdit::Replace(path, value)),
        1 => (path(), any::<Index>()).prop_map(|(path, at)| JsonEdit::Remove(path, at)),
        1 => (path(), proptest::sample::select(keys), json_value())
            .prop_map(|(path, key, value)| JsonEdit::Add(path, key, value)),
    ]
}

/// The node `path` leads to.
fn node<'a>(value: &'a mut serde_json::Value, path: &[Index]) -> &'a mut serde_json::Value {
    use serde_json::Value;
    let len = match &*value {
        Value::Object(fields) => fields.len(),
        Value::Array(items) => items.len(),
        _ => 0,
    };
    let Some((first, rest)) = path.split_first().filter(|_| len > 0) else {
        return value;
    };
    let at = first.index(len);
    match value {
        Value::Object(fields) => {
            let child = fields
                .values_mut()
                .nth(at)
                .expect("an index within the length");
            node(child, rest)
        }
        Value::Array(items) => node(&mut items[at], rest),
        leaf => leaf,
    }
}

/// Applies the edits in order.
pub fn apply_json(mut value: serde_json::Value, edits: &[JsonEdit]) -> serde_json::Value {
    use serde_json::Value;
    for edit in edits {
        match edit {
            JsonEdit::Replace(path, new) => *node(&mut value, path) = new.clone(),
            JsonEdit::Remove(path, at) => match node(&mut value, path) {
                Value::Object(fields) if !fields.is_empty() => {
                    let key = fields.keys().nth(at.index(fields.len())).cloned();
                    fields.remove(&key.expect("an index within the length"));
                }
                Value::Array(items) if !items.is_empty() => {
                    items.remove(at.index(items.len()));
                }
                _ => {}
            },
            JsonEdit::Add(path, key, new) => match node(&mut value, path) {
                Value::Object(fields) => {
                    fields.insert(key.clone(), new.clone());
                }
                Value::Array(items) => items.push(new.clone()),
                _ => {}
            },
        }
    }
    value
}

/// Every object key in `value`, and a few no decoder knows.
fn keys_of(value: &serde_json::Value, keys: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(fields) => {
            for (key, child) in fields {
                keys.push(key.clone());
                keys_of(child, keys);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| keys_of(item, keys)),
        _ => {}
    }
}

/// One of `seeds` (JSON documents) with one to four of its nodes replaced
/// by values of any type, removed, or given fields (known names and
/// unknown ones), serialized: well-formed JSON that is mostly the right
/// shape, which reaches the code that reads each field.
pub fn json_edited(seeds: Vec<serde_json::Value>) -> impl Strategy<Value = Vec<u8>> {
    let mut keys = vec!["unknownField".to_owned(), String::new()];
    seeds.iter().for_each(|seed| keys_of(seed, &mut keys));
    keys.sort();
    keys.dedup();
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(json_edit(keys), 1..=4),
    )
        .prop_map(|(seed, edits)| {
            serde_json::to_vec(&apply_json(seed, &edits)).expect("a JSON value serializes")
        })
}

// ---- the allocation meter ----

/// What a decoder may allocate at most for an input of `len` bytes. The
/// factor is large because prost turns a 2-byte empty entry of a repeated
/// message field into a whole struct (a `TrackInfo` is 272 bytes) in a
/// vector that grows by doubling: about 330 times the input at worst that
/// we know of (`tests/fuzz_protocol.rs` builds that case). But it is a
/// factor, where a decoder that believed a length prefix would allocate
/// gigabytes for five bytes.
pub fn allocation_bound(len: usize) -> usize {
    const PER_INPUT_BYTE: usize = 512;
    const FIXED: usize = 64 << 10;
    FIXED + PER_INPUT_BYTE * len
}

/// The global allocator of every fuzz test binary: the system's, counting
/// the bytes each thread holds so that [`peak_during`] can tell how much a
/// call allocated at most.
pub struct Meter;

thread_local! {
    // const-initialised and without `Drop`, so reading them never allocates
    // (which would recurse into the allocator)
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + bytes as isize;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get() - bytes as isize));
}

// SAFETY: every call is forwarded to `System` unchanged; the counting
// touches only const thread-locals, which do not allocate.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // counted as the new block arriving before the old one leaves:
            // for a moment, both are held
            grew(new_size);
            shrank(layout.size());
        }
        new
    }
}

#[global_allocator]
static METER: Meter = Meter;

/// The bytes this thread holds now, as the meter counts them: a baseline
/// to compare a later reading with.
pub fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Runs `f` and returns its result with the most bytes this thread held at
/// once during it, beyond what it held before. Memory freed inside `f` that
/// was allocated before it lowers the count: pass inputs by reference, or
/// keep a clone alive, for a fair measure.
pub fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(before));
    let result = f();
    let peak = PEAK.with(Cell::get);
    (result, (peak - before).max(0) as usize)
}
