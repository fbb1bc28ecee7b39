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

/// A syntax-level failure: where, why, and what to do if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
    pub help: Option<String>,
}

impl SyntaxError {
    fn new(pos: Pos, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            pos,
            message: message.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> SyntaxError {
        self.help = Some(help.into());
        self
    }
}

/// Aliases can expand exponentially ("billion laughs"); a site file has a
/// few hundred nodes, so anything near this is an attack or a mistake.
const MAX_NODES: usize = 200_000;

/// Nesting deeper than this is refused: a site file nests 5 levels
/// (settings, hosts, a host, its volumes, a size). The parser below
/// recurses once a level, so without a bound a file of 50,000 `[` (or
/// `- `) would overflow the stack instead of being refused.
pub const MAX_DEPTH: usize = 64;

/// Parse one YAML document. `Ok(None)` means the file holds no document.
pub fn parse(source: &str) -> Result<Option<Node>, SyntaxError> {
    let mut builder = TreeBuilder {
        parser: Parser::new_from_str(source),
        anchors: HashMap::new(),
        nodes: 0,
    };
    builder.document().map_err(|e| {
        explain(
            source,
            SyntaxError {
                pos: within(source, e.pos),
                ..e
            },
        )
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

/// The parser's words are about its own state ("while scanning a plain
/// scalar, found a tab"), often on the line before the mistake: say what
/// is wrong in the file, where it is, and how to fix it.
fn explain(source: &str, error: SyntaxError) -> SyntaxError {
    if error.help.is_some() {
        return error;
    }
    // A tab in the indentation: the parser stops on it, or on the line
    // before, whose value it was still reading.
    let tabbed = source
        .lines()
        .enumerate()
        .skip(error.pos.line.saturating_sub(1))
        .take(2)
        .find_map(|(i, line)| {
            let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
            let col = indent.chars().position(|c| c == '\t')?;
            Some(Pos {
                line: i + 1,
                col: col + 1,
            })
        });
    if let Some(pos) = tabbed {
        return SyntaxError::new(
            pos,
            "a tab in the indentation; YAML indents with spaces only",
        )
        .help("replace the tab with spaces, lining the line up with its neighbours");
    }
    let m = error.message.as_str();
    if m.contains("recursion limit") {
        // saphyr's own bound on flow nesting, met before ours.
        return TreeBuilder::too_deep(error.pos);
    }
    if m.contains("quoted scalar") {
        let quote = source
            .lines()
            .nth(error.pos.line.saturating_sub(1))
            .and_then(|line| line.chars().nth(error.pos.col.saturating_sub(1)))
            .filter(|c| *c == '"' || *c == '\'')
            .unwrap_or('"');
        return SyntaxError::new(
            error.pos,
            format!("the quote {quote} opened here is not closed"),
        )
        .help(format!(
            "end the value with {quote} on the same line, or remove the opening {quote}"
        ));
    }
    let (message, help) = if m.contains("flow sequence") {
        (
            "a list opened with `[` is not closed",
            "end it with `]`, with `,` between items",
        )
    } else if m.contains("flow mapping") {
        (
            "a mapping opened with `{` is not closed",
            "end it with `}`, with `,` between entries",
        )
    } else if m.contains("block collection") || m.contains("block mapping") {
        (
            "this line is indented unlike the lines it belongs with",
            "indent it with spaces like its neighbours: keys of one mapping line up, and \
             items of a list start with `- ` at the same column",
        )
    } else {
        return error;
    };
    SyntaxError::new(error.pos, message).help(help)
}

struct TreeBuilder<'a> {
    parser: Parser<'a, saphyr_parser::StrInput<'a>>,
    /// Anchored nodes, with their height (levels of nesting).
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
}

impl<'a> TreeBuilder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), SyntaxError> {
        match self.parser.next_event() {
            Some(Ok(event)) => Ok(event),
            Some(Err(e)) => Err(SyntaxError::new(
                Pos {
                    line: e.marker().line(),
                    col: e.marker().col() + 1,
                },
                format!("this is not valid YAML: {}", e.info()),
            )),
            None => Err(SyntaxError::new(
                Pos::default(),
                "this is not valid YAML: unexpected end of input",
            )),
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
                    let (node, _) = self.node(event, span, 1)?;
                    if root.is_some() {
                        return Err(SyntaxError::new(
                            node.pos,
                            "a site file holds one YAML document, but a second one starts here",
                        )
                        .help("remove the `---` line and what follows it, or merge the two"));
                    }
                    root = Some(node);
                }
                _ => {
                    return Err(SyntaxError::new(
                        Pos::of(&span),
                        "this is not valid YAML: unexpected event",
                    ))
                }
            }
        }
    }

    fn count(&mut self, pos: Pos) -> Result<(), SyntaxError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(SyntaxError::new(
                pos,
                format!(
                    "the document expands to more than {MAX_NODES} values (are aliases \
                     nested?); a site file is far smaller"
                ),
            ));
        }
        Ok(())
    }

    fn too_deep(pos: Pos) -> SyntaxError {
        SyntaxError::new(
            pos,
            format!("the document nests deeper than {MAX_DEPTH} levels; a site file needs 5"),
        )
        .help("look for a `[`, `{` or `- ` repeated by mistake")
    }

    /// The node an event starts, at nesting `depth` (the root is 1), and
    /// its height.
    fn node(
        &mut self,
        event: Event<'a>,
        span: Span,
        depth: usize,
    ) -> Result<(Node, usize), SyntaxError> {
        let pos = Pos::of(&span);
        self.count(pos)?;
        if depth > MAX_DEPTH {
            return Err(Self::too_deep(pos));
        }
        let (node, height, anchor) = match event {
            Event::Alias(id) => {
                let Some((target, height)) = self.anchors.get(&id).cloned() else {
                    return Err(SyntaxError::new(
                        pos,
                        "this alias refers to an unknown anchor",
                    ));
                };
                if depth + height - 1 > MAX_DEPTH {
                    return Err(Self::too_deep(pos));
                }
                self.nodes += weight(&target);
                if self.nodes > MAX_NODES {
                    self.count(pos)?;
                }
                let node = Node {
                    pos,
                    value: target.value,
                };
                return Ok((node, height));
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let value = Value::Scalar {
                    text: text.into_owned(),
                    quoted,
                };
                (Node { pos, value }, 1, anchor)
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                let mut height = 0;
                loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    let (item, h) = self.node(event, span, depth + 1)?;
                    height = height.max(h);
                    items.push(item);
                }
                let value = Value::Seq(items);
                (Node { pos, value }, height + 1, anchor)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries: Vec<(Key, Node)> = Vec::new();
                let mut height = 0;
                loop {
                    let (event, span) = self.next()?;
                    if matches!(event, Event::MappingEnd) {
                        break;
                    }
                    let (key_node, _) = self.node(event, span, depth + 1)?;
                    let Value::Scalar { text, .. } = key_node.value else {
                        return Err(SyntaxError::new(
                            key_node.pos,
                            "mapping keys must be plain names, not lists or mappings",
                        ));
                    };
                    let key = Key {
                        pos: key_node.pos,
                        name: text,
                    };
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == key.name) {
                        return Err(SyntaxError::new(
                            key.pos,
                            format!(
                                "`{}` is given twice in this mapping (first at line {})",
                                key.name, first.pos.line
                            ),
                        )
                        .help(format!(
                            "keep one `{}:` line and delete the other; YAML does not let a second one \
                             replace the first",
                            key.name
                        )));
                    }
                    let (event, span) = self.next()?;
                    let (value, h) = self.node(event, span, depth + 1)?;
                    height = height.max(h);
                    entries.push((key, value));
                }
                let value = Value::Map(entries);
                (Node { pos, value }, height + 1, anchor)
            }
            _ => {
                return Err(SyntaxError::new(
                    pos,
                    "this is not valid YAML: unexpected event",
                ))
            }
        };
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), height));
        }
        Ok((node, height))
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
    fn nesting_is_bounded_in_both_styles_with_a_position() {
        // Flow nesting meets the parser's own bound (256) first, block
        // nesting ours.
        for (opener, col) in [("[", 256), ("{a: ", 1021), ("- ", MAX_DEPTH * 2 + 1)] {
            let doc = opener.repeat(50_000);
            let err = parse(&doc).unwrap_err();
            assert_eq!(err.pos, Pos { line: 1, col }, "{opener:?}: {err:?}");
            assert!(err.message.contains("nests deeper"), "{}", err.message);
            assert!(err.help.is_some());
        }
        // At the limit it parses.
        let ok = format!(
            "{}x{}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn aliases_cannot_nest_past_the_limit() {
        let deep = format!(
            "{}x{}",
            "[".repeat(MAX_DEPTH - 2),
            "]".repeat(MAX_DEPTH - 2)
        );
        let doc = format!("a: &a {deep}\nb: [*a]\n");
        let err = parse(&doc).unwrap_err();
        assert_eq!(err.pos, Pos { line: 2, col: 5 }, "{err:?}");
    }

    #[test]
    fn tabs_in_indentation_are_named_where_they_are() {
        let err = parse("defaults:\n  region: ams3\n\tsize: s-1vcpu-1gb\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 3, col: 1 });
        assert!(err.message.contains("tab"), "{}", err.message);
        assert!(err.help.unwrap().contains("spaces"));
    }

    #[test]
    fn a_second_document_is_refused() {
        let err = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert!(err.message.contains("second"), "{}", err.message);
    }
}
