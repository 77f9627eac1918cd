//! The control socket's messages, shared by the daemon and the CLI.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of JSON.
//! Requests are capped at [`MAX_REQUEST`], replies at [`MAX_REPLY`]; the cap is
//! checked before the body is read. `CatalogImport` carries the catalog's
//! open file descriptor beside its frame (SCM_RIGHTS), so the daemon reads
//! what the caller could open, at disk speed, without size limits.

use crate::audit::EventRecord;
use crate::config::Mode;
use crate::db::{FeedRecord, StateSummary};
use crate::domain::case::CaseRecord;
use crate::domain::case::CaseState;
use crate::domain::catalog::CatalogFile;
use crate::domain::catalog::ImportSummary;
use crate::domain::search::SearchHit;
use crate::domain::verify::{CaseFile, RequestForm};
use crate::export::ReadPath;
use serde::{Deserialize, Serialize};

pub const MAX_REQUEST: usize = 1 << 20;
pub const MAX_REPLY: usize = 64 << 20;
/// Records a `case log` reply holds when the request names no limit.
pub const LOG_PAGE_DEFAULT: u32 = 1000;
/// The most records one `case log` reply holds.
pub const LOG_PAGE_MAX: u32 = 10_000;
/// The most records one frame of an `events` reply holds.
pub const FEED_FRAME_RECORDS: u32 = 500;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// The catalog TSV arrives as a file descriptor beside the frame.
    CatalogImport,
    CatalogShow {
        descriptor: String,
    },
    CaseOpen {
        case_ref: String,
        form: RequestForm,
    },
    CaseApprove {
        case_ref: String,
        /// The host to serve the case (a shared register only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
    },
    CaseReject {
        case_ref: String,
        reason: String,
    },
    CaseConfirm {
        case_ref: String,
        sha256sums: String,
    },
    CaseClose {
        case_ref: String,
        force: bool,
        reason: Option<String>,
    },
    CaseList {
        state: Option<CaseState>,
    },
    CaseShow {
        case_ref: String,
    },
    CaseLog {
        case_ref: String,
        /// Only records after this sequence number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// At most this many records (the daemon's default when `None`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    AuditVerify,
    /// Read the directory file again (what `systemctl reload` asks for).
    Reload,
    /// A requester registers a request for their own group's files (a REF
    /// is generated when none is given).
    RequestOpen {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        case_ref: Option<String>,
        descriptors: Vec<String>,
    },
    /// A requester's own requests.
    RequestList,
    RequestShow {
        case_ref: String,
    },
    RequestCancel {
        case_ref: String,
    },
    /// Catalog files by a glob on base name or path, a sample, a date.
    CatalogSearch {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sample: Option<String>,
        /// A date (`2026-01-31`) or an RFC 3339 time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
    },
    /// The daemon's counters and the register's gauges, for `workcopy metrics`.
    Metrics,
    /// The feed: every case-log record with a feed number above `since`, in
    /// feed order. The reply is a stream of [`Reply::Events`] frames on the
    /// connection, the last with `more: false`; with `follow` it never ends
    /// (frames come as records commit) until the client hangs up.
    Events {
        #[serde(default)]
        since: u64,
        #[serde(default)]
        follow: bool,
    },
    /// Serve an approved or exported case from another host.
    CaseMove {
        case_ref: String,
        to: String,
    },
    /// The hosts sharing the register.
    Hosts,
    /// Declare a host gone for good.
    HostRetire {
        host: String,
        reason: String,
    },
}

impl Request {
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::CatalogImport => "catalog import",
            Request::CatalogShow { .. } => "catalog show",
            Request::CaseOpen { .. } => "case open",
            Request::CaseApprove { .. } => "case approve",
            Request::CaseReject { .. } => "case reject",
            Request::CaseConfirm { .. } => "case confirm",
            Request::CaseClose { .. } => "case close",
            Request::CaseList { .. } => "case list",
            Request::CaseShow { .. } => "case show",
            Request::CaseLog { .. } => "case log",
            Request::AuditVerify => "audit verify",
            Request::Reload => "reload",
            Request::RequestOpen { .. } => "request open",
            Request::RequestList => "request list",
            Request::RequestShow { .. } => "request show",
            Request::RequestCancel { .. } => "request cancel",
            Request::CatalogSearch { .. } => "catalog search",
            Request::Events { .. } => "events",
            Request::Metrics => "metrics",
            Request::CaseMove { .. } => "case move",
            Request::Hosts => "hosts",
            Request::HostRetire { .. } => "host retire",
        }
    }

    /// The case the request is about, if it names one (for the daemon's log).
    pub fn case_ref(&self) -> Option<&str> {
        match self {
            Request::CaseOpen { case_ref, .. }
            | Request::CaseApprove { case_ref, .. }
            | Request::CaseMove { case_ref, .. }
            | Request::CaseReject { case_ref, .. }
            | Request::CaseConfirm { case_ref, .. }
            | Request::CaseClose { case_ref, .. }
            | Request::CaseShow { case_ref }
            | Request::CaseLog { case_ref, .. }
            | Request::RequestShow { case_ref }
            | Request::RequestCancel { case_ref } => Some(case_ref),
            Request::RequestOpen { case_ref, .. } => case_ref.as_deref(),
            Request::Status
            | Request::RequestList
            | Request::CatalogSearch { .. }
            | Request::CatalogImport
            | Request::CatalogShow { .. }
            | Request::CaseList { .. }
            | Request::AuditVerify
            | Request::Reload
            | Request::Events { .. }
            | Request::Metrics
            | Request::Hosts
            | Request::HostRetire { .. } => None,
        }
    }
}

/// Why a request was refused. `kind` lets scripts tell refusals apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The caller may not do this.
    Denied,
    /// The case or file does not exist (or the caller may not know of it).
    NotFound,
    /// The request is malformed or names something invalid.
    Invalid,
    /// The case's state does not allow it.
    State,
    /// Verification, receipt or the log check failed.
    Failed,
    /// Something went wrong inside the daemon.
    Internal,
    /// A limit of the config was reached (`max_open_requests_per_user`,
    /// `max_requests_per_user_per_day`, `max_files_per_case`).
    Limit,
}

impl RefusalKind {
    pub const ALL: [RefusalKind; 7] = [
        RefusalKind::Denied,
        RefusalKind::NotFound,
        RefusalKind::Invalid,
        RefusalKind::State,
        RefusalKind::Failed,
        RefusalKind::Internal,
        RefusalKind::Limit,
    ];

    /// The name scripts and metrics know it by (as in JSON).
    pub const fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Denied => "denied",
            RefusalKind::NotFound => "not_found",
            RefusalKind::Invalid => "invalid",
            RefusalKind::State => "state",
            RefusalKind::Failed => "failed",
            RefusalKind::Internal => "internal",
            RefusalKind::Limit => "limit",
        }
    }
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    pub version: String,
    pub mode: Mode,
    pub mount_point: String,
    pub mounted: bool,
    /// `None` while nothing is mounted.
    pub read_path: Option<ReadPath>,
    pub catalog_files: u64,
    /// When an import last added or changed a catalog file (RFC 3339).
    #[serde(default)]
    pub catalog_changed_at: Option<String>,
    pub cases: Vec<(CaseState, u64)>,
    pub directory_departments: usize,
    pub bytes_served: u64,
    pub pulls_in_progress: u64,
    /// When this daemon started (RFC 3339), and how long ago in seconds.
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub uptime_secs: u64,
    /// Bytes of the staged copies under `<state_dir>/staging`.
    #[serde(default)]
    pub staging_bytes: u64,
    /// This daemon's name in the register.
    #[serde(default)]
    pub host: String,
    /// Whether the register is shared by several hosts.
    #[serde(default)]
    pub shared_register: bool,
    /// `None` while the database answers; else since when it has not (RFC
    /// 3339) and its last error. Exported cases stay in the mount meanwhile,
    /// but opens whose access record cannot be written fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_unreachable: Option<Unreachable>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreachable {
    pub since: String,
    pub error: String,
}

/// A host of the register as `workcopy hosts` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    #[serde(flatten)]
    pub host: crate::domain::hosts::HostRecord,
    pub state: crate::domain::hosts::Liveness,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_secs: i64,
    /// Whether its directory file matches the other hosts'.
    pub directory_matches: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseView {
    pub case: CaseRecord,
    /// The case's files with their catalog entries (staff only).
    pub files: Vec<CaseFile>,
    /// The case's files as its department sees them: what the mount shows
    /// (in place of `files` for a transfer account).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delivered: Vec<DeliveredFile>,
    /// Staging progress while the case is approved: (bytes done, bytes total).
    pub staging: Option<(u64, u64)>,
    /// Why the case is blocked, when it is.
    pub blocked_reason: Option<String>,
    /// Whether the case directory is in the mount now.
    #[serde(default)]
    pub visible: bool,
}

/// A file of a case as the mount shows it: name, GDB id, size and sha256;
/// no GDB path, no catalog columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredFile {
    pub name: String,
    pub file_id: String,
    pub size: u64,
    pub sha256: String,
}

/// What `workcopy metrics` shows: this daemon's counters (since it
/// started) and the register's gauges (`None`/empty when the database could
/// not be read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsReply {
    /// This daemon's name (the `host` label).
    pub host: String,
    pub version: String,
    pub mode: Mode,
    pub read_path: Option<ReadPath>,
    /// When this daemon started (unix seconds).
    pub started_at: i64,
    /// Whether the register answered the queries below.
    pub database_up: bool,
    pub states: Vec<StateSummary>,
    /// The feed head: records ever written to the case logs.
    pub feed_head: Option<u64>,
    pub file_opens: u64,
    /// Bytes read through the user-space path (not passthrough).
    pub served_bytes: u64,
    pub open_files: u64,
    /// Bytes of the staged copies on disk now.
    pub staging_bytes: u64,
    pub staging_jobs: u64,
    /// Cases this daemon shows in its mount now.
    pub mount_cases: u64,
    /// Bytes copied or hashed by staging and by the checks after a start.
    pub staged_bytes: u64,
    /// Time spent by that work, in nanoseconds.
    pub staging_nanos: u64,
    /// Files whose bytes did not match the catalog, by when they were
    /// checked (`staging`, `restart`).
    pub verification_failures: Vec<(String, u64)>,
    pub refusals: Vec<(RefusalKind, u64)>,
    /// Connections closed because their uid held too many.
    pub connections_refused: u64,
    /// The last check of every case log (`audit verify` or the daemon's own).
    pub audit: Option<AuditStatus>,
}

/// The outcome of the last check of every case log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditStatus {
    /// When it finished (unix seconds).
    pub at: i64,
    /// How long it took, in milliseconds.
    pub millis: u64,
    pub checked_logs: u64,
    pub failed_logs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    pub cases: u64,
    pub records: u64,
    pub sealed_files: u64,
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status(StatusReply),
    Imported(ImportSummary),
    Files {
        files: Vec<CatalogFile>,
    },
    Case(Box<CaseView>),
    Cases {
        cases: Vec<CaseRecord>,
    },
    Log {
        records: Vec<EventRecord>,
        /// When more records follow: the `since` of the next page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<u64>,
    },
    Audit(AuditReport),
    /// The directory now in force.
    Reloaded {
        departments: usize,
    },
    /// `catalog search`: at most [`MAX_RESULTS`](crate::domain::search::MAX_RESULTS) files.
    Found {
        files: Vec<SearchHit>,
        /// More files matched than the reply holds.
        more: bool,
    },
    /// One frame of the feed; `more` when further frames follow on the connection.
    Events {
        records: Vec<FeedRecord>,
        more: bool,
    },
    Metrics(Box<MetricsReply>),
    Hosts {
        hosts: Vec<HostView>,
    },
    /// A host is retired.
    Retired {
        host: String,
    },
}

pub type Response = Result<Reply, Refusal>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let reqs = vec![
            Request::Status,
            Request::CatalogImport,
            Request::CaseOpen {
                case_ref: "R1".into(),
                form: RequestForm {
                    requester: "a@b".into(),
                    department: None,
                    submitter: Some("X".into()),
                    descriptors: vec!["f".into()],
                },
            },
            Request::CaseClose {
                case_ref: "R1".into(),
                force: true,
                reason: Some("withdrawn".into()),
            },
            Request::CaseList {
                state: Some(CaseState::Exported),
            },
            Request::Reload,
            Request::RequestOpen {
                case_ref: None,
                descriptors: vec!["f".into()],
            },
            Request::RequestCancel { case_ref: "R1".into() },
            Request::CatalogSearch {
                pattern: Some("*.fastq".into()),
                sample: None,
                since: Some("2026-01-31".into()),
            },
            Request::Events { since: 42, follow: true },
        ];
        for r in reqs {
            let text = serde_json::to_string(&r).unwrap_or_default();
            let back: Result<Request, _> = serde_json::from_str(&text);
            assert_eq!(back.ok(), Some(r));
        }
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"events"}"#).ok(),
            Some(Request::Events { since: 0, follow: false })
        );
    }
}
