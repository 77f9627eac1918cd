//! Test harness shared by the integration tests: a temporary installation of
//! workcopy (GDB files, directory, catalog, config), the real daemon started
//! from the built binary, and the CLI run as root, as staff, as a
//! department's transfer account or as a stranger.
//!
//! Everything lives in one temporary directory per [`Env`]; tests can run in
//! parallel. Dropping the `Env` stops the daemon (SIGTERM, then SIGKILL) and
//! lazily unmounts `mnt/` if anything is mounted there.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_workcopy");

/// The staff group of every test config (numeric, so no system group is needed).
pub const STAFF_GID: u32 = 3000;
/// A non-root staff member: uid 1500 with supplementary group 3000.
pub const STAFF_UID: u32 = 1500;
/// Neither staff nor a department's transfer account.
pub const STRANGER_UID: u32 = 4242;

pub const GROUP_A: &str = "group-a";
pub const GROUP_B: &str = "group-b";
/// Group A, transfer account uid 2001.
pub const DEPT_A1: &str = "DEPT-A1";
/// Group A, transfer account uid 2002.
pub const DEPT_A2: &str = "DEPT-A2";
/// Group B, transfer account uid 2003.
pub const DEPT_B1: &str = "DEPT-B1";
pub const UID_A1: u32 = 2001;
pub const UID_A2: u32 = 2002;
pub const UID_B1: u32 = 2003;
/// A requesting user of DEPT-A1.
pub const ALICE: &str = "alice@a1.example";
/// A requesting user of DEPT-A2.
pub const ANNA: &str = "anna@a2.example";
/// A requesting user of DEPT-B1.
pub const BERT: &str = "bert@b1.example";

/// How long a CLI command may run before the test gives up on it.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the daemon may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Who runs a CLI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Root,
    /// uid 1500, supplementary group 3000 (the staff group).
    Staff,
    /// A department's transfer account: 2001, 2002 or 2003.
    Dept(u32),
    /// uid 4242: neither staff nor a transfer account.
    Stranger,
}

/// One file of the generated GDB.
#[derive(Debug, Clone)]
pub struct GdbFile {
    pub file_id: String,
    /// Relative to `gdb_root`.
    pub path: String,
    /// The submitting department.
    pub department: String,
    pub size: u64,
    pub sha256: String,
    pub submitted_at: String,
    pub sample_id: String,
}

impl GdbFile {
    /// The last component of the path.
    /// A file with these bytes, submitted 2025-04-01 (tests add these beside the generated GDB).
    pub fn new(file_id: &str, path: &str, department: &str, data: &[u8]) -> GdbFile {
        GdbFile {
            file_id: file_id.into(),
            path: path.into(),
            department: department.into(),
            size: data.len() as u64,
            sha256: sha256_hex(data),
            submitted_at: "2025-04-01T08:30:00Z".into(),
            sample_id: format!("SAMPLE-{file_id}"),
        }
    }

    pub fn base_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// A catalog row in the standard column order (with `sample_id` last).
    pub fn row(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.file_id, self.path, self.department, self.size, self.sha256, self.submitted_at, self.sample_id
        )
    }
}

/// The standard catalog header.
pub const CATALOG_HEADER: &str = "file_id\tpath\tdepartment\tsize\tsha256\tsubmitted_at\tsample_id";

/// A catalog TSV (header and one row per file).
pub fn catalog_tsv(files: &[GdbFile]) -> String {
    let mut s = String::from(CATALOG_HEADER);
    s.push('\n');
    for f in files {
        s.push_str(&f.row());
        s.push('\n');
    }
    s
}

/// What the GDB holds: (file_id, path, department, kind).
const LAYOUT: &[(&str, &str, &str, Kind)] = &[
    ("GDB-0001", "run1/S1_R1.fastq", DEPT_A1, Kind::Fastq),
    ("GDB-0002", "run1/S1_R2.fastq", DEPT_A1, Kind::Fastq),
    // Same base name as GDB-0004, in another directory.
    ("GDB-0003", "run1/reads.fastq.gz", DEPT_A1, Kind::Gz),
    ("GDB-0004", "run2/reads.fastq.gz", DEPT_A2, Kind::Gz),
    // A name with spaces.
    ("GDB-0005", "run2/sample two R1.fastq", DEPT_A2, Kind::Fastq),
    ("GDB-0006", "run1/S3.spring", DEPT_A1, Kind::Spring),
    ("GDB-0007", "run3/B1_R1.fastq", DEPT_B1, Kind::Fastq),
    ("GDB-0008", "run3/B1.spring", DEPT_B1, Kind::Spring),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Fastq,
    Gz,
    Spring,
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Deterministic content for the i-th GDB file: a few KiB.
fn content(i: usize, kind: Kind) -> Vec<u8> {
    let mut rng = Rng::new(i as u64 + 1);
    match kind {
        Kind::Fastq => {
            let mut s = String::new();
            let reads = 20 + i * 3;
            for r in 0..reads {
                s.push_str(&format!("@SEQ_{i}_{r} length=72\n"));
                for _ in 0..72 {
                    s.push(['A', 'C', 'G', 'T'][(rng.next() % 4) as usize]);
                }
                s.push_str("\n+\n");
                for _ in 0..72 {
                    s.push((b'!' + (rng.next() % 41) as u8) as char);
                }
                s.push('\n');
            }
            s.into_bytes()
        }
        Kind::Gz | Kind::Spring => {
            let mut v: Vec<u8> = match kind {
                Kind::Gz => vec![0x1f, 0x8b, 0x08, 0x00],
                _ => b"SPRING\x00\x01".to_vec(),
            };
            let n = 3000 + i * 512;
            while v.len() < n {
                v.extend_from_slice(&rng.next().to_le_bytes());
            }
            v.truncate(n);
            v
        }
    }
}

/// Lower-case hex sha256 of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex sha256 of a file's contents.
pub fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A list in `sha256sum` format for (name, sha256) pairs, with GNU's escaping
/// of backslashes and newlines in names.
pub fn sums_list<N: AsRef<str>, S: AsRef<str>>(entries: &[(N, S)]) -> String {
    let mut out = String::new();
    for (name, sha) in entries {
        let name = name.as_ref();
        if name.contains(['\\', '\n', '\r']) {
            out.push('\\');
            out.push_str(sha.as_ref());
            out.push_str("  ");
            out.push_str(&name.replace('\\', "\\\\").replace('\n', "\\n").replace('\r', "\\r"));
        } else {
            out.push_str(sha.as_ref());
            out.push_str("  ");
            out.push_str(name);
        }
        out.push('\n');
    }
    out
}

/// Writes a file and sets its mode.
pub fn write_file(path: &Path, data: &[u8], mode: u32) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("cannot create {}: {e}", p.display()));
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    chmod(path, mode);
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

/// The immutable attribute (`chattr +i`) on files, as direct mode asks of GDB
/// files on a writable filesystem; removed again when dropped. Declare it
/// after the [`Env`] whose files it holds, so it goes first: an immutable
/// file cannot be deleted, nor the directory it is in.
pub struct Immutable(Vec<PathBuf>);

impl Immutable {
    #[track_caller]
    pub fn set(paths: &[PathBuf]) -> Immutable {
        // Held before the first chattr, so whatever was set is undone.
        let held = Immutable(paths.to_vec());
        for p in paths {
            run_with_timeout(chattr("+i", p), None, &format!("chattr +i {}", p.display())).ok();
        }
        held
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = chattr("-i", p).status();
        }
    }
}

fn chattr(flag: &str, path: &Path) -> Command {
    let mut cmd = Command::new("chattr");
    cmd.arg(flag)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Makes every ancestor of `path` searchable by other uids (adds o+x only where it is missing).
fn ensure_traversable(path: &Path) {
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        if let Ok(m) = std::fs::metadata(dir) {
            let mode = m.permissions().mode();
            if mode & 0o001 == 0 {
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode((mode & 0o7777) | 0o011));
            }
        }
    }
}

/// The outcome of one CLI run.
#[derive(Debug, Clone)]
pub struct Out {
    /// What was run, for messages.
    pub cmd: String,
    /// The exit code (-1 when killed by a signal).
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.cmd, self.status, self.stdout, self.stderr
        )
    }
}

impl Out {
    /// Asserts exit status 0.
    #[track_caller]
    pub fn ok(self) -> Out {
        assert_eq!(self.status, 0, "expected success:\n{self}");
        self
    }

    /// Asserts a non-zero exit status and a message on stderr.
    #[track_caller]
    pub fn fails(self) -> Out {
        assert_ne!(self.status, 0, "expected failure:\n{self}");
        assert!(!self.stderr.trim().is_empty(), "failed without a message on stderr:\n{self}");
        self
    }

    /// Asserts this exact exit status.
    #[track_caller]
    pub fn code(self, code: i32) -> Out {
        assert_eq!(self.status, code, "expected exit status {code}:\n{self}");
        self
    }

    /// Asserts stdout contains `s`.
    #[track_caller]
    pub fn stdout_has(self, s: &str) -> Out {
        assert!(self.stdout.contains(s), "stdout lacks {s:?}:\n{self}");
        self
    }

    /// Asserts stderr contains `s`.
    #[track_caller]
    pub fn stderr_has(self, s: &str) -> Out {
        assert!(self.stderr.contains(s), "stderr lacks {s:?}:\n{self}");
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

/// Options of the generated config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `mode`: "staged" (default when `None`) or "direct".
    pub mode: Option<String>,
    /// `case_ttl`, e.g. "2s".
    pub case_ttl: Option<String>,
    pub max_files_per_case: Option<u32>,
    /// Extra lines appended to workcopy.toml verbatim.
    pub extra_config: String,
    /// `database_url`; `None`: the suite's backend (see [`Backend`]).
    pub database_url: Option<String>,
    /// Keep this installation on SQLite whatever the suite's backend: for
    /// tests that reach into the SQLite file itself.
    pub sqlite_only: bool,
    /// `host` (the register's name of this daemon).
    pub host: Option<String>,
    /// `gdb_root` of another installation (hosts sharing one GDB).
    pub gdb_root: Option<PathBuf>,
}

/// The database the suite runs on: SQLite by default,
/// `WORKCOPY_TEST_BACKEND=postgres` for a throw-away PostgreSQL server
/// (scripts/pg-test-server), a database of its own per installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_suite() -> Backend {
        match std::env::var("WORKCOPY_TEST_BACKEND").as_deref() {
            Ok("postgres") => Backend::Postgres,
            Ok("sqlite") | Ok("") | Err(_) => Backend::Sqlite,
            Ok(other) => panic!("WORKCOPY_TEST_BACKEND={other:?}: sqlite or postgres"),
        }
    }
}

/// A new, empty PostgreSQL database on the suite's test server.
pub fn pg_database() -> String {
    crate::pg::database().unwrap_or_else(|e| panic!("{e}"))
}

/// A temporary workcopy installation, and the daemon when started.
pub struct Env {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub gdb: PathBuf,
    pub state: PathBuf,
    pub mnt: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub directory: PathBuf,
    pub catalog: PathBuf,
    pub log: PathBuf,
    pub opts: Options,
    pub files: Vec<GdbFile>,
    daemon: Option<Child>,
}

impl Env {
    /// The default installation (staged mode, default limits).
    pub fn new() -> Env {
        Env::with(|_| {})
    }

    /// An installation with adjusted config options.
    pub fn with(f: impl FnOnce(&mut Options)) -> Env {
        let mut opts = Options::default();
        f(&mut opts);
        if opts.database_url.is_none() && !opts.sqlite_only && Backend::of_suite() == Backend::Postgres {
            opts.database_url = Some(pg_database());
        }
        let tmp = tempfile::Builder::new()
            .prefix("wc-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temp dir: {e}"));
        let root = tmp.path().to_path_buf();
        ensure_traversable(&root);
        ensure_traversable(Path::new(BIN));
        chmod(&root, 0o755);
        let gdb = root.join("gdb");
        let state = root.join("state");
        let mnt = root.join("mnt");
        let run = root.join("run");
        for d in [&gdb, &state, &mnt, &run] {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
            chmod(d, 0o755);
        }
        let mut files = Vec::new();
        for (i, (id, path, dept, kind)) in LAYOUT.iter().enumerate() {
            let data = content(i, *kind);
            write_file(&gdb.join(path), &data, 0o644);
            files.push(GdbFile {
                file_id: id.to_string(),
                path: path.to_string(),
                department: dept.to_string(),
                size: data.len() as u64,
                sha256: sha256_hex(&data),
                submitted_at: format!("2025-03-{:02}T10:{:02}:00Z", i + 1, i * 7),
                sample_id: format!("SAMPLE-{:03}", i + 1),
            });
        }
        for d in ["run1", "run2", "run3"] {
            chmod(&gdb.join(d), 0o755);
        }
        let env = Env {
            socket: run.join("control.sock"),
            config: root.join("workcopy.toml"),
            directory: root.join("directory.toml"),
            catalog: root.join("catalog.tsv"),
            log: root.join("daemon.log"),
            _tmp: tmp,
            root,
            gdb,
            state,
            mnt,
            opts,
            files,
            daemon: None,
        };
        env.write_directory(&directory_toml(""));
        write_file(&env.catalog, catalog_tsv(&env.files).as_bytes(), 0o644);
        write_file(&env.config, env.config_toml().as_bytes(), 0o644);
        env
    }

    /// A started daemon with the catalog imported.
    pub fn ready() -> Env {
        Env::ready_with(|_| {})
    }

    pub fn ready_with(f: impl FnOnce(&mut Options)) -> Env {
        let mut env = Env::with(f);
        env.start();
        env.import_catalog();
        env
    }

    /// The text of workcopy.toml for these options.
    pub fn config_toml(&self) -> String {
        let q = |p: &Path| toml_str(&p.display().to_string());
        let mut s = format!(
            "gdb_root = {}\nstate_dir = {}\nmount_point = {}\nsocket = {}\ndirectory = {}\nstaff_group = {STAFF_GID}\n",
            q(self.opts.gdb_root.as_deref().unwrap_or(&self.gdb)),
            q(&self.state),
            q(&self.mnt),
            q(&self.socket),
            q(&self.directory)
        );
        if let Some(m) = &self.opts.mode {
            s.push_str(&format!("mode = {}\n", toml_str(m)));
        }
        if let Some(t) = &self.opts.case_ttl {
            s.push_str(&format!("case_ttl = {}\n", toml_str(t)));
        }
        if let Some(n) = self.opts.max_files_per_case {
            s.push_str(&format!("max_files_per_case = {n}\n"));
        }
        if let Some(u) = &self.opts.database_url {
            s.push_str(&format!("database_url = {}\n", toml_str(u)));
        }
        // A fixed name, so output does not depend on the machine's hostname.
        s.push_str(&format!("host = {}\n", toml_str(self.opts.host.as_deref().unwrap_or("test-host"))));
        s.push_str(&self.opts.extra_config);
        s
    }

    /// Replaces directory.toml.
    pub fn write_directory(&self, text: &str) {
        write_file(&self.directory, text.as_bytes(), 0o644);
    }

    /// A file of the GDB by file_id.
    #[track_caller]
    pub fn file(&self, file_id: &str) -> &GdbFile {
        self.files
            .iter()
            .find(|f| f.file_id == file_id)
            .unwrap_or_else(|| panic!("no GDB file {file_id}"))
    }

    /// The absolute path of a GDB file.
    pub fn gdb_path(&self, file_id: &str) -> PathBuf {
        self.gdb.join(&self.file(file_id).path)
    }

    /// `state/staging/<REF>`.
    pub fn staging_dir(&self, case_ref: &str) -> PathBuf {
        self.state.join("staging").join(case_ref)
    }

    /// `state/caselogs/<REF>.jsonl`.
    pub fn sealed_log(&self, case_ref: &str) -> PathBuf {
        self.state.join("caselogs").join(format!("{case_ref}.jsonl"))
    }

    /// `state/workcopy.db` (installations on SQLite only).
    #[track_caller]
    pub fn database(&self) -> PathBuf {
        assert!(
            self.opts.database_url.is_none(),
            "this test reaches into the SQLite file: give it `o.sqlite_only = true`"
        );
        self.state.join("workcopy.db")
    }

    /// Runs one SQL statement on the daemon's database (SQLite: as root with
    /// python3's sqlite3; PostgreSQL: with psql) and returns the first column
    /// of its first row, if any, as text.
    #[track_caller]
    pub fn sql(&self, statement: &str) -> String {
        if let Some(url) = &self.opts.database_url {
            let out = Command::new("psql")
                .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", statement])
                .output()
                .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
            assert!(out.status.success(), "{statement}: {}", String::from_utf8_lossy(&out.stderr));
            return String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
        }
        let out = Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=30)\nrow = c.execute(sys.argv[2]).fetchone()\nc.commit()\nprint('' if row is None else row[0])",
            ])
            .arg(self.database())
            .arg(statement)
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
        assert!(out.status.success(), "{statement}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the daemon and waits until it answers on its socket (a `status`
    /// round trip, so recovery at start is over).
    pub fn start(&mut self) {
        self.start_with(&[], &[]);
    }

    /// Starts the daemon through a wrapper that execs it (e.g. `setpriv …` or
    /// `unshare …`), with extra environment variables.
    pub fn start_with(&mut self, wrapper: &[&str], envs: &[(&str, &str)]) {
        assert!(self.daemon.is_none(), "the daemon is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let mut cmd = match wrapper.split_first() {
            None => Command::new(BIN),
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(BIN);
                c
            }
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .current_dir(&self.root)
            .env_remove("WORKCOPY_CONFIG")
            .env_remove("WORKCOPY_SOCKET")
            .env_remove("NOTIFY_SOCKET")
            .env("WORKCOPY_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the daemon exited with {status} before it listened\n--- daemon log ---\n{}",
                    self.daemon_log()
                );
            }
            if answers_status(&self.socket) {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not answer on {} within {START_TIMEOUT:?}\n--- daemon log ---\n{}",
                    self.socket.display(),
                    self.daemon_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.daemon = Some(child);
    }

    /// The daemon's pid.
    #[track_caller]
    pub fn pid(&self) -> i32 {
        self.daemon.as_ref().map(|c| c.id() as i32).expect("the daemon is not running")
    }

    /// Sends a signal to the daemon.
    #[track_caller]
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap_or_else(|e| panic!("cannot signal the daemon: {e}"));
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit code if it exited by itself.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.daemon.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// kill -9 the daemon, as a crash would. A FUSE mount it had is left
    /// behind (stale), as after a real crash; [`Env::unmount`] removes it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether something is mounted on `mnt/`.
    pub fn mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let target = self.mnt.display().to_string();
        mounts.lines().any(|l| l.split(' ').nth(4) == Some(target.as_str()))
    }

    /// Whether the daemon process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.daemon.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Lazily unmounts `mnt/` while something is mounted there.
    pub fn unmount(&self) {
        // Mounts may be stacked (a stale one under a live one): up to a few rounds.
        for _ in 0..5 {
            if !self.mounted() {
                return;
            }
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mnt)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Runs the CLI as root with `--config`.
    pub fn cli<S: AsRef<str>>(&self, args: &[S]) -> Out {
        self.run_cli(Who::Root, true, args, None)
    }

    /// Runs the CLI as root with `--config`, feeding `input` on stdin.
    pub fn cli_stdin<S: AsRef<str>>(&self, args: &[S], input: &str) -> Out {
        self.run_cli(Who::Root, true, args, Some(input.as_bytes()))
    }

    /// Runs the CLI as `who`, with `--socket` instead of the config.
    pub fn cli_as<S: AsRef<str>>(&self, who: Who, args: &[S]) -> Out {
        self.run_cli(who, false, args, None)
    }

    /// Runs the CLI as `who` with `--socket`, feeding `input` on stdin.
    pub fn cli_as_stdin<S: AsRef<str>>(&self, who: Who, args: &[S], input: &str) -> Out {
        self.run_cli(who, false, args, Some(input.as_bytes()))
    }

    fn run_cli<S: AsRef<str>>(&self, who: Who, with_config: bool, args: &[S], input: Option<&[u8]>) -> Out {
        let mut cmd = match who {
            Who::Root => Command::new(BIN),
            other => {
                let (uid, groups) = match other {
                    Who::Staff => (STAFF_UID, format!("--groups={STAFF_GID}")),
                    Who::Dept(u) => (u, "--clear-groups".to_string()),
                    Who::Stranger => (STRANGER_UID, "--clear-groups".to_string()),
                    Who::Root => unreachable!(),
                };
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}")).arg(format!("--regid={uid}")).arg(groups).arg(BIN);
                c
            }
        };
        if with_config {
            cmd.arg("--config").arg(&self.config);
        } else {
            cmd.arg("--socket").arg(&self.socket);
        }
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        cmd.args(&args)
            .current_dir(&self.root)
            .env_remove("WORKCOPY_CONFIG")
            .env_remove("WORKCOPY_SOCKET")
            .env_remove("WORKCOPY_LOG")
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let desc = format!("{who:?}: workcopy {}", args.join(" "));
        run_with_timeout(cmd, input, &desc)
    }

    /// Runs the CLI as root with exactly these arguments (no `--config`, no `--socket`).
    pub fn cli_raw<S: AsRef<str>>(&self, args: &[S]) -> Out {
        let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
        let mut cmd = Command::new(BIN);
        cmd.args(&args)
            .current_dir(&self.root)
            .env_remove("WORKCOPY_CONFIG")
            .env_remove("WORKCOPY_SOCKET")
            .env_remove("WORKCOPY_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_with_timeout(cmd, None, &format!("Root: workcopy {}", args.join(" ")))
    }

    /// `catalog import` of `catalog.tsv` as root; must succeed.
    #[track_caller]
    pub fn import_catalog(&self) -> Out {
        let catalog = self.catalog.display().to_string();
        self.cli(&["catalog", "import", catalog.as_str()]).ok()
    }

    /// Writes a catalog file under the temp dir (mode 0644) and returns its path.
    pub fn write_catalog(&self, name: &str, text: &str) -> PathBuf {
        let p = self.root.join(name);
        write_file(&p, text.as_bytes(), 0o644);
        p
    }

    /// `case show REF --json` as root; must succeed.
    #[track_caller]
    pub fn case_json(&self, case_ref: &str) -> serde_json::Value {
        self.cli(&["case", "show", case_ref, "--json"]).ok().json()
    }

    /// (export name, catalog sha256, file_id, size) of every file of a case.
    #[track_caller]
    pub fn case_files(&self, case_ref: &str) -> Vec<(String, String, String, u64)> {
        let v = self.case_json(case_ref);
        let files = v["files"].as_array().unwrap_or_else(|| panic!("no files in {v}"));
        files
            .iter()
            .map(|f| {
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_else(|| panic!("{f}")).to_string();
                (
                    s(&f["export_name"]),
                    s(&f["file"]["sha256"]),
                    s(&f["file"]["file_id"]),
                    f["file"]["size"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// The case's state as `case show --json` reports it.
    #[track_caller]
    pub fn state_of(&self, case_ref: &str) -> String {
        self.case_json(case_ref)["case"]["state"].as_str().unwrap_or_default().to_string()
    }

    /// The events of the case log (`case log REF --json`), in order.
    #[track_caller]
    pub fn events(&self, case_ref: &str) -> Vec<String> {
        let v = self.cli(&["case", "log", case_ref, "--json"]).ok().json();
        v.as_array()
            .map(|a| a.iter().filter_map(|r| r["event"].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// (export name, sha256 of the GDB file's current bytes) for every file of a case:
    /// what the receiving side would compute.
    #[track_caller]
    pub fn received_sums(&self, case_ref: &str) -> Vec<(String, String)> {
        let v = self.case_json(case_ref);
        v["files"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|f| {
                        let name = f["export_name"].as_str().unwrap_or_default().to_string();
                        let path = f["file"]["path"].as_str().unwrap_or_default();
                        (name, sha256_file(&self.gdb.join(path)))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `sha256sum` of a file of the mount, run as `uid`: an open and a full read.
    pub fn sha256sum_as(&self, uid: u32, case_ref: &str, name: &str) -> Out {
        let path = self.mnt.join(case_ref).join(name);
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg("sha256sum")
            .arg("--")
            .arg(&path)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_with_timeout(cmd, None, &format!("uid {uid}: sha256sum {}", path.display()))
    }

    /// Reads every file of an exported case through the mount as `uid`, as a
    /// pull does (a receipt is accepted only for files the department opened).
    #[track_caller]
    pub fn pull_as(&self, uid: u32, case_ref: &str) {
        for (name, sha, _, _) in self.case_files(case_ref) {
            let out = self.sha256sum_as(uid, case_ref, &name).ok();
            let got = out.stdout.trim_start_matches('\\').get(..64).unwrap_or_default().to_string();
            assert_eq!(got, sha, "{case_ref}/{name} read wrong bytes");
        }
    }

    /// Polls `f` every 100 ms until it is true or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, f: impl FnMut() -> bool) -> bool {
        wait_until(timeout, f)
    }
}

impl Default for Env {
    fn default() -> Env {
        Env::new()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop();
        self.unmount();
    }
}

/// Whether a daemon answers a `status` request on `socket` (any reply counts).
fn answers_status(socket: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    let body = br#"{"op":"status"}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    if s.write_all(&frame).is_err() {
        return false;
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).is_ok()
}

fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Runs a command to the end (at most [`CLI_TIMEOUT`]), collecting its output.
pub fn run_with_timeout(mut cmd: Command, input: Option<&[u8]>, desc: &str) -> Out {
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + CLI_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{desc} did not finish within {CLI_TIMEOUT:?}");
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Out {
        cmd: desc.to_string(),
        status: status.code().unwrap_or(-1),
        stdout,
        stderr,
    }
}

/// The directory: two user groups, three departments (two in group A with
/// transfer uids 2001 and 2002, one in group B with uid 2003), a user each,
/// plus `extra` appended verbatim.
pub fn directory_toml(extra: &str) -> String {
    format!(
        r#"[[group]]
id = "{GROUP_A}"
name = "Group A"

[[group]]
id = "{GROUP_B}"

[[department]]
id = "{DEPT_A1}"
name = "Department A1"
group = "{GROUP_A}"
transfer_account = {UID_A1}

[[department]]
id = "{DEPT_A2}"
name = "Department A2"
group = "{GROUP_A}"
transfer_account = {UID_A2}

[[department]]
id = "{DEPT_B1}"
name = "Department B1"
group = "{GROUP_B}"
transfer_account = {UID_B1}

[[user]]
id = "{ALICE}"
department = "{DEPT_A1}"

[[user]]
id = "{ANNA}"
department = "{DEPT_A2}"

[[user]]
id = "{BERT}"
department = "{DEPT_B1}"
{extra}"#
    )
}

/// Polls `f` every 100 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
