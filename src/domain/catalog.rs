//! The GDB catalog: its TSV format, row validation, and the record type the
//! rest of workcopy works with.
//!
//! Format: a header line naming the columns (tab-separated, any order):
//! `file_id path department size sha256 submitted_at`, plus any extra columns,
//! which are kept. One file per following line. Empty lines are skipped, a
//! trailing `\r` is dropped.

use crate::names::{CatalogPath, DirId, FileId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::BufRead;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The longest line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// How many bad rows an error report lists (all are counted).
pub const MAX_REPORTED: usize = 50;

pub const REQUIRED: [&str; 6] = ["file_id", "path", "department", "size", "sha256", "submitted_at"];

/// One file of the GDB as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogFile {
    pub file_id: FileId,
    pub path: CatalogPath,
    /// The submitting department.
    pub department: DirId,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
    /// Unix time in nanoseconds.
    pub submitted_ns: i64,
    /// Extra columns as a JSON object.
    #[serde(default)]
    pub extra: String,
}

impl CatalogFile {
    pub fn submitted_at(&self) -> String {
        format_ns(self.submitted_ns)
    }
}

/// RFC 3339 in UTC for a unix time in nanoseconds.
pub fn format_ns(ns: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ns.to_string())
}

pub fn parse_rfc3339_ns(s: &str) -> Result<i64, String> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))?;
    i64::try_from(t.unix_timestamp_nanos()).map_err(|_| format!("{s:?} is out of range"))
}

/// The optional column `catalog search --sample` looks in; also kept in `extra`.
pub const SAMPLE_ID: &str = "sample_id";

/// A catalog row with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRow {
    pub line: usize,
    pub file: CatalogFile,
    /// The row's `sample_id` column, when the catalog has one and it is not empty.
    pub sample_id: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("cannot read the catalog: {0}")]
    Io(String),
    #[error("catalog header: {0}")]
    Header(String),
    #[error("{} bad row(s), nothing imported:{}", .total, format_rows(.rows))]
    Rows { rows: Vec<(usize, String)>, total: usize },
}

fn format_rows(rows: &[(usize, String)]) -> String {
    rows.iter().map(|(l, m)| format!("\n  line {l}: {m}")).collect()
}

/// Collects row errors, listing the first [`MAX_REPORTED`].
#[derive(Debug, Default)]
pub struct RowErrors {
    rows: Vec<(usize, String)>,
    total: usize,
}

impl RowErrors {
    pub fn push(&mut self, line: usize, message: String) {
        self.total += 1;
        if self.rows.len() < MAX_REPORTED {
            self.rows.push((line, message));
        }
    }
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
    pub fn into_result<T>(mut self, ok: T) -> Result<T, CatalogError> {
        if self.total == 0 {
            Ok(ok)
        } else {
            self.rows.sort_by_key(|(l, _)| *l);
            Err(CatalogError::Rows {
                rows: self.rows,
                total: self.total,
            })
        }
    }
}

struct Columns {
    idx: [usize; 6],
    extra: Vec<(usize, String)>,
    sample_id: Option<usize>,
    count: usize,
}

fn parse_header(line: &str) -> Result<Columns, CatalogError> {
    let names: Vec<&str> = line.split('\t').collect();
    let mut idx = [usize::MAX; 6];
    let mut extra = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, raw) in names.iter().enumerate() {
        let name = raw.trim();
        if name.is_empty() {
            return Err(CatalogError::Header(format!("column {} has no name", i + 1)));
        }
        if !seen.insert(name) {
            return Err(CatalogError::Header(format!("column {name:?} appears twice")));
        }
        match REQUIRED.iter().position(|r| *r == name) {
            Some(k) => idx[k] = i,
            None => extra.push((i, name.to_string())),
        }
    }
    let missing: Vec<&str> = REQUIRED
        .iter()
        .zip(idx)
        .filter(|(_, i)| *i == usize::MAX)
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(CatalogError::Header(format!(
            "missing column(s) {} (the first line must name the columns, tab-separated: {})",
            missing.join(", "),
            REQUIRED.join(" ")
        )));
    }
    Ok(Columns {
        sample_id: extra.iter().find(|(_, n)| n == SAMPLE_ID).map(|(i, _)| *i),
        idx,
        extra,
        count: names.len(),
    })
}

fn parse_row(cols: &Columns, line: &str, known_department: &dyn Fn(&DirId) -> bool) -> Result<(CatalogFile, Option<String>), String> {
    let fields: Vec<&str> = line.split('\t').collect();
    if fields.len() != cols.count {
        return Err(format!("has {} field(s), the header has {}", fields.len(), cols.count));
    }
    let get = |k: usize| fields[cols.idx[k]];
    let file_id = FileId::parse(get(0)).map_err(|e| e.to_string())?;
    let path = CatalogPath::parse(get(1)).map_err(|e| e.to_string())?;
    let department = DirId::parse(get(2)).map_err(|e| format!("department: {e}"))?;
    if !known_department(&department) {
        return Err(format!("department {department:?} is not in the directory"));
    }
    let size_s = get(3);
    if size_s.is_empty() || !size_s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("size {size_s:?} is not a whole number of bytes"));
    }
    let size: u64 = size_s.parse().map_err(|_| format!("size {size_s:?} is too large"))?;
    if size > i64::MAX as u64 {
        return Err(format!("size {size_s:?} is too large"));
    }
    let sha = get(4);
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("sha256 {:?} is not 64 hexadecimal digits", truncate(sha)));
    }
    let submitted_ns = parse_rfc3339_ns(get(5)).map_err(|e| format!("submitted_at: {e}"))?;
    let extra = if cols.extra.is_empty() {
        String::new()
    } else {
        let map: serde_json::Map<String, serde_json::Value> = cols
            .extra
            .iter()
            .map(|(i, name)| (name.clone(), serde_json::Value::String(fields[*i].to_string())))
            .collect();
        serde_json::Value::Object(map).to_string()
    };
    let sample_id = cols.sample_id.map(|i| fields[i]).filter(|s| !s.is_empty()).map(String::from);
    Ok((
        CatalogFile {
            file_id,
            path,
            department,
            size,
            sha256: sha.to_ascii_lowercase(),
            submitted_ns,
            extra,
        },
        sample_id,
    ))
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Reads one line of at most [`MAX_LINE`] bytes. Returns `None` at the end.
/// A longer line is consumed and reported as `Err`.
fn next_line(r: &mut dyn BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<Result<(), usize>>> {
    buf.clear();
    let mut total = 0usize;
    let mut any = false;
    let check = |total: usize| if total > MAX_LINE { Err(total) } else { Ok(()) };
    loop {
        let avail = r.fill_buf()?;
        if avail.is_empty() {
            return Ok(any.then(|| check(total)));
        }
        any = true;
        match memchr_nl(avail) {
            Some(i) => {
                total += i;
                if total <= MAX_LINE {
                    buf.extend_from_slice(&avail[..i]);
                }
                r.consume(i + 1);
                return Ok(Some(check(total)));
            }
            None => {
                let n = avail.len();
                total += n;
                if total <= MAX_LINE {
                    buf.extend_from_slice(avail);
                }
                r.consume(n);
            }
        }
    }
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// What an import changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary {
    pub rows: u64,
    pub added: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub catalog_files: u64,
}

/// Parses and validates a whole catalog. Every bad row is counted and the
/// first [`MAX_REPORTED`] are listed with their line numbers; any bad row
/// makes the whole file an error.
pub fn parse_catalog(reader: &mut dyn BufRead, known_department: &dyn Fn(&DirId) -> bool) -> Result<Vec<CatalogRow>, CatalogError> {
    let mut buf = Vec::with_capacity(512);
    let mut lineno = 0usize;
    let mut cols: Option<Columns> = None;
    let mut rows = Vec::new();
    let mut errors = RowErrors::default();
    let mut first_seen: HashMap<FileId, usize> = HashMap::new();
    loop {
        let status = next_line(reader, &mut buf).map_err(|e| CatalogError::Io(e.to_string()))?;
        let Some(status) = status else { break };
        lineno += 1;
        if let Err(len) = status {
            if cols.is_none() {
                return Err(CatalogError::Header(format!("the header line is {len} bytes long")));
            }
            errors.push(lineno, format!("is {len} bytes long, the limit is {MAX_LINE}"));
            continue;
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            if cols.is_none() {
                return Err(CatalogError::Header("the header line is not valid UTF-8".into()));
            }
            errors.push(lineno, "is not valid UTF-8".into());
            continue;
        };
        let Some(c) = &cols else {
            cols = Some(parse_header(line.trim_start_matches('\u{feff}'))?);
            continue;
        };
        if line.is_empty() {
            continue;
        }
        match parse_row(c, line, known_department) {
            Ok((file, sample_id)) => {
                if let Some(first) = first_seen.get(&file.file_id) {
                    errors.push(lineno, format!("file_id {} is already on line {first}", file.file_id));
                    continue;
                }
                first_seen.insert(file.file_id.clone(), lineno);
                if errors.is_empty() {
                    rows.push(CatalogRow {
                        line: lineno,
                        file,
                        sample_id,
                    });
                }
            }
            Err(m) => errors.push(lineno, m),
        }
    }
    if cols.is_none() {
        return Err(CatalogError::Header("the file is empty; it needs a header line".into()));
    }
    errors.into_result(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn known(d: &DirId) -> bool {
        d.as_str() != "UNKNOWN"
    }

    fn parse(text: &str) -> Result<Vec<CatalogRow>, CatalogError> {
        parse_catalog(&mut text.as_bytes(), &known)
    }

    #[test]
    fn any_column_order_and_extras() {
        let text = format!(
            "sha256\tsample_id\tfile_id\tsubmitted_at\tpath\tsize\tdepartment\r\n{SHA}\tS1\tF1\t2025-03-01T10:00:00+01:00\truns/a b.fastq.gz\t42\tRH-KGA\r\n\n"
        );
        let rows = parse(&text).map_err(|e| e.to_string());
        let rows = match rows {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(rows.len(), 1);
        let f = &rows[0].file;
        assert_eq!(rows[0].line, 2);
        assert_eq!(f.file_id.as_str(), "F1");
        assert_eq!(f.path.base_name(), "a b.fastq.gz");
        assert_eq!(f.size, 42);
        assert_eq!(f.submitted_at(), "2025-03-01T09:00:00Z");
        assert_eq!(f.extra, r#"{"sample_id":"S1"}"#);
        assert_eq!(rows[0].sample_id.as_deref(), Some("S1"));
        // No such column, or an empty value: no sample.
        let text = format!("{HEAD}{}", row("F1", "a.fq", "RH", "1", SHA, AT));
        assert!(matches!(parse(&text), Ok(r) if r[0].sample_id.is_none()));
        let text = format!(
            "{}\tsample_id\n{}\t\n",
            HEAD.trim_end(),
            row("F1", "a.fq", "RH", "1", SHA, AT).trim_end()
        );
        assert!(matches!(parse(&text), Ok(r) if r[0].sample_id.is_none()));
    }

    fn row(id: &str, path: &str, dept: &str, size: &str, sha: &str, at: &str) -> String {
        format!("{id}\t{path}\t{dept}\t{size}\t{sha}\t{at}\n")
    }

    const HEAD: &str = "file_id\tpath\tdepartment\tsize\tsha256\tsubmitted_at\n";
    const AT: &str = "2025-03-01T10:00:00Z";

    #[test]
    fn reports_every_bad_line() {
        let mut text = HEAD.to_string();
        text += &row("F1", "ok/a.fq", "RH", "1", SHA, AT); // 2 ok
        text += &row("F2", "../etc/passwd", "RH", "1", SHA, AT); // 3
        text += &row("F3", "/abs", "RH", "1", SHA, AT); // 4
        text += &row("F4", "a//b", "RH", "1", SHA, AT); // 5
        text += &row("F5", "a.fq", "UNKNOWN", "1", SHA, AT); // 6
        text += &row("F6", "a.fq", "RH", "-1", SHA, AT); // 7
        text += &row("F7", "a.fq", "RH", "1", "abc", AT); // 8
        text += &row("F8", "a.fq", "RH", "1", SHA, "yesterday"); // 9
        text += &row("F1", "b.fq", "RH", "1", SHA, AT); // 10 duplicate
        text += "F9\tonly-two\n"; // 11
        text += &row("F10", "a/./b", "RH", "1", SHA, AT); // 12
        match parse(&text) {
            Err(CatalogError::Rows { rows, total }) => {
                let lines: Vec<usize> = rows.iter().map(|(l, _)| *l).collect();
                assert_eq!(lines, vec![3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
                assert_eq!(total, 10);
                assert!(rows[7].1.contains("line 2"), "{:?}", rows[7]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_problems() {
        assert!(matches!(parse(""), Err(CatalogError::Header(_))));
        assert!(matches!(parse("file_id\tpath\n"), Err(CatalogError::Header(m)) if m.contains("department")));
        assert!(matches!(parse("file_id\tfile_id\n"), Err(CatalogError::Header(m)) if m.contains("twice")));
    }

    #[test]
    fn binary_and_huge_lines() {
        let mut text = HEAD.as_bytes().to_vec();
        text.extend_from_slice(b"\xff\xfe\t\x00\n");
        text.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        text.push(b'\n');
        text.extend_from_slice(row("F1", "a.fq", "RH", "1", SHA, AT).as_bytes());
        match parse_catalog(&mut text.as_slice(), &known) {
            Err(CatalogError::Rows { rows, total: 2 }) => {
                assert_eq!(rows[0].0, 2);
                assert!(rows[0].1.contains("UTF-8"));
                assert_eq!(rows[1].0, 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sha_is_normalised_to_lower_case() {
        let text = format!("{HEAD}{}", row("F1", "a.fq", "RH", "7", &SHA.to_uppercase(), AT));
        assert!(matches!(parse(&text), Ok(r) if r[0].file.sha256 == SHA));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut text = HEAD.as_bytes().to_vec();
            text.extend_from_slice(&data);
            let _ = parse_catalog(&mut text.as_slice(), &known);
        }

        #[test]
        fn valid_rows_round_trip(rows in proptest::collection::vec(
            ("[A-Z]{1,3}[0-9]{1,5}", "[a-z]{1,8}(/[a-z0-9 ._-]{1,8}){0,3}", 0u64..u64::MAX / 4, 0i64..4_000_000_000i64), 1..40)
        ) {
            let mut text = "submitted_at\textra\tsize\tpath\tsha256\tdepartment\tfile_id\n".to_string();
            let mut expected = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (id, path, size, secs) in &rows {
                if !seen.insert(id.clone()) { continue; }
                let Ok(p) = CatalogPath::parse(path) else { continue };
                let at = format_ns(secs * 1_000_000_000);
                text += &format!("{at}\tx{size}\t{size}\t{p}\t{SHA}\tRH\t{id}\n");
                expected.push((id.clone(), p.to_string(), *size, secs * 1_000_000_000));
            }
            let parsed = parse(&text);
            prop_assert!(parsed.is_ok(), "{:?}", parsed);
            let parsed = parsed.unwrap_or_default();
            let got: Vec<_> = parsed.iter().map(|r| (r.file.file_id.to_string(), r.file.path.to_string(), r.file.size, r.file.submitted_ns)).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
