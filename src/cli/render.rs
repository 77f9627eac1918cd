//! Everything the command line writes for its user: results on standard
//! output (tables, the verification report, the case view, one-line
//! confirmations, JSON) and, on standard error, the staging progress line and
//! failures. The command modules decide what to say; this module says it.

use super::Failure;
use crate::audit::EventRecord;
use crate::control::proto::{AuditReport, CaseView, StatusReply};
use crate::db::FeedRecord;
use crate::domain::case::CaseRecord;
use crate::domain::catalog::{CatalogFile, ImportSummary};
use crate::domain::search::SearchHit;
use crate::export::ReadPath;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

/// Writes a command's result to standard output with `f`: the one place where
/// a failed write to standard output becomes a [`Failure`].
pub(super) fn print(f: impl FnOnce(&mut io::StdoutLock<'static>) -> io::Result<()>) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    f(&mut out).and_then(|()| out.flush()).map_err(Failure::output)
}

/// A failure on standard error: `workcopy: ` and its first line, then the
/// rest; at error priority when standard error is the journal (`serve` at
/// start, `reload` from the unit's ExecReload=).
pub(super) fn failure(message: &str) {
    let text = format!("workcopy: {}\n", message.trim_end_matches('\n'));
    let text = if crate::journal::stderr_is_journal() {
        crate::journal::with_priority(crate::journal::priority(tracing::Level::ERROR), &text)
    } else {
        text
    };
    // Nothing is left to tell the user if standard error is gone too.
    let _ = io::stderr().lock().write_all(text.as_bytes());
}

/// Overwrites the progress line on standard error (a terminal).
pub(super) fn progress(done: u64, total: u64, elapsed: Duration) {
    let mut err = io::stderr().lock();
    let _ = write!(err, "\r{}", progress_line(done, total, elapsed));
    let _ = err.flush();
}

/// Ends the progress line on standard error (a terminal).
pub(super) fn progress_end() {
    let _ = writeln!(io::stderr());
}

pub(super) fn json<T: serde::Serialize>(o: &mut impl Write, v: &T) -> io::Result<()> {
    let s = serde_json::to_string_pretty(v).map_err(io::Error::other)?;
    writeln!(o, "{s}")
}

/// How the mount serves bytes, in words.
pub(super) fn read_path(p: Option<ReadPath>) -> &'static str {
    match p {
        Some(ReadPath::Passthrough) => "kernel passthrough (reads go straight to the backing files)",
        Some(ReadPath::UserSpaceNoKernelSupport) => "user space (this kernel offers no FUSE passthrough)",
        Some(ReadPath::UserSpaceByConfig) => "user space (passthrough = false in the config)",
        None => "none (not mounted)",
    }
}

/// `status --json`: the reply, with the read path in words.
pub(super) fn status_json(o: &mut impl Write, s: &StatusReply) -> io::Result<()> {
    #[derive(serde::Serialize)]
    struct View<'a> {
        version: &'a str,
        mode: crate::config::Mode,
        mount_point: &'a str,
        mounted: bool,
        read_path: &'static str,
        catalog_files: u64,
        catalog_changed_at: Option<&'a str>,
        /// Cases per state, as an object in the states' order.
        #[serde(serialize_with = "by_state")]
        cases: &'a [(crate::domain::case::CaseState, u64)],
        directory_departments: usize,
        bytes_served: u64,
        pulls_in_progress: u64,
        started_at: &'a str,
        uptime_secs: u64,
        staging_bytes: u64,
        host: &'a str,
        shared_register: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        database_unreachable: Option<&'a crate::control::proto::Unreachable>,
    }
    fn by_state<S: serde::Serializer>(cases: &&[(crate::domain::case::CaseState, u64)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(cases.iter().map(|(state, n)| (state, n)))
    }
    json(
        o,
        &View {
            version: &s.version,
            mode: s.mode,
            mount_point: &s.mount_point,
            mounted: s.mounted,
            read_path: read_path(s.read_path),
            catalog_files: s.catalog_files,
            catalog_changed_at: s.catalog_changed_at.as_deref(),
            cases: &s.cases,
            directory_departments: s.directory_departments,
            bytes_served: s.bytes_served,
            pulls_in_progress: s.pulls_in_progress,
            started_at: &s.started_at,
            uptime_secs: s.uptime_secs,
            staging_bytes: s.staging_bytes,
            host: &s.host,
            shared_register: s.shared_register,
            database_unreachable: s.database_unreachable.as_ref(),
        },
    )
}

pub(super) fn status(o: &mut impl Write, s: &StatusReply) -> io::Result<()> {
    writeln!(o, "workcopy {}", s.version)?;
    writeln!(o, "up          since {}, {}", s.started_at, uptime(s.uptime_secs))?;
    if s.shared_register {
        writeln!(o, "host        {} (shared register; `workcopy hosts` lists them all)", s.host)?;
    }
    if let Some(u) = &s.database_unreachable {
        writeln!(
            o,
            "database    UNREACHABLE since {}: {} (exported cases stay in the mount; opens that cannot be recorded fail; reconnecting)",
            u.since, u.error
        )?;
    }
    writeln!(
        o,
        "mount       {} ({})",
        s.mount_point,
        if s.mounted { "mounted" } else { "not mounted" }
    )?;
    writeln!(o, "mode        {}", s.mode)?;
    writeln!(o, "read path   {}", read_path(s.read_path))?;
    match &s.catalog_changed_at {
        Some(at) => writeln!(o, "catalog     {} files, last changed by an import at {at}", s.catalog_files)?,
        None => writeln!(o, "catalog     {} files", s.catalog_files)?,
    }
    writeln!(o, "directory   {} departments", s.directory_departments)?;
    let counted = if s.read_path == Some(ReadPath::Passthrough) {
        " (reads the kernel passes through are not counted)"
    } else {
        ""
    };
    writeln!(o, "served      {} bytes{counted}", s.bytes_served)?;
    writeln!(o, "pulls       {} case file(s) open now", s.pulls_in_progress)?;
    writeln!(o, "staging     {} bytes of staged copies", s.staging_bytes)?;
    writeln!(
        o,
        "cases       {}",
        s.cases.iter().map(|(st, n)| format!("{st} {n}")).collect::<Vec<_>>().join(", ")
    )
}

pub(super) fn imported(o: &mut impl Write, s: &ImportSummary, took: Duration) -> io::Result<()> {
    writeln!(
        o,
        "imported {} rows in {:.1}s: {} added, {} updated, {} unchanged; the catalog holds {} files",
        s.rows,
        took.as_secs_f64(),
        s.added,
        s.updated,
        s.unchanged,
        s.catalog_files
    )
}

/// The catalog files a descriptor matches, and a hint when it names more than one.
pub(super) fn catalog_files(o: &mut impl Write, files: &[CatalogFile], descriptor: &str) -> io::Result<()> {
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                f.file_id.to_string(),
                f.department.to_string(),
                f.size.to_string(),
                f.submitted_at(),
                f.path.to_string(),
                f.sha256.clone(),
            ]
        })
        .collect();
    table(o, &["FILE_ID", "DEPARTMENT", "SIZE", "SUBMITTED", "PATH", "SHA256"], &rows)?;
    if files.len() > 1 {
        writeln!(
            o,
            "{} files match {descriptor:?}: a request must name one of them by file_id or path",
            files.len()
        )?;
    }
    Ok(())
}

/// How a case came in: `staff`, or `self-service review|auto`.
fn via(c: &CaseRecord) -> String {
    match c.self_service {
        None => "staff".into(),
        Some(p) => format!("self-service {p}"),
    }
}

pub(super) fn cases(o: &mut impl Write, cases: &[CaseRecord]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = cases
        .iter()
        .map(|c| {
            vec![
                c.case_ref.clone(),
                c.state.to_string(),
                c.department.clone().unwrap_or_else(|| "-".into()),
                c.requester.clone(),
                c.created_at.clone(),
                via(c),
            ]
        })
        .collect();
    table(o, &["REF", "STATE", "DEPARTMENT", "REQUESTER", "OPENED", "VIA"], &rows)
}

/// `request list`: the requester's own requests.
pub(super) fn requests(o: &mut impl Write, cases: &[CaseRecord]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = cases
        .iter()
        .map(|c| {
            vec![
                c.case_ref.clone(),
                c.state.to_string(),
                c.report.lines.len().to_string(),
                if c.verified { "yes" } else { "no" }.to_string(),
                c.created_at.clone(),
            ]
        })
        .collect();
    table(o, &["REF", "STATE", "FILES", "VERIFIED", "OPENED"], &rows)
}

/// A request as `request open|show|cancel --json` print it: the case view with its reference first as `ref`.
pub(super) fn request_json(o: &mut impl Write, v: &CaseView) -> io::Result<()> {
    #[derive(serde::Serialize)]
    struct Request<'a> {
        #[serde(rename = "ref")]
        case_ref: &'a str,
        #[serde(flatten)]
        view: &'a CaseView,
    }
    json(
        o,
        &Request {
            case_ref: &v.case.case_ref,
            view: v,
        },
    )
}

/// `request open`'s report: the reference, one line per file, and what happens next.
pub(super) fn request_report(o: &mut impl Write, v: &CaseView) -> io::Result<()> {
    let c = &v.case;
    writeln!(
        o,
        "request {} ({}), requester {}, department {}, self-service {}",
        c.case_ref,
        c.state,
        c.requester,
        c.department.as_deref().unwrap_or("-"),
        c.self_service.map(|p| p.as_str()).unwrap_or("-")
    )?;
    report_lines(o, c)?;
    let next = match c.state {
        _ if !c.verified => "NOT verified: correct the refused lines and request again".to_string(),
        crate::domain::case::CaseState::Open => format!(
            "verified: waiting for workcopy staff to approve it; follow it with `workcopy request show {}`",
            c.case_ref
        ),
        s => format!(
            "verified and approved under your department's self-service policy ({s}): your department's transfer job can pull it once it is exported; follow it with `workcopy request show {}`",
            c.case_ref
        ),
    };
    writeln!(o, "{next}")
}

pub(super) fn cancelled(o: &mut impl Write, case_ref: &str) -> io::Result<()> {
    writeln!(o, "request {case_ref} cancelled; its log is sealed")
}

/// `catalog search`: one line per file.
pub(super) fn search_hits(o: &mut impl Write, files: &[SearchHit]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                f.file_id.clone(),
                f.sample_id.clone().unwrap_or_else(|| "-".into()),
                f.department.clone(),
                f.size.to_string(),
                f.submitted_at.clone(),
                f.path.clone(),
            ]
        })
        .collect();
    table(o, &["FILE_ID", "SAMPLE", "DEPARTMENT", "SIZE", "SUBMITTED", "PATH"], &rows)
}

/// `catalog search --json`: `{"files": […], "more": bool}`.
pub(super) fn search_json(o: &mut impl Write, files: &[SearchHit], more: bool) -> io::Result<()> {
    #[derive(serde::Serialize)]
    struct Found<'a> {
        files: &'a [SearchHit],
        /// More files matched than `files` holds.
        more: bool,
    }
    json(o, &Found { files, more })
}

/// After a search that matched more files than it shows: on standard error.
pub(super) fn more_matched(shown: usize) {
    let _ = writeln!(
        io::stderr(),
        "more files match; the first {shown} are shown: narrow the search (a longer pattern, --sample, --since)"
    );
}

pub(super) fn log(o: &mut impl Write, records: &[EventRecord]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.seq.to_string(),
                r.at.clone(),
                format!("{} ({})", r.actor, r.uid),
                r.event.clone(),
                r.details.to_string(),
            ]
        })
        .collect();
    table(o, &["#", "TIME", "ACTOR", "EVENT", "DETAILS"], &rows)
}

/// After a page of `case log` when more records follow: how to get the next
/// page, on standard error (standard output holds only the page).
pub(super) fn log_next_page(case_ref: &str, next: u64, limit: Option<u32>, json: bool) {
    let mut command = format!("workcopy case log {case_ref} --since {next}");
    if let Some(n) = limit {
        command.push_str(&format!(" --limit {n}"));
    }
    if json {
        command.push_str(" --json");
    }
    let _ = writeln!(io::stderr(), "more records follow; the next page: {command}");
}

/// `events`: one line per record of the feed.
pub(super) fn feed_line(o: &mut impl Write, r: &FeedRecord) -> io::Result<()> {
    let e = &r.record;
    writeln!(
        o,
        "{}  {}  {} #{}  {}  {} ({})  {}",
        r.feed_seq, e.at, e.case_ref, e.seq, e.event, e.actor, e.uid, e.details
    )
}

/// `events --json`: one JSON object per line, `seq` being the feed number
/// and `case_seq` the record's number in its case's log.
pub(super) fn feed_json_line(o: &mut impl Write, r: &FeedRecord) -> io::Result<()> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        seq: u64,
        case_ref: &'a str,
        case_seq: u64,
        at: &'a str,
        actor: &'a str,
        uid: u32,
        event: &'a str,
        details: &'a serde_json::Value,
        prev_hash: &'a str,
        hash: &'a str,
    }
    let e = &r.record;
    let line = Line {
        seq: r.feed_seq,
        case_ref: &e.case_ref,
        case_seq: e.seq,
        at: &e.at,
        actor: &e.actor,
        uid: e.uid,
        event: &e.event,
        details: &e.details,
        prev_hash: &e.prev_hash,
        hash: &e.hash,
    };
    serde_json::to_writer(&mut *o, &line).map_err(io::Error::other)?;
    writeln!(o)
}

/// `case open`'s verification report.
pub(super) fn report(o: &mut impl Write, v: &CaseView) -> io::Result<()> {
    let c = &v.case;
    writeln!(
        o,
        "case {} ({}), requester {}, department {}",
        c.case_ref,
        c.state,
        c.requester,
        c.department.as_deref().unwrap_or("-")
    )?;
    report_lines(o, c)?;
    writeln!(
        o,
        "{}",
        if c.verified {
            "verified: every file may be delivered; approve with `workcopy case approve`"
        } else {
            "NOT verified"
        }
    )
}

/// `case show`: the case, its files and its verification report.
pub(super) fn case(o: &mut impl Write, v: &CaseView) -> io::Result<()> {
    let c = &v.case;
    writeln!(o, "case        {}", c.case_ref)?;
    writeln!(o, "state       {}", c.state)?;
    writeln!(o, "requester   {}", c.requester)?;
    if let Some(p) = c.self_service {
        writeln!(o, "via         self-service ({p}), the requester's own request")?;
    }
    writeln!(o, "department  {}", c.department.as_deref().unwrap_or("-"))?;
    if let Some(s) = &c.submitter {
        writeln!(o, "submitter   {s}")?;
    }
    writeln!(o, "opened      {}", c.created_at)?;
    writeln!(o, "verified    {}", if c.verified { "yes" } else { "no" })?;
    if let Some(h) = &c.host {
        writeln!(o, "host        {h}{}", if v.visible { " (in its mount)" } else { "" })?;
    }
    if let Some((done, total)) = v.staging {
        writeln!(o, "staging     {} of {}", human(done as f64), human(total as f64))?;
    }
    if let Some(r) = &v.blocked_reason {
        writeln!(o, "blocked     {r}")?;
    }
    writeln!(o, "log         {} records", c.event_count)?;
    let rows: Vec<Vec<String>> = v
        .files
        .iter()
        .map(|f| {
            vec![
                f.export_name.clone(),
                f.file.file_id.to_string(),
                f.file.size.to_string(),
                f.file.sha256.clone(),
            ]
        })
        .chain(
            v.delivered
                .iter()
                .map(|f| vec![f.name.clone(), f.file_id.clone(), f.size.to_string(), f.sha256.clone()]),
        )
        .collect();
    if !rows.is_empty() {
        writeln!(o)?;
        table(o, &["NAME", "FILE_ID", "SIZE", "SHA256"], &rows)?;
    }
    if !c.report.lines.is_empty() || !c.report.problems.is_empty() {
        writeln!(o, "\nverification report:")?;
        report_lines(o, c)?;
    }
    Ok(())
}

fn report_lines(o: &mut impl Write, c: &CaseRecord) -> io::Result<()> {
    for p in &c.report.problems {
        writeln!(o, "REFUSED   request: {p}")?;
    }
    for l in &c.report.lines {
        writeln!(o, "{}", l.describe())?;
    }
    Ok(())
}

pub(super) fn moved(o: &mut impl Write, case_ref: &str, to: &str) -> io::Result<()> {
    writeln!(o, "case {case_ref} moved to {to}; it verifies the files again and serves the case")
}

/// `workcopy hosts`.
pub(super) fn hosts(o: &mut impl Write, hosts: &[crate::control::proto::HostView]) -> io::Result<()> {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                h.host.beat.name.clone(),
                h.state.to_string(),
                format!("{} s ago", h.heartbeat_age_secs),
                h.host.beat.version.clone(),
                h.host.beat.mode.clone(),
                h.host.beat.read_path.clone(),
                h.host.beat.cases_served.to_string(),
                if h.directory_matches { "matches" } else { "DIFFERS" }.to_string(),
            ]
        })
        .collect();
    table(
        o,
        &["HOST", "STATE", "HEARTBEAT", "VERSION", "MODE", "READ_PATH", "CASES", "DIRECTORY"],
        &rows,
    )?;
    for h in hosts.iter().filter(|h| h.host.retired_at.is_some()) {
        writeln!(
            o,
            "{} retired at {}: {}",
            h.host.beat.name,
            h.host.retired_at.as_deref().unwrap_or_default(),
            h.host.retired_reason.as_deref().unwrap_or_default()
        )?;
    }
    Ok(())
}

pub(super) fn staging_started(o: &mut impl Write, case_ref: &str) -> io::Result<()> {
    writeln!(o, "case {case_ref} approved; staging started")
}

pub(super) fn exported(o: &mut impl Write, case_ref: &str, files: usize) -> io::Result<()> {
    writeln!(o, "case {case_ref} exported: {files} file(s) readable in the mount")
}

pub(super) fn rejected(o: &mut impl Write, case_ref: &str) -> io::Result<()> {
    writeln!(o, "case {case_ref} rejected; its log is sealed")
}

pub(super) fn confirmed(o: &mut impl Write, case_ref: &str) -> io::Result<()> {
    writeln!(o, "case {case_ref}: receipt confirmed, every file matched")
}

pub(super) fn closed(o: &mut impl Write, case_ref: &str) -> io::Result<()> {
    writeln!(o, "case {case_ref} closed: removed from the mount, staging deleted, log sealed")
}

pub(super) fn audit_intact(o: &mut impl Write, a: &AuditReport) -> io::Result<()> {
    writeln!(
        o,
        "ok: {} case logs, {} records, {} sealed files; every chain intact",
        a.cases, a.records, a.sealed_files
    )
}

pub(super) fn reloaded(o: &mut impl Write, departments: usize) -> io::Result<()> {
    writeln!(o, "directory reloaded: {departments} departments")
}

pub(super) fn config_good(o: &mut impl Write, config: &Path, directory: &Path, departments: usize) -> io::Result<()> {
    writeln!(
        o,
        "ok: config {} and directory {} ({departments} departments)",
        config.display(),
        directory.display()
    )
}

pub(super) fn sealed_log_intact(o: &mut impl Write, case_ref: &str, records: u64) -> io::Result<()> {
    writeln!(o, "ok: sealed log of case {case_ref}, {records} records, chain intact")
}

pub(super) fn man_pages_written(o: &mut impl Write, dir: &Path) -> io::Result<()> {
    writeln!(o, "manual pages written to {}", dir.display())
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(o: &mut impl Write, head: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let mut line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(c);
            if i + 1 < n {
                s.push_str(&" ".repeat(w[i].saturating_sub(c.chars().count()) + 2));
            }
        }
        writeln!(o, "{s}")
    };
    line(head.to_vec())?;
    for r in rows {
        line(r.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

/// Bytes in binary units with one decimal: `1.5 MiB`.
/// `3d 4h`, `2h 05m`, `7m 30s`, `12s`.
fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let eta = if rate > 0.0 && total > done {
        format!("{:.0}s", (total - done) as f64 / rate)
    } else {
        "-".into()
    };
    let pct = if total > 0 { done as f64 * 100.0 / total as f64 } else { 100.0 };
    format!(
        "staging {pct:5.1}%  {} of {}  {}/s  ETA {eta}   ",
        human(done as f64),
        human(total as f64),
        human(rate)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        assert!(f(&mut out).is_ok());
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn table_pads_every_column_but_the_last() {
        let rows = vec![vec!["R1".to_string(), "exported".to_string(), "x".to_string()]];
        assert_eq!(
            text(|o| table(o, &["REF", "STATE", "NOTE"], &rows)),
            "REF  STATE     NOTE\nR1   exported  x\n"
        );
    }

    #[test]
    fn uptimes() {
        assert_eq!(uptime(12), "12s");
        assert_eq!(uptime(450), "7m 30s");
        assert_eq!(uptime(7500), "2h 05m");
        assert_eq!(uptime(3 * 86400 + 4 * 3600 + 59), "3d 4h");
    }

    #[test]
    fn sizes_and_progress() {
        assert_eq!(human(0.0), "0.0 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(3.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0), "3072.0 TiB");
        assert_eq!(
            progress_line(512 << 20, 1 << 30, Duration::from_secs(2)),
            "staging  50.0%  512.0 MiB of 1.0 GiB  256.0 MiB/s  ETA 2s   "
        );
        assert_eq!(
            progress_line(0, 0, Duration::ZERO),
            "staging 100.0%  0.0 B of 0.0 B  0.0 B/s  ETA -   "
        );
    }
}
