//! `workcopy metrics`: the daemon's metrics as OpenMetrics text, on standard
//! output or written atomically into a file for node_exporter's textfile
//! collector. The text itself is written by [`render`].
//!
//! The exposition is the subset both parsers that read it agree on:
//! node_exporter's textfile collector and `promtool check metrics` read the
//! Prometheus text format, where a counter's family is named with its
//! `_total` suffix, so that is how every counter is declared (OpenMetrics
//! 1.0 would declare it without the suffix, which the text format reads as
//! an undocumented metric); and the text ends with `# EOF`, OpenMetrics'
//! terminator and a comment to the text format. Instead of a `_created`
//! sample per counter there is one `workcopy_start_time_seconds`: every
//! counter of the daemon's own starts at zero then.

use super::render::print;
use super::{Cli, Daemon, Failure, reply};
use crate::control::proto::{MetricsReply, Request};
use crate::export::ReadPath;
use std::io::{self, Write};
use std::path::Path;

pub(super) fn run(cli: &Cli, output: Option<&Path>) -> Result<(), Failure> {
    let answer = Daemon::connect(cli).and_then(|mut d| d.call(&Request::Metrics, reply::metrics));
    let (text, failure) = match answer {
        Ok(m) => (text_of(|o| render(o, &m))?, None),
        // Nobody answers: say so in the metrics too, so an alert fires at once
        // rather than when the last file grows stale.
        Err(f @ Failure::Failed { code: 3, .. }) => {
            // The config's `host`, as the daemon would have said (else the hostname's).
            let host = super::load_config(cli).map_or_else(|_| crate::config::default_host(), |c| c.host);
            (text_of(|o| render_down(o, &host))?, Some(f))
        }
        Err(f) => return Err(f),
    };
    match output {
        Some(path) => write_atomically(path, text.as_bytes())?,
        None => print(|o| o.write_all(text.as_bytes()))?,
    }
    failure.map_or(Ok(()), Err)
}

fn text_of(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> Result<String, Failure> {
    let mut out = Vec::new();
    f(&mut out).map_err(|e| Failure::refused(format!("cannot write the metrics: {e}")))?;
    String::from_utf8(out).map_err(|e| Failure::refused(format!("cannot write the metrics: {e}")))
}

/// Replaces `path` with `bytes` at once: a temporary file in the same
/// directory, synced, then renamed over it (mode 0644: node_exporter runs
/// as another user). A reader sees the old file or the new, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |e: io::Error| Failure::refused(format!("cannot write {}: {e}", path.display()));
    let name = path
        .file_name()
        .ok_or_else(|| Failure::refused(format!("--output {}: not a file name", path.display())))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(failed)
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', r#"\""#).replace('\n', r"\n")
}

/// One metric family: HELP and TYPE, then its samples (label sets without
/// the host, which every sample carries first).
struct Family<'a, W: Write> {
    o: &'a mut W,
    host: String,
}

impl<W: Write> Family<'_, W> {
    fn head(&mut self, name: &str, kind: &str, help: &str) -> io::Result<()> {
        writeln!(self.o, "# HELP {name} {help}")?;
        writeln!(self.o, "# TYPE {name} {kind}")
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) -> io::Result<()> {
        write!(self.o, "{name}{{host=\"{}\"", self.host)?;
        for (k, v) in labels {
            write!(self.o, ",{k}=\"{}\"", label(v))?;
        }
        writeln!(self.o, "}} {value}")
    }

    /// A family of one sample.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) -> io::Result<()> {
        self.head(name, kind, help)?;
        self.sample(name, &[], value)
    }
}

fn read_path(p: Option<ReadPath>) -> &'static str {
    match p {
        Some(ReadPath::Passthrough) => "passthrough",
        Some(ReadPath::UserSpaceNoKernelSupport | ReadPath::UserSpaceByConfig) => "user_space",
        None => "none",
    }
}

fn seconds(nanos: u64) -> String {
    format!("{:.3}", nanos as f64 / 1e9)
}

/// The metrics of a daemon that answered. No label carries a case
/// reference, a department or a file: every label's values are few and fixed.
pub(super) fn render(o: &mut impl Write, m: &MetricsReply) -> io::Result<()> {
    let mut f = Family { o, host: label(&m.host) };
    f.one(
        "workcopy_up",
        "gauge",
        "Whether the workcopy daemon answered (1), or could not be reached (0).",
        1,
    )?;
    f.head("workcopy_info", "gauge", "The daemon's version, mode and read path (value 1).")?;
    let mode = m.mode.to_string();
    let labels = [
        ("version", m.version.as_str()),
        ("mode", mode.as_str()),
        ("read_path", read_path(m.read_path)),
    ];
    f.sample("workcopy_info", &labels, 1)?;
    f.one(
        "workcopy_start_time_seconds",
        "gauge",
        "When the daemon started (unix time); its own counters start at zero then.",
        m.started_at,
    )?;
    f.one(
        "workcopy_database_up",
        "gauge",
        "Whether the case register's database answered (1) or not (0).",
        u8::from(m.database_up),
    )?;
    if m.database_up {
        f.head("workcopy_cases", "gauge", "Cases in the register, by state.")?;
        for s in &m.states {
            f.sample("workcopy_cases", &[("state", s.state.as_str())], s.cases)?;
        }
        f.head(
            "workcopy_cases_oldest_since_timestamp_seconds",
            "gauge",
            "When the case longest in a state entered it (unix time); no sample for a state without cases.",
        )?;
        for s in &m.states {
            if let Some(t) = s.oldest_since {
                f.sample("workcopy_cases_oldest_since_timestamp_seconds", &[("state", s.state.as_str())], t)?;
            }
        }
    }
    if let Some(head) = m.feed_head {
        f.one(
            "workcopy_case_log_records_total",
            "counter",
            "Records written to the case logs, ever: the feed's last number (never resets).",
            head,
        )?;
    }
    f.one(
        "workcopy_file_opens_total",
        "counter",
        "Opens of case files in the mount, recorded and served, since the daemon started.",
        m.file_opens,
    )?;
    f.one(
        "workcopy_served_bytes_total",
        "counter",
        "Bytes of case files read through the user-space path since the daemon started (kernel passthrough reads are not seen).",
        m.served_bytes,
    )?;
    f.one("workcopy_open_files", "gauge", "Case files open in the mount now.", m.open_files)?;
    f.one(
        "workcopy_staging_bytes",
        "gauge",
        "Bytes of the staged copies on disk now.",
        m.staging_bytes,
    )?;
    f.one(
        "workcopy_staging_jobs",
        "gauge",
        "Cases being staged or verified now.",
        m.staging_jobs,
    )?;
    f.one(
        "workcopy_mount_cases",
        "gauge",
        "Cases this host shows in its mount now (on a shared register, the ones it serves).",
        m.mount_cases,
    )?;
    f.one(
        "workcopy_staged_bytes_total",
        "counter",
        "Bytes copied or hashed by staging and by the verification after a start, since the daemon started.",
        m.staged_bytes,
    )?;
    f.one(
        "workcopy_staging_seconds_total",
        "counter",
        "Time spent staging and verifying case files since the daemon started.",
        seconds(m.staging_nanos),
    )?;
    f.head(
        "workcopy_verification_failures_total",
        "counter",
        "Files whose bytes did not match the catalog, by when they were checked, since the daemon started.",
    )?;
    for (at, n) in &m.verification_failures {
        f.sample("workcopy_verification_failures_total", &[("check", at)], n)?;
    }
    f.head(
        "workcopy_refusals_total",
        "counter",
        "Requests on the control socket refused, by kind, since the daemon started.",
    )?;
    for (kind, n) in &m.refusals {
        f.sample("workcopy_refusals_total", &[("kind", kind.as_str())], n)?;
    }
    f.one(
        "workcopy_connections_refused_total",
        "counter",
        "Control socket connections closed because their uid held too many, since the daemon started.",
        m.connections_refused,
    )?;
    if let Some(a) = &m.audit {
        f.one(
            "workcopy_audit_last_run_timestamp_seconds",
            "gauge",
            "When every case log was last checked (audit verify, or the daemon's daily check).",
            a.at,
        )?;
        f.one(
            "workcopy_audit_last_duration_seconds",
            "gauge",
            "How long the last check of every case log took.",
            format!("{:.3}", a.millis as f64 / 1e3),
        )?;
        f.one(
            "workcopy_audit_checked_logs",
            "gauge",
            "Case logs the last check read.",
            a.checked_logs,
        )?;
        f.one(
            "workcopy_audit_failed_logs",
            "gauge",
            "Case logs (or sealed log files) that failed the last check.",
            a.failed_logs,
        )?;
    }
    writeln!(f.o, "# EOF")
}

/// The metrics when no daemon answers: only `workcopy_up 0`.
pub(super) fn render_down(o: &mut impl Write, host: &str) -> io::Result<()> {
    let mut f = Family { o, host: label(host) };
    f.one(
        "workcopy_up",
        "gauge",
        "Whether the workcopy daemon answered (1), or could not be reached (0).",
        0,
    )?;
    writeln!(f.o, "# EOF")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::RefusalKind;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), r"x\ny");
    }

    fn reply(database_up: bool) -> MetricsReply {
        use crate::db::StateSummary;
        use crate::domain::case::CaseState;
        MetricsReply {
            host: "t\"1".into(),
            version: "0.1.0".into(),
            mode: crate::config::Mode::Staged,
            read_path: None,
            started_at: 1_700_000_000,
            database_up,
            states: if database_up {
                CaseState::ALL
                    .iter()
                    .map(|s| StateSummary {
                        state: *s,
                        cases: u64::from(*s == CaseState::Blocked),
                        oldest_since: (*s == CaseState::Blocked).then_some(1_700_000_100),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            feed_head: database_up.then_some(42),
            file_opens: 3,
            served_bytes: 4,
            open_files: 0,
            staging_bytes: 5,
            staging_jobs: 0,
            mount_cases: 0,
            staged_bytes: 6,
            staging_nanos: 1_500_000_000,
            verification_failures: vec![("staging".into(), 1), ("restart".into(), 0)],
            refusals: RefusalKind::ALL.iter().map(|k| (*k, 0)).collect(),
            connections_refused: 0,
            audit: None,
        }
    }

    fn text(m: &MetricsReply) -> String {
        let mut out = Vec::new();
        assert!(render(&mut out, m).is_ok());
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn the_register_s_metrics_only_when_its_database_answers() {
        let up = text(&reply(true));
        assert!(up.contains("workcopy_database_up{host=\"t\\\"1\"} 1\n"), "{up}");
        assert!(up.contains("workcopy_cases{host=\"t\\\"1\",state=\"blocked\"} 1\n"), "{up}");
        assert!(up.contains("state=\"blocked\"} 1700000100\n"), "{up}");
        assert!(up.contains("workcopy_case_log_records_total{host=\"t\\\"1\"} 42\n"), "{up}");
        assert!(up.contains("workcopy_staging_seconds_total{host=\"t\\\"1\"} 1.500\n"), "{up}");
        assert!(!up.contains("workcopy_audit_"), "{up}");
        let down = text(&reply(false));
        assert!(down.contains("workcopy_database_up{host=\"t\\\"1\"} 0\n"), "{down}");
        assert!(
            !down.contains("workcopy_cases") && !down.contains("workcopy_case_log_records_total"),
            "{down}"
        );
        assert!(down.contains("workcopy_file_opens_total") && down.ends_with("# EOF\n"), "{down}");
        // Every family is declared once, with its help, before its samples.
        for t in [&up, &down] {
            let mut declared = std::collections::HashSet::new();
            for line in t.lines() {
                if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let name = rest.split(' ').next().unwrap_or_default();
                    assert!(declared.insert(name.to_string()), "{name} declared twice");
                } else if !line.starts_with('#') {
                    let name = line.split('{').next().unwrap_or_default();
                    assert!(declared.contains(name), "{name} sampled before it is declared");
                }
            }
        }
    }

    #[test]
    fn an_unreachable_daemon_is_up_zero() {
        let mut out = Vec::new();
        assert!(render_down(&mut out, "transfer-1").is_ok());
        let text = String::from_utf8(out).unwrap_or_default();
        assert!(
            text.contains("workcopy_up{host=\"transfer-1\"} 0\n") && text.ends_with("# EOF\n"),
            "{text}"
        );
    }
}
