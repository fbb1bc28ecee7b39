//! Site-file errors: each names the file, line and column, says what is
//! wrong and, where it can, how to fix it.

use std::fmt;

use super::yaml::Pos;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteError {
    pub file: String,
    pub pos: Pos,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for SiteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.pos, self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every error found in one site file, in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteErrors(pub Vec<SiteError>);

impl SiteErrors {
    /// The errors with the offending source line under each, caret at the
    /// column: what an operator sees on the terminal.
    pub fn render(&self, source: &str) -> String {
        let lines: Vec<&str> = source.lines().collect();
        let mut out = String::new();
        for error in &self.0 {
            out.push_str(&format!(
                "error: {}:{}: {}\n",
                error.file, error.pos, error.message
            ));
            let line = error.pos.line.checked_sub(1).and_then(|i| lines.get(i));
            if let Some((shown, col)) = line.and_then(|l| excerpt(l, error.pos.col)) {
                let number = error.pos.line.to_string();
                let pad = " ".repeat(number.len());
                let caret = " ".repeat(col.saturating_sub(1));
                out.push_str(&format!("{pad} |\n{number} | {shown}\n{pad} | {caret}^\n"));
            }
            if let Some(help) = &error.help {
                out.push_str(&format!("  help: {help}\n"));
            }
        }
        let n = self.0.len();
        out.push_str(&format!(
            "{n} error{} in the site file; nothing was written\n",
            if n == 1 { "" } else { "s" }
        ));
        out
    }
}

/// Longest stretch of a source line shown under an error.
const EXCERPT: usize = 100;

/// The part of `line` to show with its caret column: none for a line of
/// control characters (a binary file), a window around `col` for a line
/// too long for a terminal.
fn excerpt(line: &str, col: usize) -> Option<(String, usize)> {
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return None;
    }
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= EXCERPT {
        return Some((line.to_owned(), col));
    }
    let start = col.saturating_sub(EXCERPT / 2 + 1).min(chars.len());
    let end = (start + EXCERPT).min(chars.len());
    let mut shown: String = chars[start..end].iter().collect();
    let mut caret = col - start;
    if start > 0 {
        shown.insert(0, '…');
        caret += 1;
    }
    if end < chars.len() {
        shown.push('…');
    }
    Some((shown, caret))
}

impl fmt::Display for SiteErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SiteErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_show_a_window_and_binary_lines_none() {
        assert_eq!(excerpt("a: b", 4), Some(("a: b".into(), 4)));
        let long = "- ".repeat(50_000);
        let (shown, caret) = excerpt(&long, 129).unwrap();
        assert!(shown.chars().count() <= EXCERPT + 2, "{shown}");
        assert!(shown.starts_with('…') && shown.ends_with('…'));
        let at: String = shown.chars().skip(caret - 1).take(2).collect();
        assert_eq!(at, "- ");
        assert_eq!(excerpt("\u{7f}ELF\u{2}\u{1}", 5), None);
    }
}
