//! Look-ups in the system's user and group databases, and the identity of a
//! caller.

use nix::unistd::{Group, Uid, User};
use std::time::Duration;

/// Why a user or group name could not be turned into an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("no unix user named {0:?}")]
    NoUser(String),
    #[error("cannot look up unix user {name:?}: {source}")]
    User {
        name: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("no unix group named {0:?}")]
    NoGroup(String),
    #[error("cannot look up unix group {name:?}: {source}")]
    Group {
        name: String,
        #[source]
        source: nix::errno::Errno,
    },
}

/// A user name or numeric id, as written in config and directory files.
pub fn resolve_user(spec: &str) -> Result<u32, LookupError> {
    if let Ok(uid) = spec.parse::<u32>() {
        return Ok(uid);
    }
    match User::from_name(spec) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(LookupError::NoUser(spec.to_string())),
        Err(source) => Err(LookupError::User {
            name: spec.to_string(),
            source,
        }),
    }
}

pub fn resolve_group(spec: &crate::config::GroupSpec) -> Result<u32, LookupError> {
    match spec {
        crate::config::GroupSpec::Gid(g) => Ok(*g),
        crate::config::GroupSpec::Name(n) => {
            if let Ok(g) = n.parse::<u32>() {
                return Ok(g);
            }
            match Group::from_name(n) {
                Ok(Some(g)) => Ok(g.gid.as_raw()),
                Ok(None) => Err(LookupError::NoGroup(n.clone())),
                Err(source) => Err(LookupError::Group { name: n.clone(), source }),
            }
        }
    }
}

/// The user name for a uid, or the number when it has none.
pub fn user_name(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// Who is asking, from the kernel's credentials: a control-socket peer
/// (SO_PEERCRED) or a FUSE request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Supplementary groups where the kernel passed them (SO_PEERGROUPS on
    /// the socket); empty for FUSE requests, whose groups [`ProcStaff`] reads
    /// from `/proc` when it must.
    pub groups: Vec<u32>,
}

/// Caches uid → name for the paths (FUSE open, socket requests) that log the
/// caller's name for every operation.
#[derive(Clone)]
pub struct NameCache {
    cache: moka::sync::Cache<u32, String>,
}

impl Default for NameCache {
    fn default() -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_live(Duration::from_secs(300))
                .build(),
        }
    }
}

impl NameCache {
    pub fn name(&self, uid: u32) -> String {
        self.cache.get_with(uid, || user_name(uid))
    }

    /// The case log's actor for a uid.
    pub fn actor(&self, uid: u32) -> crate::audit::Actor {
        crate::audit::Actor { name: self.name(uid), uid }
    }
}

/// The supplementary groups of a running process, from `/proc/<pid>/status`.
pub fn process_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

/// Decides whether a process is staff: root, the staff group as its primary
/// group, or among its supplementary groups (read from `/proc`, cached for a
/// moment per process).
pub struct ProcStaff {
    pub staff_gid: u32,
    cache: moka::sync::Cache<(u32, u32), bool>,
}

impl ProcStaff {
    pub fn new(staff_gid: u32) -> ProcStaff {
        ProcStaff {
            staff_gid,
            cache: moka::sync::Cache::builder()
                .max_capacity(4096)
                .time_to_live(Duration::from_secs(2))
                .build(),
        }
    }

    /// Whether the process `pid`, running as `uid` with primary group `gid`,
    /// is staff, by the one staff rule ([`crate::domain::authz::is_staff`]).
    pub fn is_member(&self, uid: u32, gid: u32, pid: u32) -> bool {
        use crate::domain::authz::is_staff;
        let staff = self.staff_gid;
        is_staff(uid, gid, &[], staff) || self.cache.get_with((pid, uid), || is_staff(uid, gid, &process_groups(pid), staff))
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
