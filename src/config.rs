//! The daemon's and the CLI's configuration (TOML).
//!
//! Where it comes from: `--config PATH`, else `$WORKCOPY_CONFIG`, else
//! `/etc/workcopy/workcopy.toml`. Unknown keys and bad values are errors that
//! name the key and the file.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/workcopy/workcopy.toml";
pub const CONFIG_ENV: &str = "WORKCOPY_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: key `{key}`: {message}")]
    Value { path: PathBuf, key: &'static str, message: String },
}

/// How approved files are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Copy each file into `<state_dir>/staging/<REF>/`, hashing as it passes, and serve the copy.
    Staged,
    /// Hash the GDB file in place and serve it from the GDB.
    Direct,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Staged => "staged",
            Mode::Direct => "direct",
        })
    }
}

/// A unix group given by name or numeric gid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GroupSpec {
    Gid(u32),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gdb_root: PathBuf,
    state_dir: PathBuf,
    mount_point: PathBuf,
    socket: PathBuf,
    directory: PathBuf,
    staff_group: GroupSpec,
    database_url: Option<String>,
    mode: Option<Mode>,
    max_files_per_case: Option<i64>,
    case_ttl: Option<String>,
    passthrough: Option<bool>,
    max_open_files_per_account: Option<i64>,
    max_open_requests_per_user: Option<i64>,
    max_requests_per_user_per_day: Option<i64>,
    four_eyes: Option<bool>,
    database_password_file: Option<PathBuf>,
    host: Option<String>,
    heartbeat: Option<String>,
    verify_workers: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, for messages.
    pub source: PathBuf,
    pub gdb_root: PathBuf,
    pub state_dir: PathBuf,
    pub mount_point: PathBuf,
    pub socket: PathBuf,
    pub directory: PathBuf,
    pub staff_group: GroupSpec,
    pub database_url: String,
    pub mode: Mode,
    pub max_files_per_case: usize,
    pub case_ttl: Duration,
    /// Use kernel FUSE passthrough for reads where the kernel offers it (default true).
    pub passthrough: bool,
    /// Files one transfer account may hold open in the mount at once (default 1024).
    pub max_open_files_per_account: usize,
    /// Self-service requests one directory user may have that are not yet
    /// closed, rejected, cancelled or expired (default 5).
    pub max_open_requests_per_user: usize,
    /// Self-service requests one directory user may make in 24 hours,
    /// whatever became of them (default 50).
    pub max_requests_per_user_per_day: usize,
    /// The uid that opened a case may not approve it (default false).
    pub four_eyes: bool,
    /// A file holding the PostgreSQL password (else the URL's, else `$PGPASSWORD`).
    pub database_password_file: Option<PathBuf>,
    /// This daemon's name in the register (default: the hostname).
    pub host: String,
    /// How often this daemon records that it is alive (default 10 s).
    pub heartbeat: Duration,
    /// Files staged or verified at once, across all cases (default: the
    /// number of CPU cores the daemon may use).
    pub verify_workers: usize,
}

impl Config {
    /// The path to read: the flag, else the environment, else the default.
    pub fn locate(flag: Option<&Path>) -> PathBuf {
        if let Some(p) = flag {
            return p.to_path_buf();
        }
        match std::env::var_os(CONFIG_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let bad = |key: &'static str, message: String| ConfigError::Value {
            path: path.to_path_buf(),
            key,
            message,
        };
        for (key, p) in [
            ("gdb_root", &raw.gdb_root),
            ("state_dir", &raw.state_dir),
            ("mount_point", &raw.mount_point),
            ("socket", &raw.socket),
            ("directory", &raw.directory),
        ] {
            if !p.is_absolute() {
                return Err(bad(key, format!("{} is not an absolute path", p.display())));
            }
        }
        if let GroupSpec::Name(n) = &raw.staff_group {
            if n.is_empty() {
                return Err(bad("staff_group", "is empty".into()));
            }
        }
        let max_files_per_case = match raw.max_files_per_case {
            None => 20,
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            Some(n) => return Err(bad("max_files_per_case", format!("{n} is not between 1 and 10000"))),
        };
        let max_open_files_per_account = match raw.max_open_files_per_account {
            None => 1024,
            Some(n) if (1..=65_536).contains(&n) => n as usize,
            Some(n) => return Err(bad("max_open_files_per_account", format!("{n} is not between 1 and 65536"))),
        };
        let max_open_requests_per_user = match raw.max_open_requests_per_user {
            None => 5,
            Some(n) if (1..=1_000).contains(&n) => n as usize,
            Some(n) => return Err(bad("max_open_requests_per_user", format!("{n} is not between 1 and 1000"))),
        };
        let max_requests_per_user_per_day = match raw.max_requests_per_user_per_day {
            None => 50,
            Some(n) if (1..=100_000).contains(&n) => n as usize,
            Some(n) => return Err(bad("max_requests_per_user_per_day", format!("{n} is not between 1 and 100000"))),
        };
        let verify_workers = match raw.verify_workers {
            None => default_verify_workers(),
            Some(n) if (1..=1024).contains(&n) => n as usize,
            Some(n) => return Err(bad("verify_workers", format!("{n} is not between 1 and 1024"))),
        };
        let case_ttl = match raw.case_ttl.as_deref() {
            None => Duration::from_secs(14 * 24 * 3600),
            Some(s) => {
                let d = humantime::parse_duration(s)
                    .map_err(|e| bad("case_ttl", format!("{s:?} is not a duration like \"14d\" or \"2h\": {e}")))?;
                if d.is_zero() {
                    return Err(bad("case_ttl", "must be longer than zero".into()));
                }
                d
            }
        };
        let database_url = match raw.database_url {
            None => format!("sqlite://{}", raw.state_dir.join("workcopy.db").display()),
            Some(u) if u.starts_with("sqlite:") || u.starts_with("postgres://") || u.starts_with("postgresql://") => u,
            Some(u) => {
                return Err(bad(
                    "database_url",
                    format!("{} is neither sqlite://… nor postgres://…", redact_url(&u)),
                ));
            }
        };
        if let Some(p) = &raw.database_password_file {
            if !p.is_absolute() {
                return Err(bad("database_password_file", format!("{} is not an absolute path", p.display())));
            }
        }
        let host = match raw.host {
            Some(h) => crate::names::DirId::parse(&h)
                .map(String::from)
                .map_err(|e| bad("host", format!("{h:?}: {e}")))?,
            None => default_host(),
        };
        let heartbeat = match raw.heartbeat.as_deref() {
            None => Duration::from_secs(10),
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(3600) => d,
                Ok(_) => return Err(bad("heartbeat", format!("{s:?} is not between 1s and 1h"))),
                Err(e) => return Err(bad("heartbeat", format!("{s:?} is not a duration like \"10s\": {e}"))),
            },
        };
        if raw.mount_point.starts_with(&raw.gdb_root) || raw.state_dir.starts_with(&raw.gdb_root) {
            return Err(bad(
                "mount_point",
                "mount_point and state_dir must lie outside gdb_root (the GDB is never written)".into(),
            ));
        }
        Ok(Config {
            source: path.to_path_buf(),
            gdb_root: raw.gdb_root,
            state_dir: raw.state_dir,
            mount_point: raw.mount_point,
            socket: raw.socket,
            directory: raw.directory,
            staff_group: raw.staff_group,
            database_url,
            mode: raw.mode.unwrap_or(Mode::Staged),
            max_files_per_case,
            case_ttl,
            passthrough: raw.passthrough.unwrap_or(true),
            max_open_files_per_account,
            max_open_requests_per_user,
            max_requests_per_user_per_day,
            four_eyes: raw.four_eyes.unwrap_or(false),
            database_password_file: raw.database_password_file,
            host,
            heartbeat,
            verify_workers,
        })
    }

    /// Whether the register is shared by several hosts (a server database).
    pub fn shared_register(&self) -> bool {
        !self.database_url.starts_with("sqlite:")
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.state_dir.join("staging")
    }

    pub fn caselog_dir(&self) -> PathBuf {
        self.state_dir.join("caselogs")
    }
}

/// The machine's hostname up to its first dot, as a register host name
/// (`localhost` when it has none that is one).
pub fn default_host() -> String {
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let short = name.split('.').next().unwrap_or_default();
    crate::names::DirId::parse(short)
        .map(String::from)
        .unwrap_or_else(|_| "localhost".to_string())
}

/// One worker per CPU core the process may use (its affinity and cgroup
/// quota count), else one.
pub fn default_verify_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A database URL with any password replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((creds, host)) = rest.split_once('@') {
            if let Some((user, _)) = creds.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
gdb_root = "/srv/gdb"
state_dir = "/var/lib/workcopy"
mount_point = "/srv/workcopy"
socket = "/run/workcopy/control.sock"
directory = "/etc/workcopy/directory.toml"
staff_group = "workcopy-staff"
"#;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(&format!("{MIN}{extra}"), Path::new("/etc/workcopy/workcopy.toml"))
    }

    #[test]
    fn defaults() {
        let c = parse("").map_err(|e| e.to_string());
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.mode, Mode::Staged);
        assert_eq!(c.max_files_per_case, 20);
        assert_eq!(c.case_ttl, Duration::from_secs(14 * 86400));
        assert_eq!(c.database_url, "sqlite:///var/lib/workcopy/workcopy.db");
        assert_eq!(c.staff_group, GroupSpec::Name("workcopy-staff".into()));
        assert_eq!(c.max_open_requests_per_user, 5);
        assert_eq!(c.max_requests_per_user_per_day, 50);
        assert!(!c.four_eyes);
        assert_eq!(c.heartbeat, Duration::from_secs(10));
        assert!(!c.host.is_empty() && !c.shared_register());
        assert_eq!(c.verify_workers, default_verify_workers());
        assert!(c.verify_workers >= 1);
    }

    #[test]
    fn self_service_limits_and_four_eyes() {
        let c = parse("max_open_requests_per_user = 2\nfour_eyes = true\n").map_err(|e| e.to_string());
        assert!(matches!(c, Ok(ref c) if c.max_open_requests_per_user == 2 && c.four_eyes), "{c:?}");
        let m = message("max_requests_per_user_per_day = -1\n");
        assert!(m.contains("max_requests_per_user_per_day"), "{m}");
        let m = message("max_open_requests_per_user = 0\n");
        assert!(m.contains("max_open_requests_per_user"), "{m}");
        let m = message("four_eyes = \"yes\"\n");
        assert!(m.contains("four_eyes"), "{m}");
    }

    #[test]
    fn shared_register_keys() {
        let c = parse(
            "database_url = \"postgres://wc@db/wc\"\nhost = \"transfer-2\"\nheartbeat = \"3s\"\ndatabase_password_file = \"/etc/workcopy/db-password\"\n",
        );
        assert!(
            matches!(c, Ok(ref c) if c.host == "transfer-2" && c.heartbeat == Duration::from_secs(3) && c.shared_register()
                && c.database_password_file.is_some()),
            "{c:?}"
        );
        assert!(message("host = \"a b\"\n").contains("`host`"));
        assert!(message("heartbeat = \"0s\"\n").contains("`heartbeat`"));
        assert!(message("database_password_file = \"pw\"\n").contains("database_password_file"));
    }

    #[test]
    fn numeric_gid_and_options() {
        let text = MIN.replace("\"workcopy-staff\"", "1234");
        let c = Config::parse(
            &format!("{text}mode = \"direct\"\nmax_files_per_case = 5\ncase_ttl = \"2h\"\nverify_workers = 3\n"),
            Path::new("x.toml"),
        );
        assert!(
            matches!(c, Ok(ref c) if c.staff_group == GroupSpec::Gid(1234) && c.mode == Mode::Direct
            && c.max_files_per_case == 5 && c.case_ttl == Duration::from_secs(7200) && c.verify_workers == 3)
        );
    }

    fn message(extra: &str) -> String {
        match parse(extra) {
            Ok(_) => panic!("accepted {extra:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_key_and_file() {
        let m = message("colour = \"blue\"\n");
        assert!(m.contains("colour") && m.contains("/etc/workcopy/workcopy.toml"), "{m}");
        let m = message("mode = \"copy\"\n");
        assert!(m.contains("mode"), "{m}");
        let m = message("case_ttl = \"soon\"\n");
        assert!(m.contains("case_ttl"), "{m}");
        let m = message("max_files_per_case = 0\n");
        assert!(m.contains("max_files_per_case"), "{m}");
        let m = message("verify_workers = 0\n");
        assert!(m.contains("verify_workers") && m.contains("between 1 and 1024"), "{m}");
        let m = message("max_files_per_case = \"20\"\n");
        assert!(m.contains("max_files_per_case"), "{m}");
        let m = message("database_url = \"mysql://u:secret@h/db\"\n");
        assert!(m.contains("database_url") && !m.contains("secret"), "{m}");
        let m = Config::parse(&MIN.replace("\"/srv/gdb\"", "\"srv/gdb\""), Path::new("c.toml"))
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(matches!(m, Err(ref s) if s.contains("gdb_root")), "{m:?}");
        let m = Config::parse(&MIN.replace("staff_group = \"workcopy-staff\"\n", ""), Path::new("c.toml"))
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(matches!(m, Err(ref s) if s.contains("staff_group")), "{m:?}");
    }

    #[test]
    fn mount_inside_gdb_is_refused() {
        let text = MIN.replace("/srv/workcopy", "/srv/gdb/export");
        assert!(Config::parse(&text, Path::new("c.toml")).is_err());
    }
}
