//! The canonical form of a JSON request body, written straight into the
//! key's hasher without building a tree.
//!
//! Object members are sorted by key, whitespace is dropped, strings and
//! numbers take one spelling, and configured fields are left out. A parsed
//! `serde_json::Value` costs about 18× a body made of tiny values; this
//! costs 8 bytes per member of the objects being written at that moment
//! (at most the body's size, in practice far less), because each value is
//! re-read from the body when its turn comes instead of being held.
//!
//! The price is time, not memory: an object's members are scanned once to
//! find and sort them, then again while written, so each byte is scanned
//! once per enclosing object whose members are out of order (bounded by
//! the JSON nesting limit of 128).

use std::borrow::Cow;
use std::cmp::Ordering;
use std::io::Write;

use serde::de::IgnoredAny;

/// Why a body has no canonical form; such a request is not cached.
#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    /// Not JSON.
    #[error("the body is not valid JSON: {0}")]
    Invalid(#[from] serde_json::Error),
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    #[error("the body nests arrays and objects deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Not UTF-8.
    #[error("the body is not UTF-8")]
    NotUtf8,
    /// A JSON value other than an object.
    #[error("the body is not a JSON object")]
    NotAnObject,
    /// `{"a":1,"a":2}`: upstreams disagree on which one counts, so two
    /// such bodies could mean different questions under one key.
    #[error("an object in the body names the member {0:?} twice")]
    DuplicateMember(String),
    /// Bodies are addressed with 32-bit offsets.
    #[error("the body is larger than 4 GiB")]
    TooLarge,
    /// The hasher refused bytes (it never does; kept for `io::Write`).
    #[error("could not write the canonical form: {0}")]
    Write(#[from] std::io::Error),
}

/// Deepest nesting of arrays and objects keyed (as serde_json's own limit):
/// writing recurses once per level, so this bounds the stack.
pub const MAX_DEPTH: usize = 128;

/// Dotted field paths left out of the key, as a tree of member names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoredFields {
    /// Member name → what to leave out below it.
    children: Vec<(String, IgnoredFields)>,
    /// Leave this member out entirely.
    whole: bool,
}

impl IgnoredFields {
    /// A tree from dotted paths such as `metadata.user_id`. Paths walk
    /// objects only, from the body's top level.
    pub fn new<S: AsRef<str>>(paths: &[S]) -> Self {
        let mut root = Self::default();
        for path in paths {
            let mut node = &mut root;
            for part in path.as_ref().split('.') {
                let at = match node.children.iter().position(|(name, _)| name == part) {
                    Some(at) => at,
                    None => {
                        node.children.push((part.to_string(), Self::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[at].1;
            }
            node.whole = true;
        }
        root
    }

    fn child(&self, name: &str) -> Option<&IgnoredFields> {
        self.children
            .iter()
            .find(|(member, _)| member == name)
            .map(|(_, node)| node)
    }
}

/// What was learned about the body while writing its canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyFacts {
    /// The top-level member `stream` is `true`.
    pub streamed: bool,
}

/// Writes the canonical form of `body` (a JSON object) into `out`.
pub fn canonicalize<W: Write>(
    body: &[u8],
    ignored: &IgnoredFields,
    out: W,
) -> Result<BodyFacts, CanonicalError> {
    if u32::try_from(body.len()).is_err() {
        return Err(CanonicalError::TooLarge);
    }
    std::str::from_utf8(body).map_err(|_| CanonicalError::NotUtf8)?;
    // Checks syntax without building anything (and without recursing).
    serde_json::from_slice::<IgnoredAny>(body)?;
    if nesting(body) > MAX_DEPTH {
        return Err(CanonicalError::TooDeep);
    }
    let mut writer = Writer {
        body,
        out: std::io::BufWriter::with_capacity(16 * 1024, out),
        streamed: false,
    };
    let start = writer.whitespace(0);
    if body.get(start) != Some(&b'{') {
        return Err(CanonicalError::NotAnObject);
    }
    writer.object(start, Some(ignored), true)?;
    writer.out.flush()?;
    Ok(BodyFacts {
        streamed: writer.streamed,
    })
}

/// The deepest nesting of arrays and objects in valid JSON `body`.
fn nesting(body: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A member of an object: where its key and its value start in the body.
#[derive(Clone, Copy)]
struct Member {
    key: u32,
    value: u32,
}

struct Writer<'a, W: Write> {
    body: &'a [u8],
    out: std::io::BufWriter<W>,
    streamed: bool,
}

/// The body was checked to be valid JSON before writing starts, so this
/// only means a bug in the scanner; it is still an error, never a panic.
fn malformed() -> CanonicalError {
    CanonicalError::Write(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "the JSON scanner lost its place",
    ))
}

impl<'a, W: Write> Writer<'a, W> {
    fn byte(&self, at: usize) -> Result<u8, CanonicalError> {
        self.body.get(at).copied().ok_or_else(malformed)
    }

    fn whitespace(&self, mut at: usize) -> usize {
        while matches!(self.body.get(at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            at += 1;
        }
        at
    }

    /// Index just past the string starting with the quote at `at`.
    fn string_end(&self, at: usize) -> Result<usize, CanonicalError> {
        let mut i = at + 1;
        loop {
            let rest = self.body.get(i..).ok_or_else(malformed)?;
            match memchr::memchr2(b'"', b'\\', rest) {
                Some(offset) if rest[offset] == b'"' => return Ok(i + offset + 1),
                Some(offset) => i += offset + 2,
                None => return Err(malformed()),
            }
        }
    }

    /// Index just past the value starting at `at`.
    fn value_end(&self, at: usize) -> Result<usize, CanonicalError> {
        match self.byte(at)? {
            b'"' => self.string_end(at),
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut i = at;
                loop {
                    match self.byte(i)? {
                        b'"' => {
                            i = self.string_end(i)?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth = depth.checked_sub(1).ok_or_else(malformed)?;
                            if depth == 0 {
                                return Ok(i + 1);
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            _ => Ok(self.scalar_end(at)),
        }
    }

    fn scalar_end(&self, at: usize) -> usize {
        let mut i = at;
        while let Some(b) = self.body.get(i) {
            if matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            i += 1;
        }
        i
    }

    /// The decoded text of the string starting at `at`.
    fn text(&self, at: usize) -> Result<Cow<'a, str>, CanonicalError> {
        let body: &'a [u8] = self.body;
        let end = self.string_end(at)?;
        let raw = &body[at + 1..end - 1];
        if memchr::memchr(b'\\', raw).is_none() {
            let text = std::str::from_utf8(raw).map_err(|_| CanonicalError::NotUtf8)?;
            return Ok(Cow::Borrowed(text));
        }
        Ok(Cow::Owned(serde_json::from_slice::<String>(
            &body[at..end],
        )?))
    }

    /// Writes the value at `at`; returns the index just past it.
    fn value(
        &mut self,
        at: usize,
        ignored: Option<&IgnoredFields>,
    ) -> Result<usize, CanonicalError> {
        match self.byte(at)? {
            b'{' => self.object(at, ignored, false),
            b'[' => self.array(at),
            b'"' => self.string(at),
            _ => self.scalar(at),
        }
    }

    fn array(&mut self, at: usize) -> Result<usize, CanonicalError> {
        self.out.write_all(b"[")?;
        let mut i = self.whitespace(at + 1);
        if self.byte(i)? == b']' {
            self.out.write_all(b"]")?;
            return Ok(i + 1);
        }
        loop {
            i = self.value(i, None)?;
            i = self.whitespace(i);
            match self.byte(i)? {
                b',' => {
                    self.out.write_all(b",")?;
                    i = self.whitespace(i + 1);
                }
                b']' => {
                    self.out.write_all(b"]")?;
                    return Ok(i + 1);
                }
                _ => return Err(malformed()),
            }
        }
    }

    fn object(
        &mut self,
        at: usize,
        ignored: Option<&IgnoredFields>,
        top_level: bool,
    ) -> Result<usize, CanonicalError> {
        let (mut members, end) = self.members(at, ignored, top_level)?;
        let in_order = members
            .windows(2)
            .all(|pair| matches!(self.compare_keys(pair[0], pair[1]), Ok(Ordering::Less)));
        if !in_order {
            let mut failed = None;
            members.sort_unstable_by(|a, b| {
                self.compare_keys(*a, *b).unwrap_or_else(|err| {
                    failed.get_or_insert(err);
                    Ordering::Equal
                })
            });
            if let Some(err) = failed {
                return Err(err);
            }
            for pair in members.windows(2) {
                if self.compare_keys(pair[0], pair[1])? == Ordering::Equal {
                    let name = self.text(pair[0].key as usize)?.into_owned();
                    return Err(CanonicalError::DuplicateMember(name));
                }
            }
        }
        self.out.write_all(b"{")?;
        for (n, member) in members.iter().enumerate() {
            if n > 0 {
                self.out.write_all(b",")?;
            }
            let below = match ignored {
                Some(node) => node.child(&self.text(member.key as usize)?),
                None => None,
            };
            self.string(member.key as usize)?;
            self.out.write_all(b":")?;
            self.value(member.value as usize, below)?;
        }
        self.out.write_all(b"}")?;
        Ok(end)
    }

    /// The members of the object at `at` that are not ignored, in body
    /// order, and the index just past the object.
    fn members(
        &mut self,
        at: usize,
        ignored: Option<&IgnoredFields>,
        top_level: bool,
    ) -> Result<(Vec<Member>, usize), CanonicalError> {
        let mut members = Vec::new();
        let mut i = self.whitespace(at + 1);
        if self.byte(i)? == b'}' {
            return Ok((members, i + 1));
        }
        loop {
            let key = i;
            i = self.whitespace(self.string_end(key)?);
            if self.byte(i)? != b':' {
                return Err(malformed());
            }
            let value = self.whitespace(i + 1);
            i = self.whitespace(self.value_end(value)?);
            let name = self.text(key)?;
            if top_level && name == "stream" {
                self.streamed = self.body.get(value..value + 4) == Some(b"true");
            }
            let left_out = ignored
                .and_then(|node| node.child(&name))
                .is_some_and(|node| node.whole);
            if !left_out {
                // Offsets fit: the body was checked to be under 4 GiB.
                members.push(Member {
                    key: key as u32,
                    value: value as u32,
                });
            }
            match self.byte(i)? {
                b',' => i = self.whitespace(i + 1),
                b'}' => return Ok((members, i + 1)),
                _ => return Err(malformed()),
            }
        }
    }

    fn compare_keys(&self, a: Member, b: Member) -> Result<Ordering, CanonicalError> {
        let a = self.text(a.key as usize)?;
        let b = self.text(b.key as usize)?;
        Ok(a.as_bytes().cmp(b.as_bytes()))
    }

    fn string(&mut self, at: usize) -> Result<usize, CanonicalError> {
        let end = self.string_end(at)?;
        let raw = &self.body[at..end];
        if memchr::memchr(b'\\', raw).is_none() {
            // Valid JSON without escapes holds no control characters, so
            // these bytes are already the one spelling.
            self.out.write_all(raw)?;
        } else {
            let text = serde_json::from_slice::<String>(raw)?;
            let mut spelled = Vec::with_capacity(text.len() + 2);
            write_json_string(&text, &mut spelled);
            self.out.write_all(&spelled)?;
        }
        Ok(end)
    }

    fn scalar(&mut self, at: usize) -> Result<usize, CanonicalError> {
        let end = self.scalar_end(at);
        let token = &self.body[at..end];
        if matches!(token, b"true" | b"false" | b"null") || is_plain_integer(token) {
            self.out.write_all(token)?;
        } else {
            // 1.0, 1e2, 1E+2 and 100.0 are one number: serde_json's
            // reading and writing give each its one spelling.
            let number = serde_json::from_slice::<serde_json::Number>(token)?;
            serde_json::to_writer(&mut self.out, &number)?;
        }
        Ok(end)
    }
}

/// An integer already in its one spelling: no sign but `-`, no leading
/// zero, no `-0`, and short enough to stay an integer when read.
fn is_plain_integer(token: &[u8]) -> bool {
    let digits = token.strip_prefix(b"-").unwrap_or(token);
    !digits.is_empty()
        && digits.len() <= 18
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || (digits.len() == 1 && token.len() == 1))
}

/// Writes `text` as a JSON string, escaping only what JSON requires (as
/// serde_json does).
pub fn write_json_string(text: &str, out: &mut Vec<u8>) {
    // Most strings in a prompt need no escaping; copy those straight through.
    let plain = text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, text).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(body: &str, ignored: &[&str]) -> Result<String, CanonicalError> {
        let mut out = Vec::new();
        canonicalize(body.as_bytes(), &IgnoredFields::new(ignored), &mut out)?;
        Ok(String::from_utf8(out).expect("canonical form is UTF-8"))
    }

    #[test]
    fn sorts_members_drops_whitespace_and_respells() {
        assert_eq!(
            canonical(
                r#"{ "b": [1, {"z":1, "a":"x\n"}], "a": null, "c": "\u0041", "d": 1E2 }"#,
                &[]
            )
            .unwrap(),
            r#"{"a":null,"b":[1,{"a":"x\n","z":1}],"c":"A","d":100.0}"#
        );
    }

    #[test]
    fn ignored_fields_at_any_depth_and_only_through_objects() {
        let body = r#"{"metadata":{"user_id":"u","keep":1},"a":{"b":{"c":1,"d":2}},"list":[{"user_id":1}]}"#;
        assert_eq!(
            canonical(body, &["metadata.user_id", "a.b.c", "list.user_id"]).unwrap(),
            r#"{"a":{"b":{"d":2}},"list":[{"user_id":1}],"metadata":{"keep":1}}"#
        );
    }

    #[test]
    fn refuses_what_is_not_one_unambiguous_object() {
        assert!(matches!(
            canonical("[1,2]", &[]),
            Err(CanonicalError::NotAnObject)
        ));
        assert!(matches!(
            canonical("{\"a\":", &[]),
            Err(CanonicalError::Invalid(_))
        ));
        assert!(matches!(
            canonical(r#"{"a":1,"b":0,"a":2}"#, &[]),
            Err(CanonicalError::DuplicateMember(name)) if name == "a"
        ));
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(
            canonical(&deep, &[]),
            Err(CanonicalError::TooDeep)
        ));
        let deepest = format!("{{\"a\":{}{}}}", "[".repeat(127), "]".repeat(127));
        assert!(canonical(&deepest, &[]).is_ok());
    }

    #[test]
    fn reports_a_streamed_request() {
        let mut sink = Vec::new();
        let facts = canonicalize(
            br#"{"stream":true,"x":{"stream":false}}"#,
            &IgnoredFields::default(),
            &mut sink,
        )
        .unwrap();
        assert!(facts.streamed);
        let facts = canonicalize(
            br#"{"x":{"stream":true}}"#,
            &IgnoredFields::default(),
            &mut sink,
        )
        .unwrap();
        assert!(!facts.streamed);
    }

    #[test]
    fn plain_and_escaped_strings_match_serde() {
        for text in [
            "plain text",
            "quote \" here",
            "back\\slash",
            "tab\tnew\nline",
            "\u{1}",
            "caf\u{e9} \u{1F600}",
        ] {
            let mut ours = Vec::new();
            write_json_string(text, &mut ours);
            assert_eq!(ours, serde_json::to_vec(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn plain_integers() {
        for (token, plain) in [
            ("0", true),
            ("-12", true),
            ("-0", false),
            ("007", false),
            ("1.5", false),
            ("1e3", false),
            ("1234567890123456789", false),
        ] {
            assert_eq!(is_plain_integer(token.as_bytes()), plain, "{token}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        /// The tree-based canonical form this module replaces: parse into a
        /// `Value`, remove the ignored paths, sort members by key.
        fn tree_form(body: &str, ignored: &[Vec<String>]) -> Vec<u8> {
            fn remove(value: &mut Value, path: &[String]) {
                let Some((last, parents)) = path.split_last() else {
                    return;
                };
                let mut current = value;
                for part in parents {
                    match current.get_mut(part.as_str()) {
                        Some(next) => current = next,
                        None => return,
                    }
                }
                if let Value::Object(map) = current {
                    map.remove(last.as_str());
                }
            }
            fn write(value: &Value, out: &mut Vec<u8>) {
                match value {
                    Value::Object(map) => {
                        let mut members: Vec<_> = map.iter().collect();
                        members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                        out.push(b'{');
                        for (i, (k, v)) in members.into_iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            write_json_string(k, out);
                            out.push(b':');
                            write(v, out);
                        }
                        out.push(b'}');
                    }
                    Value::Array(items) => {
                        out.push(b'[');
                        for (i, item) in items.iter().enumerate() {
                            if i > 0 {
                                out.push(b',');
                            }
                            write(item, out);
                        }
                        out.push(b']');
                    }
                    Value::String(text) => write_json_string(text, out),
                    scalar => out.extend_from_slice(&serde_json::to_vec(scalar).unwrap()),
                }
            }
            let mut value: Value = serde_json::from_str(body).unwrap();
            for path in ignored {
                remove(&mut value, path);
            }
            let mut out = Vec::new();
            write(&value, &mut out);
            out
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1e6f64..1e6).prop_map(Value::from),
                "[a-c\\\\\"\\n\u{e9}\u{1F600} ]{0,6}".prop_map(Value::String),
            ];
            leaf.prop_recursive(5, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map("[a-d]{0,3}|stream|metadata", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
                ]
            })
        }

        fn json_object() -> impl Strategy<Value = Value> {
            prop::collection::btree_map("[a-d]{0,3}|metadata", json_value(), 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
        }

        /// Writes `value` as JSON with members in an order and with
        /// whitespace chosen by `seed`, and numbers or strings respelled.
        fn step(seed: &mut u64) -> u64 {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        }

        fn spell(value: &Value, seed: &mut u64, out: &mut String) {
            let space = [" ", "", "\n  ", "\t", ""];
            match value {
                Value::Object(map) => {
                    let mut members: Vec<_> = map.iter().collect();
                    for i in (1..members.len()).rev() {
                        let j = (step(seed) % (i as u64 + 1)) as usize;
                        members.swap(i, j);
                    }
                    out.push('{');
                    for (i, (k, v)) in members.into_iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(space[(step(seed) % 5) as usize]);
                        out.push_str(&serde_json::to_string(k).unwrap());
                        out.push_str(space[(step(seed) % 5) as usize]);
                        out.push(':');
                        spell(v, seed, out);
                    }
                    out.push_str(space[(step(seed) % 5) as usize]);
                    out.push('}');
                }
                Value::Array(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(space[(step(seed) % 5) as usize]);
                        spell(item, seed, out);
                    }
                    out.push(']');
                }
                Value::String(text) if step(seed).is_multiple_of(2) => {
                    // The same string with every character escaped.
                    out.push('"');
                    for unit in text.encode_utf16() {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                    out.push('"');
                }
                Value::Number(n) if n.is_f64() && step(seed).is_multiple_of(2) => {
                    let f = n.as_f64().unwrap_or(0.0);
                    out.push_str(&format!("{f:e}"));
                }
                other => out.push_str(&other.to_string()),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn invariant_under_member_order_whitespace_and_spelling(
                value in json_object(),
                seeds in (1u64..u64::MAX, 1u64..u64::MAX),
            ) {
                let (mut a_seed, mut b_seed) = seeds;
                let (mut a, mut b) = (String::new(), String::new());
                spell(&value, &mut a_seed, &mut a);
                spell(&value, &mut b_seed, &mut b);
                let none = IgnoredFields::default();
                let (mut ours_a, mut ours_b) = (Vec::new(), Vec::new());
                canonicalize(a.as_bytes(), &none, &mut ours_a).unwrap();
                canonicalize(b.as_bytes(), &none, &mut ours_b).unwrap();
                prop_assert_eq!(&ours_a, &ours_b, "{} vs {}", a, b);
                prop_assert_eq!(ours_a, tree_form(&a, &[]));
            }

            #[test]
            fn ignored_fields_are_left_out_at_any_depth(
                path in prop::collection::vec("[a-c]{1,2}", 1..8),
                noise in json_value(),
                other in json_value(),
                kept in json_value(),
            ) {
                // {"p1":{"p2":{…{"pN": noise, "kept": kept}}}}
                let build = |leaf: &Value| {
                    let mut node = serde_json::json!({ path.last().unwrap(): leaf, "kept!": kept });
                    for part in path.iter().rev().skip(1) {
                        node = serde_json::json!({ part: node });
                    }
                    node.to_string()
                };
                let ignored = IgnoredFields::new(&[path.join(".")]);
                let (mut with_noise, mut with_other) = (Vec::new(), Vec::new());
                canonicalize(build(&noise).as_bytes(), &ignored, &mut with_noise).unwrap();
                canonicalize(build(&other).as_bytes(), &ignored, &mut with_other).unwrap();
                prop_assert_eq!(&with_noise, &with_other);
                prop_assert_eq!(with_noise, tree_form(&build(&noise), std::slice::from_ref(&path)));
            }

            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = canonicalize(&body, &IgnoredFields::new(&["a.b"]), std::io::sink());
            }

            #[test]
            fn broken_json_never_panics(value in json_object(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
                let mut text = value.to_string().into_bytes();
                let at = cut.index(text.len().max(1));
                if at < text.len() {
                    text[at] = byte;
                }
                let _ = canonicalize(&text, &IgnoredFields::default(), std::io::sink());
                let _ = canonicalize(&text[..at.min(text.len())], &IgnoredFields::default(), std::io::sink());
            }
        }
    }
}
