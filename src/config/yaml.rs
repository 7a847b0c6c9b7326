//! YAML with positions: a small tree that remembers the line and column of every key and value,
//! built from yaml-rust2's marked events.
//!
//! Serde decodes the typed config from this tree (via `serde_json::Value`), and every error —
//! syntax, type, unknown key or semantic — is reported at the position kept here. A syntax error
//! does not stop the check: the offending line is blanked and parsing resumes, so one run reports
//! every mistake in a file. `${VAR}` in scalar values is interpolated after parsing, so a
//! variable's content can never change the document's structure.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in a source file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

impl Pos {
    fn from_marker(m: Marker) -> Self {
        Self {
            line: m.line().max(1),
            col: m.col() + 1,
        }
    }
}

/// A YAML value with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where it starts.
    pub pos: Pos,
}

/// A map key with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// The key text.
    pub name: String,
    /// Where the key starts.
    pub pos: Pos,
}

/// A YAML value (core schema).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`, `~` or empty.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string; `plain` is true for an unquoted scalar (re-resolved after interpolation).
    Str(String, bool),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, keys in document order.
    Map(Vec<(Key, Node)>),
}

impl Node {
    /// The value under `key` when this is a map.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The position of `key` itself when this is a map.
    pub fn key_pos(&self, key: &str) -> Option<Pos> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == key)
                .map(|(k, _)| k.pos),
            _ => None,
        }
    }

    /// The string when this is a string scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s, _) => Some(s),
            _ => None,
        }
    }

    /// Converts to JSON for serde decoding.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s, _) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A problem found while reading YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where.
    pub pos: Pos,
    /// What.
    pub message: String,
}

/// Upper bound on nodes (including alias expansions), against alias bombs.
const MAX_NODES: usize = 200_000;

enum Frame {
    Seq(Vec<Node>, Pos, usize),
    Map(Vec<(Key, Node)>, Pos, usize, Option<Key>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    anchors: HashMap<usize, (Node, usize)>,
    errors: Vec<YamlError>,
    nodes: usize,
    docs: usize,
}

fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Int(i);
    }
    if let Some(hex) = s.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return Value::Int(i);
    }
    let looks_numeric = s
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == b'-' || c == b'+' || c == b'.');
    if looks_numeric
        && s.bytes().any(|c| c.is_ascii_digit())
        && s.bytes().all(|c| b"0123456789+-.eE".contains(&c))
        && let Ok(f) = s.parse::<f64>()
    {
        return Value::Float(f);
    }
    Value::Str(s.to_owned(), true)
}

fn count(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|(_, v)| count(v)).sum::<usize>(),
        _ => 1,
    }
}

impl Builder {
    fn push_node(&mut self, node: Node, anchor: usize) {
        self.nodes += 1;
        if anchor > 0 {
            let size = count(&node);
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Frame::Seq(items, _, _)) => items.push(node),
            Some(Frame::Map(entries, _, _, pending)) => match pending.take() {
                None => {
                    let name = match node.value {
                        Value::Str(s, _) => s,
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Null => String::new(),
                        Value::Float(f) => f.to_string(),
                        Value::Seq(_) | Value::Map(_) => {
                            self.errors.push(YamlError {
                                pos: node.pos,
                                message: "a key must be a plain value, not a list or a map".into(),
                            });
                            String::new()
                        }
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == name) {
                        self.errors.push(YamlError {
                            pos: node.pos,
                            message: format!(
                                "duplicate key `{name}` (first at line {})",
                                first.pos.line
                            ),
                        });
                    }
                    *pending = Some(Key {
                        name,
                        pos: node.pos,
                    });
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        if self.nodes > MAX_NODES {
            return;
        }
        match ev {
            Event::DocumentStart => {
                self.docs += 1;
                if self.docs > 1 {
                    self.errors.push(YamlError {
                        pos,
                        message: "only one YAML document per file is allowed".into(),
                    });
                }
            }
            Event::Scalar(s, style, anchor, tag) => {
                let value = if style == TScalarStyle::Plain && tag.is_none() {
                    resolve_plain(&s)
                } else {
                    Value::Str(s, false)
                };
                self.push_node(Node { value, pos }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), pos, anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(Vec::new(), pos, anchor, None))
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Seq(items, p, anchor)) => self.push_node(
                    Node {
                        value: Value::Seq(items),
                        pos: p,
                    },
                    anchor,
                ),
                Some(Frame::Map(entries, p, anchor, _)) => {
                    self.push_node(
                        Node {
                            value: Value::Map(entries),
                            pos: p,
                        },
                        anchor,
                    );
                }
                None => {}
            },
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((node, size)) => {
                    self.nodes += size;
                    if self.nodes > MAX_NODES {
                        self.errors.push(YamlError {
                            pos,
                            message: "too many nodes (alias expansion limit)".into(),
                        });
                        return;
                    }
                    let mut node = node.clone();
                    node.pos = pos;
                    self.push_node(node, 0);
                }
                None => self.errors.push(YamlError {
                    pos,
                    message: "unknown alias".into(),
                }),
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Parses `text`; returns the tree (if any part could be read) and every error found.
/// Syntax errors are recovered from by blanking the offending line and parsing again.
pub fn parse(text: &str) -> (Option<Node>, Vec<YamlError>) {
    let mut text = text.to_owned();
    let mut syntax = Vec::new();
    let mut blanked: Vec<usize> = Vec::new();
    for _ in 0..16 {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(&text);
        match parser.load(&mut b, true) {
            Ok(()) => {
                let mut errors = syntax;
                errors.extend(b.errors);
                let root = b.root.unwrap_or(Node {
                    value: Value::Null,
                    pos: Pos { line: 1, col: 1 },
                });
                return (Some(root), errors);
            }
            Err(e) => {
                let pos = blame(&text, Pos::from_marker(*e.marker()));
                syntax.push(YamlError {
                    pos,
                    message: format!("YAML syntax error: {}", e.info()),
                });
                if blanked.contains(&pos.line) || !blank_line(&mut text, pos.line) {
                    return (None, syntax);
                }
                blanked.push(pos.line);
            }
        }
    }
    (None, syntax)
}

/// The scanner notices an unclosed `[`, `{` or quote only on a later line; blame the opener.
fn blame(text: &str, pos: Pos) -> Pos {
    let lines: Vec<&str> = text.lines().collect();
    let mut l = pos.line.min(lines.len());
    while l > 1 {
        l -= 1;
        let line = lines[l - 1];
        let code = line.split(" #").next().unwrap_or(line);
        if code.trim().is_empty() || code.trim_start().starts_with('#') {
            continue;
        }
        let (mut depth, mut opener, mut dq, mut sq) = (0i32, None, false, false);
        for (i, c) in code.char_indices() {
            match c {
                '"' if !sq => dq = !dq,
                '\'' if !dq => sq = !sq,
                '[' | '{' if !dq && !sq => {
                    depth += 1;
                    opener.get_or_insert(i);
                }
                ']' | '}' if !dq && !sq => depth -= 1,
                _ => {}
            }
        }
        if depth > 0 || dq || sq {
            let col = opener.unwrap_or(0) + 1;
            return Pos { line: l, col };
        }
        break;
    }
    pos
}

fn blank_line(text: &mut String, line: usize) -> bool {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return false,
        }
    }
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    if start >= end {
        return false;
    }
    text.replace_range(start..end, "");
    true
}

/// Replaces `${NAME}` in every string scalar using `lookup`; `$${` stays a literal `${`.
/// Unquoted scalars are re-resolved afterwards, so `port: ${PORT}` becomes a number.
pub fn interpolate(
    node: &mut Node,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<YamlError>,
) {
    match &mut node.value {
        Value::Str(s, plain) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                if rest[..i].ends_with('$') {
                    out.push_str(&rest[..i - 1]);
                    out.push_str("${");
                    rest = &rest[i + 2..];
                    continue;
                }
                out.push_str(&rest[..i]);
                let after = &rest[i + 2..];
                let Some(end) = after.find('}') else {
                    errors.push(YamlError {
                        pos: node.pos,
                        message: "unterminated `${` in value".into(),
                    });
                    return;
                };
                let name = &after[..end];
                let valid = !name.is_empty()
                    && name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_');
                if !valid {
                    errors.push(YamlError {
                        pos: node.pos,
                        message: format!("`${{{name}}}` is not a valid variable name"),
                    });
                } else {
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => errors.push(YamlError {
                            pos: node.pos,
                            message: format!("environment variable `{name}` is not set"),
                        }),
                    }
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            node.value = if *plain {
                resolve_plain(&out)
            } else {
                Value::Str(out, false)
            };
        }
        Value::Seq(items) => items
            .iter_mut()
            .for_each(|n| interpolate(n, lookup, errors)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, n)| interpolate(n, lookup, errors)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let (root, errs) = parse("a: 1\nb:\n  c: x\n");
        assert!(errs.is_empty(), "{errs:?}");
        let root = root.unwrap();
        assert_eq!(root.key_pos("b"), Some(Pos { line: 2, col: 1 }));
        assert_eq!(
            root.get("b").unwrap().get("c").unwrap().pos,
            Pos { line: 3, col: 6 }
        );
        assert_eq!(root.get("a").unwrap().value, Value::Int(1));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let (_, errs) = parse("a: 1\na: 2\n");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].pos.line, 2);
    }

    #[test]
    fn recovers_from_a_syntax_error_and_keeps_reading() {
        let (root, errs) = parse("a: 1\nb: [unclosed\nc: 3\n");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("syntax"));
        assert_eq!(root.unwrap().get("c").unwrap().value, Value::Int(3));
    }

    #[test]
    fn interpolates_without_changing_structure() {
        let (root, _) =
            parse("port: ${PORT}\nsecret: \"${SECRET}\"\nlit: \"$${X}\"\nmiss: ${NOPE}\n");
        let mut root = root.unwrap();
        let mut errs = Vec::new();
        let env = |k: &str| match k {
            "PORT" => Some("8080".to_owned()),
            "SECRET" => Some("a: b\nc: d".to_owned()),
            _ => None,
        };
        interpolate(&mut root, &env, &mut errs);
        assert_eq!(root.get("port").unwrap().value, Value::Int(8080));
        assert_eq!(root.get("secret").unwrap().as_str(), Some("a: b\nc: d"));
        assert_eq!(root.get("lit").unwrap().as_str(), Some("${X}"));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("`NOPE`"));
        assert_eq!(errs[0].pos.line, 4);
    }

    #[test]
    fn alias_bombs_are_bounded() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = format!("*a{}", i - 1);
            doc.push_str(&format!(
                "a{i}: &a{i} [{p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}]\n",
                p = prev
            ));
        }
        let (_, errs) = parse(&doc);
        assert!(errs.iter().any(|e| e.message.contains("alias")));
    }
}
