//! A department's transfer account is a local user of the transfer host: it
//! must not be able to take service from the other departments or staff.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs a Python snippet as `uid` (the socket path is `sys.argv[1]`).
fn python_as(uid: u32, env: &Env, code: &str) -> std::process::Child {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(["/usr/bin/python3", "-c", code])
        .arg(&env.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs")
}

fn daemon_fds(env: &Env) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", env.pid())).unwrap().count()
}

#[test]
fn passed_descriptors_never_accumulate_in_the_daemon() {
    let env = Env::ready();
    let before = daemon_fds(&env);
    // 2,000 frames, each carrying 12 descriptors: refused, and every one closed.
    let flood = r#"
import socket, sys, os
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(12)]
refused = 0
for i in range(2000):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    try:
        socket.send_fds(s, [b"\x00\x00\x00\x10{\"op\":\"status\"}"], fds)
        s.settimeout(5)
        if b"descriptor" in s.recv(4096):
            refused += 1
    except OSError:
        pass
    s.close()
print(refused)
"#;
    let out = python_as(UID_A1, &env, flood).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    assert!(refused > 1900, "frames with descriptors are refused with a reason: {refused}");
    let after = daemon_fds(&env);
    assert!(
        after <= before + 8,
        "the daemon holds {after} descriptors, {before} before the flood"
    );
    // And it still works for everyone.
    env.cli(&["status"]).ok();
    env.cli_as(Who::Dept(UID_A2), &["case", "list"]).ok();
}

#[test]
fn one_account_cannot_take_the_socket_from_the_others() {
    let env = Env::ready();
    // 300 idle connections from one transfer account, held open.
    let hog = r#"
import socket, sys, time
held = []
for i in range(300):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    held.append(s)
print("holding", flush=True)
time.sleep(30)
"#;
    let mut child = python_as(UID_A1, &env, hog);
    let mut line = String::new();
    {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
        r.read_line(&mut line).unwrap();
    }
    assert_eq!(line.trim(), "holding");
    std::thread::sleep(Duration::from_millis(300));
    // Another department, and staff, are served at once.
    env.cli_as(Who::Dept(UID_A2), &["case", "list"]).ok();
    env.cli_as(Who::Dept(UID_B1), &["case", "list"]).ok();
    env.cli_as(Who::Staff, &["status"]).ok();
    // The hog itself is held to its share: its next connection is closed.
    env.cli_as(Who::Dept(UID_A1), &["case", "list"]).fails();
    assert!(
        env.daemon_log().contains("too many connections from this uid"),
        "{}",
        env.daemon_log()
    );
    let _ = child.kill();
    let _ = child.wait();
    // Once it lets go, it is served again.
    assert!(
        env.wait_for(Duration::from_secs(10), || env.cli_as(Who::Dept(UID_A1), &["case", "list"]).status
            == 0)
    );
}

#[test]
fn a_catalog_import_of_a_device_or_a_huge_file_is_refused_at_once() {
    let env = Env::ready();
    env.cli(&["catalog", "import", "/dev/zero"])
        .fails()
        .stderr_has("the catalog must be a regular file, not a character device");
    let huge = env.root.join("huge.tsv");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(9 << 30).unwrap();
    env.cli(&["catalog", "import", huge.to_str().unwrap()])
        .fails()
        .stderr_has("split it into several imports");
    env.cli(&["status"]).ok();
}

fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn a_catalog_import_stops_when_its_client_goes_away() {
    let env = Env::ready();
    // A header, then almost 8 GiB of a line that never ends (sparse, so cheap
    // to make): reading it takes the daemon several seconds.
    let endless = env.root.join("endless.tsv");
    std::fs::write(&endless, "file_id\tpath\tdepartment\tsize\tsha256\tsubmitted_at\n").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&endless)
        .unwrap()
        .set_len((8 << 30) - 1)
        .unwrap();
    let mut cli = Command::new(BIN)
        .args([
            "--socket",
            env.socket.to_str().unwrap(),
            "catalog",
            "import",
            endless.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let _ = cli.kill();
    let _ = cli.wait();
    std::thread::sleep(Duration::from_millis(300));
    let ticks_per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap_or(100) as u64;
    let before = cpu_ticks(env.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(env.pid()) - before;
    assert!(
        used * 10 < ticks_per_s * 2 * 3,
        "the daemon used {used} ticks in 2 s after the client left"
    );
    assert!(env.daemon_log().contains("client hung up"), "{}", env.daemon_log());
    env.cli(&["status"]).ok();
}

#[test]
fn an_account_holding_its_share_of_open_files_gets_emfile_and_only_it() {
    let env = Env::ready_with(|o| o.extra_config = "max_open_files_per_account = 50\n".into());
    for (r, who, file) in [("HOLD-A1", ALICE, "GDB-0001"), ("HOLD-A2", ANNA, "GDB-0004")] {
        env.cli(&["case", "open", r, "--requester", who, file]).ok();
        env.cli(&["case", "approve", r]).ok();
    }
    let name = |r: &str| env.case_files(r)[0].0.clone();
    let a1_file = env.mnt.join("HOLD-A1").join(name("HOLD-A1"));
    // DEPT-A1's account opens its file 60 times and holds them.
    let hold = format!(
        r#"
import errno, os, sys, time
held, refused = [], 0
for i in range(60):
    try:
        held.append(os.open({path:?}, os.O_RDONLY))
    except OSError as e:
        if e.errno == errno.EMFILE:
            refused += 1
        else:
            raise
print(len(held), refused, flush=True)
time.sleep(30)
"#,
        path = a1_file.to_str().unwrap()
    );
    let mut child = python_as(UID_A1, &env, &hold);
    let mut line = String::new();
    {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
        r.read_line(&mut line).unwrap();
    }
    assert_eq!(line.trim(), "50 10", "held and refused opens");
    // Another department reads its own case; staff are served.
    env.pull_as(UID_A2, "HOLD-A2");
    env.cli_as(Who::Staff, &["status"]).ok();
    env.cli(&["case", "show", "HOLD-A1"]).ok();
    let _ = child.kill();
    let _ = child.wait();
    // Once it lets go, the account can open again.
    assert!(env.wait_for(Duration::from_secs(10), || {
        let mut cmd = Command::new("setpriv");
        cmd.args([&format!("--reuid={UID_A1}"), &format!("--regid={UID_A1}"), "--clear-groups", "cat"])
            .arg(&a1_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.status().map(|s| s.success()).unwrap_or(false)
    }));
}

#[test]
fn a_descriptor_that_blocks_when_closed_does_not_stall_the_daemon() {
    let env = Env::ready();
    // Sockets set to linger 20 s with unsent data to a peer that never
    // reads: the last close of each blocks. They are passed to the daemon,
    // which closes them; then their sender lets go of its own copies.
    let linger = r#"
import socket, struct, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(8)
peers, clients, held = [], [], []
for i in range(4):
    c = socket.socket(); c.connect(srv.getsockname()); peers.append(srv.accept()[0])
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 20))
    c.setblocking(False)
    try:
        while True:
            c.send(b"x" * 65536)
    except BlockingIOError:
        pass
    # Half a request, with the socket: the daemon holds it while it waits.
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); u.connect(sys.argv[1])
    socket.send_fds(u, [b"\x00\x00\x00\x10{"], [c.fileno()])
    clients.append(c); held.append(u)
time.sleep(0.3)
for c in clients:
    c.close()   # not the last copy: the daemon holds one
for u in held:
    u.close()   # the daemon drops its copy now: the last close, which lingers
print("sent", flush=True)
time.sleep(25)
"#;
    let mut child = python_as(UID_A1, &env, linger);
    let mut line = String::new();
    {
        use std::io::BufRead;
        let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
        r.read_line(&mut line).unwrap();
    }
    assert_eq!(line.trim(), "sent");
    std::thread::sleep(Duration::from_millis(500));
    // The daemon answers at once, although four closes are blocked.
    let t = std::time::Instant::now();
    env.cli(&["status"]).ok();
    env.cli_as(Who::Dept(UID_A2), &["case", "list"]).ok();
    assert!(t.elapsed() < Duration::from_secs(5), "the daemon took {:?}", t.elapsed());
    let _ = child.kill();
    let _ = child.wait();
}

/// Every record of a case log, read a page of `limit` at a time.
fn paged_log(env: &Env, case_ref: &str, limit: u32) -> Vec<serde_json::Value> {
    let mut all: Vec<serde_json::Value> = Vec::new();
    let mut since = 0;
    loop {
        let (s, l) = (since.to_string(), limit.to_string());
        let out = env.cli(&["case", "log", case_ref, "--since", &s, "--limit", &l, "--json"]).ok();
        let page = out.json().as_array().unwrap().clone();
        assert!(page.len() <= limit as usize, "a page of {} records", page.len());
        let Some(last) = page.last() else { break };
        since = last["seq"].as_u64().unwrap();
        all.extend(page);
        if !out.stderr.contains("more records follow") {
            break;
        }
    }
    all
}

/// The accesses of `file` by `uid` that records of `event` stand for (a
/// counted record's `opens` or `releases`, else one).
fn accesses(records: &[serde_json::Value], event: &str, file: &str, uid: u32) -> u64 {
    records
        .iter()
        .filter(|r| r["event"] == event && r["details"]["file"] == file && r["uid"] == uid)
        .map(|r| {
            let d = &r["details"];
            d["opens"].as_u64().or(d["releases"].as_u64()).unwrap_or(1)
        })
        .sum()
}

#[test]
fn repeated_opens_are_counted_and_the_log_stays_readable() {
    // The user-space read path, where each release gets a read record too.
    let env = Env::ready_with(|o| o.extra_config.push_str("passthrough = false\n"));
    const CASE: &str = "AB-OPENS";
    const OPENS: u32 = 2000;
    env.cli(&["case", "open", CASE, "--requester", ALICE, "GDB-0001"]).ok();
    env.cli(&["case", "approve", CASE]).ok();
    let file = env.file("GDB-0001").base_name().to_string();
    let path = env.mnt.join(CASE).join(&file);
    let before = paged_log(&env, CASE, 1000).len();

    // One transfer account opens and reads one file 2,000 times.
    let hammer = format!(
        "import sys\nn = 0\nfor i in range({OPENS}):\n    with open({path:?}, 'rb') as f:\n        f.read()\n    n += 1\nprint(n)\n"
    );
    let out = python_as(UID_A1, &env, &hammer).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), OPENS.to_string());
    let released = || env.cli(&["status", "--json"]).ok().json()["pulls_in_progress"] == 0;
    assert!(env.wait_for(Duration::from_secs(30), released), "the opens are not all released");

    // A bounded number of records, not one per open (a few one by one, then counted).
    let log = paged_log(&env, CASE, 1000);
    let grown = log.len() - before;
    assert!(grown <= 20, "{OPENS} opens added {grown} records");
    assert!(accesses(&log, "file_opened", &file, UID_A1) >= 1);
    env.cli(&["audit", "verify"]).ok();

    // `case log` pages: --limit, --since, and how to get the next page.
    let first = env.cli(&["case", "log", CASE, "--limit", "2"]).ok();
    assert_eq!(first.stdout.lines().count(), 3, "{}", first.stdout);
    first.stderr_has(&format!("the next page: workcopy case log {CASE} --since 2 --limit 2"));
    let second = env.cli(&["case", "log", CASE, "--since", "2", "--limit", "2", "--json"]).ok();
    let seqs: Vec<u64> = second
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4]);
    let n = log.len().to_string();
    let end = env.cli(&["case", "log", CASE, "--since", &n, "--json"]).ok();
    assert_eq!(end.json(), serde_json::json!([]));
    assert!(!end.stderr.contains("more records"), "{}", end.stderr);
    assert_eq!(paged_log(&env, CASE, 3), log, "pages of 3 differ from pages of 1000");
    env.cli(&["case", "log", CASE, "--limit", "0"]).code(2);

    // An open whose count cannot be written fails, and so is not served.
    if env.opts.database_url.is_some() {
        env.sql("CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'no space'; END $$ LANGUAGE plpgsql");
        env.sql("CREATE TRIGGER refuse_counts BEFORE UPDATE ON access_counts FOR EACH ROW EXECUTE FUNCTION refuse()");
    } else {
        env.sql("CREATE TRIGGER refuse_counts BEFORE UPDATE ON access_counts BEGIN SELECT RAISE(ABORT, 'no space'); END");
    }
    let try_open = format!(
        "import errno\ntry:\n    open({path:?}, 'rb').read()\n    print('opened')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
    );
    let refused = python_as(UID_A1, &env, &try_open).wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&refused.stdout).trim(), "EIO");
    env.sql(if env.opts.database_url.is_some() {
        "DROP TRIGGER refuse_counts ON access_counts"
    } else {
        "DROP TRIGGER refuse_counts"
    });
    let served = python_as(UID_A1, &env, &try_open).wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&served.stdout).trim(), "opened");
    assert!(env.wait_for(Duration::from_secs(30), released), "the last open is not released");

    // The receipt is accepted (the department read the file), and the
    // state changes fold the counts into the log: every open is accounted for.
    let sums = sums_list(&env.received_sums(CASE));
    env.cli_as_stdin(Who::Dept(UID_A1), &["case", "confirm", CASE, "--sha256sums", "-"], &sums)
        .ok();
    env.cli(&["case", "close", CASE]).ok();
    let log = paged_log(&env, CASE, 1000);
    assert_eq!(accesses(&log, "file_opened", &file, UID_A1), OPENS as u64 + 1, "{log:?}");
    let reads = accesses(&log, "file_read", &file, UID_A1);
    assert!(reads >= 1 && reads <= OPENS as u64 + 1, "{reads} reads");
    assert!(log.len() - before <= 30, "{} records", log.len() - before);
    env.cli(&["audit", "verify"]).ok();

    // The sealed log holds the same records and verifies on its own.
    let sealed = env.sealed_log(CASE);
    env.cli(&["audit", "verify", "--file", sealed.to_str().unwrap()]).ok();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&sealed)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, log);
}
