//! After a start and on the expiry timer: cases come back, interrupted work
//! resumes, overdue cases expire, orphaned staging is deleted.

use super::Service;
use super::jobs::NotServable;
use crate::audit::{Actor, EventKind};
use crate::control::proto::Refusal;
use crate::domain::authz::no_longer_authorized;
use crate::domain::case::CaseRecord;
use crate::domain::case::{Action, CaseState, Role};
use crate::domain::verify::CaseFile;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::{error, info, warn};

impl Service {
    /// Expires exported cases older than `case_ttl`, and finishes any case
    /// whose cleanup failed earlier. One case's failure does not stop the others.
    pub async fn expire_due(&self) -> Result<usize, Refusal> {
        // `state_since` is whole seconds, rounded down: expire only once a
        // whole `case_ttl` has surely passed, never early.
        let ttl = self.cfg.case_ttl.as_secs_f64().ceil() as i64;
        let now = crate::unix::now_secs();
        let mut n = 0;
        for c in self.store.list_cases(Some(CaseState::Exported), None).await? {
            // The serving host expires its cases (any host, once it is retired).
            if c.state_since.saturating_add(ttl) >= now || !self.may_finish(&c).await {
                continue;
            }
            let details =
                json!({"reason": format!("receipt not confirmed within case_ttl ({})", humantime::format_duration(self.cfg.case_ttl))});
            match self
                .end_case(&Role::System, &Actor::system(), &c.case_ref, Action::Expire, details)
                .await
            {
                Ok(()) => {
                    info!(case = %c.case_ref, "case expired");
                    n += 1;
                }
                Err(e) => warn!(case = %c.case_ref, error = %e, "could not expire case"),
            }
        }
        self.finish_unsealed().await;
        Ok(n)
    }

    /// Terminal cases whose cleanup or seal did not happen (a crash, a failed delete).
    pub(super) async fn finish_unsealed(&self) {
        let Ok(cases) = self.store.list_cases(None, None).await else {
            return;
        };
        for c in cases.iter().filter(|c| c.state.is_terminal()) {
            let sealed_file = self.cfg.caselog_dir().join(format!("{}.jsonl", c.case_ref));
            let Ok(last) = self.last_record(&c.case_ref, c.event_count).await else {
                continue;
            };
            let sealed = last.as_ref().and_then(|e| e.kind()) == Some(EventKind::Sealed);
            // On a shared register the host that sealed the case keeps (and rewrites) its file.
            let sealed_here = last
                .as_ref()
                .and_then(|e| e.details.get("host"))
                .and_then(|h| h.as_str())
                .is_none_or(|h| h == self.cfg.host);
            let missing_file = sealed && sealed_here && !sealed_file.exists();
            if (!sealed && self.may_finish(c).await) || missing_file {
                info!(case = %c.case_ref, "finishing an interrupted close");
                if let Err(e) = self.finish(&c.case_ref).await {
                    warn!(case = %c.case_ref, error = %e, "could not finish the case");
                }
            }
        }
    }

    /// After a start: visible cases come back once their files are verified
    /// again (in the background), interrupted staging
    /// restarts, interrupted closes are finished, and staging areas that
    /// belong to no live case are deleted. One case's trouble does not stop the others.
    pub async fn recover(self: &Arc<Self>) -> Result<(), Refusal> {
        let cases = self.store.list_cases(None, None).await?;
        let dir = self.directory();
        for c in &cases {
            let files = match self.store.case_files(&c.case_ref).await {
                Ok(f) => f,
                Err(e) => {
                    error!(case = %c.case_ref, error = %e, "cannot read the case's files");
                    continue;
                }
            };
            if !self.serves(c) {
                // Another host serves it; what this host still has of it
                // (it moved away while this host was down) goes below.
                continue;
            }
            match c.state {
                CaseState::Approved => {
                    info!(case = %c.case_ref, "restarting interrupted staging");
                    if let Err(e) = self.start_staging(c.case_ref.clone(), files) {
                        error!(case = %c.case_ref, error = %e, "cannot restart staging");
                    }
                }
                s if s.is_visible() => {
                    if let Some(reason) = no_longer_authorized(&dir, c.department.as_deref(), &files) {
                        self.hide(&c.case_ref, &format!("no longer authorized: {reason}")).await;
                        continue;
                    }
                    // Nothing is served again before it is known intact:
                    // staged copies are hashed again (bytes may have changed
                    // on disk while the daemon was down), direct-mode files
                    // verified again; in the background.
                    let svc = self.clone();
                    let case_ref = c.case_ref.clone();
                    let department = c.department.clone().unwrap_or_default();
                    tokio::spawn(async move { svc.restore(&case_ref, &department, &files).await });
                }
                _ => {}
            }
        }
        self.finish_unsealed().await;
        self.remove_orphan_staging(&cases).await;
        Ok(())
    }

    /// Verifies a visible case's files again and publishes it if it is
    /// still visible. Staged mode hashes the staged copies against the
    /// catalog, and stages the case again from the GDB when one is missing or
    /// damaged; direct mode verifies the GDB files (one may have changed, or
    /// lost what kept it from changing, while the daemon was down).
    pub(super) async fn restore(&self, case_ref: &str, department: &str, files: &[CaseFile]) {
        info!(case = %case_ref, "verifying a case's files again before it comes back");
        // Registered like any staging job, so a close stops it and waits.
        let job = match self.register_job(case_ref, files) {
            Ok(job) => job,
            Err(e) => {
                warn!(case = %case_ref, error = %e, "cannot verify the case again");
                return;
            }
        };
        let outcome = match self.verify_staged_copies(case_ref, files, &job).await {
            Some(intact) => Ok(intact),
            None if job.progress.cancel.load(Ordering::Relaxed) => Err(NotServable::File(Arc::new(crate::staging::StageError::Cancelled(
                case_ref.to_string(),
            )))),
            None => {
                job.progress.done.store(0, Ordering::Relaxed);
                self.stage_files(case_ref, files, &job).await
            }
        };
        let _visibility = self.visibility.lock().await;
        crate::sync::lock(&self.jobs).remove(case_ref);
        let still_visible = matches!(self.store.case(case_ref).await, Ok(Some(c)) if c.state.is_visible() && self.serves(&c));
        if !still_visible {
            // Closed meanwhile: what this job wrote must not stay behind.
            let _ = self.remove_staging(case_ref).await;
            return;
        }
        // The directory may have been reloaded while the files were verified.
        if let Some(reason) = no_longer_authorized(&self.directory(), Some(department), files) {
            self.hide(case_ref, &format!("no longer authorized: {reason}")).await;
            return;
        }
        match outcome.and_then(|b| self.exported_case(case_ref, department, files, b)) {
            Ok(case) => self.publish(case).await,
            Err(reason) => self.hide(case_ref, &reason.to_string()).await,
        }
    }

    pub(super) async fn remove_orphan_staging(&self, cases: &[CaseRecord]) {
        let live: std::collections::HashSet<&str> = cases
            .iter()
            .filter(|c| (matches!(c.state, CaseState::Approved) || c.state.is_visible()) && self.serves(c))
            .map(|c| c.case_ref.as_str())
            .collect();
        let Ok(entries) = std::fs::read_dir(self.cfg.staging_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(name.as_str()) {
                warn!(case = %name, "deleting a staging area that belongs to no live case");
                let _ = self.remove_staging(&name).await;
            }
        }
    }
}
