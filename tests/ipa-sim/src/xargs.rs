//! The official container hands `/data/ipa-server-install-options` (or
//! `ipa-replica-install-options`) to the installer as `xargs -a <(cat
//! FILE) ipa-server-install` (freeipa-container
//! `ipa-server-configure-first`): no `-0`, no `-d`, so GNU xargs reads it
//! with its default rules (findutils `xargs/xargs.c`, `read_line`), which
//! this module follows:
//!
//! - blanks (space, tab) and line breaks end an argument; leading white
//!   space and empty lines are skipped;
//! - a backslash outside quotes keeps the next character, whatever it is;
//! - `'` or `"` opens a quote that the same character closes; inside,
//!   everything is kept as it is (a backslash too), but a line break or
//!   the end of the input before the closing quote is an error ("unmatched
//!   single quote"), and xargs then runs nothing;
//! - `''` makes an empty argument.
//!
//! GNU xargs has no logical end-of-file string unless `-E` is given, and
//! the container gives none. A NUL byte cannot be passed in an argument
//! list: xargs warns and the argument is cut there; here it is refused.

/// The arguments `xargs` makes of `text`, or why it would run nothing.
pub fn split(text: &str) -> Result<Vec<String>, String> {
    enum State {
        Space,
        Norm,
        Quote(char),
        Backslash,
    }
    let mut args = Vec::new();
    let mut current = String::new();
    // Whether an argument (even an empty quoted one) has begun.
    let mut begun = false;
    let mut state = State::Space;
    for (line, c) in text.chars().scan(1usize, |line, c| {
        let at = *line;
        if c == '\n' {
            *line += 1;
        }
        Some((at, c))
    }) {
        if c == '\0' {
            return Err(format!(
                "line {line}: a NUL character cannot be passed in an argument list"
            ));
        }
        match state {
            State::Space if c.is_ascii_whitespace() || c == '\u{b}' => continue,
            State::Space | State::Norm => {
                state = State::Norm;
                match c {
                    '\n' | ' ' | '\t' => {
                        if begun {
                            args.push(std::mem::take(&mut current));
                        }
                        begun = false;
                        state = State::Space;
                    }
                    '\\' => {
                        begun = true;
                        state = State::Backslash;
                    }
                    '\'' | '"' => {
                        begun = true;
                        state = State::Quote(c);
                    }
                    other => {
                        begun = true;
                        current.push(other);
                    }
                }
            }
            State::Quote(q) if c == '\n' => return Err(unmatched(line, q)),
            State::Quote(q) if c == q => state = State::Norm,
            State::Quote(_) => current.push(c),
            State::Backslash => {
                current.push(c);
                state = State::Norm;
            }
        }
    }
    if let State::Quote(q) = state {
        return Err(unmatched(text.lines().count().max(1), q));
    }
    if begun {
        args.push(current);
    }
    Ok(args)
}

fn unmatched(line: usize, quote: char) -> String {
    let kind = if quote == '"' { "double" } else { "single" };
    format!(
        "line {line}: unmatched {kind} quote; by default quotes are special to xargs unless \
         you use the -0 option"
    )
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn blanks_split_and_quotes_and_backslashes_join() {
        assert_eq!(
            split("  --a=1 --b\n\n--c='x y' \"--d=\\\\\" --e=p\\ q\\\"\n").unwrap(),
            ["--a=1", "--b", "--c=x y", "--d=\\\\", "--e=p q\""]
        );
        assert_eq!(split("'' x").unwrap(), ["", "x"]);
        assert_eq!(split("").unwrap(), Vec::<String>::new());
        assert_eq!(split("a\\\nb").unwrap(), ["a\nb"]);
    }

    #[test]
    fn an_unmatched_quote_runs_nothing() {
        let e = split("--admin-password=it's\n").unwrap_err();
        assert!(e.contains("unmatched single quote"), "{e}");
        let e = split("--x=\"a\nb\"").unwrap_err();
        assert!(e.contains("line 1: unmatched double quote"), "{e}");
        assert!(split("a\0b").is_err());
    }
}
