//! Several transfer hosts sharing one register on PostgreSQL: two daemons on
//! this machine (own state dirs, mounts, sockets and host names; one
//! database, one GDB), driven end to end. Also the database stopped and
//! started again under a daemon that serves a case.

use crate::common::*;
use std::time::{Duration, Instant};

/// Two hosts, `host-a` and `host-b`, on one fresh database and `a`'s GDB;
/// the catalog imported once (through `a`).
struct Pair {
    a: Env,
    b: Env,
}

fn host_env(url: &str, host: &str, gdb: Option<&std::path::Path>, mode: Option<&str>) -> Env {
    Env::with(|o| {
        o.database_url = Some(url.to_string());
        o.host = Some(host.to_string());
        o.gdb_root = gdb.map(|p| p.to_path_buf());
        o.mode = mode.map(String::from);
        o.extra_config.push_str("heartbeat = \"1s\"\n");
    })
}

impl Pair {
    fn start(mode: Option<&str>) -> Pair {
        let url = pg_database();
        let mut a = host_env(&url, "host-a", None, mode);
        a.start();
        a.import_catalog();
        let mut b = host_env(&url, "host-b", Some(&a.gdb), mode);
        b.start();
        let pair = Pair { a, b };
        assert!(
            wait_until(Duration::from_secs(10), || pair.up() == ["host-a", "host-b"]),
            "both hosts up: {}",
            pair.a.cli(&["hosts", "--json"]).stdout
        );
        pair
    }

    /// The hosts `workcopy hosts` on `a` shows as up.
    fn up(&self) -> Vec<String> {
        hosts(&self.a)
            .iter()
            .filter(|h| h["state"] == "up")
            .map(|h| h["name"].as_str().unwrap().to_string())
            .collect()
    }
}

fn hosts(env: &Env) -> Vec<serde_json::Value> {
    env.cli(&["hosts", "--json"]).ok().json().as_array().unwrap().clone()
}

fn host_state(env: &Env, name: &str) -> String {
    hosts(env)
        .iter()
        .find(|h| h["name"] == name)
        .map(|h| h["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn open(env: &Env, case_ref: &str, descriptors: &[&str]) {
    let mut args = vec!["case", "open", case_ref, "--requester", ALICE];
    args.extend_from_slice(descriptors);
    env.cli(&args).ok();
}

/// Whether the case's directory is in `env`'s mount (as root sees it).
fn listed(env: &Env, case_ref: &str) -> bool {
    std::fs::read_dir(&env.mnt)
        .map(|d| d.flatten().any(|e| e.file_name() == case_ref))
        .unwrap_or(false)
}

fn events_of(env: &Env, case_ref: &str, kind: &str) -> Vec<serde_json::Value> {
    let log = env.cli(&["case", "log", case_ref, "--json"]).ok().json();
    log.as_array().unwrap().iter().filter(|r| r["event"] == kind).cloned().collect()
}

/// Approve on one host for the other; pull from the serving host as the
/// department's account; confirm and close from the first; the case
/// leaves the serving host's mount, its copies are deleted and the log
/// sealed there; `audit verify` says the same on both hosts.
#[test]
fn a_case_approved_on_one_host_is_served_by_another_and_closed_from_the_first() {
    let p = Pair::start(None);
    let list = hosts(&p.a);
    assert!(list.iter().all(|h| h["directory_matches"] == true), "{list:?}");
    let names =
        |l: &[serde_json::Value]| -> Vec<(String, String)> { l.iter().map(|h| (h["name"].to_string(), h["state"].to_string())).collect() };
    assert_eq!(names(&hosts(&p.b)), names(&list), "both hosts see the same hosts");

    open(&p.a, "HOST-1", &["GDB-0001", "GDB-0002"]);
    p.a.cli(&["case", "approve", "HOST-1", "--host", "host-b"])
        .ok()
        .stdout_has("case HOST-1 exported");
    let show = p.a.case_json("HOST-1");
    assert_eq!(show["case"]["host"], "host-b", "{show}");
    assert_eq!(show["visible"], true, "host-a answers for host-b's mount: {show}");
    assert!(listed(&p.b, "HOST-1") && !listed(&p.a, "HOST-1"));
    assert!(p.b.staging_dir("HOST-1").is_dir() && !p.a.staging_dir("HOST-1").exists());
    p.a.cli(&["case", "show", "HOST-1"])
        .ok()
        .stdout_has("host        host-b (in its mount)");

    p.b.pull_as(UID_A1, "HOST-1");
    let sums = sums_list(&p.a.received_sums("HOST-1"));
    p.a.cli_as_stdin(Who::Dept(UID_A1), &["case", "confirm", "HOST-1", "--sha256sums", "-"], &sums)
        .ok();
    let started = Instant::now();
    p.a.cli(&["case", "close", "HOST-1"]).ok();
    let took = started.elapsed();
    assert!(!listed(&p.b, "HOST-1"), "closed but still in host-b's mount");
    assert!(!p.b.staging_dir("HOST-1").exists(), "host-b kept its copies");
    assert!(took < Duration::from_secs(3), "the close waited {took:?} for host-b");
    let seal = events_of(&p.a, "HOST-1", "sealed");
    assert_eq!(seal.len(), 1, "{seal:?}");
    assert!(p.b.sealed_log("HOST-1").exists(), "the serving host writes the sealed log");
    let va = p.a.cli(&["audit", "verify", "--json"]).ok().json();
    let vb = p.b.cli(&["audit", "verify", "--json"]).ok().json();
    assert_eq!(va["cases"], vb["cases"]);
    assert_eq!(va["records"], vb["records"]);
    assert_eq!(va["failures"], serde_json::json!([]));
}

/// Both hosts approve the same case at the same moment: one approval
/// record, one staging, on one host.
#[test]
fn concurrent_approvals_from_both_hosts_stage_the_case_once() {
    let p = Pair::start(None);
    for i in 0..3 {
        let case_ref = format!("RACE-{i}");
        open(&p.a, &case_ref, &["GDB-0001", "GDB-0006"]);
        let (ra, rb) = std::thread::scope(|s| {
            let a = s.spawn(|| p.a.cli(&["case", "approve", &case_ref]));
            let b = s.spawn(|| p.b.cli(&["case", "approve", &case_ref]));
            (a.join().unwrap(), b.join().unwrap())
        });
        let ok = [ra.status == 0, rb.status == 0];
        assert!(ok.iter().any(|x| *x), "neither approval succeeded:\n{ra}\n{rb}");
        assert!(p.a.wait_for(Duration::from_secs(20), || p.a.state_of(&case_ref) == "exported"));
        assert_eq!(events_of(&p.a, &case_ref, "approved").len(), 1, "{case_ref}");
        assert_eq!(events_of(&p.a, &case_ref, "exported").len(), 1, "{case_ref}");
        let host = p.a.case_json(&case_ref)["case"]["host"].as_str().unwrap().to_string();
        let (serving, other) = if host == "host-a" { (&p.a, &p.b) } else { (&p.b, &p.a) };
        assert!(listed(serving, &case_ref) && serving.staging_dir(&case_ref).is_dir());
        assert!(
            !listed(other, &case_ref) && !other.staging_dir(&case_ref).exists(),
            "staged on both hosts"
        );
    }
}

/// A serving host killed: it shows as down, its case moves to the other
/// host (verified again, served there, the move in the log); when it comes
/// back it withdraws the case and deletes its copies. A host retired for
/// good lets another host close and seal its case.
#[test]
fn a_dead_host_s_case_moves_and_the_host_cleans_up_when_it_returns() {
    let mut p = Pair::start(None);
    open(&p.a, "MOVE-1", &["GDB-0001", "GDB-0002"]);
    p.a.cli(&["case", "approve", "MOVE-1"]).ok();
    assert_eq!(p.a.case_json("MOVE-1")["case"]["host"], "host-a");
    assert!(p.a.staging_dir("MOVE-1").is_dir());

    p.a.kill9();
    assert!(
        wait_until(Duration::from_secs(10), || host_state(&p.b, "host-a") == "down"),
        "host-a not shown down"
    );
    p.b.cli(&["case", "move", "MOVE-1", "--to", "host-b"])
        .ok()
        .stdout_has("case MOVE-1 exported");
    assert!(listed(&p.b, "MOVE-1"));
    p.b.pull_as(UID_A1, "MOVE-1");
    let moved = events_of(&p.b, "MOVE-1", "moved");
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0]["details"]["from"], "host-a");
    assert_eq!(moved[0]["details"]["to"], "host-b");

    // host-a comes back over its stale mount, finds the case moved away.
    p.a.start();
    assert!(
        wait_until(Duration::from_secs(10), || !p.a.staging_dir("MOVE-1").exists()
            && !listed(&p.a, "MOVE-1")),
        "host-a kept the moved case\n{}",
        p.a.daemon_log()
    );
    assert!(listed(&p.b, "MOVE-1"), "host-b must keep serving it");

    // A second case on host-a, which then goes for good.
    open(&p.b, "RETIRE-1", &["GDB-0006"]);
    p.b.cli(&["case", "approve", "RETIRE-1", "--host", "host-a"]).ok();
    p.a.kill9();
    assert!(wait_until(Duration::from_secs(10), || host_state(&p.b, "host-a") == "down"));
    // While host-a is only down, a close from host-b is recorded but not sealed.
    p.b.cli(&["case", "close", "RETIRE-1", "--force", "--reason", "host lost"])
        .fails()
        .stderr_has("has not cleaned it up");
    assert_eq!(p.b.state_of("RETIRE-1"), "closed");
    p.b.cli(&["host", "retire", "host-a", "--reason", "disk controller failed"]).ok();
    assert_eq!(host_state(&p.b, "host-a"), "retired");
    assert!(
        wait_until(Duration::from_secs(10), || {
            events_of(&p.b, "RETIRE-1", "sealed").len() == 1 && p.b.sealed_log("RETIRE-1").exists()
        }),
        "host-b did not seal the retired host's case (the record, then the file)"
    );
    let seal = &events_of(&p.b, "RETIRE-1", "sealed")[0];
    assert_eq!(seal["details"]["serving_host_retired"]["host"], "host-a", "{seal}");
    assert_eq!(seal["details"]["serving_host_retired"]["reason"], "disk controller failed");
    p.b.cli(&["audit", "verify"]).ok();
    // A retired host is no longer a choice.
    open(&p.b, "RETIRE-2", &["GDB-0002"]);
    p.b.cli(&["case", "approve", "RETIRE-2", "--host", "host-a"])
        .fails()
        .stderr_has("host-a is retired");
}

/// Direct mode, 20 files: an approval on one host is listable on the other
/// well within a second of the approval's return (the bench measures the
/// distribution; this bounds it loosely).
#[test]
fn an_approval_on_one_host_reaches_the_other_promptly() {
    let p = Pair::start(Some("direct"));
    let _immutable = Immutable::set(&[p.a.gdb_path("GDB-0001"), p.a.gdb_path("GDB-0002")]);
    open(&p.a, "FAST-1", &["GDB-0001", "GDB-0002"]);
    let started = Instant::now();
    p.a.cli(&["case", "approve", "FAST-1", "--host", "host-b", "--no-wait"]).ok();
    assert!(wait_until(Duration::from_secs(5), || listed(&p.b, "FAST-1")));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "listable on host-b after {took:?}");
}

/// The database stopped under a daemon that serves a case: what is
/// exported stays in the mount, opens (whose records cannot be written)
/// fail, `status` says so; once the server is back, the daemon works again
/// by itself.
#[test]
fn a_database_restart_under_a_pull_fails_opens_closed_and_recovers_by_itself() {
    let server = crate::pg::Server::start().unwrap();
    let url = server.database().unwrap();
    let mut env = host_env(&url, "host-a", None, None);
    env.start();
    env.import_catalog();
    open(&env, "DB-1", &["GDB-0001"]);
    env.cli(&["case", "approve", "DB-1"]).ok();
    env.pull_as(UID_A1, "DB-1");
    let name = env.case_files("DB-1")[0].0.clone();

    server.pause().unwrap();
    assert!(listed(&env, "DB-1"), "an exported case stays in the mount");
    env.sha256sum_as(UID_A1, "DB-1", &name).fails();
    let status = env.cli(&["status", "--json"]).ok().json();
    assert!(status["database_unreachable"]["since"].is_string(), "{status}");
    env.cli(&["status"]).ok().stdout_has("database    UNREACHABLE");

    server.resume().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || env.sha256sum_as(UID_A1, "DB-1", &name).status == 0),
        "opens did not work again\n{}",
        env.daemon_log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            env.cli(&["status", "--json"]).ok().json()["database_unreachable"].is_null()
        }),
        "status still says unreachable"
    );
    env.cli(&["audit", "verify"]).ok();
    drop(env);
    server.stop().unwrap();
}
