//! The GDB catalog: its TSV format, row validation, and the record type the
//! rest of workcopy works with.
//!
//! Format: a header line naming the columns (tab-separated, any order):
//! `file_id path department size sha256 submitted_at`, plus any extra columns,
//! which are kept. One file per following line. Empty lines are skipped, a
//! trailing `\r` is dropped.

use crate::names::{CatalogPath, DirId, FileId};
use serde::{Deserialize, Serialize};
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
    /// Extra columns (field index, name), sorted by name as `extra` keeps
    /// them, each name already a JSON string.
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
    extra.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(Columns {
        sample_id: extra.iter().find(|(_, n)| n == SAMPLE_ID).map(|(i, _)| *i),
        idx,
        extra: extra
            .into_iter()
            .map(|(i, name)| (i, serde_json::Value::String(name).to_string()))
            .collect(),
        count: names.len(),
    })
}

fn parse_row(
    cols: &Columns,
    line: &str,
    fields: &mut Vec<(usize, usize)>,
    known_department: &dyn Fn(&DirId) -> bool,
) -> Result<(CatalogFile, Option<String>), String> {
    fields.clear();
    let mut start = 0;
    for i in memchr::memchr_iter(b'\t', line.as_bytes()) {
        fields.push((start, i));
        start = i + 1;
    }
    fields.push((start, line.len()));
    if fields.len() != cols.count {
        return Err(format!("has {} field(s), the header has {}", fields.len(), cols.count));
    }
    let field = |i: usize| {
        let (a, b) = fields[i];
        &line[a..b]
    };
    let get = |k: usize| field(cols.idx[k]);
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
    let extra = extra_json(cols.extra.iter().map(|(i, key)| (key.as_str(), field(*i))));
    let sample_id = cols.sample_id.map(field).filter(|s| !s.is_empty()).map(String::from);
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

/// The extra columns as one JSON object, compact, keys in the order given
/// (each already a JSON string): what serde_json writes for a map of them.
/// Empty when there are none.
fn extra_json<'a>(columns: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> String {
    if columns.len() == 0 {
        return String::new();
    }
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    for (n, (key, value)) in columns.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(key.as_bytes());
        out.push(b':');
        // Writing a &str to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, value);
    }
    out.push(b'}');
    String::from_utf8(out).unwrap_or_default()
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
    memchr::memchr(b'\n', b)
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

/// Rows a parser hands on at a time.
pub const BATCH_ROWS: usize = 4096;

/// Parses and validates a whole catalog. Every bad row is counted and the
/// first [`MAX_REPORTED`] are listed with their line numbers; any bad row
/// makes the whole file an error.
pub fn parse_catalog(reader: &mut dyn BufRead, known_department: &dyn Fn(&DirId) -> bool) -> Result<Vec<CatalogRow>, CatalogError> {
    let mut rows = Vec::new();
    parse_catalog_batches(reader, known_department, &mut |batch| {
        rows.extend(batch);
        true
    })?;
    Ok(rows)
}

/// As [`parse_catalog`], handing the rows on in batches of [`BATCH_ROWS`]
/// as it reads, so that they can be stored while the rest is parsed. No
/// file_id and no path comes twice. After the first bad row nothing more is
/// handed on, but the rest is still read for its errors: only an `Ok` says
/// the rows handed on are the whole catalog. `sink` returns false to stop
/// the parse (its receiver gave up), which then fails.
pub fn parse_catalog_batches(
    reader: &mut dyn BufRead,
    known_department: &dyn Fn(&DirId) -> bool,
    sink: &mut dyn FnMut(Vec<CatalogRow>) -> bool,
) -> Result<u64, CatalogError> {
    let mut buf = Vec::with_capacity(512);
    let mut fields = Vec::with_capacity(16);
    let mut lineno = 0usize;
    let mut cols: Option<Columns> = None;
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    let mut count = 0u64;
    let mut errors = RowErrors::default();
    let mut distinct = Distinct::default();
    let stopped = || CatalogError::Io("the import was stopped".into());
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
        let row = parse_row(c, line, &mut fields, known_department).and_then(|(file, sample_id)| {
            let row = CatalogRow {
                line: lineno,
                file,
                sample_id,
            };
            distinct.check(&row).map(|()| row)
        });
        match row {
            Ok(row) if errors.is_empty() => {
                batch.push(row);
                count += 1;
                if batch.len() == BATCH_ROWS && !sink(std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS))) {
                    return Err(stopped());
                }
            }
            Ok(_) => {}
            Err(m) => errors.push(lineno, m),
        }
    }
    if cols.is_none() {
        return Err(CatalogError::Header("the file is empty; it needs a header line".into()));
    }
    errors.into_result(())?;
    if !batch.is_empty() && !sink(batch) {
        return Err(stopped());
    }
    Ok(count)
}

/// Remembers the file_ids and paths of an import's rows, and refuses a row
/// that repeats one: a catalog describes each file once, on a path of its own.
#[derive(Default)]
pub struct Distinct {
    ids: KeySet,
    paths: KeySet,
}

impl Distinct {
    /// Records `row`, or says which earlier line has its file_id or path.
    pub fn check(&mut self, row: &CatalogRow) -> Result<(), String> {
        let (id, path) = (row.file.file_id.as_str(), row.file.path.as_str());
        let id_hash = self.ids.hash(id);
        if let Some(first) = self.ids.line_of(id, id_hash) {
            return Err(format!("file_id {id} is already on line {first}"));
        }
        let path_hash = self.paths.hash(path);
        if let Some(first) = self.paths.line_of(path, path_hash) {
            return Err(format!("path {path:?} is already on line {first}"));
        }
        self.ids.insert(id, id_hash, row.line);
        self.paths.insert(path, path_hash, row.line);
        Ok(())
    }
}

/// Strings with the line each came on, kept end to end in one buffer: a
/// million keys cost a few large allocations rather than a million small ones.
#[derive(Default)]
struct KeySet {
    text: String,
    /// (hash, start in `text`, length, line)
    table: hashbrown::HashTable<(u64, usize, usize, usize)>,
    state: foldhash::fast::RandomState,
}

impl KeySet {
    /// foldhash is several times faster than the standard library's SipHash
    /// on these keys and still seeded per process; the catalog comes from the
    /// GDB's own staff.
    fn hash(&self, key: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.state, key)
    }

    fn line_of(&self, key: &str, hash: u64) -> Option<usize> {
        self.table
            .find(hash, |&(_, start, len, _)| &self.text[start..start + len] == key)
            .map(|&(_, _, _, line)| line)
    }

    fn insert(&mut self, key: &str, hash: u64, line: usize) {
        let start = self.text.len();
        self.text.push_str(key);
        self.table.insert_unique(hash, (hash, start, key.len(), line), |&(h, ..)| h);
    }
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

    #[test]
    fn a_path_given_twice_names_its_first_line() {
        let mut text = HEAD.to_string();
        text += &row("F1", "run/a.fq", "RH", "1", SHA, AT); // 2
        text += &row("F2", "run/b.fq", "RH", "1", SHA, AT); // 3
        text += &row("F3", "run/a.fq", "RH", "1", SHA, AT); // 4
        match parse(&text) {
            Err(CatalogError::Rows { rows, total: 1 }) => {
                assert_eq!(rows[0].0, 4);
                assert!(rows[0].1.contains("\"run/a.fq\" is already on line 2"), "{:?}", rows[0]);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Rows come in batches of BATCH_ROWS as they are read; none after a bad
    /// row; a sink that gives up stops the parse.
    #[test]
    fn rows_are_handed_on_in_batches() {
        let n = BATCH_ROWS * 2 + 5;
        let mut text = HEAD.to_string();
        for i in 0..n {
            text += &row(&format!("F{i}"), &format!("r/{i}.fq"), "RH", "1", SHA, AT);
        }
        let mut sizes = Vec::new();
        let count = parse_catalog_batches(&mut text.as_bytes(), &known, &mut |b| {
            sizes.push(b.len());
            true
        });
        assert_eq!(count, Ok(n as u64));
        assert_eq!(sizes, [BATCH_ROWS, BATCH_ROWS, 5]);

        let bad = format!("{text}F0\tr/x.fq\tRH\t1\t{SHA}\t{AT}\n");
        let mut sizes = Vec::new();
        let result = parse_catalog_batches(&mut bad.as_bytes(), &known, &mut |b| {
            sizes.push(b.len());
            true
        });
        assert!(matches!(result, Err(CatalogError::Rows { total: 1, .. })), "{result:?}");
        assert_eq!(sizes, [BATCH_ROWS, BATCH_ROWS], "the last rows are not handed on");

        let mut calls = 0;
        let result = parse_catalog_batches(&mut text.as_bytes(), &known, &mut |_| {
            calls += 1;
            false
        });
        assert!(matches!(result, Err(CatalogError::Io(_))), "{result:?}");
        assert_eq!(calls, 1);
    }

    proptest! {
        /// The extra columns read as serde_json writes a map of them, which
        /// is what earlier imports stored: an unchanged row stays unchanged.
        #[test]
        fn extra_json_is_what_serde_json_writes(columns in proptest::collection::btree_map("\\PC{0,6}", "\\PC{0,8}", 0..5)) {
            let keys: Vec<(String, &str)> = columns
                .iter()
                .map(|(k, v)| (serde_json::Value::String(k.clone()).to_string(), v.as_str()))
                .collect();
            let ours = extra_json(keys.iter().map(|(k, v)| (k.as_str(), *v)));
            let theirs = if columns.is_empty() {
                String::new()
            } else {
                let map: serde_json::Map<String, serde_json::Value> =
                    columns.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
                serde_json::Value::Object(map).to_string()
            };
            prop_assert_eq!(ours, theirs);
        }

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
            let mut seen_paths = std::collections::HashSet::new();
            for (id, path, size, secs) in &rows {
                let Ok(p) = CatalogPath::parse(path) else { continue };
                if !seen.insert(id.clone()) || !seen_paths.insert(p.to_string()) { continue; }
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
