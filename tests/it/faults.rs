//! Faults under the running daemon: the state directory's filesystem full,
//! the database made unwritable, a staged copy damaged while the daemon was
//! down. Nothing may be acknowledged that was not kept (no open without its
//! record, no close without its records), nothing served that is not known
//! intact, and the register recovers by itself once the fault is gone.
//!
//! Each fault is undone by a guard that is dropped before the [`Env`], also
//! when a test fails: declare guards after the `Env` they act on.

use crate::common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------- helpers

/// A filesystem mounted over a directory for the length of a test; lazily
/// unmounted when dropped, also when the test fails.
struct Mounted(PathBuf);

impl Mounted {
    /// A tmpfs of `size` (e.g. "16m") over `at`.
    #[track_caller]
    fn tmpfs(at: &Path, size: &str) -> Mounted {
        // Held before the mount, so whatever was mounted is undone.
        let held = Mounted(at.to_path_buf());
        let mut cmd = Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(at)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_with_timeout(cmd, None, &format!("mount a tmpfs on {}", at.display())).ok();
        held
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Writes `name` in `dir` until its filesystem has no block left; returns its path.
fn fill(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    let buf = vec![0x5a_u8; 1 << 20];
    let mut chunk = buf.len();
    while chunk >= 512 {
        match f.write(&buf[..chunk]) {
            Ok(n) if n == chunk => {}
            _ => chunk /= 2,
        }
    }
    let _ = f.sync_all();
    p
}

/// Deterministic pseudo-random bytes.
fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// `case open REF --requester alice DESCRIPTORS…` as root.
fn open(env: &Env, case_ref: &str, descriptors: &[&str]) -> Out {
    let mut args = vec!["case", "open", case_ref, "--requester", ALICE];
    args.extend_from_slice(descriptors);
    env.cli(&args)
}

/// Opens and approves a case; returns once it is exported.
#[track_caller]
fn export(env: &Env, case_ref: &str, descriptors: &[&str]) {
    open(env, case_ref, descriptors).ok();
    env.cli(&["case", "approve", case_ref])
        .ok()
        .stdout_has(&format!("case {case_ref} exported"));
}

/// `sha256sum` of a file of the mount, run as `uid`: an open and a full read.
fn read_as(env: &Env, uid: u32, case_ref: &str, name: &str) -> Out {
    env.sha256sum_as(uid, case_ref, name)
}

/// The sha256 a successful [`read_as`] printed.
fn sum_of(out: &Out) -> &str {
    out.stdout.get(..64).unwrap_or_default()
}

/// The opens of a case's files the register accounts for: those its
/// `file_opened` records stand for (a counted record's `opens`, else one),
/// and those counted in the database but not yet written to the log.
#[track_caller]
fn opened_records(env: &Env, case_ref: &str) -> usize {
    let log = env.cli(&["case", "log", case_ref, "--limit", "10000", "--json"]).ok().json();
    let logged: u64 = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "file_opened")
        .map(|r| r["details"]["opens"].as_u64().unwrap_or(1))
        .sum();
    let counted = env.sql(&format!(
        "SELECT COALESCE(SUM(pending), 0) FROM access_counts WHERE case_ref = '{case_ref}' AND event = 'file_opened'"
    ));
    logged as usize + counted.parse::<usize>().unwrap()
}

/// Whether `case show REF --json` says the case is in the mount.
#[track_caller]
fn visible(env: &Env, case_ref: &str) -> bool {
    env.case_json(case_ref)["visible"] == true
}

/// Counts the transfer account's reads of one exported file and checks,
/// after each, that the register accounts for exactly one open (a
/// `file_opened` record, or one counted beside the log) per
/// read that succeeded: no open without its record.
struct Reads {
    case_ref: &'static str,
    name: &'static str,
    sha256: String,
    succeeded: usize,
}

impl Reads {
    fn of(env: &Env, case_ref: &'static str, name: &'static str, file_id: &str) -> Reads {
        Reads {
            case_ref,
            name,
            sha256: env.file(file_id).sha256.clone(),
            succeeded: 0,
        }
    }

    /// Reads the file; returns whether the read succeeded (with the right bytes).
    #[track_caller]
    fn read(&mut self, env: &Env) -> bool {
        let out = read_as(env, UID_A1, self.case_ref, self.name);
        if out.status == 0 {
            assert_eq!(sum_of(&out), self.sha256, "wrong bytes served:\n{out}");
            self.succeeded += 1;
        }
        self.assert_recorded(env);
        out.status == 0
    }

    #[track_caller]
    fn assert_recorded(&self, env: &Env) {
        assert_eq!(
            opened_records(env, self.case_ref),
            self.succeeded,
            "{} reads of {}/{} succeeded; the register must account for exactly as many opens",
            self.succeeded,
            self.case_ref,
            self.name
        );
    }
}

// ---------------------------------------------------------------- disk full

/// The state directory's filesystem fills up during two stagings and is then
/// filled to the last block: no open succeeds without its record, no case
/// is opened or approved, and once space is given back the register works
/// again without a restart; a restart finds exactly what was acknowledged.
#[test]
fn a_full_disk_refuses_what_it_cannot_record_and_the_register_recovers_by_itself() {
    const BIG: usize = 5 << 20;
    // The register is a SQLite file in the full state_dir (a server database
    // that stops answering is tested in `hosts`).
    let mut env = Env::with(|o| o.sqlite_only = true);
    for (i, (id, rel)) in [("GDB-0100", "big/one.bin"), ("GDB-0101", "big/two.bin")].iter().enumerate() {
        let data = blob(BIG, 100 + i as u64);
        write_file(&env.gdb.join(rel), &data, 0o644);
        env.files.push(GdbFile::new(id, rel, DEPT_A1, &data));
    }
    chmod(&env.gdb.join("big"), 0o755);
    write_file(&env.catalog, catalog_tsv(&env.files).as_bytes(), 0o644);
    let _small = Mounted::tmpfs(&env.state, "16m");
    env.start();
    env.import_catalog();

    export(&env, "F-READ", &["GDB-0001"]);
    let mut reads = Reads::of(&env, "F-READ", "S1_R1.fastq", "GDB-0001");
    assert!(reads.read(&env), "the first read failed");
    open(&env, "F-BIG1", &["GDB-0100"]).ok();
    open(&env, "F-BIG2", &["GDB-0101"]).ok();

    // Two stagings of 5 MiB each into the last 4 MiB: both run out of space.
    let filler = fill(&env.state, "filler");
    let len = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(4 << 20))
        .unwrap();
    let blocked = |case_ref: &str| env.wait_for(Duration::from_secs(15), || env.state_of(case_ref) == "blocked");
    env.cli(&["case", "approve", "F-BIG1", "--no-wait"]).ok();
    if env.cli(&["case", "approve", "F-BIG2", "--no-wait"]).status != 0 {
        // Refused while the first staging held the last blocks: nothing was
        // recorded, so the approval can be given again once that staging failed.
        assert!(blocked("F-BIG1"), "{}", env.daemon_log());
        assert_eq!(env.state_of("F-BIG2"), "open");
        env.cli(&["case", "approve", "F-BIG2", "--no-wait"]).ok();
    }
    for case_ref in ["F-BIG1", "F-BIG2"] {
        assert!(
            blocked(case_ref),
            "{case_ref} is {} after staging into a full disk\n{}",
            env.state_of(case_ref),
            env.daemon_log()
        );
    }

    // Now the last block too: nothing can be written.
    let rest = fill(&env.state, "filler2");
    for i in 0..4 {
        assert!(!reads.read(&env), "a read succeeded while its record could not be written");
        open(&env, &format!("F-FULL{i}"), &["GDB-0002"]).fails();
        env.cli(&["case", "approve", "F-BIG1"]).fails();
    }
    for i in 0..4 {
        env.cli(&["case", "show", &format!("F-FULL{i}")]).fails();
    }
    assert_eq!(env.state_of("F-BIG1"), "blocked");

    // Space given back: everything works again, without a restart.
    std::fs::remove_file(&rest).unwrap();
    std::fs::remove_file(&filler).unwrap();
    open(&env, "F-AFTER", &["GDB-0002"]).ok();
    assert!(reads.read(&env), "no read after space was given back");
    assert!(reads.read(&env), "no second read after space was given back");
    env.cli(&["case", "approve", "F-BIG1"]).ok().stdout_has("case F-BIG1 exported");
    let big = read_as(&env, UID_A1, "F-BIG1", "one.bin").ok();
    assert_eq!(sum_of(&big), env.file("GDB-0100").sha256);
    assert_eq!(opened_records(&env, "F-BIG1"), 1);

    // A restart finds exactly what was acknowledged.
    env.stop();
    env.start();
    reads.assert_recorded(&env);
    assert_eq!(env.state_of("F-AFTER"), "open");
    for i in 0..4 {
        env.cli(&["case", "show", &format!("F-FULL{i}")]).fails();
    }
    assert!(
        env.wait_for(Duration::from_secs(10), || visible(&env, "F-READ") && visible(&env, "F-BIG1")),
        "the exported cases did not come back after the restart"
    );
    assert!(reads.read(&env), "no read after the restart");
    env.cli(&["audit", "verify"]).ok();
}

// ---------------------------------------------------------------- database unwritable

/// The database and its write-ahead log made immutable under the running
/// daemon: opens of case files, approvals, new cases and closes are all
/// refused, however often they are tried, and a refused close changes
/// nothing (the case stays exported and served, its staging and log stay);
/// once the database is writable again everything works without a restart.
#[test]
fn an_unwritable_database_refuses_every_change_and_the_register_recovers_by_itself() {
    // The SQLite file itself is made immutable.
    let mut env = Env::ready_with(|o| o.sqlite_only = true);
    export(&env, "RO1", &["GDB-0001"]);
    export(&env, "RO2", &["GDB-0002"]);
    open(&env, "RO3", &["GDB-0003"]).ok();
    let mut reads = Reads::of(&env, "RO1", "S1_R1.fastq", "GDB-0001");
    assert!(reads.read(&env));
    let ro2_records = env.events("RO2").len();
    let db = env.database();
    // Not the shared-memory index: SQLite maps it, and a write to a mapped
    // immutable file is a SIGBUS rather than an error.
    let files = [db.clone(), PathBuf::from(format!("{}-wal", db.display()))];
    assert!(files.iter().all(|f| f.exists()), "{files:?}");
    {
        let _frozen = Immutable::set(&files);
        for i in 0..5 {
            assert!(!reads.read(&env), "read {i} succeeded while its record could not be written");
            env.cli(&["case", "approve", "RO3"]).fails();
        }
        let close = env.cli(&["case", "close", "RO2", "--force", "--reason", "test"]).fails();
        assert!(!close.stdout.contains("sealed") && !close.stderr.contains("sealed"), "{close}");
        open(&env, "RO5", &["GDB-0003"]).fails();
        for i in 0..5 {
            assert!(!reads.read(&env), "read {i} succeeded after repeated write failures");
        }
        // The refused close changed nothing.
        assert_eq!(env.state_of("RO2"), "exported");
        assert!(visible(&env, "RO2"), "a refused close took the case out of the mount");
        assert!(env.staging_dir("RO2").exists(), "a refused close deleted the staging");
        assert!(!env.sealed_log("RO2").exists(), "a refused close sealed the log");
        assert_eq!(env.events("RO2").len(), ro2_records);
        assert_eq!(env.state_of("RO3"), "open");
        env.cli(&["case", "show", "RO5"]).fails();
    }

    // Writable again: everything works, without a restart.
    env.cli(&["case", "approve", "RO3"]).ok().stdout_has("case RO3 exported");
    open(&env, "RO5", &["GDB-0003"]).ok();
    assert!(reads.read(&env), "no read once the database was writable again");
    let ro2 = read_as(&env, UID_A1, "RO2", "S1_R2.fastq").ok();
    assert_eq!(sum_of(&ro2), env.file("GDB-0002").sha256);
    env.cli(&["case", "close", "RO2", "--force", "--reason", "test"]).ok();
    assert!(env.sealed_log("RO2").exists());
    assert!(!env.staging_dir("RO2").exists());

    // A restart finds exactly what was acknowledged, and every log intact.
    env.stop();
    env.start();
    reads.assert_recorded(&env);
    assert_eq!(env.state_of("RO2"), "closed");
    assert_eq!(env.state_of("RO3"), "exported");
    assert_eq!(env.state_of("RO5"), "open");
    env.cli(&["audit", "verify"]).ok();
}

// ---------------------------------------------------------------- damaged staged copy

/// A staged copy changed on disk while the daemon was down is not served
/// again: after the restart its case comes back only with the catalog's
/// bytes (staged again from the GDB), and a case whose GDB file changed too
/// stays out of the mount.
#[test]
fn a_staged_copy_damaged_while_the_daemon_was_down_is_never_served() {
    let mut env = Env::ready();
    export(&env, "DMG", &["GDB-0001", "GDB-0006"]);
    export(&env, "DMG2", &["GDB-0002"]);
    env.pull_as(UID_A1, "DMG");
    env.stop();

    let flip = |p: &Path, at: usize| {
        let mut data = std::fs::read(p).unwrap();
        data[at] ^= 0x20;
        std::fs::write(p, &data).unwrap();
    };
    // One byte of a copy (same size), in the middle of the file.
    let copy = env.staging_dir("DMG").join("000.data");
    flip(&copy, env.file("GDB-0001").size as usize / 2);
    assert_ne!(sha256_file(&copy), env.file("GDB-0001").sha256);
    // A copy and its GDB file: nothing intact is left to serve.
    flip(&env.staging_dir("DMG2").join("000.data"), 7);
    flip(&env.gdb_path("GDB-0002"), 7);

    env.start();
    assert!(
        env.wait_for(Duration::from_secs(10), || visible(&env, "DMG")),
        "DMG did not come back\n{}",
        env.daemon_log()
    );
    assert_eq!(sha256_file(&copy), env.file("GDB-0001").sha256, "the damaged copy was kept");
    env.pull_as(UID_A1, "DMG");
    let dir = env.mnt.join("DMG");
    let mut check = Command::new("setpriv");
    check
        .arg(format!("--reuid={UID_A1}"))
        .arg(format!("--regid={UID_A1}"))
        .arg("--clear-groups")
        .args(["sha256sum", "-c", "SHA256SUMS"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_with_timeout(check, None, "sha256sum -c SHA256SUMS in the mount").ok();
    assert!(env.daemon_log().contains("staged copy not intact"), "{}", env.daemon_log());

    assert!(
        env.wait_for(Duration::from_secs(10), || env.events("DMG2").iter().any(|e| e == "hidden")),
        "DMG2 was not kept out of the mount\n{}",
        env.daemon_log()
    );
    assert!(!visible(&env, "DMG2"));
    read_as(&env, UID_A1, "DMG2", "S1_R2.fastq").fails();
    env.cli(&["audit", "verify"]).ok();
}
