//! The shipped unit under the host's real systemd. `systemd_boot.sh` boots
//! systemd as PID 1 in private namespaces (pid, mount, uts, ipc, net,
//! cgroup) over copy-on-write overlays of the host's /etc, /usr and /var;
//! `scripts/install` puts workcopy in place there as an admin would, and the
//! test drives the service with `systemctl` through a start refused with
//! status 78 (no restart loop), a start with READY=1, an approval (STATUS=
//! follows it), a pull by the transfer account, reloads good and refused, a
//! crash with the automatic restart over the stale mount, an upgrade by
//! re-running the install under the running service, a regional pull over
//! ssh through the gate with its receipt, and stop; and it reads what the
//! journal (priorities, no colour, no second timestamp, the case named) and
//! `systemd-analyze security` say.
//!
//! Needs root, /lib/systemd/systemd, unshare/nsenter (util-linux), ip
//! (iproute2), sshd (openssh-server), overlayfs and a writable cgroup2
//! hierarchy. Nothing on the
//! host changes: everything the booted system writes stays in a temporary
//! directory, and every mount dies with the namespaces.

use crate::common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/systemd_boot.sh");
const SYSTEMD: &str = "/lib/systemd/systemd";
/// The target booted: sysinit and nothing else (written by the script).
const TARGET: &str = "workcopy-test.target";
/// Where the booted system sees what the test installs from (see the script).
const SHARE: &str = "/run/workcopy-test";
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const CASE: &str = "NGC-2026-0001";

/// A booted system: systemd as PID 1 of fresh namespaces. Dropping it kills
/// that PID 1 (the kernel then kills everything in its pid namespace, and the
/// mount namespace with its mounts goes with the last process), removes the
/// cgroups it made and the temporary directory.
struct System {
    /// Upper layers of the overlays, the share, the console log.
    tmp: Option<tempfile::TempDir>,
    /// `unshare`, whose child is the namespace's PID 1.
    unshare: Child,
    /// The namespace's PID 1 as the host sees it.
    pid: i32,
    /// The cgroup the namespace's cgroup root is.
    cgroup: PathBuf,
}

impl System {
    fn boot() -> System {
        assert!(nix::unistd::geteuid().is_root(), "booting systemd in namespaces needs root");
        assert!(
            Path::new(SYSTEMD).is_file(),
            "{SYSTEMD} is missing (Debian: apt-get install systemd)"
        );
        let tmp = tempfile::Builder::new().prefix("wc-boot-").tempdir().unwrap();
        share_checkout(&tmp.path().join("share"));
        let cgroup = new_cgroup();
        let console = std::fs::File::create(tmp.path().join("console.log")).unwrap();
        // The cgroup namespace is rooted at the cgroup of the process that
        // unshares it: move there first.
        let unshare = Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ >"$0/cgroup.procs" && exec unshare --pid --fork --mount --uts --ipc --net --cgroup --mount-proc --propagation private "$@""#)
            .arg(&cgroup)
            .arg(SCRIPT)
            .arg(tmp.path())
            .arg(TARGET)
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .unwrap();
        let mut sys = System {
            tmp: Some(tmp),
            pid: 0,
            unshare,
            cgroup,
        };
        let upid = sys.unshare.id();
        let found = wait_until(Duration::from_secs(10), || {
            let children = std::fs::read_to_string(format!("/proc/{upid}/task/{upid}/children")).unwrap_or_default();
            match children.split_whitespace().next().and_then(|p| p.parse().ok()) {
                Some(p) => {
                    sys.pid = p;
                    true
                }
                None => false,
            }
        });
        assert!(found, "unshare started no PID 1:\n{}", sys.console());
        // Up when the manager answers and the boot transaction is done.
        let mut last = String::new();
        let up = wait_until(Duration::from_secs(30), || {
            let out = sys.run(&["systemctl", "is-system-running", "--wait"]);
            last = out.to_string();
            matches!(out.stdout.trim(), "running" | "degraded")
        });
        assert!(up, "the system did not come up:\n{last}\n{}", sys.console());
        sys
    }

    fn dir(&self) -> &Path {
        self.tmp.as_ref().map(|t| t.path()).unwrap_or(Path::new("/nonexistent"))
    }

    /// The script's and systemd's own output before the journal took over.
    fn console(&self) -> String {
        let text = std::fs::read_to_string(self.dir().join("console.log")).unwrap_or_default();
        format!("--- console ---\n{text}")
    }

    /// `argv` run inside every namespace of the booted system, as root.
    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid.to_string())
            .arg("-a")
            .arg("--")
            .args(argv)
            .env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("LC_ALL", "C")
            .env("HOME", "/root")
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn run(&self, argv: &[&str]) -> Out {
        run_with_timeout(self.command(argv), None, &format!("(booted) {}", argv.join(" ")))
    }

    /// A bash script run inside the booted system as root (`set -euo pipefail`).
    fn sh(&self, script: &str) -> Out {
        self.run(&["bash", "-euo", "pipefail", "-c", script])
    }

    /// Properties of the workcopy unit.
    fn show(&self, props: &[&str]) -> HashMap<String, String> {
        let mut argv = vec!["systemctl", "show", "workcopy.service"];
        let joined = props.join(",");
        let arg = format!("--property={joined}");
        argv.push(&arg);
        let out = self.run(&argv).ok();
        out.stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The unit's journal entries of this boot (`journalctl -o json`).
    fn journal(&self) -> Vec<serde_json::Value> {
        let out = self
            .run(&["journalctl", "--unit=workcopy.service", "--output=json", "--no-pager"])
            .ok();
        out.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journalctl -o json gave {l:?}: {e}")))
            .collect()
    }

    /// The unit's journal as text, for messages.
    fn journal_text(&self) -> String {
        let out = self.run(&["journalctl", "--unit=workcopy.service", "--no-pager", "--lines=60"]);
        format!("--- journal of workcopy.service ---\n{}{}", out.stdout, out.stderr)
    }

    /// Polls the journal until an entry's message contains `text`.
    #[track_caller]
    fn wait_for_log(&self, text: &str) -> serde_json::Value {
        let mut found = None;
        wait_until(Duration::from_secs(5), || {
            found = self.journal().into_iter().find(|e| message(e).contains(text));
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no journal entry says {text:?}\n{}", self.journal_text()))
    }

    /// "TYPE SOURCE" of the topmost mount at `path` in the booted system, if any.
    fn mounted(&self, path: &str) -> Option<String> {
        let out = self.run(&["findmnt", "--noheadings", "--output=FSTYPE,SOURCE", "--mountpoint", path]);
        let t = out
            .stdout
            .lines()
            .last()
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        (out.status == 0 && !t.is_empty()).then_some(t)
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if self.pid > 0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // The cgroups systemd made, leaves first, once their processes are gone.
        wait_until(Duration::from_secs(5), || {
            remove_cgroup_tree(&self.cgroup);
            !self.cgroup.exists()
        });
        if let Some(t) = self.tmp.take() {
            let path = t.path().to_path_buf();
            if let Err(e) = t.close() {
                eprintln!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// What `scripts/install` installs from, copied (the binary hard-linked where
/// it can be) so the booted system sees it whatever the checkout's path.
fn share_checkout(share: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dst = share.join("src");
    for d in ["scripts", "systemd", "doc"] {
        copy_dir(&src.join(d), &dst.join(d));
    }
    std::fs::copy(src.join("README.md"), dst.join("README.md")).unwrap();
    let bin = dst.join("workcopy");
    if std::fs::hard_link(BIN, &bin).is_err() {
        std::fs::copy(BIN, &bin).unwrap();
    }
    for d in [share, &dst] {
        chmod(d, 0o755);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// A new cgroup under ours in the unified (v2) hierarchy.
fn new_cgroup() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right.starts_with("cgroup2 ").then(|| left.split(' ').nth(4).map(PathBuf::from))?
        })
        .expect("no cgroup2 hierarchy is mounted: the booted systemd needs one");
    let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let ours = ours
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("this process is in no cgroup2 cgroup")
        .trim_start_matches('/')
        .to_string();
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = mount.join(ours).join(format!("workcopy-boot-{}-{n}", std::process::id()));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create the cgroup {}: {e}", dir.display()));
    dir
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A journal entry's MESSAGE as text (journalctl gives a non-UTF-8 or
/// control-character message as an array of bytes).
fn message(e: &serde_json::Value) -> String {
    match &e["MESSAGE"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(bytes) => bytes.iter().filter_map(|b| b.as_u64()).map(|b| b as u8 as char).collect(),
        _ => String::new(),
    }
}

/// Sets up what an admin sets up after `scripts/install`: the transfer
/// accounts the example directory names (xfer-rh for RH-KGA, xfer-hgh for
/// HGH-GEN), a staff member, and a GDB at the example config's gdb_root
/// (/srv/gdb) with a catalog of two files submitted by RH-KGA.
const PREPARE: &str = r#"
useradd --system --create-home --home-dir /home/xfer-rh --shell /bin/bash xfer-rh
useradd --system --create-home --home-dir /home/xfer-hgh --shell /bin/bash xfer-hgh
useradd --create-home --groups workcopy-staff --shell /bin/bash staff1
install -d -m 0755 /srv/gdb/run1
head -c 300000 /dev/urandom >/srv/gdb/run1/S1_R1.fastq.gz
head -c 200000 /dev/urandom >/srv/gdb/run1/S1_R2.fastq.gz
chmod 0640 /srv/gdb/run1/*
{
  printf 'file_id\tpath\tdepartment\tsize\tsha256\tsubmitted_at\n'
  for f in S1_R1 S1_R2; do
    p=run1/$f.fastq.gz
    printf 'GDB-%s\t%s\tRH-KGA\t%s\t%s\t2025-03-01T10:00:00Z\n' "$f" "$p" \
      "$(stat -c %s "/srv/gdb/$p")" "$(sha256sum "/srv/gdb/$p" | cut -d' ' -f1)"
  done
} >/srv/gdb/catalog.tsv
"#;

/// The regional side inside the booted system: an sshd on 127.0.0.1:2222 (a
/// transient unit) that lets in only xfer-rh, whose authorized_keys forces
/// the installed workcopy-ssh-gate for the key of the account `regional`,
/// the department's server's account.
const SSH_SETUP: &str = r#"
usermod --password '*' xfer-rh     # unlocked for key logins (this sshd runs without PAM)
useradd --create-home --shell /bin/bash regional
install -d -m 0700 -o regional -g regional /home/regional/.ssh /home/regional/in
setpriv --reuid=regional --regid=regional --init-groups ssh-keygen -q -t ed25519 -N '' -f /home/regional/.ssh/workcopy
install -d -m 0700 -o xfer-rh -g xfer-rh /home/xfer-rh/.ssh
printf 'command="/usr/lib/workcopy/workcopy-ssh-gate",restrict %s
' "$(cat /home/regional/.ssh/workcopy.pub)"   >/home/xfer-rh/.ssh/authorized_keys
chown xfer-rh:xfer-rh /home/xfer-rh/.ssh/authorized_keys
chmod 0600 /home/xfer-rh/.ssh/authorized_keys
install -d -m 0700 /root/sshd
ssh-keygen -q -t ed25519 -N '' -f /root/sshd/host_key
printf '[127.0.0.1]:2222 %s
' "$(cut -d' ' -f1,2 /root/sshd/host_key.pub)" >/home/regional/.ssh/known_hosts
chown regional:regional /home/regional/.ssh/known_hosts
cat >/root/sshd/config <<CONF
Port 2222
ListenAddress 127.0.0.1
HostKey /root/sshd/host_key
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers xfer-rh
PrintMotd no
UseDNS no
CONF
install -d -m 0755 /run/sshd      # privilege separation
/usr/sbin/sshd -t -f /root/sshd/config
systemd-run --quiet --unit=workcopy-test-sshd /usr/sbin/sshd -D -e -f /root/sshd/config
for _ in $(seq 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/2222) 2>/dev/null; then exit 0; fi
  sleep 0.05
done
echo "sshd did not listen on 127.0.0.1:2222" >&2
exit 1
"#;

/// Runs the workcopy CLI in the booted system as `user` (with that user's groups).
fn as_user(user: &str, cmd: &str) -> String {
    format!("setpriv --reuid={user} --regid={user} --init-groups env HOME=/home/{user} {cmd}")
}

#[test]
fn the_shipped_unit_runs_the_whole_flow_under_systemd_as_pid_1() {
    let started = Instant::now();
    let sys = System::boot();
    let boot_time = started.elapsed();

    // Install as the admin would, then the accounts, the GDB and its catalog.
    let out = sys.run(&[&format!("{SHARE}/src/scripts/install"), "--bin", &format!("{SHARE}/src/workcopy")]);
    let out = out.ok();
    assert!(out.stdout.contains("Left for you to do"), "{out}");
    sys.sh(PREPARE).ok();

    // A directory error at start: exit status 78, the reason in the journal,
    // and systemd stops there instead of restarting every RestartSec.
    sys.sh("cp /etc/workcopy/directory.toml /root/directory.toml && echo 'department = [' >>/etc/workcopy/directory.toml")
        .ok();
    sys.run(&["systemctl", "start", "workcopy.service"]).fails();
    let p = sys.show(&["ActiveState", "Result", "ExecMainStatus", "NRestarts"]);
    assert_eq!(p["ActiveState"], "failed", "no restart loop: {p:?}\n{}", sys.journal_text());
    assert_eq!((p["Result"].as_str(), p["ExecMainStatus"].as_str()), ("exit-code", "78"), "{p:?}");
    assert_eq!(p["NRestarts"], "0", "{p:?}");
    sys.wait_for_log("/etc/workcopy/directory.toml");
    sys.sh("cp /root/directory.toml /etc/workcopy/directory.toml && systemctl reset-failed workcopy.service")
        .ok();

    // Start: systemctl returns once the daemon sent READY=1, with the export mounted.
    sys.run(&["systemctl", "start", "workcopy.service"]).ok();
    let p = sys.show(&["ActiveState", "SubState", "Type", "NRestarts", "StatusText", "MainPID"]);
    assert_eq!(p["Type"], "notify", "{p:?}");
    assert_eq!(
        (p["ActiveState"].as_str(), p["SubState"].as_str()),
        ("active", "running"),
        "{p:?}\n{}",
        sys.journal_text()
    );
    assert_eq!(p["NRestarts"], "0", "{p:?}");
    assert!(p["StatusText"].contains("0 exported"), "{p:?}");
    assert_eq!(
        sys.mounted("/srv/workcopy").as_deref(),
        Some("fuse workcopy"),
        "{}",
        sys.journal_text()
    );

    // A case from catalog to export, by a staff member.
    let staff = |cmd: &str| sys.sh(&as_user("staff1", &format!("workcopy {cmd}")));
    staff("catalog import /srv/gdb/catalog.tsv").ok();
    staff(&format!("case open {CASE} --requester alice@regionh.dk GDB-S1_R1 GDB-S1_R2")).ok();
    staff(&format!("case approve {CASE}"))
        .ok()
        .stdout_has("exported: 2 file(s) readable");
    // systemctl status shows it at once (STATUS= follows each change).
    let mut status = String::new();
    let shown = wait_until(Duration::from_secs(5), || {
        status = sys.show(&["StatusText"])["StatusText"].clone();
        status.starts_with("1 exported")
    });
    assert!(shown, "StatusText={status}");

    // The transfer account pulls it with rsync and checks it.
    let pull = format!(
        "{} && cd /home/xfer-rh/in && sha256sum --check --strict SHA256SUMS",
        as_user("xfer-rh", &format!("rsync -a /srv/workcopy/{CASE}/ /home/xfer-rh/in/"))
    );
    sys.sh(&pull).ok().stdout_has("S1_R1.fastq.gz: OK").stdout_has("S1_R2.fastq.gz: OK");
    assert!(staff(&format!("case log {CASE}")).ok().stdout.contains("file_opened"));
    // The feed has it all, in order.
    staff("events").ok().stdout_has("1  ").stdout_has(&format!("{CASE} #3  exported"));

    // Metrics: the installed service, in its sandbox, writes node_exporter's
    // textfile (its directory comes with prometheus-node-exporter); the
    // timer runs it every 15 s.
    let prom = "/var/lib/prometheus/node-exporter/workcopy.prom";
    sys.sh("install -d -m 0755 /var/lib/prometheus/node-exporter").ok();
    sys.run(&["systemctl", "start", "workcopy-metrics.service"]).ok();
    let text = sys.run(&["cat", prom]).ok().stdout;
    assert!(
        text.contains("state=\"exported\"} 1") && text.contains("workcopy_file_opens_total") && text.ends_with("# EOF\n"),
        "{text}"
    );
    assert_eq!(sys.run(&["stat", "-c", "%a", prom]).ok().stdout.trim(), "644");
    sys.run(&["systemctl", "start", "workcopy-metrics.timer"]).ok();
    let timer = sys
        .run(&["systemctl", "show", "workcopy-metrics.timer", "--property=ActiveState"])
        .ok();
    assert_eq!(timer.stdout.trim(), "ActiveState=active", "{timer}");
    let out = sys
        .run(&["systemd-analyze", "security", "--no-pager", "workcopy-metrics.service"])
        .ok();
    assert!(
        out.stdout.contains("Overall exposure level for workcopy-metrics.service: 0."),
        "{out}"
    );

    // Reload with a good directory.
    sys.run(&["systemctl", "reload", "workcopy.service"]).ok();
    sys.wait_for_log("directory reloaded");
    // A refused directory fails the reload, with the reason; the service
    // stays up with the old directory.
    sys.sh("echo 'department = [' >>/etc/workcopy/directory.toml").ok();
    sys.run(&["systemctl", "reload", "workcopy.service"]).fails();
    let p = sys.show(&["ActiveState", "SubState", "MainPID"]);
    assert_eq!((p["ActiveState"].as_str(), p["SubState"].as_str()), ("active", "running"), "{p:?}");
    sys.wait_for_log("directory refused; the previous directory stays in force");
    sys.sh("cp /root/directory.toml /etc/workcopy/directory.toml").ok();
    sys.run(&["systemctl", "reload", "workcopy.service"]).ok();
    staff("config check").ok();

    // A crash: systemd restarts the daemon, which takes over the stale mount
    // and serves the case again.
    let before = p["MainPID"].clone();
    sys.run(&["systemctl", "kill", "--signal=KILL", "workcopy.service"]).ok();
    let mut p = HashMap::new();
    let restarted = wait_until(Duration::from_secs(15), || {
        p = sys.show(&["ActiveState", "SubState", "NRestarts", "MainPID"]);
        p["NRestarts"] == "1" && p["ActiveState"] == "active" && p["SubState"] == "running" && p["MainPID"] != before
    });
    assert!(restarted, "no automatic restart: {p:?}\n{}", sys.journal_text());
    sys.wait_for_log("detaching a stale mount");
    assert_eq!(sys.mounted("/srv/workcopy").as_deref(), Some("fuse workcopy"));
    let reread = as_user("xfer-rh", &format!("sha256sum /srv/workcopy/{CASE}/S1_R1.fastq.gz"));
    let want = sys.sh("sha256sum /srv/gdb/run1/S1_R1.fastq.gz").ok().stdout;
    let got = sys.sh(&reread).ok().stdout;
    assert_eq!(
        got.split(' ').next(),
        want.split(' ').next(),
        "after the restart the case reads the same"
    );

    // The upgrade path: install again while the service runs (its mount on
    // /srv/workcopy included), then restart. A local drop-in survives it.
    sys.sh("mkdir -p /etc/systemd/system/workcopy.service.d && \
         printf '[Service]\\nEnvironment=WORKCOPY_SITE=local\\n' >/etc/systemd/system/workcopy.service.d/site.conf")
        .ok();
    let out = sys.run(&[&format!("{SHARE}/src/scripts/install"), "--bin", &format!("{SHARE}/src/workcopy")]);
    out.ok()
        .stdout_has("systemctl restart workcopy")
        .stdout_has("systemctl edit workcopy");
    sys.run(&["systemctl", "restart", "workcopy.service"]).ok();
    let p = sys.show(&["ActiveState", "FragmentPath", "DropInPaths", "Environment", "Documentation"]);
    assert_eq!(p["ActiveState"], "active", "{p:?}\n{}", sys.journal_text());
    // /usr/lib, or /lib where /lib is a link to it.
    assert!(
        ["/usr/lib/systemd/system/workcopy.service", "/lib/systemd/system/workcopy.service"].contains(&p["FragmentPath"].as_str()),
        "{p:?}"
    );
    assert!(
        p["DropInPaths"].contains("site.conf") && p["Environment"].contains("WORKCOPY_SITE=local"),
        "{p:?}"
    );
    assert_eq!(sys.sh(&reread).ok().stdout.split(' ').next(), want.split(' ').next());
    // Documentation= points at what is installed.
    for doc in p["Documentation"].split_whitespace().map(|d| d.trim_matches('"')) {
        match doc.strip_prefix("file://") {
            Some(path) => sys.run(&["test", "-f", path]).ok(),
            None => sys.run(&["man", "-w", doc.trim_start_matches("man:").trim_end_matches("(1)")]).ok(),
        };
    }

    // The regional pull over ssh: workcopy-pull on the department's side,
    // the gate on the transfer host, rrsync on the mount, then `confirm`.
    sys.sh(SSH_SETUP).ok();
    let pull = as_user(
        "regional",
        &format!(
            "/usr/lib/workcopy/workcopy-pull --port 2222 --identity /home/regional/.ssh/workcopy \
             -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/home/regional/.ssh/known_hosts \
             xfer-rh@127.0.0.1 {CASE} /home/regional/in"
        ),
    );
    let out = sys.sh(&pull);
    assert_eq!(
        out.status,
        0,
        "{out}\n{}",
        sys.run(&["journalctl", "--unit=workcopy-test-sshd", "--no-pager"])
    );
    let state = staff(&format!("case show {CASE} --json")).ok().json()["case"]["state"].clone();
    assert_eq!(state, "received", "the receipt came back through the gate");

    // Someone who is neither staff nor a transfer account: a warning.
    sys.sh("setpriv --reuid=4242 --regid=4242 --clear-groups workcopy --socket /run/workcopy/control.sock case list")
        .fails();
    sys.wait_for_log("refused: caller is neither staff");

    // The journal: each line at its priority, no colour codes (which make
    // journalctl show a message as binary), no second timestamp, the case
    // named in every line about one.
    let entries: Vec<_> = sys.journal().into_iter().filter(|e| e["SYSLOG_IDENTIFIER"] == "workcopy").collect();
    assert!(entries.len() > 10, "{}", sys.journal_text());
    let at = |text: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| message(e).contains(text))
            .map(|e| e["PRIORITY"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    for (text, priority) in [
        ("workcopy serving", "6"),
        ("refused: caller is neither staff", "4"),
        ("detaching a stale mount", "4"),
        // The daemon's refusal, and the reload command's failure.
        ("directory reload refused", "3"),
        ("workcopy: directory refused", "3"),
        // serve's refusal to start on the broken directory.
        ("workcopy: directory /etc/workcopy/directory.toml", "3"),
    ] {
        let found = at(text);
        assert!(
            !found.is_empty() && found.iter().all(|p| p == priority),
            "{text:?} at priorities {found:?}, not {priority}\n{}",
            sys.journal_text()
        );
    }
    for e in &entries {
        assert!(e["MESSAGE"].is_string(), "a binary message (colour codes?): {e}");
        let m = message(e);
        assert!(!m.contains('\u{1b}'), "colour codes in {m:?}");
        let stamped = m.len() > 10 && m[..4].bytes().all(|b| b.is_ascii_digit()) && m.as_bytes()[4] == b'-';
        assert!(!stamped, "a second timestamp in {m:?}");
        assert!(!m.starts_with('<'), "a priority prefix journald did not take: {m:?}");
        if m.contains("op=\"case ") && !m.contains("op=\"case list\"") {
            assert!(m.contains(&format!("case={CASE}")), "the case is not named in {m:?}");
        }
    }

    // The exposure of the unit as the running manager sees it.
    let out = sys.run(&["systemd-analyze", "security", "--no-pager", "workcopy.service"]).ok();
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for workcopy.service"))
        .unwrap_or_else(|| panic!("{out}"));
    let level: f64 = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(level <= 4.0, "exposure {level}: {line}");

    // Stop: the export is unmounted and the daemon exited cleanly.
    sys.run(&["systemctl", "stop", "workcopy.service"]).ok();
    let p = sys.show(&["ActiveState", "Result", "ExecMainStatus"]);
    assert_eq!(p["ActiveState"], "inactive", "{p:?}");
    assert_eq!(p["Result"], "success", "{p:?}\n{}", sys.journal_text());
    assert_eq!(sys.mounted("/srv/workcopy"), None, "stop unmounts the export");
    // With no daemon the metrics say so, and their service fails.
    sys.run(&["systemctl", "start", "workcopy-metrics.service"]).fails();
    let text = sys.run(&["cat", "/var/lib/prometheus/node-exporter/workcopy.prom"]).ok().stdout;
    assert!(text.contains("workcopy_up{") && text.contains("} 0\n# EOF"), "{text}");

    let took = started.elapsed();
    drop(sys);
    assert!(took < Duration::from_secs(60), "the boot test took {took:?} (boot {boot_time:?})");
}

/// A host on a shared register under the real systemd: a PostgreSQL server
/// inside the booted system on 127.0.0.1. The shipped unit (no IP at all)
/// cannot reach it and fails to start; with the shipped drop-in
/// (`workcopy-shared-register.conf.example`: IP to the server's address
/// only) it starts, and a case goes from
/// catalog to a pull by the transfer account.
#[test]
fn a_shared_register_host_runs_with_the_shipped_drop_in() {
    let sys = System::boot();
    sys.run(&[&format!("{SHARE}/src/scripts/install"), "--bin", &format!("{SHARE}/src/workcopy")])
        .ok();
    sys.sh(PREPARE).ok();
    // The database: a server of its own in the booted system, a database
    // for workcopy, its password in a root-only file.
    sys.sh(&format!(
        r#"url=$({SHARE}/src/scripts/pg-test-server /var/lib/wc-test-pg 5432)
psql -X -q "$url" -c 'CREATE DATABASE workcopy'
install -m 0600 /var/lib/wc-test-pg/password /etc/workcopy/db-password
cat >>/etc/workcopy/workcopy.toml <<CONF
database_url = "postgres://postgres@127.0.0.1:5432/workcopy"
database_password_file = "/etc/workcopy/db-password"
host = "transfer-1"
CONF"#
    ))
    .ok();

    // The shipped unit alone: no IP, so no register; the start fails.
    sys.run(&["systemctl", "start", "workcopy.service"]).fails();
    let journal = sys.journal_text();
    assert!(
        journal.contains("cannot open the database") && !journal.contains("password file"),
        "{journal}"
    );
    // (A unit that failed and stopped may be unloaded already: nothing to reset then.)
    sys.sh("systemctl stop workcopy.service; systemctl reset-failed workcopy.service 2>/dev/null || true")
        .ok();

    // With the drop-in, its address set to the server's.
    sys.sh("install -d /etc/systemd/system/workcopy.service.d && \
         sed 's|^IPAddressAllow=.*|IPAddressAllow=127.0.0.1/32|' /usr/share/doc/workcopy/workcopy-shared-register.conf.example \
           >/etc/systemd/system/workcopy.service.d/shared-register.conf && systemctl daemon-reload")
        .ok();
    let start = sys.run(&["systemctl", "start", "workcopy.service"]);
    assert_eq!(start.status, 0, "{start}\n{}", sys.journal_text());
    let p = sys.show(&["ActiveState", "IPAddressAllow", "IPAddressDeny", "RestrictAddressFamilies"]);
    assert_eq!(p["IPAddressAllow"], "127.0.0.1/32", "{p:?}");
    assert!(p["IPAddressDeny"].contains("0.0.0.0/0"), "everything else stays denied: {p:?}");
    assert_eq!(p["ActiveState"], "active", "{p:?}\n{}", sys.journal_text());
    let staff = |cmd: &str| sys.sh(&as_user("staff1", &format!("workcopy {cmd}")));
    staff("status --json").ok().stdout_has("\"shared_register\": true");
    staff("hosts").ok().stdout_has("transfer-1");
    staff("catalog import /srv/gdb/catalog.tsv").ok();
    staff(&format!("case open {CASE} --requester alice@regionh.dk GDB-S1_R1 GDB-S1_R2")).ok();
    staff(&format!("case approve {CASE}"))
        .ok()
        .stdout_has("exported: 2 file(s) readable");
    sys.sh(&as_user("xfer-rh", &format!("sha256sum /srv/workcopy/{CASE}/S1_R1.fastq.gz")))
        .ok();
    staff(&format!("case show {CASE}")).ok().stdout_has("host        transfer-1");
    sys.run(&["systemctl", "stop", "workcopy.service"]).ok();
    drop(sys);
}
