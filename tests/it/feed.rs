//! The event feed through the real daemon and CLI: every case-log record in
//! commit order with its feed number, resumed after a number and across a
//! restart, followed as records commit (and how fast), for staff only,
//! bounded for a reader that stops reading, and on a register two hosts share.

use crate::common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `events --json ARGS…` as root, one object per line.
#[track_caller]
fn feed(env: &Env, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["events", "--json"];
    all.extend_from_slice(args);
    let out = env.cli(&all).ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{out}")))
        .collect()
}

fn seqs(records: &[serde_json::Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// Opens a verified case and approves it; returns when it is exported.
#[track_caller]
fn exported(env: &Env, case_ref: &str, file: &str) {
    env.cli(&["case", "open", case_ref, "--requester", ALICE, file]).ok();
    env.cli(&["case", "approve", case_ref]).ok();
}

/// Every record of the feed is its case log's record, in the log's order.
#[track_caller]
fn matches_the_case_logs(env: &Env, records: &[serde_json::Value]) {
    let mut refs: Vec<&str> = records.iter().map(|r| r["case_ref"].as_str().unwrap()).collect();
    refs.sort_unstable();
    refs.dedup();
    for r in refs {
        let log = env.cli(&["case", "log", r, "--json"]).ok().json();
        let log = log.as_array().unwrap();
        let fed: Vec<&serde_json::Value> = records.iter().filter(|x| x["case_ref"] == r).collect();
        assert_eq!(fed.len(), log.len(), "{r}: the feed holds {} of {} records", fed.len(), log.len());
        for (f, l) in fed.iter().zip(log) {
            assert_eq!(f["case_seq"], l["seq"], "{r}: {f} is not {l}");
            for k in ["at", "actor", "uid", "event", "details", "prev_hash", "hash"] {
                assert_eq!(f[k], l[k], "{r} #{}: {k}", l["seq"]);
            }
        }
    }
}

#[test]
fn the_feed_is_every_record_in_commit_order_and_resumes_across_a_restart() {
    let mut env = Env::ready();
    exported(&env, "FEED-1", "GDB-0001");
    env.cli(&["case", "open", "FEED-2", "--requester", ALICE, "GDB-0002"]).ok();
    env.cli(&["case", "reject", "FEED-2", "--reason", "duplicate"]).ok();
    env.pull_as(UID_A1, "FEED-1");
    env.cli_as_stdin(
        Who::Dept(UID_A1),
        &["case", "confirm", "FEED-1", "--sha256sums", "-"],
        &sums_list(&env.received_sums("FEED-1")),
    )
    .ok();

    let all = feed(&env, &[]);
    let n = all.len() as u64;
    assert_eq!(seqs(&all), (1..=n).collect::<Vec<u64>>(), "numbers without gaps");
    matches_the_case_logs(&env, &all);
    // Commit order across cases: FEED-1 was exported before FEED-2 was
    // opened, and FEED-2 rejected (and sealed) before FEED-1 was received.
    let at = |r: &str, e: &str| all.iter().position(|x| x["case_ref"] == r && x["event"] == e).unwrap();
    assert!(at("FEED-1", "exported") < at("FEED-2", "opened"));
    assert!(at("FEED-2", "sealed") < at("FEED-1", "received"));

    // The human form: one line per record, starting with its number.
    let human = env.cli(&["events"]).ok();
    let lines: Vec<&str> = human.stdout.lines().collect();
    assert_eq!(lines.len() as u64, n, "{human}");
    assert!(lines[0].starts_with("1  ") && lines[0].contains("FEED-1 #1  opened"), "{human}");

    // Resumption after any number.
    for k in [0, 1, n / 2, n - 1, n] {
        let rest = feed(&env, &["--since", &k.to_string()]);
        assert_eq!(rest[..], all[k as usize..], "after {k}");
    }
    // A number this register never gave is refused, not waited for.
    env.cli(&["events", "--since", &(n + 1).to_string()])
        .fails()
        .stderr_has(&format!("past the last record of this register ({n})"));
    env.cli(&["events", "--follow", "--since", &(n + 5).to_string()])
        .fails()
        .stderr_has("past the last record");

    // Across a restart: the same records, the same numbers, and new ones continue them.
    assert_eq!(env.stop(), Some(0), "{}", env.daemon_log());
    env.start();
    assert!(feed(&env, &["--since", &n.to_string()]).is_empty());
    assert_eq!(feed(&env, &[]), all, "the feed changed across the restart");
    env.cli(&["case", "close", "FEED-1"]).ok();
    let after = feed(&env, &["--since", &n.to_string()]);
    assert_eq!(seqs(&after)[0], n + 1, "{after:?}");
    assert_eq!(
        after.iter().map(|r| r["event"].as_str().unwrap()).collect::<Vec<_>>(),
        ["closed", "sealed"]
    );
    let whole = feed(&env, &[]);
    assert_eq!(seqs(&whole), (1..=n + 2).collect::<Vec<u64>>());
    matches_the_case_logs(&env, &whole);
}

#[test]
fn only_staff_read_the_feed() {
    let env = Env::ready();
    env.cli(&["case", "open", "STAFF-1", "--requester", ALICE, "GDB-0001"]).ok();
    env.cli_as(Who::Staff, &["events"]).ok().stdout_has("STAFF-1 #1  opened");
    for args in [&["events"][..], &["events", "--follow", "--json"][..]] {
        let out = env.cli_as(Who::Dept(UID_A1), args).fails().code(1);
        out.clone().stderr_has("only workcopy staff may use `events`");
        assert!(out.stdout.is_empty() && !out.stderr.contains("STAFF-1"), "{out}");
        let out = env.cli_as(Who::Stranger, args).fails().code(1);
        out.clone().stderr_has("neither workcopy staff nor a department's transfer account");
        assert!(out.stdout.is_empty(), "{out}");
    }
}

/// `workcopy events --follow --json` as root, its lines delivered with the
/// moment each was read.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<(Instant, serde_json::Value)>,
}

impl Follower {
    fn start(env: &Env, since: u64) -> Follower {
        let mut child = Command::new(BIN)
            .args(["--socket", env.socket.to_str().unwrap(), "events", "--follow", "--json", "--since"])
            .arg(since.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
                if tx.send((Instant::now(), v)).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// The next line, within `timeout`.
    #[track_caller]
    fn next(&mut self, timeout: Duration) -> (Instant, serde_json::Value) {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.child.kill();
                let mut err = String::new();
                let _ = self.child.stderr.take().map(|mut s| s.read_to_string(&mut err));
                panic!("no line from the follower within {timeout:?} ({e}); its stderr: {err}")
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_follower_sees_each_commit_at_once_and_outlives_the_write_timeout() {
    let env = Env::ready();
    env.cli(&["case", "open", "FOL-0", "--requester", ALICE, "GDB-0001"]).ok();
    let mut follower = Follower::start(&env, 0);
    let (_, first) = follower.next(Duration::from_secs(10));
    assert_eq!((first["seq"].as_u64(), first["case_ref"].as_str()), (Some(1), Some("FOL-0")));

    // Commit → line printed, measured from before the command that commits
    // (its own start-up included, so this bounds the latency from above).
    let mut worst = Duration::ZERO;
    for i in 1..=5u64 {
        let started = Instant::now();
        env.cli(&["case", "open", &format!("FOL-{i}"), "--requester", ALICE, "GDB-0002"])
            .ok();
        let (seen, line) = follower.next(Duration::from_secs(10));
        assert_eq!(line["seq"].as_u64(), Some(1 + i), "{line}");
        assert_eq!(line["case_ref"], format!("FOL-{i}"));
        worst = worst.max(seen.duration_since(started));
    }
    assert!(worst < Duration::from_secs(2), "a committed record took {worst:?} to be printed");
    eprintln!("follow latency (command start to line printed), worst of 5: {worst:?}");

    // Idle for longer than the daemon's 30 s write timeout: still following.
    std::thread::sleep(Duration::from_secs(35));
    assert!(follower.child.try_wait().unwrap().is_none(), "the idle follower ended");
    let started = Instant::now();
    env.cli(&["case", "open", "FOL-LATE", "--requester", ALICE, "GDB-0002"]).ok();
    let (seen, line) = follower.next(Duration::from_secs(10));
    assert_eq!((line["seq"].as_u64(), line["case_ref"].as_str()), (Some(7), Some("FOL-LATE")));
    assert!(seen.duration_since(started) < Duration::from_secs(2));
}

/// A feed of `n` more records, written straight into the database while the
/// daemon is stopped (a chain of `noted` records on one case, numbered on).
fn write_records(env: &Env, case_ref: &str, n: usize) {
    let code = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=30)
ref, n = sys.argv[2], int(sys.argv[3])
count, head = c.execute("SELECT event_count, head_hash FROM cases WHERE ref = ?", (ref,)).fetchone()
feed = c.execute("SELECT seq FROM feed_head").fetchone()[0]
pad = "x" * 400
rows = [(ref, count + i, "2026-01-01T00:00:00Z", "root", 0, "noted", '{"pad":"%s"}' % pad, head, "h%d" % i, feed + i) for i in range(1, n + 1)]
c.executemany("INSERT INTO case_events (case_ref, seq, at, actor, uid, event, details, prev_hash, hash, feed_seq) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
c.execute("UPDATE cases SET event_count = ? WHERE ref = ?", (count + n, ref))
c.execute("UPDATE feed_head SET seq = ?", (feed + n,))
c.commit()
"#;
    let out = Command::new("python3")
        .args(["-c", code])
        .arg(env.database())
        .arg(case_ref)
        .arg(n.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_reader_that_stops_reading_is_held_back_then_dropped() {
    // The records are written straight into the SQLite file.
    let mut env = Env::ready_with(|o| o.sqlite_only = true);
    env.cli(&["case", "open", "BIG-1", "--requester", ALICE, "GDB-0001"]).ok();
    assert_eq!(env.stop(), Some(0));
    // About 10 MB of feed: far more than the socket buffers hold.
    write_records(&env, "BIG-1", 20_000);
    env.start();
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", env.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().to_string();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let before = rss();
    let mut s = std::os::unix::net::UnixStream::connect(&env.socket).unwrap();
    let body = br#"{"op":"events","since":0,"follow":true}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    s.write_all(&frame).unwrap();
    // Not reading: the daemon writes what the socket takes, then waits.
    std::thread::sleep(Duration::from_secs(3));
    let held = rss();
    assert!(
        held < before + 32 * 1024,
        "the daemon's memory grew from {before} KiB to {held} KiB for one stalled reader"
    );
    env.cli(&["status"]).ok();
    // A write stalled for 30 s ends the connection: reading now finds its end
    // long before the whole feed.
    std::thread::sleep(Duration::from_secs(32));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        !got.is_empty() && got.len() < 4 << 20,
        "{} bytes arrived for a stalled reader",
        got.len()
    );
    assert!(env.running(), "{}", env.daemon_log());
    env.cli(&["events", "--since", "20000"]).ok().stdout_has("#20001  noted");
}

/// Two hosts on one PostgreSQL register: each one's follower is told of the
/// other's commits at once (the database's notifications, not polling), and
/// writers on both hosts at once leave one feed, the same from either host,
/// without gaps.
#[test]
fn on_a_shared_register_followers_see_every_hosts_commits() {
    let url = pg_database();
    let host_env = |host: &str, gdb: Option<&std::path::Path>| {
        let (url, host, gdb) = (url.clone(), host.to_string(), gdb.map(|p| p.to_path_buf()));
        Env::with(move |o| {
            o.database_url = Some(url);
            o.host = Some(host);
            o.gdb_root = gdb;
        })
    };
    let mut a = host_env("host-a", None);
    a.start();
    a.import_catalog();
    let mut b = host_env("host-b", Some(&a.gdb));
    b.start();

    let head = |env: &Env| feed(env, &[]).last().map_or(0, |r| r["seq"].as_u64().unwrap());
    let mut on_b = Follower::start(&b, head(&b));
    let mut worst = Duration::ZERO;
    for i in 1..=5 {
        let started = Instant::now();
        a.cli(&["case", "open", &format!("PG-A{i}"), "--requester", ALICE, "GDB-0001"]).ok();
        let (seen, line) = on_b.next(Duration::from_secs(10));
        assert_eq!(line["case_ref"], format!("PG-A{i}"), "{line}");
        worst = worst.max(seen.duration_since(started));
    }
    assert!(worst < Duration::from_secs(2), "host b printed host a's record after {worst:?}");

    // Writers on both hosts at once.
    let writers: Vec<_> = [&a, &b]
        .into_iter()
        .enumerate()
        .map(|(h, env)| {
            let (bin, socket) = (BIN.to_string(), env.socket.clone());
            std::thread::spawn(move || {
                for i in 0..15 {
                    let ok = Command::new(&bin)
                        .arg("--socket")
                        .arg(&socket)
                        .args(["case", "open", &format!("PG-W{h}-{i}"), "--requester", ALICE, "GDB-0002"])
                        .stdout(Stdio::null())
                        .status()
                        .unwrap()
                        .success();
                    assert!(ok, "case open PG-W{h}-{i}");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let from_a = feed(&a, &[]);
    let from_b = feed(&b, &[]);
    assert_eq!(from_a, from_b, "the hosts read different feeds");
    assert_eq!(seqs(&from_a), (1..=from_a.len() as u64).collect::<Vec<u64>>());
    matches_the_case_logs(&a, &from_a);
    // The follower on b got every one of them, in order.
    let start = from_a.iter().position(|r| r["case_ref"] == "PG-A5").unwrap() + 1;
    for want in &from_a[start..] {
        let (_, got) = on_b.next(Duration::from_secs(10));
        assert_eq!(&got, want);
    }
}
