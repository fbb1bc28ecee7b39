//! A YAML document as a tree whose every node knows where it was written.
//!
//! serde-based YAML crates lose positions once a value is deserialised, yet
//! every site-file error must name its line and column, including errors
//! found only when values are checked against each other (a duplicate host
//! two screens apart). So the site file is parsed to this small tree, and
//! `site::parse` turns the tree into validated types by hand.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A position in the source, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

#[derive(Debug, Clone)]
pub enum Value {
    /// A scalar; `quoted` scalars are always strings.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    /// Keys in source order, each with the position of the key itself.
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub struct Key {
    pub pos: Pos,
    pub name: String,
}

/// What a scalar means under the YAML 1.2 core schema, for type errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    Null,
    Bool,
    Int,
    Float,
    Str,
}

impl Node {
    /// A human name for this node's type, as used in "expected X, found Y".
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
            Value::Scalar { .. } => match self.scalar_kind() {
                Some(ScalarKind::Null) => "nothing (null)",
                Some(ScalarKind::Bool) => "a boolean",
                Some(ScalarKind::Int) => "an integer",
                Some(ScalarKind::Float) => "a number",
                _ => "a string",
            },
        }
    }

    pub fn scalar_kind(&self) -> Option<ScalarKind> {
        let Value::Scalar { text, quoted } = &self.value else {
            return None;
        };
        if *quoted {
            return Some(ScalarKind::Str);
        }
        Some(match text.as_str() {
            "" | "~" | "null" | "Null" | "NULL" => ScalarKind::Null,
            "true" | "True" | "TRUE" | "false" | "False" | "FALSE" => ScalarKind::Bool,
            t if is_int(t) => ScalarKind::Int,
            t if t.parse::<f64>().is_ok() && t.chars().any(|c| c.is_ascii_digit()) => {
                ScalarKind::Float
            }
            _ => ScalarKind::Str,
        })
    }
}

fn is_int(t: &str) -> bool {
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    if let Some(hex) = digits.strip_prefix("0x") {
        return !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    if let Some(oct) = digits.strip_prefix("0o") {
        return !oct.is_empty() && oct.chars().all(|c| ('0'..='7').contains(&c));
    }
    !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
}

/// A syntax-level failure: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Aliases can expand exponentially ("billion laughs"); a site file has a
/// few hundred nodes, so anything near this is an attack or a mistake.
const MAX_NODES: usize = 200_000;

/// Parse one YAML document. `Ok(None)` means the file holds no document.
pub fn parse(source: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = TreeBuilder {
        parser: Parser::new_from_str(source),
        anchors: HashMap::new(),
        nodes: 0,
    };
    builder.document().map_err(|e| SyntaxError {
        pos: within(source, e.pos),
        ..e
    })
}

/// Errors found at the end of input (an unclosed `[`, say) are reported
/// past the last line; point at the end of the last written line instead,
/// where the operator can see it.
fn within(source: &str, pos: Pos) -> Pos {
    if pos.line >= 1 && pos.line <= source.lines().count() {
        return pos;
    }
    let lines: Vec<&str> = source.lines().collect();
    lines
        .iter()
        .enumerate()
        .rev()
        .find(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| Pos {
            line: i + 1,
            col: line.trim_end().chars().count() + 1,
        })
        .unwrap_or(Pos { line: 1, col: 1 })
}

struct TreeBuilder<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
}

impl<'a> TreeBuilder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), SyntaxError> {
        match self.parser.next_event() {
            Some(Ok(event)) => Ok(event),
            Some(Err(e)) => Err(SyntaxError {
                pos: Pos {
                    line: e.marker().line(),
                    col: e.marker().col() + 1,
                },
                message: format!("this is not valid YAML: {}", e.info()),
            }),
            None => Err(SyntaxError {
                pos: Pos::default(),
                message: "this is not valid YAML: unexpected end of input".into(),
            }),
        }
    }

    fn document(&mut self) -> Result<Option<Node>, SyntaxError> {
        let mut root = None;
        loop {
            let (event, span) = self.next()?;
            match event {
                Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
                Event::StreamEnd => return Ok(root),
                Event::DocumentStart(_) => {
                    let (event, span) = self.next()?;
                    let node = self.node(event, span)?;
                    if root.is_some() {
                        return Err(SyntaxError {
                            pos: node.pos,
                            message: "a site file holds one YAML document, but a second \
                                      one starts here"
                                .into(),
                        });
                    }
                    root = Some(node);
                }
                _ => {
                    return Err(SyntaxError {
                        pos: Pos::of(&span),
                        message: "this is not valid YAML: unexpected event".into(),
                    })
                }
            }
        }
    }

    fn count(&mut self, pos: Pos) -> Result<(), SyntaxError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(SyntaxError {
                pos,
                message: format!(
                    "the document expands to more than {MAX_NODES} values (are aliases \
                     nested?); a site file is far smaller"
                ),
            });
        }
        Ok(())
    }

    fn node(&mut self, event: Event<'a>, span: Span) -> Result<Node, SyntaxError> {
        let pos = Pos::of(&span);
        self.count(pos)?;
        let (node, anchor) = match event {
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id).cloned() else {
                    return Err(SyntaxError {
                        pos,
                        message: "this alias refers to an unknown anchor".into(),
                    });
                };
                self.nodes += weight(&target);
                if self.nodes > MAX_NODES {
                    self.count(pos)?;
                }
                return Ok(Node {
                    pos,
                    value: target.value,
                });
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let value = Value::Scalar {
                    text: text.into_owned(),
                    quoted,
                };
                (Node { pos, value }, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(event, span)?);
                }
                let value = Value::Seq(items);
                (Node { pos, value }, anchor)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries: Vec<(Key, Node)> = Vec::new();
                loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::MappingEnd) {
                        break;
                    }
                    let key_node = self.node(event, span)?;
                    let Value::Scalar { text, .. } = key_node.value else {
                        return Err(SyntaxError {
                            pos: key_node.pos,
                            message: "mapping keys must be plain names, not lists or \
                                      mappings"
                                .into(),
                        });
                    };
                    let key = Key {
                        pos: key_node.pos,
                        name: text,
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == key.name) {
                        return Err(SyntaxError {
                            pos: key.pos,
                            message: format!(
                                "`{}` is given twice in this mapping (first at line {})",
                                key.name, first.pos.line
                            ),
                        });
                    }
                    let (event, span) = self.next()?;
                    let value = self.node(event, span)?;
                    entries.push((key, value));
                }
                let value = Value::Map(entries);
                (Node { pos, value }, anchor)
            }
            _ => {
                return Err(SyntaxError {
                    pos,
                    message: "this is not valid YAML: unexpected event".into(),
                })
            }
        };
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        Ok(node)
    }
}

fn weight(node: &Node) -> usize {
    match &node.value {
        Value::Scalar { .. } => 1,
        Value::Seq(items) => 1 + items.iter().map(weight).sum::<usize>(),
        Value::Map(entries) => 1 + entries.iter().map(|(_, v)| 1 + weight(v)).sum::<usize>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let root = parse("a: 1\nb:\n  - x\n").unwrap().unwrap();
        let Value::Map(entries) = root.value else {
            panic!("not a map")
        };
        assert_eq!(entries[1].0.pos, Pos { line: 2, col: 1 });
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(items[0].pos, Pos { line: 3, col: 5 });
    }

    #[test]
    fn empty_input_is_no_document() {
        assert!(parse("").unwrap().is_none());
        assert!(parse("# only a comment\n").unwrap().is_none());
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 3, col: 1 });
        assert!(err.message.contains("first at line 1"), "{}", err.message);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = i - 1;
            doc.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, \
                 *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse(&doc).unwrap_err();
        assert!(err.message.contains("more than"), "{}", err.message);
    }

    #[test]
    fn scalar_kinds_follow_the_core_schema() {
        let kinds: Vec<_> = ["~", "true", "12", "0x1f", "1.5", "abc", "'12'"]
            .iter()
            .map(|s| parse(s).unwrap().unwrap().scalar_kind().unwrap())
            .collect();
        use ScalarKind::*;
        assert_eq!(kinds, [Null, Bool, Int, Int, Float, Str, Str]);
    }

    #[test]
    fn errors_at_the_end_point_at_the_last_line() {
        let err = parse("a: 1\nb: [x, y\n\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, col: 9 });
    }

    #[test]
    fn a_second_document_is_refused() {
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(err.message.contains("second"), "{}", err.message);
    }
}
