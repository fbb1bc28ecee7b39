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
            if let Some(line) = error.pos.line.checked_sub(1).and_then(|i| lines.get(i)) {
                let number = error.pos.line.to_string();
                let pad = " ".repeat(number.len());
                let caret = " ".repeat(error.pos.col.saturating_sub(1));
                out.push_str(&format!("{pad} |\n{number} | {line}\n{pad} | {caret}^\n"));
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
