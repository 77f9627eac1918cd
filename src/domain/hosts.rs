//! The transfer hosts sharing a register: what each reports in its
//! heartbeat, and how `workcopy hosts` judges it.

use serde::{Deserialize, Serialize};

/// Heartbeats a host may miss before it counts as down.
pub const MISSED_BEATS: i64 = 3;

/// What a daemon records of itself at every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostBeat {
    pub name: String,
    pub version: String,
    pub mode: String,
    pub read_path: String,
    /// sha256 of the directory file in force, so hosts can be compared.
    pub directory_sha256: String,
    pub started_at: String,
    /// Unix seconds.
    pub at: i64,
    /// The heartbeat interval, whole seconds.
    pub every_secs: i64,
    /// Cases in this host's mount.
    pub cases_served: u64,
}

/// A host as the register holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    #[serde(flatten)]
    pub beat: HostBeat,
    pub retired_at: Option<String>,
    pub retired_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Up,
    /// Silent for [`MISSED_BEATS`] heartbeats.
    Down,
    /// Declared gone for good (`workcopy host retire`).
    Retired,
}

impl std::fmt::Display for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Liveness::Up => "up",
            Liveness::Down => "down",
            Liveness::Retired => "retired",
        })
    }
}

impl HostRecord {
    pub fn liveness(&self, now: i64) -> Liveness {
        if self.retired_at.is_some() {
            Liveness::Retired
        } else if now.saturating_sub(self.beat.at) > MISSED_BEATS * self.beat.every_secs.max(1) {
            Liveness::Down
        } else {
            Liveness::Up
        }
    }
}

/// Whether each host's directory file matches the others': the digest most
/// hosts that are up report is the reference (ties: the smallest digest, so
/// every host computes the same answer). Retired hosts are not compared.
pub fn directory_matches(hosts: &[HostRecord], now: i64) -> Vec<bool> {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for h in hosts.iter().filter(|h| h.liveness(now) == Liveness::Up) {
        *counts.entry(h.beat.directory_sha256.as_str()).or_default() += 1;
    }
    let reference = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))).map(|(d, _)| *d);
    hosts
        .iter()
        .map(|h| h.liveness(now) == Liveness::Retired || reference.is_none_or(|r| r == h.beat.directory_sha256))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, at: i64, dir: &str) -> HostRecord {
        HostRecord {
            beat: HostBeat {
                name: name.into(),
                version: "1".into(),
                mode: "staged".into(),
                read_path: "passthrough".into(),
                directory_sha256: dir.into(),
                started_at: String::new(),
                at,
                every_secs: 10,
                cases_served: 0,
            },
            retired_at: None,
            retired_reason: None,
        }
    }

    #[test]
    fn down_after_three_missed_heartbeats() {
        let h = host("a", 1000, "d");
        assert_eq!(h.liveness(1030), Liveness::Up);
        assert_eq!(h.liveness(1031), Liveness::Down);
        let mut r = h.clone();
        r.retired_at = Some("then".into());
        assert_eq!(r.liveness(1000), Liveness::Retired);
    }

    #[test]
    fn the_odd_directory_out_is_flagged() {
        let hosts = [host("a", 100, "x"), host("b", 100, "x"), host("c", 100, "y")];
        assert_eq!(directory_matches(&hosts, 100), [true, true, false]);
        // Two hosts that disagree: the same answer on both (the smaller digest wins).
        let hosts = [host("a", 100, "y"), host("b", 100, "x")];
        assert_eq!(directory_matches(&hosts, 100), [false, true]);
        // A down host is compared with those that are up.
        let hosts = [host("a", 100, "x"), host("b", 0, "y")];
        assert_eq!(directory_matches(&hosts, 100), [true, false]);
    }
}

/// What the serving host reports of a case it stages or serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    pub case_ref: String,
    pub host: String,
    /// In the host's mount.
    pub published: bool,
    /// Staging progress: bytes done of `total` (both 0 when not staging).
    pub done: u64,
    pub total: u64,
    /// Unix seconds of the report.
    pub updated_at: i64,
}
