//! `scripts/workcopy-notify-example` end to end: it follows the feed of a
//! real daemon and runs a command for each case that becomes exported,
//! received, closed or expired — each once, in order, across stops of the
//! script (SIGTERM and SIGKILL) and a restart of the daemon.

use crate::common::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/workcopy-notify-example");

/// The notifier and what its command wrote.
struct Notifier {
    child: Option<Child>,
    state: std::path::PathBuf,
    out: std::path::PathBuf,
    command: std::path::PathBuf,
    socket: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Notifier {
    fn new(env: &Env) -> Notifier {
        let command = env.root.join("ticket");
        // The support system's CLI, played by a script that appends a line.
        write_file(
            &command,
            format!(
                "#!/bin/sh\necho \"$1 $2 $WORKCOPY_SEQ $WORKCOPY_REF $WORKCOPY_STATE\" >>{}\n",
                env.root.join("tickets").display()
            )
            .as_bytes(),
            0o755,
        );
        Notifier {
            child: None,
            state: env.root.join("notify/last-seq"),
            out: env.root.join("tickets"),
            command,
            socket: env.socket.clone(),
            log: env.root.join("notify.log"),
        }
    }

    fn start(&mut self) {
        assert!(self.child.is_none());
        std::fs::create_dir_all(self.state.parent().unwrap()).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(SCRIPT)
            .arg("--state")
            .arg(&self.state)
            .args(["--workcopy", BIN, "--socket"])
            .arg(&self.socket)
            .arg(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Stops it with `signal` and returns its exit status.
    fn stop(&mut self, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        child.wait().unwrap()
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// Waits until the command wrote `n` lines.
    #[track_caller]
    fn wait_for(&self, n: usize) {
        let got = wait_until(Duration::from_secs(40), || self.lines().len() >= n);
        assert!(
            got,
            "{} of {n} lines: {:?}\n--- notifier ---\n{}",
            self.lines().len(),
            self.lines(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn saved(&self) -> u64 {
        std::fs::read_to_string(&self.state).unwrap().trim().parse().unwrap()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn exported(env: &Env, case_ref: &str, file: &str) {
    env.cli(&["case", "open", case_ref, "--requester", ALICE, file]).ok();
    env.cli(&["case", "approve", case_ref]).ok();
}

/// The feed's last number.
fn head(env: &Env) -> u64 {
    let out = env.cli(&["events"]).ok();
    out.stdout
        .lines()
        .last()
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_notify_example_runs_its_command_once_per_state_change_across_restarts() {
    use nix::sys::signal::Signal;
    let mut env = Env::ready_with(|o| o.case_ttl = Some("20s".into()));
    // Before the notifier's first start: a case whose changes it must see too.
    exported(&env, "TKT-A", "GDB-0001");
    let mut n = Notifier::new(&env);
    n.start();
    exported(&env, "TKT-B", "GDB-0002");
    n.wait_for(2);

    // Stopped (SIGTERM): it saves where it is and exits 0; changes made
    // meanwhile come when it is back.
    assert!(n.stop(Signal::SIGTERM).success());
    assert_eq!(n.saved(), head(&env), "the state file is not at the feed's head");
    env.pull_as(UID_A1, "TKT-A");
    env.cli_as_stdin(
        Who::Dept(UID_A1),
        &["case", "confirm", "TKT-A", "--sha256sums", "-"],
        &sums_list(&env.received_sums("TKT-A")),
    )
    .ok();
    env.cli(&["case", "close", "TKT-B", "--force", "--reason", "withdrawn"]).ok();
    n.start();
    n.wait_for(4);

    // The daemon restarts under it: it follows again after its last number.
    env.stop();
    env.start();
    env.cli(&["case", "close", "TKT-A"]).ok();
    n.wait_for(5);
    // A case that expires.
    exported(&env, "TKT-E", "GDB-0006");
    n.wait_for(7);

    // Killed hard while idle (its number saved), then started again; a
    // rejected case is no state it acts on.
    let saved = wait_until(Duration::from_secs(10), || n.saved() == head(&env));
    assert!(saved, "the quiet feed's number was not saved");
    n.stop(Signal::SIGKILL);
    env.cli(&["case", "open", "TKT-R", "--requester", ALICE, "GDB-0002"]).ok();
    env.cli(&["case", "reject", "TKT-R", "--reason", "no"]).ok();
    n.start();
    exported(&env, "TKT-G", "GDB-0002");
    n.wait_for(8);
    std::thread::sleep(Duration::from_secs(2));

    let lines = n.lines();
    let seen: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 5, "{l}");
            // The arguments and the environment agree.
            assert_eq!((f[0], f[1]), (f[3], f[4]), "{l}");
            (f[0].to_string(), f[1].to_string())
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("TKT-A", "exported"),
        ("TKT-B", "exported"),
        ("TKT-A", "received"),
        ("TKT-B", "closed"),
        ("TKT-A", "closed"),
        ("TKT-E", "exported"),
        ("TKT-E", "expired"),
        ("TKT-G", "exported"),
    ]
    .iter()
    .map(|(r, s)| (r.to_string(), s.to_string()))
    .collect();
    assert_eq!(seen, want, "{lines:?}");
    // Feed numbers only go up: nothing was handled twice.
    let seqs: Vec<u64> = lines.iter().map(|l| l.split(' ').nth(2).unwrap().parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let log = std::fs::read_to_string(&n.log).unwrap_or_default();
    assert!(log.contains("following again after record"), "{log}");
}

#[test]
fn a_failing_command_stops_the_notifier_and_is_tried_again() {
    let env = Env::ready();
    let mut n = Notifier::new(&env);
    // The command fails once (no marker file yet), then works.
    let marker = env.root.join("fail-once");
    write_file(
        &n.command,
        format!(
            "#!/bin/sh\nif [ ! -e {m} ]; then touch {m}; exit 7; fi\necho \"$1 $2 $WORKCOPY_SEQ $WORKCOPY_REF $WORKCOPY_STATE\" >>{o}\n",
            m = marker.display(),
            o = n.out.display()
        )
        .as_bytes(),
        0o755,
    );
    exported(&env, "FAIL-1", "GDB-0001");
    n.start();
    let status = n.child.as_mut().unwrap().wait().unwrap();
    n.child = None;
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(&n.log).unwrap();
    assert!(log.contains("failed (status 7) for FAIL-1 exported"), "{log}");
    assert!(n.lines().is_empty());
    n.start();
    n.wait_for(1);
    assert!(n.lines()[0].starts_with("FAIL-1 exported "), "{:?}", n.lines());
}
