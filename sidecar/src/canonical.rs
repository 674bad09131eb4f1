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

    /// Removes the ignored members from a parsed body and returns their
    /// dotted paths, in body order: what `relaycache key explain` shows.
    /// For explanations only; the key itself never builds a tree.
    pub fn strip(&self, value: &mut serde_json::Value) -> Vec<String> {
        let mut removed = Vec::new();
        self.strip_below(value, "", &mut removed);
        removed
    }

    fn strip_below(&self, value: &mut serde_json::Value, at: &str, removed: &mut Vec<String>) {
        let serde_json::Value::Object(members) = value else {
            return;
        };
        for (name, node) in &self.children {
            let path = if at.is_empty() {
                name.clone()
            } else {
                format!("{at}.{name}")
            };
            if node.whole {
                if members.remove(name).is_some() {
                    removed.push(path);
                }
            } else if let Some(member) = members.get_mut(name) {
                node.strip_below(member, &path, removed);
            }
        }
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

/// Members an object holds before the rest are counted, so that a huge
/// object's list is sized once instead of grown by copying (a doubling
/// list briefly holds three times its members); smaller objects, nearly
/// every request's, are not scanned twice.
const MEMBERS_BEFORE_COUNTING: usize = 4096;

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
            let (value, after) = self.member(key)?;
            i = after;
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
                if members.len() == MEMBERS_BEFORE_COUNTING {
                    members.reserve_exact(self.members_after(i)?);
                }
            }
            match self.byte(i)? {
                b',' => i = self.whitespace(i + 1),
                b'}' => return Ok((members, i + 1)),
                _ => return Err(malformed()),
            }
        }
    }

    /// The member whose key starts at `key`: where its value starts, and
    /// the index after the value (past whitespace, at a `,` or `}`).
    fn member(&self, key: usize) -> Result<(usize, usize), CanonicalError> {
        let colon = self.whitespace(self.string_end(key)?);
        if self.byte(colon)? != b':' {
            return Err(malformed());
        }
        let value = self.whitespace(colon + 1);
        Ok((value, self.whitespace(self.value_end(value)?)))
    }

    /// How many members follow the one that ends at `i` (at its `,` or
    /// the object's `}`).
    fn members_after(&self, mut i: usize) -> Result<usize, CanonicalError> {
        let mut count = 0;
        while self.byte(i)? == b',' {
            (_, i) = self.member(self.whitespace(i + 1))?;
            count += 1;
        }
        Ok(count)
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
mod tests;
