//! Case transitions together with their effects: staging started and its
//! outcome applied, the mount changed, staging deleted, the log sealed.

use super::Service;
use super::jobs::NotServable;
use super::request::{not_found, refuse};
use crate::audit::{Actor, EventKind, EventRecord, NewEvent};
use crate::control::proto::{Refusal, RefusalKind};
use crate::domain::authz::no_longer_authorized;
use crate::domain::case::CaseRecord;
use crate::domain::case::{Action, CaseState, Role, transition};
use crate::domain::verify::CaseFile;
use crate::export::table::{Backing, ExportedCase, ExportedFile};
use crate::gdb::FileIdentity;
use crate::receipt;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{error, info, warn};

impl Service {
    pub(super) async fn take(
        &self,
        role: &Role,
        actor: &Actor,
        case: &CaseRecord,
        action: Action,
        details: serde_json::Value,
    ) -> Result<EventRecord, Refusal> {
        self.take_on(role, actor, case, action, None, details).await
    }

    /// [`take`](Self::take), making `host` the case's serving host when given.
    pub(super) async fn take_on(
        &self,
        role: &Role,
        actor: &Actor,
        case: &CaseRecord,
        action: Action,
        host: Option<&str>,
        details: serde_json::Value,
    ) -> Result<EventRecord, Refusal> {
        let facts = case.facts();
        let to = transition(role, action, facts)?;
        let event = NewEvent::new(actor, action.event(), details);
        let record = match host {
            Some(h) => self.store.transition_to_host(&case.case_ref, case.state, to, h, event).await?,
            None => self.store.transition(&case.case_ref, case.state, to, event).await?,
        };
        self.state_changed.notify_one();
        Ok(record)
    }

    /// Stages (or checks, in direct mode) every file of an approved case in
    /// the background, then exports or blocks it.
    pub(super) fn start_staging(self: &Arc<Self>, case_ref: String, files: Vec<CaseFile>) -> Result<(), Refusal> {
        let job = self.register_job(&case_ref, &files)?;
        self.report_progress(case_ref.clone());
        let svc = self.clone();
        tokio::spawn(async move {
            let outcome = svc.stage_files(&case_ref, &files, &job).await;
            if job.progress.cancel.load(Ordering::Relaxed) {
                // Stopped by a close, which takes the case from here once the
                // job is off the table: nothing of it may be left running then.
                let _ = svc.remove_staging(&case_ref).await;
                crate::sync::lock(&svc.jobs).remove(&case_ref);
                return;
            }
            // The job leaves the table once its end is recorded (in
            // `try_end_staging`, under the visibility lock), so nothing
            // looking for approved cases without a job starts it again.
            svc.end_staging(&case_ref, &files, job.total, outcome).await;
        });
        Ok(())
    }

    /// Exports or blocks a case whose staging ended, under the visibility lock
    /// so no close, reload or other export interleaves.
    pub(super) async fn end_staging(
        &self,
        case_ref: &str,
        files: &[CaseFile],
        bytes: u64,
        outcome: Result<Vec<(Backing, FileIdentity)>, NotServable>,
    ) {
        let mut outcome = Some(outcome);
        // A busy or failing database must not leave the case approved for
        // good: retry until the end is recorded (or the case has moved on),
        // waiting without holding the lock.
        let mut attempt = 0u32;
        loop {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << attempt.min(5))).await;
            }
            match self.try_end_staging(case_ref, files, bytes, &mut outcome).await {
                Ok(()) => return,
                Err(e) if attempt == 5 => {
                    error!(case = %case_ref, error = %e, "still cannot record the end of staging; retrying every 32 s")
                }
                Err(e) if attempt < 5 => warn!(case = %case_ref, error = %e, attempt, "recording the end of staging failed"),
                Err(_) => {}
            }
            attempt = attempt.saturating_add(1);
        }
    }

    /// One attempt of [`end_staging`](Self::end_staging); `Err` only for a database failure.
    pub(super) async fn try_end_staging(
        &self,
        case_ref: &str,
        files: &[CaseFile],
        bytes: u64,
        outcome: &mut Option<Result<Vec<(Backing, FileIdentity)>, NotServable>>,
    ) -> Result<(), Refusal> {
        let _visibility = self.visibility.lock().await;
        let case = match self.store.case(case_ref).await? {
            Some(c) if c.state == CaseState::Approved && self.serves(&c) => c,
            Some(c) => {
                // Closed (or moved) while staging: that already cleaned up; leave nothing behind.
                info!(case = %case_ref, state = %c.state, "staging ended after the case left the approved state");
                crate::sync::lock(&self.jobs).remove(case_ref);
                let _ = self.remove_staging(case_ref).await;
                return Ok(());
            }
            None => {
                crate::sync::lock(&self.jobs).remove(case_ref);
                return Ok(());
            }
        };
        let dir = self.directory();
        let department = case.department.clone().unwrap_or_default();
        let staged = outcome.take().unwrap_or(Err(NotServable::Lost));
        // Kept for another attempt should this one fail to record its result.
        let keep = staged.clone();
        let checked = staged.and_then(|backings| match no_longer_authorized(&dir, case.department.as_deref(), files) {
            Some(reason) => Err(NotServable::NotAuthorized(reason)),
            None => self.exported_case(case_ref, &department, files, backings),
        });
        let system = Actor::system();
        match checked {
            Ok(exported) => {
                let details = json!({"files": files.len(), "bytes": bytes, "mode": self.cfg.mode.to_string()});
                if let Err(e) = self.take(&Role::System, &system, &case, Action::Export, details).await {
                    *outcome = Some(keep);
                    return Err(e);
                }
                crate::sync::lock(&self.jobs).remove(case_ref);
                self.publish(exported).await;
                info!(case = %case_ref, files = files.len(), bytes, "case exported");
            }
            Err(reason) => {
                let _ = self.remove_staging(case_ref).await;
                let details = json!({"reason": reason.to_string()});
                if let Err(e) = self.take(&Role::System, &system, &case, Action::Block, details).await {
                    *outcome = Some(keep);
                    return Err(e);
                }
                crate::sync::lock(&self.jobs).remove(case_ref);
                warn!(case = %case_ref, "staging failed; case blocked");
            }
        }
        Ok(())
    }

    pub(super) fn exported_case(
        &self,
        case_ref: &str,
        department: &str,
        files: &[CaseFile],
        backings: Vec<(Backing, FileIdentity)>,
    ) -> Result<ExportedCase, NotServable> {
        let owner_uid = self
            .directory()
            .department(department)
            .map(|d| d.transfer_uid)
            .ok_or_else(|| NotServable::DepartmentGone {
                department: department.to_string(),
                case_ref: case_ref.to_string(),
            })?;
        let exported: Vec<ExportedFile> = files
            .iter()
            .zip(backings)
            .map(|(f, (backing, identity))| ExportedFile {
                name: f.export_name.clone(),
                file_id: f.file.file_id.to_string(),
                sha256: f.file.sha256.clone(),
                size: f.file.size,
                mtime_ns: f.file.submitted_ns,
                backing,
                identity: Some(identity),
            })
            .collect();
        let sums = receipt::format_sums(exported.iter().map(|f| (f.name.as_str(), f.sha256.as_str()))).into_bytes();
        Ok(ExportedCase {
            case_ref: case_ref.to_string(),
            department: department.to_string(),
            owner_uid,
            mtime_ns: exported.iter().map(|f| f.mtime_ns).max().unwrap_or(0),
            files: exported,
            sums,
        })
    }

    /// Publishes to the mount; the kernel notifications it sends may wait, so off the runtime's workers.
    pub(super) async fn publish(&self, case: ExportedCase) {
        let table = self.exports.clone();
        let case_ref = case.case_ref.clone();
        let _ = tokio::task::spawn_blocking(move || table.publish(case)).await;
        self.report_serving(&case_ref, true, (0, 0)).await;
    }

    pub(super) async fn withdraw(&self, case_ref: &str) {
        let table = self.exports.clone();
        let case_ref = case_ref.to_string();
        let _ = tokio::task::spawn_blocking(move || table.withdraw(&case_ref)).await;
    }

    /// Takes a case to a terminal state: the state change and the mount
    /// change together, then (only once the change is recorded) staging
    /// stopped, cleanup and the seal. A change that could not be recorded is
    /// refused and has no effect: the case stays in the mount, and its
    /// staging keeps running.
    pub(super) async fn end_case(
        &self,
        role: &Role,
        actor: &Actor,
        case_ref: &str,
        action: Action,
        details: serde_json::Value,
    ) -> Result<(), Refusal> {
        let (to, case) = {
            let _visibility = self.visibility.lock().await;
            let case = self.store.case(case_ref).await?.ok_or_else(|| not_found(case_ref))?;
            let to = transition(role, action, case.facts())?;
            self.take(role, actor, &case, action, details).await?;
            self.withdraw(case_ref).await;
            (to, case)
        };
        if !self.may_finish(&case).await {
            // Another host serves it: that host withdraws it, deletes its
            // copies and seals the log; wait for it as for a close here.
            self.stop_staging(case_ref).await;
            let _ = self.remove_staging(case_ref).await;
            return self.wait_for_seal(case_ref, case.host.as_deref().unwrap_or_default()).await;
        }
        // A staging job that ends meanwhile finds the case no longer approved
        // and deletes what it wrote; one still running stops here.
        self.stop_staging(case_ref).await;
        self.finish(case_ref).await.map_err(|e| {
            refuse(
                e.kind,
                format!(
                    "case {case_ref} is {to} (recorded, and out of the mount), but its cleanup did not finish: {}; \
                     the next expiry pass finishes it",
                    e.message
                ),
            )
        })
    }

    /// After a case reached a terminal state: it leaves the mount, its
    /// staging area is deleted, the log is sealed and written out. Safe to
    /// run again after a crash part-way.
    pub async fn finish(&self, case_ref: &str) -> Result<(), Refusal> {
        // A close and the expiry pass's retry must not both seal the same log.
        let _finishing = self.finishing.lock().await;
        self.withdraw(case_ref).await;
        // A finished case takes no more receipts: its refusal count goes.
        crate::sync::lock(&self.refusals_recorded).remove(case_ref);
        self.remove_staging(case_ref).await.map_err(|e| {
            refuse(
                RefusalKind::Internal,
                format!("cannot delete the staging area of {case_ref}: {e}; it is retried at the next expiry pass"),
            )
        })?;
        let case = self.store.case(case_ref).await?.ok_or_else(|| not_found(case_ref))?;
        let last = self.last_record(case_ref, case.event_count).await?;
        if last.as_ref().and_then(|e| e.kind()) != Some(EventKind::Sealed) {
            let head = last.map(|e| e.hash).unwrap_or_default();
            let mut seal = json!({"records": case.event_count, "head": head, "staging_deleted": true});
            if self.cfg.shared_register() {
                // The host that keeps the sealed log file.
                seal["host"] = json!(self.cfg.host);
            }
            if let Some(retired) = self.retired_host_of(&case).await {
                // Finished here because its serving host is gone for good:
                // that host's staging was not deleted by anyone.
                seal["staging_deleted"] = json!(false);
                seal["serving_host_retired"] = json!({
                    "host": retired.beat.name,
                    "retired_at": retired.retired_at,
                    "reason": retired.retired_reason,
                    "finished_by": self.cfg.host,
                });
            }

            self.store
                .append_in(
                    case_ref,
                    &CaseState::TERMINAL,
                    NewEvent::new(&Actor::system(), EventKind::Sealed, seal),
                )
                .await?;
        }
        let n = self.write_sealed(case_ref).await?;
        info!(case = %case_ref, records = n, "case log sealed");
        Ok(())
    }

    /// Keeps an exported case out of the mount, saying why in its log (the
    /// reason may name GDB paths, so the journal gets only the reference).
    pub(super) async fn hide(&self, case_ref: &str, reason: &str) {
        self.withdraw(case_ref).await;
        self.report_serving(case_ref, false, (0, 0)).await;
        error!(case = %case_ref, "case kept out of the mount (see its case log)");
        let ev = NewEvent::new(&Actor::system(), EventKind::Hidden, json!({"reason": reason}));
        if let Err(e) = self.store.append_in(case_ref, &CaseState::VISIBLE, ev).await {
            warn!(case = %case_ref, error = %e, "could not record why the case is hidden");
        }
    }
}
