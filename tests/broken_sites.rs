//! A corpus of broken site files, each with the exact errors it must give.
//!
//! `tests/broken/<case>.yaml` is a site file with an operator's mistake in
//! it; `tests/broken/<case>.expect` lists every error the parser must report
//! for it, in order, one per line as `LINE:COL: MESSAGE`, each followed by
//! `  help: HELP` when the error has help. Every case is also run through
//! the real `builder render`, which must refuse it cleanly.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use builder::site::{Site, SiteErrors};

const MIN_CASES: usize = 29;

fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/broken"))
}

fn firstboot_fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/tiny-static.elf"
    ))
}

struct Case {
    name: String,
    yaml: PathBuf,
    /// The file's bytes: a case may be a file that is not text at all.
    source: Vec<u8>,
    expected: Vec<String>,
}

/// Every case of the corpus, sorted by name. A `.yaml` without its
/// `.expect` (or the reverse) fails here rather than being skipped.
fn cases() -> Vec<Case> {
    let dir = corpus_dir();
    let mut yamls = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") => yamls.push(path),
            Some("expect") => assert!(
                path.with_extension("yaml").is_file(),
                "{} has no .yaml beside it",
                path.display()
            ),
            _ => panic!(
                "{} is neither a .yaml case nor an .expect file",
                path.display()
            ),
        }
    }
    yamls.sort();
    yamls
        .into_iter()
        .map(|yaml| {
            let name = yaml.file_stem().unwrap().to_string_lossy().into_owned();
            let source = std::fs::read(&yaml).unwrap_or_else(|e| panic!("{}: {e}", yaml.display()));
            let expect = yaml.with_extension("expect");
            let expected = std::fs::read_to_string(&expect)
                .unwrap_or_else(|e| panic!("case `{name}`: cannot read {}: {e}", expect.display()));
            let expected: Vec<String> = expected.lines().map(str::to_owned).collect();
            assert!(
                !expected.is_empty(),
                "case `{name}`: {} lists no errors",
                expect.display()
            );
            Case {
                name,
                yaml,
                source,
                expected,
            }
        })
        .collect()
}

/// Errors as the `.expect` files write them: no file name.
fn expect_lines(errors: &SiteErrors) -> Vec<String> {
    let mut lines = Vec::new();
    for e in &errors.0 {
        lines.push(format!("{}: {}", e.pos, e.message));
        if let Some(help) = &e.help {
            lines.push(format!("  help: {help}"));
        }
    }
    lines
}

/// A line diff of `expected` against `actual`: ` ` both, `-` only
/// expected, `+` only actual.
fn diff(expected: &[String], actual: &[String]) -> String {
    let (n, m) = (expected.len(), actual.len());
    // lcs[i][j]: longest common subsequence of expected[i..] and actual[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            out.push_str(&format!("  {}\n", expected[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", expected[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", actual[j]));
            j += 1;
        }
    }
    out
}

/// What is wrong with one case's parse, if anything.
fn check_parse(case: &Case) -> Option<String> {
    let file = case.yaml.display().to_string();
    let parsed = panic::catch_unwind(AssertUnwindSafe(|| Site::parse_bytes(&file, &case.source)));
    let errors = match parsed {
        Err(_) => return Some(format!("case `{}`: the parser panicked", case.name)),
        Ok(Ok(_)) => {
            return Some(format!(
                "case `{}`: the parser accepted this broken site; expected:\n{}",
                case.name,
                case.expected.join("\n")
            ))
        }
        Ok(Err(errors)) => errors,
    };
    if let Some(e) = errors.0.iter().find(|e| e.file != file) {
        return Some(format!(
            "case `{}`: an error names the file `{}`, not `{file}`",
            case.name, e.file
        ));
    }
    let actual = expect_lines(&errors);
    (actual != case.expected).then(|| {
        format!(
            "case `{}`: errors differ from {} (- expected, + actual):\n{}",
            case.name,
            case.yaml.with_extension("expect").display(),
            diff(&case.expected, &actual)
        )
    })
}

/// What is wrong with one case's run of `builder render`, if anything.
fn check_cli(case: &Case) -> Option<String> {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_builder"))
        .arg("render")
        .arg(&case.yaml)
        .arg("--out")
        .arg(&out)
        .arg("--firstboot")
        .arg(firstboot_fixture())
        .env_remove("BUILDER_VAULT_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run builder: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let first = &case.expected[0];
    let mut problems = Vec::new();
    if output.status.code() != Some(1) {
        problems.push(format!("exit status is {}, not 1", output.status));
    }
    if !stderr.contains(first.as_str()) {
        problems.push(format!("stderr lacks the first expected error `{first}`"));
    }
    if stderr.contains("panicked") {
        problems.push("builder panicked".to_owned());
    }
    if exists(&out) {
        problems.push(format!("{} was created", out.display()));
    }
    (!problems.is_empty()).then(|| {
        format!(
            "case `{}`: `builder render` {}\n--- stderr ---\n{stderr}",
            case.name,
            problems.join("; ")
        )
    })
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

/// Fail with every failing case at once, not just the first.
fn report(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_broken_site_gives_exactly_its_expected_errors() {
    report(cases().iter().filter_map(check_parse).collect());
}

#[test]
fn builder_render_refuses_every_broken_site() {
    report(cases().iter().filter_map(check_cli).collect());
}

/// The replacement an error's help offers for what its position points
/// at, if it offers one (`write `X``, `did you mean `X`?`, `use `X` or
/// larger`, `remove the quotes: write `X``, `write the number alone:
/// `X``). Advice to add or rearrange lines is not a replacement.
fn offered_fix(help: &str) -> Option<&str> {
    let rest = [
        "write `",
        "did you mean `",
        "use `",
        "remove the quotes: write `",
        "write the number alone: `",
    ]
    .iter()
    .find_map(|prefix| help.strip_prefix(prefix))?;
    rest.split_once('`').map(|(fix, _)| fix)
}

/// `text` with the scalar that starts at `line`:`col` (1-based, in
/// characters) replaced by `with`: a quoted scalar up to its closing
/// quote, else up to a blank, `,`, `]`, `}`, `#` or a `:` that ends a key.
fn replace_at(text: &str, line: usize, col: usize, with: &str) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let chars: Vec<char> = lines[line - 1].chars().collect();
    let start = col - 1;
    let end = match chars[start] {
        quote @ ('"' | '\'') => {
            start + 1 + chars[start + 1..].iter().position(|c| *c == quote).unwrap() + 1
        }
        _ => (start..chars.len())
            .find(|&i| {
                let c = chars[i];
                c.is_whitespace()
                    || matches!(c, ',' | ']' | '}' | '#')
                    || (c == ':' && chars.get(i + 1).is_none_or(|n| n.is_whitespace()))
            })
            .unwrap_or(chars.len()),
    };
    let mended: String = chars[..start]
        .iter()
        .chain(with.chars().collect::<Vec<_>>().iter())
        .chain(chars[end..].iter())
        .collect();
    lines[line - 1] = mended;
    lines.join("\n")
}

/// README: "Errors ... say how to fix it; a fix offered is one that
/// passes". Every error of the corpus whose help offers a replacement has
/// it applied where the error points: that error is gone and no other
/// appears.
#[test]
fn every_fix_offered_passes() {
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for case in cases() {
        let Ok(text) = std::str::from_utf8(&case.source) else {
            continue;
        };
        let Err(errors) = Site::parse(&case.name, text) else {
            continue;
        };
        let before: Vec<&str> = errors.0.iter().map(|e| e.message.as_str()).collect();
        for error in &errors.0 {
            let Some(fix) = error.help.as_deref().and_then(offered_fix) else {
                continue;
            };
            let mended = replace_at(text, error.pos.line, error.pos.col, fix);
            let after: Vec<String> = match Site::parse(&case.name, &mended) {
                Ok(_) => Vec::new(),
                Err(errors) => errors.0.iter().map(|e| e.message.clone()).collect(),
            };
            let what = format!(
                "case `{}`, {}: {} -> `{fix}`",
                case.name, error.pos, error.message
            );
            if after.contains(&error.message) {
                failures.push(format!("{what}: the error remains"));
            } else if let Some(new) = after.iter().find(|m| !before.contains(&m.as_str())) {
                failures.push(format!("{what}: now `{new}`"));
            }
            checked.push(what);
        }
    }
    assert!(
        failures.is_empty(),
        "fixes that do not pass:\n{}",
        failures.join("\n")
    );
    assert!(
        checked.len() >= 20,
        "only {} fixes checked:\n{}",
        checked.len(),
        checked.join("\n")
    );
    eprintln!("{} fixes offered, each passes", checked.len());
}

#[test]
fn the_corpus_is_large_enough() {
    let n = cases().len();
    assert!(
        n >= MIN_CASES,
        "tests/broken holds {n} cases; it should hold at least {MIN_CASES}"
    );
}

/// 50,000 nested levels (100 KB of `- `, or of `[`): a located error, not
/// a stack overflow, from the parser and from the real `builder render`.
#[test]
fn deep_nesting_is_refused_with_a_location_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    for (style, text) in [
        ("block", "- ".repeat(50_000) + "x\n"),
        ("flow", "[".repeat(50_000) + "\n"),
    ] {
        let path = tmp.path().join(format!("{style}.yaml"));
        std::fs::write(&path, &text).unwrap();
        let file = path.display().to_string();
        let errors = Site::parse_bytes(&file, text.as_bytes()).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{style}: {errors}");
        let error = &errors.0[0];
        assert_eq!(error.pos.line, 1, "{style}: {error}");
        assert!(
            error.pos.col > 1 && error.pos.col < 1_000,
            "{style}: {error}"
        );
        assert!(
            error.message.contains("nests deeper than"),
            "{style}: {error}"
        );

        let out = tmp.path().join("out");
        let output = Command::new(env!("CARGO_BIN_EXE_builder"))
            .arg("render")
            .arg(&path)
            .arg("--out")
            .arg(&out)
            .arg("--firstboot")
            .arg(firstboot_fixture())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{style}: {stderr}");
        let located = format!("error: {file}:1:{}: ", error.pos.col);
        assert!(stderr.contains(&located), "{style}: {stderr}");
        assert!(!exists(&out), "{style}: {} was created", out.display());
    }
}

#[test]
fn the_diff_marks_missing_and_extra_lines() {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        diff(&s(&["a", "b", "c"]), &s(&["a", "x", "c", "d"])),
        "  a\n- b\n+ x\n  c\n+ d\n"
    );
}
