//! What `workcopy metrics` reports: counters the daemon keeps while it runs
//! (opens, staging work, verification failures, refusals), the register's
//! gauges read at each request (cases per state and since when, the feed
//! head), whether the database answered, and the last check of every case
//! log — which the daemon also runs by itself, [`AUDIT_FIRST`] after a start
//! and every [`AUDIT_EVERY`] after that.
//!
//! The counters start at zero when the daemon starts (the reply says when);
//! the feed head is the register's own and never goes back.

use super::Service;
use crate::control::proto::{AuditStatus, MetricsReply, RefusalKind, Reply, Response};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::{error, info, warn};

/// When the daemon checks every case log after a start.
pub const AUDIT_FIRST: Duration = Duration::from_secs(5 * 60);
/// How often it checks them again.
pub const AUDIT_EVERY: Duration = Duration::from_secs(24 * 3600);

/// When a file's bytes were found not to match the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckedAt {
    /// While a case was staged (or, in direct mode, checked) for approval.
    Staging,
    /// When an exported case's files were verified again after a start.
    Restart,
}

impl CheckedAt {
    const ALL: [CheckedAt; 2] = [CheckedAt::Staging, CheckedAt::Restart];

    fn as_str(self) -> &'static str {
        match self {
            CheckedAt::Staging => "staging",
            CheckedAt::Restart => "restart",
        }
    }
}

/// The daemon's counters since it started. Each is only ever added to.
#[derive(Debug, Default)]
pub struct Counters {
    file_opens: AtomicU64,
    staged_bytes: AtomicU64,
    staging_nanos: AtomicU64,
    verification_failures: [AtomicU64; 2],
    refusals: [AtomicU64; RefusalKind::ALL.len()],
    connections_refused: AtomicU64,
    audit: std::sync::Mutex<Option<AuditStatus>>,
}

impl Counters {
    /// An open of a case file in the mount was recorded and served.
    pub fn file_opened(&self) {
        self.file_opens.fetch_add(1, Ordering::Relaxed);
    }

    /// Staging (or checking) work: bytes read and hashed, and the time it took.
    pub fn staged(&self, bytes: u64, took: Duration) {
        self.staged_bytes.fetch_add(bytes, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.staging_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// A file's bytes did not match the catalog.
    pub fn verification_failed(&self, at: CheckedAt) {
        self.verification_failures[at as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A request was refused with this kind.
    pub fn refused(&self, kind: RefusalKind) {
        if let Some(i) = RefusalKind::ALL.iter().position(|k| *k == kind) {
            self.refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection was closed because its uid held too many.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    fn audited(&self, status: AuditStatus) {
        *crate::sync::lock(&self.audit) = Some(status);
    }
}

impl Service {
    /// Records the outcome of a check of every case log, for `metrics`.
    pub(super) fn audited(&self, checked_logs: u64, failed_logs: u64, took: Duration) {
        self.counters.audited(AuditStatus {
            at: crate::unix::now_secs(),
            millis: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            checked_logs,
            failed_logs,
        });
    }

    /// `metrics`: the counters, and the register's gauges when it answers.
    pub(super) async fn metrics(&self) -> Response {
        let c = &self.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (states, feed_head) = match (self.store.state_summary().await, self.store.feed_head().await) {
            (Ok(states), Ok(head)) => (states, Some(head)),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "metrics: the database does not answer");
                (Vec::new(), None)
            }
        };
        let staging_bytes = tokio::task::spawn_blocking({
            let dir = self.cfg.staging_dir();
            move || super::admin::bytes_under(&dir)
        })
        .await
        .unwrap_or(0);
        let started_at = crate::unix::now_secs() - self.started.0.elapsed().as_secs() as i64;
        Ok(Reply::Metrics(Box::new(MetricsReply {
            host: self.cfg.host.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            mode: self.cfg.mode,
            read_path: *crate::sync::read(&self.read_path),
            started_at,
            database_up: feed_head.is_some(),
            states,
            feed_head,
            file_opens: read(&c.file_opens),
            served_bytes: self.stats.bytes_served.load(Ordering::Relaxed),
            open_files: self.stats.open_files.load(Ordering::Relaxed),
            staging_bytes,
            staging_jobs: crate::sync::lock(&self.jobs).len() as u64,
            mount_cases: self.exports.all().len() as u64,
            staged_bytes: read(&c.staged_bytes),
            staging_nanos: read(&c.staging_nanos),
            verification_failures: CheckedAt::ALL
                .iter()
                .map(|at| (at.as_str().to_string(), read(&c.verification_failures[*at as usize])))
                .collect(),
            refusals: RefusalKind::ALL.iter().zip(&c.refusals).map(|(k, n)| (*k, read(n))).collect(),
            connections_refused: read(&c.connections_refused),
            audit: *crate::sync::lock(&c.audit),
        })))
    }

    /// Checks every case log [`AUDIT_FIRST`] after a start and every
    /// [`AUDIT_EVERY`] after that, as `audit verify` does, so the metrics
    /// always tell how the logs stood at most a day ago.
    pub async fn audit_periodically(self: Arc<Self>) {
        tokio::time::sleep(AUDIT_FIRST).await;
        loop {
            match self.audit_verify().await {
                Ok(Reply::Audit(report)) if report.failures.is_empty() => {
                    info!(
                        cases = report.cases,
                        records = report.records,
                        "periodic audit: every case log intact"
                    )
                }
                Ok(Reply::Audit(report)) => {
                    for failure in &report.failures {
                        error!("periodic audit: {failure}");
                    }
                    error!(failed = report.failures.len(), "periodic audit: case logs failed verification");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "periodic audit could not read the case logs; tried again at the next pass"),
            }
            tokio::time::sleep(AUDIT_EVERY).await;
        }
    }
}
