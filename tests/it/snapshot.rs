//! The CLI's output, human and `--json`, held against checked-in snapshots
//! (`tests/it/snapshots/`): one case through its whole life, a case that
//! fails verification, a case of another department, `status`, the catalog,
//! the views of a transfer account, `audit verify`, and a requester's own
//! requests and searches (self-service).
//!
//! What varies from run to run is replaced by placeholders (see
//! [`Normaliser`]); everything else, keys and their order included, must stay
//! byte for byte. `WORKCOPY_UPDATE_SNAPSHOTS=1` writes the snapshots from this
//! run instead of comparing (and removes snapshots no step writes any more).

use crate::common::*;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where the snapshots live.
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/snapshots");
/// Set to 1 to write the snapshots instead of comparing with them.
const UPDATE: &str = "WORKCOPY_UPDATE_SNAPSHOTS";

/// The case that goes through its whole life.
const CASE: &str = "NGC-2026-0100";
/// A case that fails verification and is rejected.
const REFUSED: &str = "NGC-2026-0101";
/// A case of another department (group B).
const OTHER: &str = "NGC-2026-0102";
/// A requester of DEPT-A1 (self-service), and their two requests.
const REQUESTER: &str = "carol@a1.example";
const REQUESTER_UID: u32 = 5001;
const REQUEST: &str = "REQ-2026-0001";
const REQUEST_REFUSED: &str = "REQ-2026-0002";

#[test]
fn cli_output_matches_the_snapshots() {
    // User space reads on every kernel, so `status` reads the same everywhere.
    // The output of one host on its own register (a shared register adds the
    // host to `status` and to approvals; tests/it/hosts.rs checks those).
    let mut env = Env::with(|o| {
        o.extra_config = "passthrough = false\n".into();
        o.sqlite_only = true;
    });
    // A requester of DEPT-A1, whose department's requests wait for staff.
    env.write_directory(
        &directory_toml(&format!(
            "\n[[user]]\nid = \"{REQUESTER}\"\ndepartment = \"{DEPT_A1}\"\naccount = {REQUESTER_UID}\n"
        ))
        .replace(
            &format!("transfer_account = {UID_A1}\n"),
            &format!("transfer_account = {UID_A1}\nself_service = \"review\"\n"),
        ),
    );
    env.start();
    env.import_catalog();
    let mut snap = Snapshots::new(&env);
    let a1 = Who::Dept(UID_A1);
    let catalog = env.catalog.display().to_string();

    snap.step("catalog-import", Who::Root, &["catalog", "import", &catalog], None, 0);
    snap.step("catalog-show-ambiguous", Who::Root, &["catalog", "show", "reads.fastq.gz"], None, 0);
    snap.step("catalog-show", Who::Root, &["catalog", "show", "GDB-0001", "--json"], None, 0);

    // Six files: one of another department of the group, a name with spaces,
    // two sharing a base name.
    let case_open = [
        "case",
        "open",
        CASE,
        "--requester",
        ALICE,
        "--department",
        DEPT_A1,
        "GDB-0001",
        "run1/S1_R2.fastq",
        "sample two R1.fastq",
        "GDB-0003",
        "run2/reads.fastq.gz",
        "S3.spring",
        "--json",
    ];
    snap.step("case-open", Who::Root, &case_open, None, 0);
    // One good descriptor, one the catalog does not know.
    let refused_open = ["case", "open", REFUSED, "--requester", ALICE, "GDB-0002", "nope.fastq"];
    snap.step("case-open-refused", Who::Root, &refused_open, None, 1);
    snap.step(
        "case-open-other",
        Who::Root,
        &["case", "open", OTHER, "--requester", BERT, "GDB-0007"],
        None,
        0,
    );
    snap.step("case-show-refused", Who::Root, &["case", "show", REFUSED, "--json"], None, 0);

    snap.step("case-approve", Who::Root, &["case", "approve", CASE], None, 0);
    snap.step("case-show", Who::Root, &["case", "show", CASE, "--json"], None, 0);
    snap.step("case-show-human", Who::Root, &["case", "show", CASE], None, 0);

    // The department reads one file through the mount: an access record.
    read_as(&env, UID_A1, &env.mnt.join(CASE).join("S1_R1.fastq"), &env.file("GDB-0001").sha256);
    let read_recorded = || env.events(CASE).iter().any(|e| e == "file_read");
    assert!(env.wait_for(Duration::from_secs(10), read_recorded), "no file_read record");
    let closed = || env.cli(&["status", "--json"]).ok().json()["pulls_in_progress"] == 0;
    assert!(env.wait_for(Duration::from_secs(10), closed), "the read file stays open");
    snap.step("status", Who::Root, &["status", "--json"], None, 0);
    snap.step("status-human", Who::Root, &["status"], None, 0);

    snap.step("case-list", Who::Staff, &["case", "list", "--json"], None, 0);
    snap.step_table("case-list-human", Who::Root, &["case", "list"], 0);
    snap.step("case-list-transfer", a1, &["case", "list", "--json"], None, 0);
    snap.step("case-show-transfer", a1, &["case", "show", CASE, "--json"], None, 0);
    snap.step("case-show-transfer-other", a1, &["case", "show", OTHER], None, 1);

    // The department pulls every file; each open's read record lands at release.
    env.pull_as(UID_A1, CASE);
    let settled = || {
        let ev = env.events(CASE);
        let count = |k: &str| ev.iter().filter(|e| *e == k).count();
        count("file_opened") == count("file_read")
    };
    assert!(env.wait_for(Duration::from_secs(10), settled), "read records missing");
    let sums = sums_list(&env.received_sums(CASE));
    snap.step("case-confirm", a1, &["case", "confirm", CASE, "--sha256sums", "-"], Some(&sums), 0);
    snap.step("case-close", Who::Root, &["case", "close", CASE], None, 0);
    let reject = ["case", "reject", REFUSED, "--reason", "nope.fastq is not in the GDB"];
    snap.step("case-reject", Who::Root, &reject, None, 0);
    snap.step("case-log", Who::Root, &["case", "log", CASE, "--json"], None, 0);
    snap.step_table("case-log-human", Who::Root, &["case", "log", CASE], 0);

    let sealed = env.sealed_log(CASE).display().to_string();
    snap.step("audit-verify", Who::Root, &["audit", "verify", "--json"], None, 0);
    snap.step("audit-verify-human", Who::Root, &["audit", "verify"], None, 0);
    snap.step(
        "audit-verify-sealed",
        Who::Root,
        &["audit", "verify", "--file", &sealed, "--json"],
        None,
        0,
    );
    snap.step(
        "audit-verify-sealed-human",
        Who::Root,
        &["audit", "verify", "--file", &sealed],
        None,
        0,
    );

    // A requester: searches their group's files, requests, follows, cancels.
    let me = Who::Dept(REQUESTER_UID);
    snap.step("catalog-search", me, &["catalog", "search", "*.fastq*"], None, 0);
    snap.step(
        "catalog-search-sample",
        me,
        &["catalog", "search", "--sample", "SAMPLE-004", "--json"],
        None,
        0,
    );
    snap.step(
        "catalog-search-other-group",
        me,
        &["catalog", "search", "--sample", "SAMPLE-007"],
        None,
        0,
    );
    let request = ["request", "open", "--ref", REQUEST, "GDB-0002", "sample two R1.fastq"];
    snap.step("request-open", me, &request, None, 0);
    let refused = ["request", "open", "--ref", REQUEST_REFUSED, "GDB-0001", "B1.spring"];
    snap.step("request-open-refused", me, &refused, None, 1);
    snap.step("request-list", me, &["request", "list"], None, 0);
    snap.step("request-show", me, &["request", "show", REQUEST, "--json"], None, 0);
    snap.step("request-show-human", me, &["request", "show", REQUEST], None, 0);
    snap.step_table("case-list-requests", Who::Root, &["case", "list", "--state", "open"], 0);
    snap.step("request-cancel", me, &["request", "cancel", REQUEST_REFUSED], None, 0);
    snap.step("request-denied", me, &["case", "approve", REQUEST], None, 1);

    snap.finish();
}

/// Reads a file with `cat` as a transfer account and checks its bytes.
#[track_caller]
fn read_as(env: &Env, uid: u32, path: &Path, sha256: &str) {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("cat")
        .arg(path)
        .current_dir(&env.root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = run_with_timeout(cmd, None, &format!("uid {uid}: cat {}", path.display())).ok();
    assert_eq!(sha256_hex(out.stdout.as_bytes()), sha256, "{} read wrong bytes", path.display());
}

/// Runs the steps, normalises their output and compares it with (or writes)
/// the snapshot files.
struct Snapshots<'a> {
    env: &'a Env,
    norm: Normaliser,
    update: bool,
    /// Every file name a step wrote or compared, in order.
    seen: Vec<String>,
    failures: Vec<String>,
}

impl<'a> Snapshots<'a> {
    fn new(env: &'a Env) -> Snapshots<'a> {
        Snapshots {
            env,
            norm: Normaliser::new(env),
            update: std::env::var(UPDATE).is_ok_and(|v| v == "1"),
            seen: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Runs `workcopy ARGS` as `who` and checks its exit status. A `--json`
    /// step's snapshot is its stdout (`NN-name.json`, which must stay JSON);
    /// any other step's (`NN-name.txt`) is the command line, stdout, and
    /// stderr and exit status when there are any.
    #[track_caller]
    fn step(&mut self, name: &str, who: Who, args: &[&str], stdin: Option<&str>, status: i32) {
        let out = self.run(who, args, stdin, status);
        if args.contains(&"--json") {
            assert!(out.stderr.is_empty(), "a --json step wrote to stderr:\n{out}");
            let text = self.norm.text(&out.stdout);
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
                panic!("{name}: the normalised output is not JSON ({e}):\n{text}");
            }
            self.check(name, "json", text);
        } else {
            let stdout = self.norm.text(&out.stdout);
            self.check(name, "txt", self.transcript(who, args, stdin, &stdout, &out));
        }
    }

    /// A human step whose output is one table: cells are normalised and the
    /// table laid out again, so a placeholder of another width than the value
    /// it replaces keeps the columns straight.
    #[track_caller]
    fn step_table(&mut self, name: &str, who: Who, args: &[&str], status: i32) {
        let out = self.run(who, args, None, status);
        let stdout = self.norm.table(&out.stdout);
        self.check(name, "txt", self.transcript(who, args, None, &stdout, &out));
    }

    #[track_caller]
    fn run(&self, who: Who, args: &[&str], stdin: Option<&str>, status: i32) -> Out {
        let out = match (who, stdin) {
            (Who::Root, None) => self.env.cli(args),
            (Who::Root, Some(input)) => self.env.cli_stdin(args, input),
            (_, None) => self.env.cli_as(who, args),
            (_, Some(input)) => self.env.cli_as_stdin(who, args, input),
        };
        out.code(status)
    }

    fn transcript(&self, who: Who, args: &[&str], stdin: Option<&str>, stdout: &str, out: &Out) -> String {
        let line: Vec<String> = args
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains(' ') {
                    format!("{a:?}")
                } else {
                    a.to_string()
                }
            })
            .collect();
        let mut s = format!("$ workcopy {}\n# as {who:?}", self.norm.text(&line.join(" ")));
        if let Some(input) = stdin {
            s.push_str(&format!(", {} line(s) on stdin", input.lines().count()));
        }
        s.push('\n');
        s.push_str(stdout);
        if !out.stderr.is_empty() {
            s.push_str("--- stderr ---\n");
            s.push_str(&self.norm.text(&out.stderr));
        }
        if out.status != 0 {
            s.push_str(&format!("--- exit status {} ---\n", out.status));
        }
        s
    }

    fn check(&mut self, name: &str, ext: &str, actual: String) {
        let file = format!("{:02}-{name}.{ext}", self.seen.len() + 1);
        let path = Path::new(DIR).join(&file);
        self.seen.push(file.clone());
        if self.update {
            std::fs::create_dir_all(DIR).unwrap_or_else(|e| panic!("cannot create {DIR}: {e}"));
            std::fs::write(&path, &actual).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            return;
        }
        match std::fs::read_to_string(&path) {
            Err(e) => self.failures.push(format!("{file}: cannot read the snapshot ({e})")),
            Ok(expected) => {
                if let Some(diff) = first_difference(&expected, &actual) {
                    self.failures.push(format!("{file}: {diff}"));
                }
            }
        }
    }

    /// Fails with every difference, or (updating) removes snapshots no step wrote.
    fn finish(self) {
        // A missing directory shows as a missing snapshot per step.
        let stale: Vec<PathBuf> = std::fs::read_dir(DIR)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                !self.seen.iter().any(|s| s == name)
            })
            .collect();
        if self.update {
            for p in &stale {
                std::fs::remove_file(p).unwrap_or_else(|e| panic!("cannot remove {}: {e}", p.display()));
            }
            return;
        }
        let mut failures = self.failures;
        failures.extend(stale.iter().map(|p| format!("{}: no step writes this snapshot", p.display())));
        assert!(
            failures.is_empty(),
            "the CLI output differs from the snapshots in {DIR}:\n\n{}\n\nIf the change is intended, run with {UPDATE}=1 and review the diff.",
            failures.join("\n\n")
        );
    }
}

/// The first line where two texts differ, for the failure message.
fn first_difference(expected: &str, actual: &str) -> Option<String> {
    if expected == actual {
        return None;
    }
    let (mut e, mut a) = (expected.lines(), actual.lines());
    let mut n = 1;
    loop {
        match (e.next(), a.next()) {
            (Some(x), Some(y)) if x == y => n += 1,
            (None, None) => return Some("the texts differ only in their line endings".into()),
            (x, y) => {
                let show = |l: Option<&str>| l.map_or_else(|| "(end of text)".to_string(), |l| format!("{l:?}"));
                return Some(format!("line {n} differs\n  expected: {}\n  actual:   {}", show(x), show(y)));
            }
        }
    }
}

/// Replaces what differs between runs and machines, and nothing else:
///
/// * the test's temporary directory → `<path>` (what follows it stays);
/// * RFC 3339 timestamps → `<ts>`, except the catalog's `submitted_at`
///   values, which the harness fixes;
/// * 64-digit lower-case hex → `<hash>` (log record hashes, which cover
///   timestamps), except the catalog files' sha256, which the harness fixes,
///   and the all-zero hash a case log starts from;
/// * the numbers of the keys in [`VOLATILE_NUMBERS`] → `0`, so they stay numbers;
/// * log actors other than `root` and the daemon (`workcopy`) → `<user>`:
///   the name of another uid comes from the machine's passwd;
/// * the duration of `catalog import` (`in 0.1s`) → `in <duration>`;
/// * the daemon's uptime in `status` (`up  since <ts>, 5s`) → `<uptime>`.
///
/// uids stay: the harness runs the CLI as fixed uids.
struct Normaliser {
    root: String,
    stable_timestamps: HashSet<String>,
    stable_hashes: HashSet<String>,
}

/// The `prev_hash` of a case log's first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Keys whose numbers are the clock's or the kernel's.
const VOLATILE_NUMBERS: &[&str] = &["state_since", "pid", "uptime_secs"];
/// Actor names that are the same on every machine.
const STABLE_ACTORS: &[&str] = &["root", "workcopy"];

impl Normaliser {
    fn new(env: &Env) -> Normaliser {
        Normaliser {
            root: env.root.display().to_string(),
            stable_timestamps: env.files.iter().map(|f| f.submitted_at.clone()).collect(),
            stable_hashes: env
                .files
                .iter()
                .map(|f| f.sha256.clone())
                .chain(std::iter::once(GENESIS.to_string()))
                .collect(),
        }
    }

    /// Normalises output text (human or JSON).
    fn text(&self, s: &str) -> String {
        let s = s.replace(&self.root, "<path>");
        let s = replace_tokens(&s, |t| {
            if let Some(n) = timestamp_len(t) {
                let ts = &t[..n];
                return Some((
                    n,
                    if self.stable_timestamps.contains(ts) {
                        ts.to_string()
                    } else {
                        "<ts>".into()
                    },
                ));
            }
            if let Some(n) = hash_len(t) {
                let h = &t[..n];
                return Some((
                    n,
                    if self.stable_hashes.contains(h) {
                        h.to_string()
                    } else {
                        "<hash>".into()
                    },
                ));
            }
            if let Some(n) = duration_len(t) {
                return Some((n, "in <duration>".into()));
            }
            None
        });
        let s = VOLATILE_NUMBERS.iter().fold(s, |s, key| replace_number(&s, key));
        let s = replace_uptime(&s);
        replace_actor(&s)
    }

    /// Normalises a table as the CLI prints it (upper-case column names, each
    /// column as wide as its widest cell plus two spaces) and lays it out again.
    fn table(&self, s: &str) -> String {
        let mut lines = s.lines();
        let Some(header) = lines.next() else {
            return String::new();
        };
        let head: Vec<char> = header.chars().collect();
        let starts: Vec<usize> = (0..head.len())
            .filter(|&i| head[i] != ' ' && (i == 0 || head[i - 1] == ' '))
            .collect();
        let cells = |line: &str| -> Vec<String> {
            let chars: Vec<char> = line.chars().collect();
            starts
                .iter()
                .enumerate()
                .map(|(k, &from)| {
                    let to = starts.get(k + 1).copied().unwrap_or(chars.len()).min(chars.len());
                    let cell: String = chars[from.min(to)..to].iter().collect();
                    cell.trim_end().to_string()
                })
                .collect()
        };
        let names = cells(header);
        let mut rows = vec![names.clone()];
        for line in lines {
            let row = names.iter().zip(cells(line)).map(|(col, c)| self.cell(col, &c)).collect();
            rows.push(row);
        }
        let mut widths = vec![0; starts.len()];
        for row in &rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let n = row.len();
            for (i, c) in row.iter().enumerate() {
                out.push_str(c);
                if i + 1 < n {
                    out.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
                }
            }
            out.push('\n');
        }
        out
    }

    /// One table cell: in the `ACTOR` column `name (uid)`, elsewhere any text.
    fn cell(&self, column: &str, c: &str) -> String {
        if column != "ACTOR" {
            return self.text(c);
        }
        match c.split_once(" (") {
            Some((name, uid)) if !STABLE_ACTORS.contains(&name) => format!("<user> ({uid}"),
            _ => c.to_string(),
        }
    }
}

/// Rebuilds `s`, letting `f` replace a token that starts where a word starts:
/// `f` gets the rest of the text and returns the token's length and its replacement.
fn replace_tokens(s: &str, f: impl Fn(&str) -> Option<(usize, String)>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut prev: Option<char> = None;
    while let Some(c) = s[i..].chars().next() {
        let word_start = !prev.is_some_and(|p| p.is_ascii_alphanumeric());
        let hit = if word_start { f(&s[i..]) } else { None };
        if let Some((n, with)) = hit {
            out.push_str(&with);
            prev = s[..i + n].chars().next_back();
            i += n;
            continue;
        }
        out.push(c);
        prev = Some(c);
        i += c.len_utf8();
    }
    out
}

/// The length of an RFC 3339 timestamp at the start of `t`
/// (`2026-05-04T09:30:00.123456Z`, `…+00:00`).
fn timestamp_len(t: &str) -> Option<usize> {
    let b = t.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd";
    if b.len() < shape.len() {
        return None;
    }
    for (c, p) in b.iter().zip(shape) {
        let ok = if *p == b'd' { c.is_ascii_digit() } else { c == p };
        if !ok {
            return None;
        }
    }
    let mut n = shape.len();
    if b.get(n) == Some(&b'.') {
        n += 1;
        while b.get(n).is_some_and(u8::is_ascii_digit) {
            n += 1;
        }
    }
    match b.get(n) {
        Some(b'Z') => Some(n + 1),
        Some(b'+' | b'-') if b.len() >= n + 6 => Some(n + 6),
        _ => Some(n),
    }
}

/// The length of a sha256 in lower-case hex at the start of `t`.
fn hash_len(t: &str) -> Option<usize> {
    let b = t.as_bytes();
    let n = b.iter().take_while(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)).count();
    (n == 64 && !b.get(n).is_some_and(u8::is_ascii_alphanumeric)).then_some(n)
}

/// The length of `in 1.5s` at the start of `t` (the time `catalog import` took).
fn duration_len(t: &str) -> Option<usize> {
    let rest = t.strip_prefix("in ")?;
    let int = rest.bytes().take_while(u8::is_ascii_digit).count();
    let frac = rest[int..].strip_prefix('.')?.bytes().take_while(u8::is_ascii_digit).count();
    let n = 3 + int + 1 + frac;
    (int > 0 && frac > 0 && t[n..].starts_with('s')).then_some(n + 1)
}

/// Replaces what follows `since <ts>, ` on `status`'s `up` line with `<uptime>`.
fn replace_uptime(s: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for line in s.split('\n') {
        match line.split_once(", ") {
            Some((head, _)) if line.starts_with("up ") && head.contains("since ") => out.push(format!("{head}, <uptime>")),
            _ => out.push(line.to_string()),
        }
    }
    out.join("\n")
}

/// Replaces the number after `"key":` (compact) or `"key": ` (pretty) with 0.
fn replace_number(s: &str, key: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let pattern = format!("\"{key}\":");
    while let Some(at) = rest.find(&pattern) {
        let after = at + pattern.len();
        let spaces = rest[after..].bytes().take_while(|&c| c == b' ').count();
        let digits = rest[after + spaces..].bytes().take_while(u8::is_ascii_digit).count();
        out.push_str(&rest[..after + spaces]);
        out.push_str(if digits > 0 { "0" } else { "" });
        rest = &rest[after + spaces + digits..];
    }
    out.push_str(rest);
    out
}

/// Replaces the name of a JSON `"actor"` other than [`STABLE_ACTORS`] with `<user>`.
fn replace_actor(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let pattern = "\"actor\": \"";
    while let Some(at) = rest.find(pattern) {
        let name_at = at + pattern.len();
        let Some(len) = rest[name_at..].find('"') else {
            break;
        };
        let name = &rest[name_at..name_at + len];
        out.push_str(&rest[..name_at]);
        out.push_str(if STABLE_ACTORS.contains(&name) { name } else { "<user>" });
        rest = &rest[name_at + len..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_normaliser_keeps_structure_and_stable_values() {
    let n = Normaliser {
        root: "/tmp/wc-x1".into(),
        stable_timestamps: ["2025-03-01T10:00:00Z".to_string()].into(),
        stable_hashes: ["a".repeat(64)].into(),
    };
    let json = format!(
        "{{\n  \"at\": \"2026-05-04T09:30:00.123456789Z\",\n  \"submitted\": \"2025-03-01T10:00:00Z\",\n  \"sha256\": \"{}\",\n  \"hash\": \"{}\",\n  \"actor\": \"wc-xfer-a\",\n  \"uid\": 2001,\n  \"pid\": 4711,\n  \"state_since\": 1777777777,\n  \"mount_point\": \"/tmp/wc-x1/mnt\",\n  \"seq\": 3\n}}",
        "a".repeat(64),
        "0123456789abcdef".repeat(4)
    );
    assert_eq!(
        n.text(&json),
        format!(
            "{{\n  \"at\": \"<ts>\",\n  \"submitted\": \"2025-03-01T10:00:00Z\",\n  \"sha256\": \"{}\",\n  \"hash\": \"<hash>\",\n  \"actor\": \"<user>\",\n  \"uid\": 2001,\n  \"pid\": 0,\n  \"state_since\": 0,\n  \"mount_point\": \"<path>/mnt\",\n  \"seq\": 3\n}}",
            "a".repeat(64)
        )
    );
    assert_eq!(n.text("\"actor\": \"root\""), "\"actor\": \"root\"");
    assert_eq!(
        n.text("imported 8 rows in 0.0s: 0 added; bin 1.5s; in 2s"),
        "imported 8 rows in <duration>: 0 added; bin 1.5s; in 2s"
    );
    // A longer hex run, or one inside a word, is not a sha256.
    let long = "b".repeat(65);
    assert_eq!(n.text(&long), long);
    let table = "#  TIME                    ACTOR               EVENT\n\
                 1  2026-05-04T09:30:00.1Z  root (0)            opened\n\
                 2  2026-05-04T09:30:01Z    a-long-name (2001)  received\n";
    assert_eq!(
        n.table(table),
        "#  TIME  ACTOR          EVENT\n1  <ts>  root (0)       opened\n2  <ts>  <user> (2001)  received\n"
    );
}
