//! Receipt: the `sha256sum` output the receiving side computed, checked
//! against the case's files. Only a complete, exactly matching list is accepted.

use std::collections::BTreeMap;

/// What is wrong with a receipt, by kind: the case log records these counts,
/// never the client's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// Not `sha256sum` output.
    NotSums,
    Empty,
    /// The line for `SHA256SUMS` has another checksum.
    SumsDiffer,
    ListedTwice,
    NotInCase,
    ChecksumDiffers,
    Missing,
}

/// A refused receipt: the problems by kind, and a message for the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ReceiptError {
    pub problems: BTreeMap<Problem, usize>,
    pub message: String,
}

impl ReceiptError {
    fn one(problem: Problem, message: String) -> ReceiptError {
        ReceiptError {
            problems: [(problem, 1)].into_iter().collect(),
            message,
        }
    }
}

/// One line of `sha256sum` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumLine {
    pub sha256: String,
    pub name: String,
}

/// Parses `sha256sum` output: `<64 hex> <' ' or '*'><name>`, with GNU's
/// escaped form (a leading `\`, then `\\`, `\n` and `\r` in the name).
pub fn parse_sums(text: &str) -> Result<Vec<SumLine>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let (escaped, line) = match line.strip_prefix('\\') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        if line.len() < 67 || !line.is_char_boundary(64) {
            return Err(format!("line {n} is not sha256sum output (\"<64 hex digits>  <file name>\")"));
        }
        let (hash, rest) = line.split_at(64);
        if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("line {n}: {hash:?} is not a sha256 checksum"));
        }
        let name = match rest.as_bytes() {
            [b' ', b' ' | b'*', ..] => &rest[2..],
            _ => {
                return Err(format!(
                    "line {n}: expected two characters (\"  \" or \" *\") between checksum and name"
                ));
            }
        };
        let name = if escaped {
            unescape(name).map_err(|e| format!("line {n}: {e}"))?
        } else {
            name.to_string()
        };
        if name.is_empty() {
            return Err(format!("line {n}: no file name"));
        }
        out.push(SumLine {
            sha256: hash.to_ascii_lowercase(),
            name,
        });
    }
    Ok(out)
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            other => return Err(format!("unknown escape \\{}", other.map(String::from).unwrap_or_default())),
        }
    }
    Ok(out)
}

/// Escapes a name the way GNU `sha256sum` does; `true` when the line needs the leading `\`.
pub fn escape(name: &str) -> (bool, String) {
    if !name.contains(['\\', '\n', '\r']) {
        return (false, name.to_string());
    }
    (true, name.replace('\\', "\\\\").replace('\n', "\\n").replace('\r', "\\r"))
}

/// A `sha256sum`-format list for the given (name, sha256) pairs.
pub fn format_sums<'a>(files: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (name, sha) in files {
        let (esc, name) = escape(name);
        if esc {
            out.push('\\');
        }
        out.push_str(sha);
        out.push_str("  ");
        out.push_str(&name);
        out.push('\n');
    }
    out
}

/// Checks a receipt against the case's files (`expected`: name → sha256).
/// Names may carry a `./` or `<case_ref>/` prefix. A line for `SHA256SUMS`
/// itself is accepted when it matches `sums_sha`.
pub fn check_receipt(
    text: &str,
    case_ref: &str,
    expected: &BTreeMap<String, String>,
    sums_name: &str,
    sums_sha: &str,
) -> Result<(), ReceiptError> {
    let lines = parse_sums(text).map_err(|m| ReceiptError::one(Problem::NotSums, m))?;
    if lines.is_empty() {
        return Err(ReceiptError::one(Problem::Empty, "the checksum list is empty".into()));
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut kinds: BTreeMap<Problem, usize> = BTreeMap::new();
    let mut problem = |kind: Problem, message: String| {
        *kinds.entry(kind).or_default() += 1;
        problems.push(message);
    };
    for l in lines {
        let name = l.name.strip_prefix("./").unwrap_or(&l.name);
        let name = name.strip_prefix(&format!("{case_ref}/")).unwrap_or(name).to_string();
        if name == sums_name {
            if l.sha256 != sums_sha {
                problem(Problem::SumsDiffer, format!("{sums_name}: checksum differs from the one served"));
            }
            continue;
        }
        if seen.insert(name.clone(), l.sha256.clone()).is_some() {
            problem(Problem::ListedTwice, format!("{name}: listed twice"));
            continue;
        }
        match expected.get(&name) {
            None => problem(Problem::NotInCase, format!("{name}: not a file of this case")),
            Some(want) if *want != l.sha256 => problem(
                Problem::ChecksumDiffers,
                format!("{name}: checksum differs (received file is not the one served)"),
            ),
            Some(_) => {}
        }
    }
    for name in expected.keys() {
        if !seen.contains_key(name) {
            problem(Problem::Missing, format!("{name}: missing from the list"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ReceiptError {
            problems: kinds,
            message: problems.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    fn expected() -> BTreeMap<String, String> {
        [
            ("a b.fastq.gz".to_string(), A.to_string()),
            ("x\\y.spring".to_string(), B.to_string()),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn text_binary_and_escaped_names() {
        let text = format!("{A}  a b.fastq.gz\n\\{B} *x\\\\y.spring\n");
        assert_eq!(check_receipt(&text, "R1", &expected(), "SHA256SUMS", "00"), Ok(()));
        let text = format!("{A}  ./R1/a b.fastq.gz\r\n\\{}  R1/x\\\\y.spring\n", B.to_uppercase());
        assert_eq!(check_receipt(&text, "R1", &expected(), "SHA256SUMS", "00"), Ok(()));
    }

    #[test]
    fn incomplete_wrong_or_extra_lists_are_refused() {
        let missing = format!("{A}  a b.fastq.gz\n");
        assert!(
            check_receipt(&missing, "R1", &expected(), "SHA256SUMS", "00")
                .is_err_and(|e| e.message.contains("missing") && e.problems.get(&Problem::Missing) == Some(&1))
        );
        let wrong = format!("{B}  a b.fastq.gz\n\\{B}  x\\\\y.spring\n");
        assert!(
            check_receipt(&wrong, "R1", &expected(), "SHA256SUMS", "00")
                .is_err_and(|e| e.message.contains("differs") && e.problems.contains_key(&Problem::ChecksumDiffers))
        );
        let extra = format!("{A}  a b.fastq.gz\n\\{B}  x\\\\y.spring\n{A}  other\n");
        assert!(
            check_receipt(&extra, "R1", &expected(), "SHA256SUMS", "00")
                .is_err_and(|e| e.message.contains("not a file") && e.problems.contains_key(&Problem::NotInCase))
        );
        let twice = format!("{A}  a b.fastq.gz\n{A}  a b.fastq.gz\n\\{B}  x\\\\y.spring\n");
        assert!(
            check_receipt(&twice, "R1", &expected(), "SHA256SUMS", "00")
                .is_err_and(|e| e.message.contains("twice") && e.problems.contains_key(&Problem::ListedTwice))
        );
        assert!(check_receipt("", "R1", &expected(), "SHA256SUMS", "00").is_err());
        assert!(check_receipt("garbage\n", "R1", &expected(), "SHA256SUMS", "00").is_err());
        let sums = format!("{A}  a b.fastq.gz\n\\{B}  x\\\\y.spring\n{A}  SHA256SUMS\n");
        assert!(check_receipt(&sums, "R1", &expected(), "SHA256SUMS", A).is_ok());
        assert!(check_receipt(&sums, "R1", &expected(), "SHA256SUMS", B).is_err());
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(names in proptest::collection::vec("[a-z \\\\\n\r*]{1,12}", 1..8)) {
            let pairs: Vec<(String, String)> = names.iter().map(|n| (n.clone(), A.to_string())).collect();
            let text = format_sums(pairs.iter().map(|(n, s)| (n.as_str(), s.as_str())));
            let parsed = parse_sums(&text);
            prop_assert!(parsed.is_ok(), "{:?}", parsed);
            let got: Vec<String> = parsed.unwrap_or_default().into_iter().map(|l| l.name).collect();
            prop_assert_eq!(got, names);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = parse_sums(&s);
        }
    }
}
