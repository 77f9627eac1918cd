//! The regional side end to end: `scripts/workcopy-pull` run as a
//! department's account pulls an exported case over a real OpenSSH server
//! whose `authorized_keys` force `scripts/workcopy-ssh-gate`, verifies it,
//! confirms receipt, and resumes after an interruption; the gate refuses
//! other departments and anything that is not a read-only pull, `confirm REF`
//! or `list`. `scripts/workcopy-unspring` is tested with and without a
//! (fake) `spring`.
//!
//! SFTP-only clients are tested with OpenSSH's `sftp` against the same sshd,
//! configured with `systemd/sshd-workcopy-sftp.conf.example`: a chroot on the
//! mount, read-only `internal-sftp` on a port of its own, the gate on the other.
//!
//! Needs root, `/dev/fuse`, rsync (with rrsync), setpriv, useradd and
//! `/usr/sbin/sshd` (Debian: openssh-server). It creates the unix accounts
//! `wc-xfer-a` (uid 2001) and `wc-xfer-b` (uid 2003) when no account has those
//! uids, because sshd needs passwd entries, and the group `wc-sftp` with
//! the account of uid 2001 as its member; it leaves them for later runs.

use crate::common::*;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Pid, Uid, User};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

/// How long any one external command may run.
/// The OpenSSH server binary (Debian package openssh-server).
const SSHD: &str = "/usr/sbin/sshd";
/// System tools only: a root-only PATH entry would hide them from other uids.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The regional scripts of this checkout.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join(name)
}

/// Runs a command to the end (at most a minute), feeding `input`, and collects its output.
fn run(mut cmd: Command, desc: &str, input: Option<&str>) -> Out {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_with_timeout(cmd, input.map(str::as_bytes), desc)
}

/// `argv` as a command run as root in the C locale with the system PATH.
fn root_cmd(argv: &[&str]) -> Command {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .current_dir("/")
        .env("LC_ALL", "C")
        .env("PATH", SYSTEM_PATH)
        .env_remove("WORKCOPY_CONFIG")
        .env_remove("WORKCOPY_SOCKET");
    cmd
}

/// Runs `argv` as root; must succeed.
#[track_caller]
fn root_ok(argv: &[&str]) -> Out {
    run(root_cmd(argv), &format!("Root: {}", argv.join(" ")), None).ok()
}

/// `argv` run as `uid` through setpriv (no supplementary groups), C locale, system PATH.
fn uid_cmd(uid: u32, argv: &[&str]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(argv)
        .current_dir("/")
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .env("PATH", SYSTEM_PATH)
        .env("HOME", "/")
        .env_remove("WORKCOPY_CONFIG")
        .env_remove("WORKCOPY_SOCKET")
        .env_remove("WORKCOPY_PULL_RSYNC_OPTS")
        .env_remove("SSH_AUTH_SOCK");
    cmd
}

/// A directory owned by `uid`, mode 0700.
fn owned_dir(path: &Path, uid: u32) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    nix::unistd::chown(path, Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid))).unwrap();
    chmod(path, 0o700);
    path.to_path_buf()
}

/// Every regular file beneath `dir` (hidden ones too) with its size.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if m.is_dir() {
            out.extend(files_under(&e.path()));
        } else if m.is_file() {
            out.push((e.path(), m.len()));
        }
    }
    out
}

/// Fails the test unless we run as root with sshd installed.
fn require_prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/it/regional.rs needs root: it starts sshd, creates accounts and mounts FUSE (run: sudo scripts/test)"
    );
    assert!(
        Path::new(SSHD).is_file(),
        "{SSHD} is missing: the regional pull is tested against a real OpenSSH server; \
         install it with `apt-get install -y openssh-server` (.ci/run does; do not enable the ssh service)"
    );
    for tool in [
        "rsync",
        "rrsync",
        "python3",
        "ssh",
        "ssh-keygen",
        "setpriv",
        "useradd",
        "sha256sum",
        "flock",
        "sftp",
        "groupadd",
        "gpasswd",
    ] {
        let found = SYSTEM_PATH.split(':').any(|d| Path::new(d).join(tool).is_file());
        assert!(
            found,
            "{tool} is missing (Debian: apt-get install rsync python3 openssh-client util-linux passwd coreutils)"
        );
    }
}

/// Fails the test unless `uid` can read and execute every regional script.
fn assert_scripts_usable_by(uid: u32) {
    for name in ["workcopy-pull", "workcopy-ssh-gate", "workcopy-unspring"] {
        let p = script(name);
        let out = run(
            uid_cmd(uid, &["test", "-r", p.to_str().unwrap(), "-a", "-x", p.to_str().unwrap()]),
            &format!("uid {uid}: test -r -x {}", p.display()),
            None,
        );
        assert_eq!(
            out.status,
            0,
            "uid {uid} cannot read and execute {}: the checkout must be world-readable \
             (chmod o+rx on it and its parent directories, a+rx on the script)",
            p.display()
        );
    }
}

/// Serializes account creation between the tests of this binary.
static ACCOUNTS: Mutex<()> = Mutex::new(());

/// The name of the account with `uid`, created as `name` (home `home`) when
/// there is none. An account created by an earlier run is reused; no
/// pre-existing account is changed, except that one of ours whose password
/// field locks it (sshd without PAM refuses locked accounts) gets `*`.
fn ensure_account(uid: u32, name: &str, home: &Path) -> String {
    let _guard = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Ok(Some(u)) = User::from_uid(Uid::from_raw(uid)) {
        if u.name == name {
            let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
            let locked = shadow
                .lines()
                .any(|l| l.split(':').next() == Some(name) && l.split(':').nth(1).is_some_and(|p| p.starts_with('!')));
            if locked {
                root_ok(&["usermod", "--password", "*", name]);
            }
        }
        return u.name;
    }
    std::fs::create_dir_all(home).unwrap();
    nix::unistd::chown(home, Some(Uid::from_raw(uid)), None).unwrap();
    let home_s = home.display().to_string();
    let uid_s = uid.to_string();
    let out = run(
        root_cmd(&[
            "useradd",
            "--uid",
            &uid_s,
            "--no-create-home",
            "--home-dir",
            &home_s,
            "--shell",
            "/bin/bash",
            "--no-user-group",
            "--password",
            "*",
            name,
        ]),
        &format!("useradd {name}"),
        None,
    );
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => panic!("cannot create the account {name} (uid {uid}) that sshd needs:\n{out}"),
    }
}

/// The group allowed on the SFTP port in the test sshd (`AllowGroups` of the
/// shipped snippet); `member` is added to it.
const SFTP_GROUP: &str = "wc-sftp";

fn ensure_sftp_group(member: &str) {
    let _guard = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    if !matches!(nix::unistd::Group::from_name(SFTP_GROUP), Ok(Some(_))) {
        root_ok(&["groupadd", SFTP_GROUP]);
    }
    let members = nix::unistd::Group::from_name(SFTP_GROUP)
        .ok()
        .flatten()
        .map(|g| g.mem)
        .unwrap_or_default();
    if !members.iter().any(|m| m == member) {
        root_ok(&["gpasswd", "-a", member, SFTP_GROUP]);
    }
}

/// The shipped sshd snippet for SFTP clients.
fn sftp_snippet() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/sshd-workcopy-sftp.conf.example")
}

/// The shipped snippet for this test's sshd: its ports, chroot and group
/// instead of the examples; every other line as shipped.
fn sftp_config(sftp_port: u16, chroot: &Path) -> String {
    let text = std::fs::read_to_string(sftp_snippet()).unwrap();
    let mut replaced = 0;
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let t = l.trim();
            let new = match t {
                // The test sshd's own port is in the harness's part.
                "Port 22" => None,
                "Port 2222" => Some(format!("Port {sftp_port}")),
                "Match LocalPort 2222" => Some(format!("Match LocalPort {sftp_port}")),
                "ChrootDirectory /srv/workcopy" => Some(format!("    ChrootDirectory {}", chroot.display())),
                "AllowGroups workcopy-sftp" => Some(format!("    AllowGroups {SFTP_GROUP}")),
                _ => return Some(l.to_string()),
            };
            replaced += 1;
            new
        })
        .collect();
    assert_eq!(replaced, 5, "the snippet no longer has the lines this test adapts:\n{text}");
    lines.join("\n") + "\n"
}

/// A department's account on both sides: its unix name on the transfer host
/// and its ssh key (owned by the uid) on the "regional server".
struct Account {
    uid: u32,
    name: String,
    key: PathBuf,
}

/// A real OpenSSH server on 127.0.0.1 whose keys force the gate (on
/// `port`), and serve SFTP in a chroot on the mount (on `sftp_port`, when
/// configured). Killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    sftp_port: Option<u16>,
    log: PathBuf,
}

impl Sshd {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; sshd start is retried on a clash).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether an SSH server answers with its banner on `port`.
fn ssh_banner(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-2.0")
}

/// The running daemon (with the GDB catalog imported), an sshd whose
/// `authorized_keys` force the gate, and the accounts of DEPT-A1 and DEPT-B1.
struct Fixture {
    // Dropped first: sshd stops before the daemon and its mount.
    sshd: Sshd,
    a: Account,
    b: Account,
    known_hosts: PathBuf,
    env: Env,
    /// The root-owned directory that holds the mount point, with SFTP; dropped after the daemon.
    _chroot_parent: Option<tempfile::TempDir>,
}

impl Fixture {
    fn new() -> Fixture {
        require_prerequisites();
        Fixture::build(Env::ready(), None)
    }

    /// With the SFTP port of `systemd/sshd-workcopy-sftp.conf.example`. The
    /// mount point lies in a root-owned directory, as sshd requires of a
    /// chroot, and the daemon reads on the user-space path, so each open's
    /// `file_read` record says how many bytes it was served.
    fn with_sftp() -> Fixture {
        require_prerequisites();
        let parent = tempfile::Builder::new()
            .prefix("wc-sftp-")
            .tempdir_in("/run")
            .unwrap_or_else(|e| panic!("cannot make a directory in /run: {e}"));
        chmod(parent.path(), 0o755);
        for dir in parent.path().ancestors() {
            let m = std::fs::metadata(dir).unwrap();
            assert!(
                m.uid() == 0 && m.mode() & 0o022 == 0,
                "{} must be root's and not group- or world-writable for sshd's ChrootDirectory",
                dir.display()
            );
        }
        let mut env = Env::with(|o| o.extra_config = "passthrough = false\n".into());
        env.mnt = parent.path().join("mnt");
        write_file(&env.config, env.config_toml().as_bytes(), 0o644);
        env.start();
        env.import_catalog();
        Fixture::build(env, Some(parent))
    }

    fn build(env: Env, chroot_parent: Option<tempfile::TempDir>) -> Fixture {
        let sftp = chroot_parent.is_some();
        let root = env.root.clone();
        let a_name = ensure_account(UID_A1, "wc-xfer-a", &root.join("home-a"));
        let b_name = ensure_account(UID_B1, "wc-xfer-b", &root.join("home-b"));
        if sftp {
            ensure_sftp_group(&a_name);
        }
        assert_scripts_usable_by(UID_A1);
        assert_scripts_usable_by(UID_B1);

        let dir = root.join("ssh");
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        chmod(&dir, 0o755);
        chmod(&keys, 0o755);
        let host_key = dir.join("host_ed25519");
        let hk = host_key.display().to_string();
        root_ok(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "workcopy-test-host", "-f", &hk]);

        let gate = format!(
            "env WORKCOPY_MOUNT={} WORKCOPY_SOCKET={} WORKCOPY_BIN={} {}",
            env.mnt.display(),
            env.socket.display(),
            BIN,
            script("workcopy-ssh-gate").display()
        );
        assert!(!gate.contains(['"', '\\', '\n']), "paths unusable in authorized_keys: {gate}");
        let mut accounts = Vec::new();
        for (uid, name, tag) in [(UID_A1, a_name, "a"), (UID_B1, b_name, "b")] {
            let kdir = owned_dir(&dir.join(format!("client-{tag}")), uid);
            let key = kdir.join("id_ed25519");
            let ks = key.display().to_string();
            root_ok(&[
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                &format!("{name}@region"),
                "-f",
                &ks,
            ]);
            for f in [&key, &kdir.join("id_ed25519.pub")] {
                nix::unistd::chown(f.as_path(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(uid))).unwrap();
            }
            chmod(&key, 0o600);
            let public = std::fs::read_to_string(kdir.join("id_ed25519.pub")).unwrap();
            let line = format!("command=\"{gate}\",restrict {}\n", public.trim());
            write_file(&keys.join(&name), line.as_bytes(), 0o644);
            accounts.push(Account { uid, name, key });
        }
        let b = accounts.pop().unwrap();
        let a = accounts.pop().unwrap();

        // Privilege separation directory (systemd's RuntimeDirectory creates it for the service).
        if !Path::new("/run/sshd").is_dir() {
            std::fs::create_dir_all("/run/sshd").unwrap();
            chmod(Path::new("/run/sshd"), 0o755);
        }
        let config = dir.join("sshd_config");
        let log = dir.join("sshd.log");
        let mut started = None;
        for _attempt in 0..3 {
            let port = free_port();
            let sftp_port = sftp.then(|| {
                loop {
                    let p = free_port();
                    if p != port {
                        break p;
                    }
                }
            });
            let mut text = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {pid}\n\
                 AuthorizedKeysFile {keys}/%u\nAllowUsers {ua} {ub}\nUsePAM no\nStrictModes no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin no\nPrintMotd no\nPrintLastLog no\nUseDNS no\nLogLevel VERBOSE\n",
                pid = dir.join("sshd.pid").display(),
                keys = keys.display(),
                ua = a.name,
                ub = b.name,
            );
            if let Some(p) = sftp_port {
                // As in the sshd_config a distribution ships; the snippet relies on it.
                text.push_str("Subsystem sftp internal-sftp\n");
                text.push_str(&sftp_config(p, &env.mnt));
            }
            write_file(&config, text.as_bytes(), 0o644);
            let cs = config.display().to_string();
            root_ok(&[SSHD, "-t", "-f", &cs]);
            let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
            let log_from = logf.metadata().map(|m| m.len()).unwrap_or(0) as usize;
            // sshd goes on when it could bind one of two ports: both must be ours.
            let listening = |p: u16| {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.get(log_from..)
                    .is_some_and(|t| t.contains(&format!("Server listening on 127.0.0.1 port {p}.")))
            };
            let mut child = root_cmd(&[SSHD, "-D", "-e", "-f", &cs])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(logf))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            let up = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                if ssh_banner(port) && sftp_port.is_none_or(ssh_banner) {
                    // The banner could come from another test's sshd on a clashing
                    // port while ours is failing to bind: ours must still be alive.
                    std::thread::sleep(Duration::from_millis(100));
                    let alive = matches!(child.try_wait(), Ok(None));
                    if alive && sftp_port.is_some_and(|p| !(listening(port) && listening(p))) {
                        let _ = child.kill();
                        let _ = child.wait();
                        break false;
                    }
                    break alive;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if up {
                started = Some(Sshd {
                    child,
                    port,
                    sftp_port,
                    log: log.clone(),
                });
                break;
            }
        }
        let sshd = started.unwrap_or_else(|| {
            panic!(
                "sshd did not start on 127.0.0.1\n--- sshd log ---\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let host_pub = std::fs::read_to_string(dir.join("host_ed25519.pub")).unwrap();
        let known_hosts = dir.join("known_hosts");
        let mut hosts = format!("[127.0.0.1]:{} {}\n", sshd.port, host_pub.trim());
        if let Some(p) = sshd.sftp_port {
            hosts.push_str(&format!("[127.0.0.1]:{p} {}\n", host_pub.trim()));
        }
        write_file(&known_hosts, hosts.as_bytes(), 0o644);
        Fixture {
            sshd,
            a,
            b,
            known_hosts,
            env,
            _chroot_parent: chroot_parent,
        }
    }

    /// ssh options a regional admin would pass (a pinned host key, no prompts).
    fn ssh_options(&self) -> Vec<String> {
        vec![
            "StrictHostKeyChecking=yes".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "LogLevel=ERROR".into(),
        ]
    }

    /// `workcopy-pull` as `acct` (not yet run), with `env` set.
    fn pull_cmd(&self, acct: &Account, case_ref: &str, dest: &Path, env: &[(&str, &str)]) -> (Command, String) {
        let pull = script("workcopy-pull").display().to_string();
        let port = self.sshd.port.to_string();
        let key = acct.key.display().to_string();
        let target = format!("{}@127.0.0.1", acct.name);
        let dest_s = dest.display().to_string();
        let mut argv: Vec<String> = vec![pull, "--port".into(), port, "--identity".into(), key];
        for o in self.ssh_options() {
            argv.push("--ssh-option".into());
            argv.push(o);
        }
        argv.extend([target, case_ref.to_string(), dest_s]);
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut cmd = uid_cmd(acct.uid, &refs);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let desc = format!(
            "uid {}: {} {}",
            acct.uid,
            env.iter().map(|(k, v)| format!("{k}={v} ")).collect::<String>(),
            argv.join(" ")
        );
        (cmd, desc)
    }

    /// Runs `workcopy-pull` as `acct` to the end.
    fn pull(&self, acct: &Account, case_ref: &str, dest: &Path) -> Out {
        let (cmd, desc) = self.pull_cmd(acct, case_ref, dest, &[]);
        self.with_log(run(cmd, &desc, None))
    }

    /// `ssh USER@127.0.0.1 REMOTE` as `acct` with its key (the gate decides).
    fn ssh(&self, acct: &Account, remote: &str, input: Option<&str>) -> Out {
        self.ssh_on(self.sshd.port, &[], acct, remote, input)
    }

    /// `ssh EXTRA… USER@127.0.0.1 REMOTE` as `acct` with its key, on `port`.
    fn ssh_on(&self, port: u16, extra: &[&str], acct: &Account, remote: &str, input: Option<&str>) -> Out {
        let key = acct.key.display().to_string();
        let target = format!("{}@127.0.0.1", acct.name);
        let mut argv: Vec<String> = vec![
            "ssh".into(),
            "-F".into(),
            "/dev/null".into(),
            "-T".into(),
            "-p".into(),
            port.to_string(),
            "-i".into(),
            key,
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
        ];
        for o in self.ssh_options() {
            argv.push("-o".into());
            argv.push(o);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv.push(target);
        if !remote.is_empty() || extra.is_empty() {
            argv.push(remote.to_string());
        }
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let desc = format!("uid {}: ssh -p {port} {} {} {remote:?}", acct.uid, extra.join(" "), acct.name);
        self.with_log(run(uid_cmd(acct.uid, &refs), &desc, input))
    }

    /// A second key for `acct`, authorized with the gate as its forced
    /// command but without `restrict` (never do this on a real host: on the
    /// gate's port such a key may forward connections).
    fn add_key_without_restrict(&self, acct: &Account) -> PathBuf {
        let dir = acct.key.parent().unwrap();
        let key = dir.join("id_ed25519_loose");
        let ks = key.display().to_string();
        root_ok(&["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "loose", "-f", &ks]);
        let public = dir.join("id_ed25519_loose.pub");
        for f in [&key, &public] {
            nix::unistd::chown(f.as_path(), Some(Uid::from_raw(acct.uid)), Some(Gid::from_raw(acct.uid))).unwrap();
        }
        chmod(&key, 0o600);
        let keys = self.env.root.join("ssh/keys").join(&acct.name);
        let line = std::fs::read_to_string(&keys).unwrap();
        let gate = line.split(",restrict ").next().unwrap().to_string();
        let public = std::fs::read_to_string(&public).unwrap();
        write_file(&keys, format!("{line}{gate} {}\n", public.trim()).as_bytes(), 0o644);
        key
    }

    /// OpenSSH's `sftp` as `acct` on the SFTP port, in batch mode (`-b`, one
    /// command a line in `batch_file`), `extra` options before the
    /// destination. Not yet run.
    fn sftp_cmd(&self, acct: &Account, batch_file: &Path, extra: &[&str]) -> (Command, String) {
        let port = self.sshd.sftp_port.expect("a fixture with SFTP").to_string();
        let key = acct.key.display().to_string();
        let batch = batch_file.display().to_string();
        let mut argv: Vec<String> = [
            "sftp",
            "-F",
            "/dev/null",
            "-b",
            &batch,
            "-P",
            &port,
            "-i",
            &key,
            "-o",
            "IdentitiesOnly=yes",
        ]
        .map(String::from)
        .to_vec();
        for o in self.ssh_options() {
            argv.push("-o".into());
            argv.push(o);
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv.push(format!("{}@127.0.0.1", acct.name));
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let desc = format!(
            "uid {}: {} <<< {:?}",
            acct.uid,
            argv.join(" "),
            std::fs::read_to_string(batch_file).unwrap_or_default()
        );
        (uid_cmd(acct.uid, &refs), desc)
    }

    /// Runs `batch` through `sftp -b` as `acct` to the end. A batch stops at
    /// the first command that fails, and sftp then exits non-zero.
    fn sftp(&self, acct: &Account, batch: &str) -> Out {
        let file = self.env.root.join(format!(
            "batch-{}-{}",
            acct.uid,
            BATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        write_file(&file, batch.as_bytes(), 0o644);
        let (cmd, desc) = self.sftp_cmd(acct, &file, &[]);
        self.with_log(run(cmd, &desc, None))
    }

    /// Appends the sshd log to the command description, for failure messages.
    fn with_log(&self, mut out: Out) -> Out {
        out.cmd = format!("{}\n--- sshd log (tail) ---\n{}", out.cmd, tail(&self.sshd.log(), 15));
        out
    }

    /// A 64 MiB FASTQ file of DEPT-A1 (GDB-0100, run4/BIG_R1.fastq), added
    /// to the GDB with a second catalog import.
    fn add_big_file(&mut self) -> (GdbFile, Vec<u8>) {
        let data = big_fastq(64 << 20);
        let rel = "run4/BIG_R1.fastq";
        write_file(&self.env.gdb.join(rel), &data, 0o644);
        chmod(&self.env.gdb.join("run4"), 0o755);
        let big = GdbFile::new("GDB-0100", rel, DEPT_A1, &data);
        let catalog = self.env.write_catalog("big.tsv", &catalog_tsv(std::slice::from_ref(&big)));
        self.env.cli(&["catalog", "import", catalog.to_str().unwrap()]).ok();
        self.env.files.push(big.clone());
        (big, data)
    }

    /// Opens a case for ALICE (DEPT-A1) and approves it; returns when it is exported.
    #[track_caller]
    fn export(&self, case_ref: &str, descriptors: &[&str]) {
        let mut args = vec!["case", "open", case_ref, "--requester", ALICE];
        args.extend_from_slice(descriptors);
        self.env.cli(&args).ok();
        self.env
            .cli(&["case", "approve", case_ref])
            .ok()
            .stdout_has(&format!("case {case_ref} exported"));
        assert_eq!(self.env.state_of(case_ref), "exported");
    }

    /// Asserts that `dir` holds exactly the case's files (plus SHA256SUMS), each with its catalog sha256.
    #[track_caller]
    fn assert_arrived(&self, case_ref: &str, dir: &Path) {
        let files: Vec<(String, String)> = self.env.case_files(case_ref).into_iter().map(|(n, sha, _, _)| (n, sha)).collect();
        assert!(!files.is_empty());
        for (name, sha) in &files {
            let p = dir.join(name);
            assert!(p.is_file(), "{} did not arrive", p.display());
            assert_eq!(&sha256_file(&p), sha, "{} differs from the catalog", p.display());
        }
        assert!(dir.join("SHA256SUMS").is_file(), "SHA256SUMS did not arrive in {}", dir.display());
        let mut present: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        present.sort();
        let mut want: Vec<String> = files.iter().map(|(n, _)| n.clone()).chain(["SHA256SUMS".to_string()]).collect();
        want.sort();
        assert_eq!(present, want, "files in {}", dir.display());
    }
}

/// Numbers the batch files of `Fixture::sftp`.
static BATCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Starts `cmd` in a process group of its own (stdout discarded, stderr
/// kept) and waits up to 40 s until `received()` reaches 6 MiB, so that the
/// transfer can be interrupted halfway. Panics, killing the group, when the
/// command ends first or the bytes do not come. Returns the child, its
/// group and the bytes received.
fn spawn_until_grown(mut cmd: Command, desc: &str, received: impl Fn() -> u64) -> (Child, Pid, u64) {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let pgid = Pid::from_raw(child.id() as i32);
    let threshold: u64 = 6 << 20;
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
            panic!("{desc} ended ({status}) before it could be interrupted:\n{err}");
        }
        let grown = received();
        if grown >= threshold {
            return (child, pgid, grown);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
    panic!("{desc}: the transfer did not reach {threshold} bytes within 40 s ({})", received());
}

/// Whether any live (non-zombie) process is in process group `pgid`.
fn group_alive(pgid: i32) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        f.len() > 3 && f[0] != "Z" && f[2] == pgid.to_string()
    })
}

/// `len` bytes (rounded up to whole records) of FASTQ: 100-base reads with
/// distinct headers; bases and qualities from a small deterministic pool.
fn big_fastq(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    const POOL: usize = 1 << 16;
    let bases: Vec<u8> = (0..POOL).map(|_| b"ACGT"[(next() % 4) as usize]).collect();
    let quals: Vec<u8> = (0..POOL).map(|_| b'!' + (next() % 41) as u8).collect();
    let mut v = Vec::with_capacity(len + 512);
    let mut n: usize = 0;
    while v.len() < len {
        let off = (n.wrapping_mul(7919) ^ (next() as usize)) % (POOL - 100);
        v.extend_from_slice(format!("@BIG:1:{n} 1:N:0:1\n").as_bytes());
        v.extend_from_slice(&bases[off..off + 100]);
        v.extend_from_slice(b"\n+\n");
        v.extend_from_slice(&quals[off..off + 100]);
        v.push(b'\n');
        n += 1;
    }
    v
}

// ---------------------------------------------------------------- pull over ssh

#[test]
fn pull_over_ssh_verifies_confirms_and_the_case_is_received() {
    let fx = Fixture::new();
    let case_ref = "REG-A1-0001";
    // Two FASTQ files, two sharing a base name elsewhere in the GDB, and a SPRING file.
    fx.export(case_ref, &["GDB-0001", "GDB-0002", "GDB-0003", "GDB-0006"]);
    let dest = owned_dir(&fx.env.root.join("regional-a"), UID_A1);

    // `list` through the gate shows the department its case.
    fx.ssh(&fx.a, "list", None).ok().stdout_has(case_ref);

    let out = fx.pull(&fx.a, case_ref, &dest).ok();
    let out = out.stdout_has(&format!("case {case_ref} received"));
    assert!(out.stdout.contains("verified 4 file(s)"), "{out}");
    let got = dest.join(case_ref);
    fx.assert_arrived(case_ref, &got);
    assert!(got.join("S3.spring").is_file(), "the SPRING file arrives as stored");
    let mode = std::fs::metadata(&got).unwrap().mode();
    assert_eq!(mode & 0o700, 0o700, "the case directory is not the owner's to write ({mode:o})");
    for (p, _) in files_under(&got) {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.uid(), UID_A1, "{} is not owned by the department's account", p.display());
    }
    assert_eq!(fx.env.state_of(case_ref), "received");
    let events = fx.env.events(case_ref);
    assert!(events.iter().any(|e| e == "received"), "{events:?}");

    // A second run (say from cron) does nothing: the receipt is recorded locally.
    let marker = dest.join(format!(".{case_ref}.workcopy-received"));
    assert!(marker.is_file(), "no receipt record {}", marker.display());
    fx.pull(&fx.a, case_ref, &dest).ok().stdout_has("nothing to do");

    // A local copy damaged after the transfer (same size and mtime, so rsync
    // skips it) fails verification with exit 11 and the file named.
    std::fs::remove_file(&marker).unwrap();
    let victim = got.join("S1_R1.fastq");
    let mtime = std::fs::metadata(&victim).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&victim, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let out = fx.pull(&fx.a, case_ref, &dest).fails().code(11);
    assert!(
        out.stderr.contains("S1_R1.fastq") && out.stderr.contains("verification failed"),
        "{out}"
    );

    // A file that is not part of the case: exit 11 as well, named.
    std::fs::remove_file(&victim).unwrap();
    write_file(&got.join("stray.txt"), b"not from the case\n", 0o644);
    nix::unistd::chown(got.join("stray.txt").as_path(), Some(Uid::from_raw(UID_A1)), None).unwrap();
    fx.pull(&fx.a, case_ref, &dest)
        .fails()
        .code(11)
        .stderr_has("stray.txt")
        .stderr_has("not listed in SHA256SUMS");
    std::fs::remove_file(got.join("stray.txt")).unwrap();

    // Fetched again and verified, but the case is already received: the
    // transfer host refuses a second confirmation, exit 12 with its reason.
    let out = fx.pull(&fx.a, case_ref, &dest).fails().code(12);
    out.clone().stderr_has("refused the confirmation");
    assert!(out.stdout.contains("verified 4 file(s)"), "{out}");
    assert_eq!(sha256_file(&victim), fx.env.file("GDB-0001").sha256);
    assert_eq!(fx.env.state_of(case_ref), "received");

    // The department decompresses the SPRING file in place, as its own
    // account (a fake spring stands in for the real one).
    let fake = fx.env.root.join("fake-spring");
    std::fs::create_dir_all(&fake).unwrap();
    chmod(&fake, 0o755);
    fake_spring(&fake);
    let unspring = script("workcopy-unspring").display().to_string();
    let mut cmd = uid_cmd(UID_A1, &[&unspring, got.to_str().unwrap()]);
    cmd.env("PATH", format!("{}:{SYSTEM_PATH}", fake.display()));
    let out = run(cmd, "uid 2001: workcopy-unspring", None).ok();
    assert!(out.stdout.contains("S3.spring") && out.stdout.contains("verified"), "{out}");
    assert!(got.join("S3.fastq").is_file() && !got.join("S3.spring").exists());
}

#[test]
fn an_interrupted_pull_keeps_its_partial_data_and_resumes() {
    let mut fx = Fixture::new();
    let (big, data) = fx.add_big_file();
    let case_ref = "REG-A1-0002";
    fx.export(case_ref, &["GDB-0100", "GDB-0001"]);
    let dest = owned_dir(&fx.env.root.join("regional-a"), UID_A1);
    let got = dest.join(case_ref);

    // Start with a bandwidth limit; interrupt (SIGTERM to the whole job, as
    // a stopped cron job or ^C would) once some MiB have arrived.
    let (cmd, desc) = fx.pull_cmd(&fx.a, case_ref, &dest, &[("WORKCOPY_PULL_RSYNC_OPTS", "--bwlimit=8m")]);
    let (mut child, pgid, grown) = spawn_until_grown(cmd, &desc, || files_under(&got).iter().map(|(_, n)| *n).max().unwrap_or(0));
    let _ = nix::sys::signal::killpg(pgid, Signal::SIGTERM);
    assert!(grown < big.size, "the transfer finished before it was interrupted");
    // Wait until every process of the job (bash, rsync, ssh) is gone.
    let gone = fx.env.wait_for(Duration::from_secs(20), || {
        let _ = child.try_wait();
        !group_alive(pgid.as_raw())
    });
    if !gone {
        let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
        panic!("the interrupted pull did not end within 20 s of SIGTERM");
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut err));
    assert_ne!(status.code(), Some(0), "the interrupted pull claimed success:\n{err}");
    assert!(err.contains("run the same command again") || err.contains("run again"), "{err}");

    // The half file is kept in the partial dir, never under its final name.
    assert!(!got.join("BIG_R1.fastq").exists(), "a half file looks complete");
    let partial = got.join(".workcopy-partial").join("BIG_R1.fastq");
    let kept =
        std::fs::read(&partial).unwrap_or_else(|e| panic!("no partial file {} ({e}); files: {:?}", partial.display(), files_under(&got)));
    assert!(kept.len() as u64 >= 4 << 20, "only {} bytes kept", kept.len());
    assert!((kept.len() as u64) < big.size);
    assert!(data.starts_with(&kept), "the partial file is not a prefix of the GDB file");
    assert_eq!(fx.env.state_of(case_ref), "exported");

    // Run again without the limit: it resumes from the partial file (rsync
    // reports matched data), completes, verifies and confirms.
    let (cmd, desc) = fx.pull_cmd(&fx.a, case_ref, &dest, &[("WORKCOPY_PULL_RSYNC_OPTS", "--stats")]);
    let out = fx.with_log(run(cmd, &desc, None)).ok();
    let matched: u64 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Matched data: "))
        .and_then(|v| v.split_whitespace().next())
        .map(|v| v.chars().filter(char::is_ascii_digit).collect::<String>().parse().unwrap())
        .unwrap_or_else(|| panic!("no rsync stats in:\n{out}"));
    assert!(
        matched >= 4 << 20,
        "the re-run did not reuse the partial data (matched {matched} bytes):\n{out}"
    );
    out.clone().stdout_has(&format!("case {case_ref} received"));
    fx.assert_arrived(case_ref, &got);
    assert!(
        files_under(&got.join(".workcopy-partial")).is_empty(),
        "partial data left behind: {:?}",
        files_under(&got)
    );
    assert_eq!(fx.env.state_of(case_ref), "received");
}

// ---------------------------------------------------------------- SFTP

/// An SFTP-only client (OpenSSH's `sftp` in batch mode) on the port of
/// `systemd/sshd-workcopy-sftp.conf.example`: in its chroot on the mount it
/// sees only its own case, gets it whole, resumes an interrupted transfer
/// with `reget`, can change nothing, runs no command and forwards nothing;
/// then the department confirms through the gate on the other port, with the
/// same account and key.
#[test]
fn sftp_in_a_chroot_on_the_mount_reads_own_cases_and_confirms_through_the_gate() {
    let mut fx = Fixture::with_sftp();
    let (big, data) = fx.add_big_file();
    let case_ref = "SFTP-A1-0001";
    fx.export(case_ref, &["GDB-0100", "GDB-0001", "GDB-0002"]);
    // Another department's case in the same mount.
    let other = "SFTP-B1-0001";
    fx.env.cli(&["case", "open", other, "--requester", BERT, "GDB-0007"]).ok();
    fx.env
        .cli(&["case", "approve", other])
        .ok()
        .stdout_has(&format!("case {other} exported"));
    let a = &fx.a;

    // The root of the chroot holds the account's own case and nothing else:
    // not the other department's, not the host's files; `..` is the root again.
    let out = fx.sftp(a, "ls -1a /\nls -1a /..\n").ok();
    let listed: Vec<&str> = out.stdout.lines().filter(|l| !l.starts_with("sftp>")).map(str::trim).collect();
    assert!(listed.iter().any(|l| l.ends_with(case_ref)), "{out}");
    for line in &listed {
        let name = line.rsplit('/').next().unwrap_or(line);
        assert!([".", "..", case_ref].contains(&name), "{line:?} is listed:\n{out}");
    }

    // get -R of the case: every file with the catalog's sha256, and SHA256SUMS.
    let dest = owned_dir(&fx.env.root.join("sftp-a"), UID_A1);
    fx.sftp(a, &format!("get -R /{case_ref} {}\n", dest.display())).ok();
    let got = dest.join(case_ref);
    fx.assert_arrived(case_ref, &got);

    // An interrupted transfer: the big file with a bandwidth limit, the
    // client killed (a dropped link) once some MiB have arrived.
    let reads_of_big = |env: &Env| -> Vec<serde_json::Value> {
        let log = env.cli(&["case", "log", case_ref, "--json"]).ok().json();
        log.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["event"] == "file_read" && r["details"]["file"] == "BIG_R1.fastq")
            .cloned()
            .collect()
    };
    let resume = owned_dir(&fx.env.root.join("sftp-resume"), UID_A1);
    let local = resume.join("BIG_R1.fastq");
    let batch = fx.env.root.join("batch-interrupted");
    write_file(
        &batch,
        format!("get /{case_ref}/BIG_R1.fastq {}\n", local.display()).as_bytes(),
        0o644,
    );
    // 40,000 kbit/s: about 5 MB/s, so the 64 MiB take some 13 s.
    let (cmd, desc) = fx.sftp_cmd(a, &batch, &["-l", "40000"]);
    let (mut child, pgid, _) = spawn_until_grown(cmd, &desc, || std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0));
    let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
    let gone = fx.env.wait_for(Duration::from_secs(20), || !group_alive(pgid.as_raw()));
    assert!(gone, "the killed sftp client is still running");
    let partial = std::fs::read(&local).unwrap();
    assert!((partial.len() as u64) < big.size, "the transfer finished before it was interrupted");
    assert!(data.starts_with(&partial), "the partial file is not a prefix of the GDB file");
    // The daemon has seen the killed session's file closed (the read of the get -R and this one).
    assert!(
        fx.env.wait_for(Duration::from_secs(10), || reads_of_big(&fx.env).len() == 2),
        "{:?}",
        reads_of_big(&fx.env)
    );

    // reget resumes where the local file ends: the result is the catalog's
    // file, and the daemon served only the rest of it.
    fx.sftp(a, &format!("reget /{case_ref}/BIG_R1.fastq {}\n", local.display())).ok();
    assert_eq!(sha256_file(&local), big.sha256, "the resumed file differs from the catalog");
    assert!(
        fx.env.wait_for(Duration::from_secs(10), || reads_of_big(&fx.env).len() == 3),
        "{:?}",
        reads_of_big(&fx.env)
    );
    let served = reads_of_big(&fx.env)[2]["details"]["bytes_read"].as_u64().unwrap();
    let rest = big.size - partial.len() as u64;
    assert!(
        served >= rest && served < rest + (1 << 20),
        "the resumed transfer was served {served} bytes; {rest} were missing"
    );

    // The other department's case cannot be reached, nor anything outside the mount.
    let stolen = dest.join("stolen");
    for batch in [
        format!("ls /{other}"),
        format!("cd /{other}"),
        format!("get /{other}/B1_R1.fastq {}", stolen.display()),
        format!("get -R /{other} {}", stolen.display()),
        format!("get /../{other}/B1_R1.fastq {}", stolen.display()),
        format!("get /etc/passwd {}", stolen.display()),
        format!("get ../../../../etc/passwd {}", stolen.display()),
        "ls /etc".to_string(),
    ] {
        fx.sftp(a, &format!("{batch}\n")).fails();
    }
    assert!(!stolen.exists(), "something arrived from outside the account's cases");

    // Every write is refused (sftp-server's read-only mode), and the case is as it was.
    let upload = fx.env.root.join("upload.txt");
    // Larger than the case file, so that `reput` asks the server to append.
    write_file(&upload, &vec![b'N'; 4 << 20], 0o644);
    let f = format!("/{case_ref}/S1_R1.fastq");
    let up = upload.display();
    for batch in [
        format!("put {up} /{case_ref}/upload.txt"),
        format!("put {up} /upload.txt"),
        format!("reput {up} {f}"),
        format!("mkdir /{case_ref}/new"),
        "mkdir /new".to_string(),
        format!("rm {f}"),
        format!("rm /{case_ref}/SHA256SUMS"),
        format!("rmdir /{case_ref}"),
        format!("rename {f} /{case_ref}/renamed.fastq"),
        format!("chmod 666 {f}"),
        format!("chown {UID_A1} {f}"),
        format!("chgrp {UID_A1} {f}"),
        format!("symlink {f} /{case_ref}/link"),
    ] {
        fx.sftp(a, &format!("{batch}\n")).fails().stderr_has("Permission denied");
    }
    // A read-only server does not even offer hard links.
    fx.sftp(a, &format!("ln {f} /{case_ref}/hardlink\n"))
        .fails()
        .stderr_has("does not support hardlink");
    let out = fx.sftp(a, &format!("ls -1 /{case_ref}\n")).ok();
    let mut names: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.starts_with("sftp>"))
        .filter_map(|l| l.trim().rsplit('/').next())
        .collect();
    names.sort();
    assert_eq!(names, ["BIG_R1.fastq", "S1_R1.fastq", "S1_R2.fastq", "SHA256SUMS"], "{out}");

    // The SFTP port runs no command and forwards nothing, whatever the key
    // allows: a second key of the account without `restrict` shows it is the
    // snippet that refuses.
    let loose = Account {
        uid: a.uid,
        name: a.name.clone(),
        key: fx.add_key_without_restrict(a),
    };
    let port = fx.sshd.sftp_port.unwrap();
    let out = fx.ssh_on(port, &[], &loose, "list", None);
    assert_ne!(out.status, 0, "{out}");
    // (sshd says so on the session's standard output.)
    assert!(out.stdout.contains("This service allows sftp connections only."), "{out}");
    let forward = format!("127.0.0.1:{}", fx.sshd.port);
    let out = fx.ssh_on(port, &["-W", &forward], &loose, "", None).fails();
    assert!(!out.stdout.contains("SSH-2.0"), "a connection was forwarded:\n{out}");
    out.stderr_has("stdio forwarding failed");
    assert!(fx.sshd.log().contains("refused local port forward"), "{}", fx.sshd.log());
    // The same key gets a forwarding on the gate's port (the snippet's Match
    // block is what refused it above), so the test can tell.
    let out = fx.ssh_on(fx.sshd.port, &["-W", &forward], &loose, "", None);
    assert!(
        out.stdout.contains("SSH-2.0"),
        "the unrestricted key could not forward on the gate's port:\n{out}"
    );
    // An account outside the group named in AllowGroups may not use the SFTP port.
    let out = fx.sftp(&fx.b, "ls /\n").fails().stderr_has("Permission denied");
    assert!(!out.stdout.contains(other), "{out}");
    let refused = format!(
        "User {} from 127.0.0.1 not allowed because none of user's groups are listed in AllowGroups",
        fx.b.name
    );
    assert!(fx.sshd.log().contains(&refused), "{}", fx.sshd.log());

    // The department confirms what it received through the gate, as rsync
    // clients do: `sha256sum -- *` in the received directory, SHA256SUMS included.
    let mut sums: Vec<(String, String)> = std::fs::read_dir(&got)
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), sha256_file(&e.path())))
        .collect();
    sums.sort();
    assert_eq!(sums.len(), 4, "{sums:?}");
    fx.ssh(a, &format!("confirm {case_ref}"), Some(&sums_list(&sums))).ok();
    assert_eq!(fx.env.state_of(case_ref), "received");
    assert_eq!(fx.env.state_of(other), "exported");
}

// ---------------------------------------------------------------- refusals

#[test]
fn another_department_can_neither_pull_nor_confirm_a_case() {
    let fx = Fixture::new();
    let case_ref = "REG-A1-0003";
    fx.export(case_ref, &["GDB-0002"]);
    let sums = sums_list(&fx.env.received_sums(case_ref));

    // DEPT-B1's account, with its own key, confirms A's case through the gate: refused.
    let out = fx.ssh(&fx.b, &format!("confirm {case_ref}"), Some(&sums)).fails();
    assert!(!out.stdout.contains("received"), "{out}");
    assert_eq!(fx.env.state_of(case_ref), "exported");

    // Its listing does not show the case.
    let out = fx.ssh(&fx.b, "list", None);
    assert!(!out.stdout.contains(case_ref) && !out.stderr.contains(case_ref), "{out}");

    // Its pull of A's case finds nothing (exit 10) and gets no file.
    let dest_b = owned_dir(&fx.env.root.join("regional-b"), UID_B1);
    fx.pull(&fx.b, case_ref, &dest_b).fails().code(10).stderr_has("is not visible to");
    assert!(
        files_under(&dest_b.join(case_ref)).is_empty(),
        "B received files of A's case: {:?}",
        files_under(&dest_b)
    );
    // Nor can it name a file of the case directly.
    let dest_s = dest_b.join("direct").display().to_string();
    let rsh = format!(
        "ssh -F /dev/null -p {} -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o LogLevel=ERROR",
        fx.sshd.port,
        fx.b.key.display(),
        fx.known_hosts.display()
    );
    let src = format!("{}@127.0.0.1:{case_ref}/S1_R2.fastq", fx.b.name);
    let out = fx.with_log(run(
        uid_cmd(UID_B1, &["rsync", "-a", "-e", &rsh, &src, &dest_s]),
        "uid 2003: rsync of A's file",
        None,
    ));
    out.fails();
    assert!(!dest_b.join("direct").exists());

    // The owner still can, afterwards.
    let dest_a = owned_dir(&fx.env.root.join("regional-a"), UID_A1);
    fx.pull(&fx.a, case_ref, &dest_a).ok();
    assert_eq!(fx.env.state_of(case_ref), "received");
}

#[test]
fn the_gate_refuses_everything_but_pulls_confirm_and_list() {
    let fx = Fixture::new();
    let case_ref = "REG-A1-0004";
    fx.export(case_ref, &["GDB-0001"]);
    let a = &fx.a;
    for (remote, what) in [
        ("ls /", "is not allowed"),
        ("cat /etc/passwd", "is not allowed"),
        ("bash -i", "is not allowed"),
        ("rsync --server -vlogDtpre.iLsfxCIvu . REG-A1-0004/", "read-only"),
        ("rsync --server -vlogDtpre.iLsfxCIvu --delete . ./", "read-only"),
        ("confirm ../x", "REF"),
        ("confirm", "is not allowed"),
        ("confirm REG-A1-0004; ls /", "REF"),
        ("confirm REG-A1-0004 extra", "REF"),
        ("list; id", "is not allowed"),
        ("workcopy case close REG-A1-0004", "is not allowed"),
        ("internal-sftp", "is not allowed"),
    ] {
        let out = fx.ssh(a, remote, Some("")).fails().code(126);
        assert!(out.stderr.contains("refused") && out.stderr.contains(what), "{remote:?}:\n{out}");
    }
    // An interactive login (no command) is refused too.
    let out = fx.ssh(a, "", None).fails();
    assert!(out.stderr.contains("refused"), "{out}");

    // A real rsync push is refused; nothing is written anywhere.
    let src = fx.env.root.join("push-me.txt");
    write_file(&src, b"upload\n", 0o644);
    let rsh = format!(
        "ssh -F /dev/null -p {} -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={} -o LogLevel=ERROR",
        fx.sshd.port,
        a.key.display(),
        fx.known_hosts.display()
    );
    let dst = format!("{}@127.0.0.1:{case_ref}/", a.name);
    let out = fx.with_log(run(
        uid_cmd(UID_A1, &["rsync", "-a", "-e", &rsh, src.to_str().unwrap(), &dst]),
        "uid 2001: rsync push",
        None,
    ));
    out.fails().stderr_has("refused");
    // A pull that tries to leave the mount is refused by rrsync.
    let dest = owned_dir(&fx.env.root.join("escape"), UID_A1);
    let src = format!("{}@127.0.0.1:../", a.name);
    let out = fx.with_log(run(
        uid_cmd(UID_A1, &["rsync", "-a", "-e", &rsh, &src, dest.to_str().unwrap()]),
        "uid 2001: rsync pull of ../",
        None,
    ));
    out.fails();
    assert!(files_under(&dest).is_empty(), "{:?}", files_under(&dest));

    // A bad confirmation list is refused by the daemon through the gate (workcopy exit 1).
    let wrong = sums_list(&[("S1_R1.fastq", "0".repeat(64))]);
    fx.ssh(a, &format!("confirm {case_ref}"), Some(&wrong)).fails().code(1);
    assert_eq!(fx.env.state_of(case_ref), "exported");
    // The three allowed requests work.
    fx.ssh(a, "list", None).ok().stdout_has(case_ref);
    let sums = sums_list(&fx.env.received_sums(case_ref));
    fx.env.pull_as(UID_A1, case_ref);
    fx.ssh(a, &format!("confirm {case_ref}"), Some(&sums)).ok();
    assert_eq!(fx.env.state_of(case_ref), "received");
}

// ---------------------------------------------------------------- usage

#[test]
fn the_scripts_explain_themselves_and_refuse_bad_usage() {
    for name in ["workcopy-pull", "workcopy-ssh-gate", "workcopy-unspring"] {
        let p = script(name).display().to_string();
        let out = run(root_cmd(&[&p, "--help"]), &format!("{name} --help"), None).ok();
        assert!(out.stdout.contains("Usage:") && out.stdout.contains("Exit status"), "{out}");
    }
    let pull = script("workcopy-pull").display().to_string();
    for args in [
        vec![],
        vec!["host-without-user", "R1", "/tmp"],
        vec!["u@h", "../etc", "/tmp"],
        vec!["u@h", "-R", "/tmp"],
        vec!["--port", "x", "u@h", "R1", "/tmp"],
        vec!["--bogus", "u@h", "R1", "/tmp"],
        vec!["u@h", "R1"],
    ] {
        let mut argv = vec![pull.as_str()];
        argv.extend(args.iter().copied());
        run(root_cmd(&argv), &argv.join(" "), None).fails().code(2).stderr_has("--help");
    }
    // The gate needs sshd's SSH_ORIGINAL_COMMAND; without it nothing runs.
    let gate = script("workcopy-ssh-gate").display().to_string();
    let mut cmd = root_cmd(&[&gate]);
    cmd.env_remove("SSH_ORIGINAL_COMMAND").env("WORKCOPY_BIN", "/bin/false");
    run(cmd, "workcopy-ssh-gate without SSH_ORIGINAL_COMMAND", None)
        .fails()
        .code(126)
        .stderr_has("interactive login");

    // `confirm REF` hands the REF to workcopy in its environment, never on
    // its command line (which every local user can read in ps).
    let dir = tempfile::tempdir().unwrap();
    let spy = dir.path().join("workcopy-spy");
    let seen = dir.path().join("seen");
    write_file(
        &spy,
        format!(
            "#!/bin/sh\necho \"argv: $*\" > {0}\necho \"env: $WORKCOPY_CASE_REF\" >> {0}\n",
            seen.display()
        )
        .as_bytes(),
        0o755,
    );
    let mut cmd = root_cmd(&[&gate, "--socket", "/nonexistent.sock"]);
    cmd.env("SSH_ORIGINAL_COMMAND", "confirm NGC-SECRET-7").env("WORKCOPY_BIN", &spy);
    run(cmd, "workcopy-ssh-gate confirm", Some("")).ok();
    let seen = std::fs::read_to_string(&seen).unwrap();
    assert!(seen.contains("env: NGC-SECRET-7"), "{seen}");
    assert!(!seen.lines().next().unwrap_or_default().contains("NGC-SECRET-7"), "{seen}");
}

// ---------------------------------------------------------------- unspring

/// A directory on PATH that holds only the tools workcopy-unspring uses (no spring).
fn tools_without_spring(root: &Path) -> PathBuf {
    let bin = root.join("bin-nospring");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in [
        "env", "bash", "find", "sort", "dirname", "basename", "mktemp", "rm", "mv", "awk", "tail", "sed", "cat",
    ] {
        let src = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} is missing"));
        let link = bin.join(tool);
        if !link.exists() {
            std::os::unix::fs::symlink(src, link).unwrap();
        }
    }
    bin
}

/// A fake `spring` in `dir`: it parses `-d -i IN -o OUT`, and writes, per
/// FAKE_SPRING: `single` valid FASTQ to OUT, `paired` to OUT.1 and OUT.2,
/// `bad` FASTQ without its '+' line, `truncated` a record cut short,
/// `empty` an empty file, `nothing` no file; `fail` exits 1.
fn fake_spring(dir: &Path) -> PathBuf {
    let p = dir.join("spring");
    let text = r#"#!/bin/sh
set -eu
out=""; in=""; mode=""
while [ $# -gt 0 ]; do
  case $1 in
    -d) mode=d; shift ;;
    -i) in=$2; shift 2 ;;
    -o) out=$2; shift 2 ;;
    -w|-t) shift 2 ;;
    *) echo "fake spring: unknown argument $1" >&2; exit 64 ;;
  esac
done
[ "$mode" = d ] && [ -f "$in" ] && [ -n "$out" ] || { echo "fake spring: usage" >&2; exit 64; }
rec() { printf '@%s\nACGTACGTAC\n+\nIIIIIIIIII\n' "$1"; }
case ${FAKE_SPRING:-single} in
  single) { rec r1; rec r2; rec r3; } > "$out" ;;
  paired) { rec p1/1; rec p2/1; } > "$out.1"; { rec p1/2; rec p2/2; } > "$out.2" ;;
  uneven) { rec p1/1; rec p2/1; } > "$out.1"; rec p1/2 > "$out.2" ;;
  bad) printf '@r1\nACGT\nIIII\nACGT\n' > "$out" ;;
  truncated) { rec r1; printf '@r2\nACGT\n'; } > "$out" ;;
  empty) : > "$out" ;;
  nothing) ;;
  fail) echo "fake spring: corrupt input" >&2; exit 1 ;;
esac
"#;
    write_file(&p, text.as_bytes(), 0o755);
    p
}

/// Runs workcopy-unspring with `path` as PATH and FAKE_SPRING=`mode`.
fn unspring(path: &str, mode: &str, args: &[&str]) -> Out {
    let p = script("workcopy-unspring").display().to_string();
    let mut argv = vec![p.as_str()];
    argv.extend_from_slice(args);
    let mut cmd = root_cmd(&argv);
    cmd.env("PATH", path).env("FAKE_SPRING", mode).env_remove("WORKCOPY_SPRING");
    run(cmd, &format!("FAKE_SPRING={mode} workcopy-unspring {}", args.join(" ")), None)
}

#[test]
fn unspring_without_spring_says_what_to_install() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let bin = tools_without_spring(root);
    let case = root.join("REG-1");
    write_file(&case.join("S3.spring"), b"SPRING\x00\x01data", 0o644);
    let out = unspring(&bin.display().to_string(), "single", &[case.to_str().unwrap()])
        .fails()
        .code(3);
    for word in ["not installed", "bioconda", "spring", "from source", "WORKCOPY_SPRING"] {
        out.clone().stderr_has(word);
    }
    assert!(case.join("S3.spring").is_file(), "the .spring file must stay");
    assert!(!case.join("S3.fastq").exists());
}

#[test]
fn unspring_verifies_what_spring_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let bin = tools_without_spring(root);
    let fake = root.join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    fake_spring(&fake);
    let path = format!("{}:{}", fake.display(), bin.display());
    let spring = b"SPRING\x00\x01data".to_vec();

    // Valid single-end output: X.fastq, verified, X.spring removed.
    let d = root.join("single");
    write_file(&d.join("S3.spring"), &spring, 0o644);
    let out = unspring(&path, "single", &[d.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("3 reads, verified"), "{out}");
    let fq = std::fs::read_to_string(d.join("S3.fastq")).unwrap();
    assert_eq!(fq.lines().count(), 12);
    assert!(!d.join("S3.spring").exists(), "S3.spring should be removed without --keep");

    // --keep keeps it; a second run refuses to overwrite (exit 6) unless --force.
    let d = root.join("keep");
    write_file(&d.join("K.spring"), &spring, 0o644);
    unspring(&path, "single", &["--keep", d.join("K.spring").to_str().unwrap()]).ok();
    assert!(d.join("K.spring").is_file() && d.join("K.fastq").is_file());
    unspring(&path, "single", &["--keep", d.to_str().unwrap()])
        .fails()
        .code(6)
        .stderr_has("already exists");
    unspring(&path, "single", &["--keep", "--force", d.to_str().unwrap()]).ok();

    // Paired-end output (SPRING's X.fastq.1 / X.fastq.2) becomes X_1.fastq and X_2.fastq.
    let d = root.join("paired");
    write_file(&d.join("P.spring"), &spring, 0o644);
    let out = unspring(&path, "paired", &[d.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("2 read pairs"), "{out}");
    assert!(d.join("P_1.fastq").is_file() && d.join("P_2.fastq").is_file());
    assert!(!d.join("P.fastq").exists() && !d.join("P.spring").exists());

    // Invalid output: refused with the reason, nothing written, X.spring kept,
    // no temporary directory left behind.
    for (mode, code, reason) in [
        ("bad", 5, "third line of a record"),
        ("truncated", 5, "not a multiple of 4"),
        ("empty", 5, "is empty"),
        ("uneven", 5, "uneven"),
        ("nothing", 4, "wrote no FASTQ"),
        ("fail", 4, "spring -d failed"),
    ] {
        let d = root.join(mode);
        write_file(&d.join("X.spring"), &spring, 0o644);
        unspring(&path, mode, &[d.to_str().unwrap()]).fails().code(code).stderr_has(reason);
        let left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec!["X.spring".to_string()], "{mode}: left behind {left:?}");
    }

    // A file that is not .spring, or a missing path: usage errors.
    let other = root.join("x.fastq");
    write_file(&other, b"@r\nA\n+\nI\n", 0o644);
    unspring(&path, "single", &[other.to_str().unwrap()]).fails().code(2);
    unspring(&path, "single", &[root.join("missing").to_str().unwrap()]).fails().code(2);
}
