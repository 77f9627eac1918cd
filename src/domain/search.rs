//! `catalog search`: what a search asks (a glob on base names or paths, a
//! sample, a submission date), the candidate query a store runs for it, and
//! the exact match applied to the candidates.
//!
//! The store narrows the catalog with portable SQL: equality, ranges and
//! `LIKE … ESCAPE '\'` (never `GLOB` or JSON functions), each served by an
//! index. A glob's `*` and `?` are `LIKE`'s `%` and `_`, so the candidates are
//! the matches where `LIKE` is case-sensitive (PostgreSQL; SQLite as workcopy
//! configures it); [`Glob::matches`] decides in the end either way.

use super::catalog::CatalogFile;
use serde::{Deserialize, Serialize};

/// The most files one search returns; the reply says when more matched.
pub const MAX_RESULTS: usize = 200;
/// The longest pattern or sample id accepted, in bytes.
pub const MAX_TERM: usize = 1024;

/// A glob: `*` any run of characters (`/` included), `?` one character, `\`
/// makes the next character literal; everything else stands for itself and
/// case matters. A pattern with a `/` is matched against a file's whole path,
/// any other against its base name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
    on_path: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Char(char),
    One,
    Any,
}

impl Glob {
    pub fn parse(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("the pattern is empty (leave it out to list every file)".into());
        }
        if pattern.len() > MAX_TERM {
            return Err(format!("the pattern is {} bytes long; the limit is {MAX_TERM}", pattern.len()));
        }
        if pattern.chars().any(char::is_control) {
            return Err("the pattern contains control characters".into());
        }
        let mut tokens = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' if tokens.last() == Some(&Token::Any) => continue,
                '*' => Token::Any,
                '?' => Token::One,
                '\\' => Token::Char(chars.next().ok_or("the pattern ends with a lone '\\'")?),
                c => Token::Char(c),
            });
        }
        Ok(Glob {
            on_path: tokens.contains(&Token::Char('/')),
            tokens,
        })
    }

    /// Whether the glob is matched against paths (it has a `/`) rather than base names.
    pub fn on_path(&self) -> bool {
        self.on_path
    }

    /// What the glob is matched against in `file`.
    pub fn subject<'a>(&self, file: &'a CatalogFile) -> &'a str {
        if self.on_path { file.path.as_str() } else { file.path.base_name() }
    }

    /// Whether `text` matches, wholly. Linear in `text` for each `*` tried
    /// again, so at most (pattern × text) steps, whatever the pattern.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let (mut p, mut t) = (0, 0);
        // Where the last `*` was, and the text position it now stands for.
        let mut retry: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::Any) => {
                    retry = Some((p, t));
                    p += 1;
                }
                Some(Token::One) => {
                    p += 1;
                    t += 1;
                }
                Some(Token::Char(c)) if *c == text[t] => {
                    p += 1;
                    t += 1;
                }
                _ => match retry {
                    Some((star, from)) => {
                        p = star + 1;
                        t = from + 1;
                        retry = Some((star, from + 1));
                    }
                    None => return false,
                },
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::Any)
    }

    /// The `LIKE` pattern (escape character `\`) that matches what the glob
    /// matches where `LIKE` is case-sensitive.
    pub fn like(&self) -> String {
        let mut s = String::with_capacity(self.tokens.len() + 4);
        for t in &self.tokens {
            match t {
                Token::Any => s.push('%'),
                Token::One => s.push('_'),
                Token::Char(c @ ('%' | '_' | '\\')) => {
                    s.push('\\');
                    s.push(*c);
                }
                Token::Char(c) => s.push(*c),
            }
        }
        s
    }

    /// The literal text every match starts with (empty when the glob starts with a wildcard).
    pub fn literal_prefix(&self) -> String {
        self.tokens
            .iter()
            .map_while(|t| match t {
                Token::Char(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    /// The candidate filter for a store: the `LIKE` pattern, and the range of
    /// the literal prefix in byte order, which an index serves.
    pub fn filter(&self) -> NameFilter {
        let from = self.literal_prefix();
        NameFilter {
            field: if self.on_path { NameField::Path } else { NameField::BaseName },
            like: self.like(),
            below: prefix_bound(&from),
            from,
        }
    }
}

/// The least string greater than every string that starts with `prefix`, in
/// byte (code point) order; `None` when there is none (an empty prefix).
pub fn prefix_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Which column a name filter applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NameField {
    BaseName,
    Path,
}

/// A glob as a store applies it: the column's value is at least `from`,
/// below `below` (when there is one) and matches `like` (escape `\`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameFilter {
    pub field: NameField,
    pub like: String,
    pub from: String,
    pub below: Option<String>,
}

/// The candidates a store returns for a search: every condition holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CatalogQuery {
    /// Only files submitted by one of these departments; every file for `None`.
    pub departments: Option<Vec<String>>,
    pub name: Option<NameFilter>,
    /// The catalog's `sample_id` column equals this.
    pub sample_id: Option<String>,
    /// Submitted at or after this (unix nanoseconds).
    pub since_ns: Option<i64>,
}

/// The order of a search's results, which follows from what it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOrder {
    /// By base name, then file_id.
    BaseName,
    /// By path (unique).
    Path,
    /// By submission time, then file_id (a search `--since` a date without `--sample`).
    Submitted,
}

impl CatalogQuery {
    pub fn order(&self) -> SearchOrder {
        match (&self.name, self.since_ns, &self.sample_id) {
            (_, Some(_), None) => SearchOrder::Submitted,
            (Some(n), _, _) if n.field == NameField::Path => SearchOrder::Path,
            _ => SearchOrder::BaseName,
        }
    }
}

/// Where a page of results ended: the next page starts after it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SearchKey {
    BaseName(String, String),
    Path(String),
    Submitted(i64, String),
}

impl SearchKey {
    /// The key of `file` in `order`.
    pub fn of(order: SearchOrder, file: &CatalogFile) -> SearchKey {
        match order {
            SearchOrder::BaseName => SearchKey::BaseName(file.path.base_name().to_string(), file.file_id.to_string()),
            SearchOrder::Path => SearchKey::Path(file.path.to_string()),
            SearchOrder::Submitted => SearchKey::Submitted(file.submitted_ns, file.file_id.to_string()),
        }
    }
}

/// A catalog file as a search finds it, with its `sample_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundFile {
    pub file: CatalogFile,
    pub sample_id: Option<String>,
}

/// A search's answer: at most [`MAX_RESULTS`] files, and whether more matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    pub file_id: String,
    pub path: String,
    pub department: String,
    pub size: u64,
    pub sha256: String,
    pub submitted_at: String,
    pub sample_id: Option<String>,
}

impl From<FoundFile> for SearchHit {
    fn from(f: FoundFile) -> SearchHit {
        SearchHit {
            submitted_at: f.file.submitted_at(),
            file_id: f.file.file_id.into(),
            path: f.file.path.into(),
            department: f.file.department.into(),
            size: f.file.size,
            sha256: f.file.sha256,
            sample_id: f.sample_id,
        }
    }
}

/// `--since`: a date (`2026-01-31`, midnight UTC) or an RFC 3339 time, as unix nanoseconds.
pub fn parse_since(s: &str) -> Result<i64, String> {
    if let Some(d) = parse_date(s) {
        return i64::try_from(d.midnight().assume_utc().unix_timestamp_nanos()).map_err(|_| format!("--since {s:?} is out of range"));
    }
    super::catalog::parse_rfc3339_ns(s)
        .map_err(|_| format!("--since {s:?} is neither a date (2026-01-31) nor an RFC 3339 time (2026-01-31T12:00:00Z)"))
}

/// `YYYY-MM-DD`.
fn parse_date(s: &str) -> Option<time::Date> {
    let mut parts = s.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 || !s.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        return None;
    }
    let month = time::Month::try_from(m.parse::<u8>().ok()?).ok()?;
    time::Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()
}

/// `--sample`: a sample id as the catalog's `sample_id` column holds it.
pub fn check_sample(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_TERM || s.chars().any(char::is_control) {
        return Err(format!("--sample must be 1 to {MAX_TERM} bytes without control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob(p: &str) -> Glob {
        Glob::parse(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn wildcards_and_escapes() {
        assert!(glob("S1_R1.fastq").matches("S1_R1.fastq"));
        assert!(!glob("S1_R1.fastq").matches("s1_r1.fastq"), "case matters");
        assert!(glob("*R1*").matches("S1_R1.fastq"));
        assert!(glob("S?_R*.fastq").matches("S1_R2.fastq"));
        assert!(!glob("S?_R*.fastq").matches("S12_R2.fastq"));
        assert!(glob("*").matches(""));
        assert!(glob("a*b*c").matches("aXbYbZc"));
        assert!(!glob("a*b*c").matches("aXbYbZ"));
        assert!(glob("\\*x").matches("*x") && !glob("\\*x").matches("ax"));
        assert!(glob("é?").matches("éü"), "one character, not one byte");
        assert!(Glob::parse("").is_err() && Glob::parse("a\\").is_err() && Glob::parse("a\nb").is_err());
        assert!(Glob::parse(&"a".repeat(MAX_TERM + 1)).is_err());
    }

    #[test]
    fn a_slash_makes_it_a_path_glob() {
        assert!(!glob("*.fastq").on_path());
        assert!(glob("run1/*").on_path());
        assert!(glob("*/S1_*").matches("run1/S1_R1.fastq"));
    }

    #[test]
    fn like_patterns_escape_like_wildcards() {
        assert_eq!(glob("a_b%c\\\\d*e?").like(), "a\\_b\\%c\\\\d%e_");
        assert_eq!(glob("**x").like(), "%x");
        assert_eq!(glob("S0001*R1*").literal_prefix(), "S0001");
        assert_eq!(glob("*R1").literal_prefix(), "");
        let f = glob("ab*").filter();
        assert_eq!((f.from.as_str(), f.below.as_deref()), ("ab", Some("ac")));
        assert_eq!(f.field, NameField::BaseName);
    }

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_bound(""), None);
        assert_eq!(prefix_bound("a"), Some("b".into()));
        assert_eq!(prefix_bound("a\u{d7ff}"), Some("a\u{e000}".into()), "no surrogates");
        assert_eq!(prefix_bound("a\u{10ffff}"), Some("b".into()));
        assert_eq!(prefix_bound("\u{10ffff}"), None);
    }

    #[test]
    fn since_takes_a_date_or_a_time() {
        assert_eq!(parse_since("1970-01-02"), Ok(86_400_000_000_000));
        assert_eq!(parse_since("1970-01-01T00:00:01Z"), Ok(1_000_000_000));
        let m = parse_since("yesterday").err().unwrap_or_default();
        assert!(m.contains("--since") && m.contains("yesterday"), "{m}");
    }

    #[test]
    fn orders() {
        let name = Some(glob("x*").filter());
        let path = Some(glob("a/x*").filter());
        let q = |name: Option<NameFilter>, since: Option<i64>, sample: Option<&str>| CatalogQuery {
            departments: None,
            name,
            since_ns: since,
            sample_id: sample.map(String::from),
        };
        assert_eq!(q(None, None, None).order(), SearchOrder::BaseName);
        assert_eq!(q(name.clone(), None, None).order(), SearchOrder::BaseName);
        assert_eq!(q(path.clone(), None, None).order(), SearchOrder::Path);
        assert_eq!(q(path.clone(), Some(0), None).order(), SearchOrder::Submitted);
        assert_eq!(q(path, Some(0), Some("S")).order(), SearchOrder::Path);
        assert_eq!(q(None, Some(0), Some("S")).order(), SearchOrder::BaseName);
    }

    /// `LIKE` as a case-sensitive backend evaluates it, for the property below.
    fn like_matches(pattern: &str, text: &str) -> bool {
        fn go(p: &[char], t: &[char]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some(('%', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
                Some(('_', rest)) => !t.is_empty() && go(rest, &t[1..]),
                Some(('\\', rest)) => match rest.split_first() {
                    Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
                    None => false,
                },
                Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
            }
        }
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        go(&p, &t)
    }

    proptest! {
        /// The candidates are exactly the matches: `LIKE` (case-sensitive)
        /// and the prefix range agree with the glob on every text.
        #[test]
        fn like_and_prefix_agree_with_the_glob(pattern in "[ab_%*?\\\\]{1,8}", text in "[ab_%\\\\]{0,8}") {
            let Ok(g) = Glob::parse(&pattern) else { return Ok(()) };
            let f = g.filter();
            let in_range = text.as_str() >= f.from.as_str() && f.below.as_deref().is_none_or(|b| text.as_str() < b);
            prop_assert_eq!(g.matches(&text), like_matches(&f.like, &text));
            if g.matches(&text) {
                prop_assert!(in_range, "{} matches {} but is out of the range {:?}", pattern, text, f);
            }
        }
    }
}
