//! Self-service through the real daemon and CLI, with requesters as real
//! uids (setpriv): each department policy (auto, review, off, and a reload
//! that changes it), another group's file refused with nothing exported,
//! search confined to the requester's group, generated references, the
//! limits, cancel, four eyes, the one-role rule of the directory, and every
//! refusal a requester gets for what only staff or the department may do —
//! the event feed and the mount included.

use crate::common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A requester of DEPT-A1 (group A).
const CAROL: &str = "carol@a1.example";
const CAROL_UID: u32 = 5001;
/// A requester of DEPT-A2 (group A).
const DAN: &str = "dan@a2.example";
const DAN_UID: u32 = 5002;
/// A requester of DEPT-B1 (group B).
const ERIN: &str = "erin@b1.example";
const ERIN_UID: u32 = 5003;

/// A requester runs the CLI as their own uid without groups, as a transfer
/// account does: `Who::Dept(uid)` is exactly that.
const fn requester(uid: u32) -> Who {
    Who::Dept(uid)
}
const CAROL_: Who = requester(CAROL_UID);
const DAN_: Who = requester(DAN_UID);
const ERIN_: Who = requester(ERIN_UID);

/// The harness's directory with three requesters and a policy per
/// department (DEPT-A1, DEPT-A2, DEPT-B1).
fn directory(a1: &str, a2: &str, b1: &str) -> String {
    let mut d = directory_toml(&format!(
        "
[[user]]
id = \"{CAROL}\"
department = \"{DEPT_A1}\"
account = {CAROL_UID}

[[user]]
id = \"{DAN}\"
department = \"{DEPT_A2}\"
account = {DAN_UID}

[[user]]
id = \"{ERIN}\"
department = \"{DEPT_B1}\"
account = {ERIN_UID}
"
    ));
    for (uid, policy) in [(UID_A1, a1), (UID_A2, a2), (UID_B1, b1)] {
        d = d.replace(
            &format!("transfer_account = {uid}\n"),
            &format!("transfer_account = {uid}\nself_service = \"{policy}\"\n"),
        );
    }
    d
}

/// A started daemon with the catalog imported and these policies.
fn ready(a1: &str, a2: &str, b1: &str, f: impl FnOnce(&mut Options)) -> Env {
    let mut env = Env::with(f);
    env.write_directory(&directory(a1, a2, b1));
    env.start();
    env.import_catalog();
    env
}

/// `request open … --json` as `who`; returns the output and the reference.
#[track_caller]
fn request(env: &Env, who: Who, args: &[&str]) -> (Out, String) {
    let mut all = vec!["request", "open", "--json"];
    all.extend_from_slice(args);
    let out = env.cli_as(who, &all);
    let r = out.json()["ref"].as_str().unwrap_or_else(|| panic!("no ref:\n{out}")).to_string();
    (out, r)
}

/// Waits until staff see the case in `state`.
#[track_caller]
fn wait_state(env: &Env, case_ref: &str, state: &str) {
    let reached = env.wait_for(Duration::from_secs(30), || env.state_of(case_ref) == state);
    assert!(reached, "{case_ref} is {}, not {state}", env.state_of(case_ref));
}

/// `catalog search ARGS --json` as `who`: the file ids found, and whether more matched.
#[track_caller]
fn search(env: &Env, who: Who, args: &[&str]) -> (Vec<String>, bool) {
    let mut all = vec!["catalog", "search", "--json"];
    all.extend_from_slice(args);
    let v = env.cli_as(who, &all).ok().json();
    let ids = v["files"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|f| f["file_id"].as_str().unwrap_or_default().to_string())
        .collect();
    (ids, v["more"].as_bool().unwrap_or_else(|| panic!("{v}")))
}

/// A command as `uid` without groups (for the mount).
fn run_as(uid: u32, argv: &[&str]) -> Out {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(argv)
        .current_dir("/")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_with_timeout(cmd, None, &format!("uid {uid}: {}", argv.join(" ")))
}

/// The requester sees nothing of the case in the mount: not listed, not
/// found, not readable. (They are neither its owner nor staff.)
#[track_caller]
fn not_in_the_mount_for(env: &Env, uid: u32, case_ref: &str, file: &str) {
    let root = env.mnt.display().to_string();
    let listed = run_as(uid, &["ls", "-A", &root]);
    assert!(!listed.stdout.contains(case_ref), "uid {uid} lists {case_ref}:\n{listed}");
    let dir = env.mnt.join(case_ref).display().to_string();
    run_as(uid, &["stat", &dir]).fails().stderr_has("No such file or directory");
    let path = env.mnt.join(case_ref).join(file).display().to_string();
    let out = run_as(uid, &["cat", &path]).fails();
    assert!(out.stdout.is_empty(), "uid {uid} read {path}:\n{out}");
}

fn is_generated(r: &str) -> bool {
    let b = r.as_bytes();
    r.len() == 17
        && r.starts_with("SS-")
        && b[3..11].iter().all(u8::is_ascii_digit)
        && b[11] == b'-'
        && r[12..]
            .chars()
            .all(|c| c.is_ascii_digit() || (c.is_ascii_uppercase() && !"ILOU".contains(c)))
}

#[test]
fn auto_approves_a_verified_request_at_once_for_the_department_to_pull() {
    let env = ready("auto", "review", "off", |_| {});
    // One file of carol's department, one of another department of her group.
    let (out, r) = request(&env, CAROL_, &["S1_R1.fastq", "GDB-0004"]);
    let out = out.ok();
    assert!(is_generated(&r), "generated reference {r:?}");
    let v = out.json();
    assert_eq!(v["case"]["requester"], CAROL, "{v}");
    assert_eq!(v["case"]["department"], DEPT_A1, "{v}");
    assert_eq!(v["case"]["self_service"], "auto", "{v}");
    assert_eq!(v["case"]["opened_uid"], CAROL_UID, "{v}");
    wait_state(&env, &r, "exported");

    // Approved by workcopy itself, under the policy, after carol's opened record.
    let log = env.cli(&["case", "log", &r, "--json"]).ok().json();
    let records = log.as_array().unwrap();
    assert_eq!(records[0]["event"], "opened");
    assert_eq!(records[0]["uid"], CAROL_UID);
    assert_eq!(records[0]["details"]["self_service"], "auto");
    let approved = records.iter().find(|x| x["event"] == "approved").unwrap();
    assert_eq!(approved["actor"], "workcopy", "{approved}");
    assert_eq!(approved["details"]["policy"], "self_service = auto", "{approved}");

    // The department's transfer job pulls it as any approved case; carol cannot see it there.
    env.pull_as(UID_A1, &r);
    not_in_the_mount_for(&env, CAROL_UID, &r, "S1_R1.fastq");
    // Staff see it marked as self-service.
    let listed = env.cli(&["case", "list"]).ok();
    let line = listed.stdout.lines().find(|l| l.starts_with(&r)).unwrap().to_string();
    assert!(line.contains(CAROL) && line.ends_with("self-service auto"), "{line}");
    env.cli(&["case", "show", &r]).ok().stdout_has("self-service (auto)");

    // Carol follows it, and may no longer cancel it.
    let shown = env.cli_as(CAROL_, &["request", "show", &r, "--json"]).ok().json();
    assert_eq!(shown["ref"], r.as_str());
    assert_eq!(shown["case"]["state"], "exported");
    env.cli_as(CAROL_, &["request", "cancel", &r])
        .fails()
        .stderr_has("is exported")
        .stderr_has("close");
    assert_eq!(env.state_of(&r), "exported");
    env.cli_as(CAROL_, &["request", "show", &r]).ok().stdout_has("exported");
}

#[test]
fn review_waits_for_staff_who_approve_as_for_any_case() {
    let env = ready("review", "review", "off", |_| {});
    let out = env.cli_as(CAROL_, &["request", "open", "--ref", "TICKET-7", "GDB-0001"]).ok();
    assert!(out.stdout.starts_with("request TICKET-7 (open)"), "{out}");
    out.stdout_has("waiting for workcopy staff");
    assert_eq!(env.state_of("TICKET-7"), "open");
    let v = env.case_json("TICKET-7");
    assert_eq!(v["case"]["self_service"], "review", "{v}");
    let listed = env.cli_as(Who::Staff, &["case", "list", "--json"]).ok().json();
    assert_eq!(listed[0]["self_service"], "review", "{listed}");
    env.cli_as(Who::Staff, &["case", "list"]).ok().stdout_has("self-service review");
    env.cli(&["case", "show", "TICKET-7"]).ok().stdout_has("self-service (review)");
    // Nothing is staged before staff approve.
    assert!(!env.staging_dir("TICKET-7").exists());
    env.cli_as(Who::Staff, &["case", "approve", "TICKET-7"]).ok();
    assert_eq!(env.state_of("TICKET-7"), "exported");
    let approved = env.cli(&["case", "log", "TICKET-7", "--json"]).ok().json();
    let approved = approved
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["event"] == "approved")
        .unwrap()
        .clone();
    assert_eq!(approved["uid"], STAFF_UID, "{approved}");
    env.cli_as(CAROL_, &["request", "list"])
        .ok()
        .stdout_has("TICKET-7")
        .stdout_has("exported");
}

#[test]
fn off_refuses_saying_whom_to_ask_and_a_reload_applies_to_new_requests() {
    let env = ready("off", "review", "off", |_| {});
    env.cli_as(CAROL_, &["request", "open", "GDB-0001"])
        .fails()
        .code(1)
        .stderr_has("self-service is off for DEPT-A1")
        .stderr_has("ask workcopy staff");
    env.cli_as(CAROL_, &["catalog", "search", "*"])
        .fails()
        .stderr_has("self-service is off");
    assert!(env.cli(&["case", "list", "--json"]).ok().json().as_array().unwrap().is_empty());
    // Dan's department reviews; his request waits. Then the policies change.
    let (_, waiting) = request(&env, DAN_, &["GDB-0004"]);
    env.write_directory(&directory("auto", "off", "off"));
    env.cli(&["reload"]).ok();
    let (out, r) = request(&env, CAROL_, &["GDB-0001"]);
    out.ok();
    wait_state(&env, &r, "exported");
    env.cli_as(DAN_, &["request", "open", "GDB-0004"])
        .fails()
        .stderr_has("self-service is off for DEPT-A2");
    // A request made before the reload keeps waiting for staff; Dan still follows and may cancel it.
    assert_eq!(env.state_of(&waiting), "open");
    env.cli_as(DAN_, &["request", "show", &waiting]).ok();
    env.cli_as(DAN_, &["request", "cancel", &waiting]).ok();
    // Someone the directory does not know at all: told whom to ask.
    env.cli_as(Who::Stranger, &["request", "open", "GDB-0001"])
        .fails()
        .stderr_has("ask workcopy staff to add your account");
}

#[test]
fn another_groups_file_is_refused_as_not_found_and_nothing_is_exported() {
    let env = ready("auto", "auto", "auto", |_| {});
    let not_found = "not found among the files of your user group";
    // By file_id, base name and path: each refused as a file that does not exist.
    for d in ["GDB-0007", "B1.spring", "run3/B1_R1.fastq", "nothing-like-it.fastq"] {
        let out = env.cli_as(CAROL_, &["request", "open", d]).fails();
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with("REFUSED"))
            .unwrap_or_else(|| panic!("{out}"));
        assert_eq!(
            line,
            format!("REFUSED   {d}: {not_found} (`workcopy catalog search` lists them)"),
            "{out}"
        );
        for secret in [DEPT_B1, "GDB-0008", "run3/"] {
            assert!(!out.stdout.contains(secret) || d.contains(secret), "{secret} in:\n{out}");
            assert!(!out.stderr.contains(secret), "{secret} in:\n{out}");
        }
    }
    // Mixed with a file of her own: the request fails, is never approved, nothing is staged or shown.
    let (out, r) = request(&env, CAROL_, &["GDB-0001", "GDB-0007"]);
    assert_ne!(out.status, 0, "{out}");
    let v = out.json();
    assert_eq!(v["case"]["verified"], false);
    assert_eq!(v["case"]["report"]["lines"][1]["outcome"], "not_in_group", "{v}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.state_of(&r), "open");
    assert!(!env.staging_dir(&r).exists());
    assert!(!env.mnt.join(&r).exists());
    env.cli(&["case", "approve", &r]).fails().stderr_has("failed verification");
    let events = env.events(&r);
    assert_eq!(events, ["opened"], "{events:?}");
    // Nothing of group B's was exported to anyone.
    let all = env.cli(&["case", "list", "--json"]).ok().json();
    assert!(all.as_array().unwrap().iter().all(|c| c["state"] == "open"), "{all}");
    // Erin (group B) may have it.
    let (out, r) = request(&env, ERIN_, &["GDB-0007"]);
    out.ok();
    wait_state(&env, &r, "exported");
}

#[test]
fn search_is_confined_to_the_requesters_group() {
    let env = ready("review", "review", "review", |_| {});
    let group_a = ["GDB-0001", "GDB-0002", "GDB-0003", "GDB-0004", "GDB-0005", "GDB-0006"];
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let (carol, more) = search(&env, CAROL_, &[]);
    assert_eq!(sorted(carol), group_a, "carol sees group A's files");
    assert!(!more);
    let (dan, _) = search(&env, DAN_, &[]);
    assert_eq!(sorted(dan), group_a, "dan too: one group");
    let (erin, _) = search(&env, ERIN_, &[]);
    assert_eq!(sorted(erin), ["GDB-0007", "GDB-0008"]);
    let (staff, _) = search(&env, Who::Staff, &[]);
    assert_eq!(staff.len(), 8);
    // A glob on base names, on paths; a sample; a date.
    assert_eq!(search(&env, CAROL_, &["*.spring"]).0, ["GDB-0006"]);
    assert_eq!(sorted(search(&env, Who::Staff, &["*.spring"]).0), ["GDB-0006", "GDB-0008"]);
    assert_eq!(search(&env, CAROL_, &["reads.fastq.gz"]).0, ["GDB-0003", "GDB-0004"]);
    assert!(search(&env, CAROL_, &["run3/*"]).0.is_empty());
    assert_eq!(sorted(search(&env, ERIN_, &["run3/*"]).0), ["GDB-0007", "GDB-0008"]);
    assert!(search(&env, CAROL_, &["B1*"]).0.is_empty());
    assert!(search(&env, CAROL_, &["s1_r1.fastq"]).0.is_empty(), "case matters");
    assert_eq!(search(&env, CAROL_, &["S1_R?.fastq"]).0, ["GDB-0001", "GDB-0002"]);
    assert_eq!(search(&env, Who::Staff, &["--sample", "SAMPLE-007"]).0, ["GDB-0007"]);
    assert!(search(&env, CAROL_, &["--sample", "SAMPLE-007"]).0.is_empty());
    assert_eq!(search(&env, CAROL_, &["--sample", "SAMPLE-002"]).0, ["GDB-0002"]);
    // Submitted 2025-03-01 … 2025-03-08, one a day: by submission time.
    assert_eq!(search(&env, CAROL_, &["--since", "2025-03-05"]).0, ["GDB-0005", "GDB-0006"]);
    assert_eq!(
        search(&env, ERIN_, &["--since", "2025-03-05T00:00:00Z"]).0,
        ["GDB-0007", "GDB-0008"]
    );
    // The human table names no other group's file either.
    let out = env.cli_as(CAROL_, &["catalog", "search"]).ok();
    out.stdout
        .lines()
        .next()
        .filter(|h| h.starts_with("FILE_ID"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(!out.stdout.contains("GDB-0007") && !out.stdout.contains(DEPT_B1), "{out}");
    // Bad terms are refused naming them; transfer accounts and strangers may not search.
    env.cli_as(CAROL_, &["catalog", "search", "--since", "soon"])
        .fails()
        .stderr_has("--since");
    env.cli_as(CAROL_, &["catalog", "search", "x\\"]).fails().stderr_has("lone");
    env.cli_as(Who::Dept(UID_A1), &["catalog", "search"])
        .fails()
        .stderr_has("permission denied");
    env.cli_as(Who::Stranger, &["catalog", "search"])
        .fails()
        .stderr_has("permission denied");

    // More than 200 files match: 200 are shown, and the reply says more matched.
    let mut extra: Vec<GdbFile> = (0..250)
        .map(|i| GdbFile::new(&format!("X-{i:03}"), &format!("bulk/many_{i:03}.fastq"), DEPT_A2, b"x"))
        .collect();
    extra.push(GdbFile::new("X-B", "bulk/many_b.fastq", DEPT_B1, b"x"));
    let path = env.write_catalog("bulk.tsv", &catalog_tsv(&extra));
    env.cli(&["catalog", "import", &path.display().to_string()]).ok();
    let (found, more) = search(&env, CAROL_, &["many_*"]);
    assert_eq!(found.len(), 200);
    assert!(more);
    assert_eq!(found[0], "X-000");
    assert!(!found.contains(&"X-B".to_string()));
    let out = env.cli_as(CAROL_, &["catalog", "search", "many_*"]).ok();
    assert_eq!(out.stdout.lines().count(), 201, "a header and 200 files");
    out.stderr_has("more files match");
    let (found, more) = search(&env, CAROL_, &["many_2*"]);
    assert_eq!((found.len(), more), (50, false));
}

#[test]
fn generated_refs_limits_and_cancel() {
    let env = ready("review", "review", "off", |o| {
        o.max_files_per_case = Some(3);
        o.extra_config = "max_open_requests_per_user = 2\nmax_requests_per_user_per_day = 4\n".into();
    });
    let (first, r1) = request(&env, CAROL_, &["GDB-0001"]);
    first.ok();
    let second = env.cli_as(CAROL_, &["request", "open", "GDB-0002"]).ok();
    let r2 = second.stdout.split_whitespace().nth(1).unwrap().to_string();
    assert!(is_generated(&r1) && is_generated(&r2) && r1 != r2, "{r1} {r2}");
    assert!(second.stdout.starts_with(&format!("request {r2} (open)")), "{second}");

    // A third open request: refused, saying which limit and what to do.
    let out = env
        .cli_as(CAROL_, &["request", "open", "GDB-0003"])
        .fails()
        .stderr_has("max_open_requests_per_user")
        .stderr_has(&r1)
        .stderr_has(&r2)
        .stderr_has("workcopy request cancel");
    assert!(out.stdout.is_empty(), "{out}");
    // Another person's count is their own.
    request(&env, DAN_, &["GDB-0004"]).0.ok();
    // Too many files: refused up front, saying which limit and what to do.
    env.cli_as(DAN_, &["request", "open", "GDB-0001", "GDB-0002", "GDB-0003", "GDB-0005"])
        .fails()
        .stderr_has("max_files_per_case")
        .stderr_has("split");
    // Another requester can neither see nor cancel carol's request: as if there were none.
    for args in [["request", "show", r1.as_str()], ["request", "cancel", r1.as_str()]] {
        env.cli_as(DAN_, &args).fails().stderr_has(&format!("no request {r1} of yours"));
    }
    env.cli_as(DAN_, &["request", "show", "NO-SUCH-1"])
        .fails()
        .stderr_has("no request NO-SUCH-1 of yours");
    env.cli_as(DAN_, &["request", "list", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .for_each(|c| assert_ne!(c["case_ref"], r1.as_str()));

    // Cancel one: a terminal state of its own, the log sealed; then there is room again.
    let cancelled = env.cli_as(CAROL_, &["request", "cancel", &r1, "--json"]).ok().json();
    assert_eq!(cancelled["case"]["state"], "cancelled");
    assert_eq!(env.state_of(&r1), "cancelled");
    assert!(env.sealed_log(&r1).exists(), "sealed");
    assert_eq!(env.events(&r1), ["opened", "cancelled", "sealed"]);
    env.cli(&["audit", "verify"]).ok();
    env.cli_as(CAROL_, &["request", "cancel", &r1]).fails().stderr_has("cancelled");
    let (third, r3) = request(&env, CAROL_, &["--ref", "MY-TICKET-1", "GDB-0003"]);
    third.ok();
    assert_eq!(r3, "MY-TICKET-1");
    // The list: her three, the cancelled one among them; staff count it by state.
    let mine = env.cli_as(CAROL_, &["request", "list"]).ok();
    for r in [&r1, &r2, &r3] {
        assert!(mine.stdout.contains(r.as_str()), "{mine}");
    }
    mine.stdout_has("cancelled");
    assert_eq!(env.cli(&["status", "--json"]).ok().json()["cases"]["cancelled"], 1);
    let listed = env.cli(&["case", "list", "--state", "cancelled", "--json"]).ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // A reference that is taken is refused, whoever's it is.
    env.cli(&["case", "open", "STAFF-1", "--requester", BERT, "GDB-0007"]).ok();
    env.cli_as(DAN_, &["request", "open", "--ref", "STAFF-1", "GDB-0005"])
        .fails()
        .stderr_has("STAFF-1 is taken");
    // Approved but blocked (a GDB file changed): still hers to cancel, and nothing stays.
    let p = env.gdb_path("GDB-0002");
    let orig = std::fs::read(&p).unwrap();
    let mut bad = orig.clone();
    bad[10] ^= 0x20;
    std::fs::write(&p, &bad).unwrap();
    env.cli(&["case", "approve", &r2]).fails().stderr_has("blocked");
    std::fs::write(&p, &orig).unwrap();
    env.cli_as(CAROL_, &["request", "cancel", &r2]).ok().stdout_has("cancelled");
    assert_eq!(env.state_of(&r2), "cancelled");
    assert!(!env.staging_dir(&r2).exists() && !env.mnt.join(&r2).exists());
    env.cli(&["case", "approve", &r2]).fails().stderr_has("cancelled");
    // Opening and cancelling over and over: a fourth request in a day, and no more.
    let (_, r4) = request(&env, CAROL_, &["GDB-0004"]);
    env.cli_as(CAROL_, &["request", "cancel", &r4]).ok();
    env.cli_as(CAROL_, &["request", "open", "GDB-0005"])
        .fails()
        .stderr_has("max_requests_per_user_per_day")
        .stderr_has("4 requests in the last 24 hours");
}

#[test]
fn four_eyes_keeps_the_opener_from_approving() {
    let env = ready("review", "off", "off", |o| o.extra_config = "four_eyes = true\n".into());
    env.cli_as(Who::Staff, &["case", "open", "FE-1", "--requester", ALICE, "GDB-0001"])
        .ok();
    assert_eq!(env.case_json("FE-1")["case"]["opened_uid"], STAFF_UID);
    env.cli_as(Who::Staff, &["case", "approve", "FE-1"])
        .fails()
        .stderr_has("four_eyes")
        .stderr_has("another member of workcopy staff");
    assert_eq!(env.state_of("FE-1"), "open");
    assert_eq!(env.events("FE-1"), ["opened"]);
    // Another uid of staff (root here) may.
    env.cli(&["case", "approve", "FE-1"]).ok();
    // A case root opened: the other staff member approves it.
    env.cli(&["case", "open", "FE-2", "--requester", ALICE, "GDB-0002"]).ok();
    env.cli(&["case", "approve", "FE-2", "--no-wait"]).fails().stderr_has("four_eyes");
    env.cli_as(Who::Staff, &["case", "approve", "FE-2"]).ok();
    // A self-service request (reviewed) was opened by its requester: staff approve it.
    let (_, r) = request(&env, CAROL_, &["GDB-0003"]);
    env.cli_as(Who::Staff, &["case", "approve", &r]).ok();
    assert_eq!(env.state_of(&r), "exported");
}

#[test]
fn a_requester_may_do_nothing_but_request_and_search() {
    let env = ready("review", "review", "review", |_| {});
    env.cli(&["case", "open", "C-1", "--requester", CAROL, "GDB-0001"]).ok();
    env.cli(&["case", "approve", "C-1"]).ok();
    let (_, mine) = request(&env, CAROL_, &["GDB-0002"]);
    let catalog = env.catalog.display().to_string();
    let all: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["catalog", "show", "GDB-0001"],
        vec!["catalog", "import", catalog.as_str()],
        vec!["case", "open", "C-2", "--requester", CAROL, "GDB-0001"],
        vec!["case", "approve", mine.as_str()],
        vec!["case", "approve", "C-1"],
        vec!["case", "reject", mine.as_str(), "--reason", "x"],
        vec!["case", "close", "C-1"],
        vec!["case", "close", "C-1", "--force", "--reason", "x"],
        vec!["case", "list"],
        vec!["case", "show", "C-1"],
        vec!["case", "show", mine.as_str()],
        vec!["case", "log", mine.as_str()],
        vec!["audit", "verify"],
        vec!["reload"],
        vec!["metrics"],
        vec!["hosts"],
        vec!["case", "move", "C-1", "--to", "elsewhere"],
        vec!["host", "retire", "elsewhere", "--reason", "x"],
    ];
    for args in &all {
        let out = env
            .cli_as(CAROL_, args)
            .fails()
            .code(1)
            .stderr_has("permission denied")
            .stderr_has("may use `workcopy request");
        assert!(!out.stdout.contains("C-1") && !out.stdout.contains("GDB"), "{out}");
    }
    // The event feed, which the control server streams itself: staff only.
    for args in [vec!["events"], vec!["events", "--follow", "--json"]] {
        let out = env.cli_as(CAROL_, &args).fails().stderr_has("permission denied");
        assert!(out.stdout.is_empty(), "{out}");
    }
    let sums = sums_list(&env.received_sums("C-1"));
    env.cli_as_stdin(CAROL_, &["case", "confirm", "C-1", "--sha256sums", "-"], &sums)
        .fails()
        .stderr_has("permission denied");
    // A case staff registered for her is no request of hers.
    env.cli_as(CAROL_, &["request", "show", "C-1"])
        .fails()
        .stderr_has("no request C-1 of yours");
    env.cli_as(CAROL_, &["request", "cancel", "C-1"]).fails();
    assert_eq!(env.state_of("C-1"), "exported");
    assert_eq!(env.state_of(&mine), "open");
    // The mount: neither the staff-registered case nor her own (once exported) is hers to see.
    not_in_the_mount_for(&env, CAROL_UID, "C-1", "S1_R1.fastq");
    env.cli(&["case", "approve", &mine]).ok();
    not_in_the_mount_for(&env, CAROL_UID, &mine, "S1_R2.fastq");
    // The transfer account of her department does see them.
    env.pull_as(UID_A1, &mine);
    // Requests are for requesters: staff and transfer accounts are told so.
    env.cli(&["request", "open", "GDB-0001"]).fails().stderr_has("`workcopy case open`");
    env.cli_as(Who::Dept(UID_A1), &["request", "list"])
        .fails()
        .stderr_has("for requesters");
}

#[test]
fn one_uid_one_role_in_the_directory() {
    let env = Env::new();
    let both = directory("auto", "off", "off").replace(&format!("account = {DAN_UID}"), &format!("account = {UID_B1}"));
    let path = env.root.join("both.toml");
    write_file(&path, both.as_bytes(), 0o644);
    let config = env.config.display().to_string();
    let p = path.display().to_string();
    let out = env
        .cli_raw(&["config", "check", "--config", &config, "--directory", &p])
        .fails()
        .code(78);
    assert!(
        out.stderr.contains(DAN) && out.stderr.contains(DEPT_B1) && out.stderr.contains("one role"),
        "{out}"
    );
    let twice = directory("auto", "off", "off").replace(&format!("account = {DAN_UID}"), &format!("account = {CAROL_UID}"));
    write_file(&path, twice.as_bytes(), 0o644);
    let out = env
        .cli_raw(&["config", "check", "--config", &config, "--directory", &p])
        .fails()
        .code(78);
    assert!(out.stderr.contains(DAN) && out.stderr.contains(CAROL), "{out}");
    assert!(Path::new(&p).exists());
}
