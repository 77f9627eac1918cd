//! `workcopy metrics` through the real daemon: the text Prometheus' own
//! `promtool check metrics` accepts, values that follow what happened, no
//! case or department in any label, staff only, the atomic `--output`, a
//! daemon that does not answer; and the shipped alert rules, checked and
//! unit-tested with `promtool`.

use crate::common::*;
use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

const PROMTOOL: &str = "/usr/bin/promtool";
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/doc/workcopy-alerts.yml");
const RULE_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/alerts_test.yml");

/// Runs promtool with `args`, `input` on its stdin; its combined output must be empty or "SUCCESS".
#[track_caller]
fn promtool(args: &[&str], input: &str) {
    assert!(
        std::path::Path::new(PROMTOOL).is_file(),
        "{PROMTOOL} is missing (Debian: apt-get install prometheus; .ci/run does this)"
    );
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}: {text}\n--- input ---\n{input}");
}

/// The samples of an exposition: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap_or_else(|e| panic!("{e}: {l}")))
        })
        .collect()
}

/// The value of `name` with `labels` (after the host label), e.g. `state="open"`.
#[track_caller]
fn value(m: &HashMap<String, f64>, name: &str, labels: &str) -> f64 {
    let host = host();
    let key = if labels.is_empty() {
        format!("{name}{{host=\"{host}\"}}")
    } else {
        format!("{name}{{host=\"{host}\",{labels}}}")
    };
    *m.get(&key).unwrap_or_else(|| panic!("no {key} in {m:?}"))
}

/// The daemon's `host` label: the test config's `host`.
fn host() -> String {
    "test-host".to_string()
}

#[test]
fn metrics_pass_promtool_and_follow_what_happened() {
    // User-space reads, so the bytes served are seen.
    let mut env = Env::ready_with(|o| o.extra_config = "passthrough = false\n".into());
    let text = env.cli(&["metrics"]).ok().stdout;
    promtool(&["check", "metrics"], &text);
    assert!(text.ends_with("# EOF\n"), "{text}");
    let m = samples(&text);
    assert_eq!(value(&m, "workcopy_up", ""), 1.0);
    assert_eq!(value(&m, "workcopy_database_up", ""), 1.0);
    assert_eq!(value(&m, "workcopy_cases", "state=\"exported\""), 0.0);
    assert!(!text.contains("workcopy_audit_"), "an audit before any ran: {text}");

    // A case exported and pulled, one open, one blocked by a changed GDB file.
    env.cli(&["case", "open", "MET-1", "--requester", ALICE, "GDB-0001", "GDB-0006"])
        .ok();
    env.cli(&["case", "approve", "MET-1"]).ok();
    env.cli(&["case", "open", "MET-2", "--requester", ALICE, "GDB-0002"]).ok();
    env.cli(&["case", "open", "MET-3", "--requester", ALICE, "GDB-0003"]).ok();
    let p = env.gdb_path("GDB-0003");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&p, &bytes).unwrap();
    env.cli(&["case", "approve", "MET-3"]).fails().stderr_has("blocked");
    env.pull_as(UID_A1, "MET-1");
    let reads = || env.events("MET-1").iter().filter(|e| *e == "file_read").count() == 2;
    assert!(env.wait_for(std::time::Duration::from_secs(10), reads), "read records missing");
    // Refusals: a transfer account, a stranger, a bad request.
    env.cli_as(Who::Dept(UID_A1), &["case", "open", "X-1", "--requester", ALICE, "GDB-0001"])
        .fails();
    env.cli_as(Who::Stranger, &["case", "list"]).fails();
    env.cli(&["case", "show", "NOPE-1"]).fails();
    env.cli(&["audit", "verify"]).ok();
    let before_audit = now();

    let text = env.cli_as(Who::Staff, &["metrics"]).ok().stdout;
    promtool(&["check", "metrics"], &text);
    let m = samples(&text);
    let size = |id: &str| env.file(id).size as f64;
    assert_eq!(value(&m, "workcopy_cases", "state=\"exported\""), 1.0);
    assert_eq!(value(&m, "workcopy_cases", "state=\"open\""), 1.0);
    assert_eq!(value(&m, "workcopy_cases", "state=\"blocked\""), 1.0);
    let since = value(&m, "workcopy_cases_oldest_since_timestamp_seconds", "state=\"blocked\"");
    assert!((before_audit - 120.0..=before_audit + 1.0).contains(&since), "{since}");
    assert!(!m.keys().any(|k| k.contains("state=\"closed\"") && k.contains("oldest")), "{text}");
    assert_eq!(value(&m, "workcopy_file_opens_total", ""), 2.0);
    assert!(value(&m, "workcopy_served_bytes_total", "") >= size("GDB-0001") + size("GDB-0006"));
    assert!(value(&m, "workcopy_staged_bytes_total", "") >= size("GDB-0001") + size("GDB-0006"));
    assert!(value(&m, "workcopy_staging_seconds_total", "") > 0.0);
    assert_eq!(value(&m, "workcopy_staging_bytes", ""), size("GDB-0001") + size("GDB-0006"));
    assert_eq!(value(&m, "workcopy_verification_failures_total", "check=\"staging\""), 1.0);
    assert_eq!(value(&m, "workcopy_verification_failures_total", "check=\"restart\""), 0.0);
    assert_eq!(value(&m, "workcopy_refusals_total", "kind=\"denied\""), 2.0);
    assert_eq!(value(&m, "workcopy_refusals_total", "kind=\"not_found\""), 1.0);
    assert_eq!(value(&m, "workcopy_audit_failed_logs", ""), 0.0);
    assert_eq!(value(&m, "workcopy_audit_checked_logs", ""), 3.0);
    let audited = value(&m, "workcopy_audit_last_run_timestamp_seconds", "");
    assert!((before_audit - 60.0..=before_audit + 1.0).contains(&audited), "{audited}");
    let head = env.cli(&["events"]).ok().stdout.lines().count() as f64;
    assert_eq!(value(&m, "workcopy_case_log_records_total", ""), head);
    // No label names a case, a department or a file.
    for secret in ["MET-", DEPT_A1, "GDB-0", "run1", ALICE] {
        assert!(!text.contains(secret), "{secret} in the metrics:\n{text}");
    }

    // Staff only.
    for who in [Who::Dept(UID_A1), Who::Stranger] {
        let out = env.cli_as(who, &["metrics"]).fails().code(1);
        assert!(out.stdout.is_empty(), "{out}");
    }
    let denied = env.cli_as(Who::Dept(UID_A1), &["metrics", "--output", "/tmp/never.prom"]);
    denied.fails().stderr_has("only workcopy staff may use `metrics`");
    assert!(!std::path::Path::new("/tmp/never.prom").exists());

    // --output: replaced atomically, readable by node_exporter, no temporary file left.
    let dir = env.root.join("textfile");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("workcopy.prom");
    std::fs::write(&file, "old\n").unwrap();
    env.cli(&["metrics", "--output", file.to_str().unwrap()]).ok();
    let written = std::fs::read_to_string(&file).unwrap();
    promtool(&["check", "metrics"], &written);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o644);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "a temporary file was left");

    // A tampered log: the next audit says so.
    assert_eq!(env.stop(), Some(0));
    env.sql("UPDATE case_events SET actor = 'mallory' WHERE case_ref = 'MET-2' AND seq = 1");
    env.start();
    env.cli(&["audit", "verify"]).fails();
    let m = samples(&env.cli(&["metrics"]).ok().stdout);
    assert_eq!(value(&m, "workcopy_audit_failed_logs", ""), 1.0);
    // The daemon started again: its own counters did, the register's did not.
    assert_eq!(value(&m, "workcopy_file_opens_total", ""), 0.0);
    assert_eq!(value(&m, "workcopy_case_log_records_total", ""), head);

    // No daemon: workcopy_up 0, exit status 3, the file replaced all the same.
    assert_eq!(env.stop(), Some(0));
    let out = env.cli(&["metrics", "--output", file.to_str().unwrap()]).fails().code(3);
    out.stderr_has("cannot reach the workcopy daemon");
    let down = std::fs::read_to_string(&file).unwrap();
    promtool(&["check", "metrics"], &down);
    assert_eq!(
        samples(&down),
        HashMap::from([(format!("workcopy_up{{host=\"{}\"}}", host()), 0.0)])
    );
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn the_shipped_alert_rules_pass_promtool_and_fire_when_they_should() {
    let out = Command::new(PROMTOOL).args(["check", "rules", RULES]).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(PROMTOOL).args(["test", "rules", RULE_TESTS]).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
