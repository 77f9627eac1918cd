//! Handlers of the `case` requests: open, approve, reject, confirm, close, and the case view.

use super::Service;
use super::caselog::LogCheck;
use super::request::{not_found, parse_ref, refuse};
use crate::audit::{self, Actor, EventKind, NewEvent};
use crate::control::proto::{CaseView, DeliveredFile, Refusal, RefusalKind, Reply, Response};
use crate::domain::authz::{four_eyes_refusal, no_longer_authorized};
use crate::domain::case::{Action, CaseState, Role, transition};
use crate::domain::case::{CaseRecord, NewCase};
use crate::domain::verify::{CaseFile, RequestForm, SUMS_NAME, verify};
use crate::receipt;
use serde_json::json;
use sha2::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What a transfer account may see of a case: not the verification report,
/// which can name other departments' files.
pub(super) fn redact(case: &mut CaseRecord) {
    case.report.lines.clear();
    case.report.problems.clear();
    case.host = None;
}

/// Refused receipts recorded per case (and daemon run); more are answered but not logged.
pub(super) const MAX_REFUSALS_RECORDED: u32 = 20;

impl Service {
    pub(super) async fn view(&self, role: &Role, mut case: CaseRecord) -> Result<CaseView, Refusal> {
        let files = self.store.case_files(&case.case_ref).await?;
        let staging = crate::sync::lock(&self.jobs)
            .get(&case.case_ref)
            .map(|j| (j.progress.done.load(Ordering::Relaxed), j.total));
        let blocked_reason = if case.state == CaseState::Blocked {
            // The `blocked` record is at the end of the log: read only its end.
            let events = self
                .store
                .events_page(&case.case_ref, case.event_count.saturating_sub(16), 16)
                .await?;
            events
                .iter()
                .rev()
                .find(|e| e.kind() == Some(EventKind::Blocked))
                .and_then(|e| e.details.get("reason"))
                .and_then(|r| r.as_str())
                .map(String::from)
        } else {
            None
        };
        let (visible, staging) = if self.serves(&case) {
            (self.exports.get(&case.case_ref).is_some(), staging)
        } else {
            self.remote_serving(&case).await
        };
        if *role == Role::Staff {
            return Ok(CaseView {
                visible,
                case,
                files,
                delivered: Vec::new(),
                staging,
                blocked_reason,
            });
        }
        if let Role::Requester { .. } = role {
            // Their own request: its report and files were verified against
            // their own user group's files only, so they may see all of it
            // but the staging details.
            return Ok(CaseView {
                visible,
                case,
                files,
                delivered: Vec::new(),
                staging,
                blocked_reason: blocked_reason.map(|_| "a file did not verify; workcopy staff have the details".to_string()),
            });
        }
        // A department sees what its mount shows: no GDB paths, no catalog
        // columns, no verification details (they can name other files).
        redact(&mut case);
        let delivered = files
            .into_iter()
            .map(|f| DeliveredFile {
                name: f.export_name,
                file_id: f.file.file_id.to_string(),
                size: f.file.size,
                sha256: f.file.sha256,
            })
            .collect();
        Ok(CaseView {
            visible,
            case,
            files: Vec::new(),
            delivered,
            staging,
            blocked_reason: blocked_reason.map(|_| "a file did not verify; workcopy staff have the details".to_string()),
        })
    }

    pub(super) async fn case_open(&self, actor: &Actor, case_ref: &str, form: RequestForm) -> Response {
        let r = parse_ref(case_ref)?;
        if self.store.case(r.as_str()).await?.is_some() {
            return Err(refuse(
                RefusalKind::State,
                format!("case {r} already exists; every request needs its own reference"),
            ));
        }
        let max = self.cfg.max_files_per_case;
        let mut matches = Vec::with_capacity(form.descriptors.len());
        for (i, d) in form.descriptors.iter().enumerate() {
            // Descriptors past the limit are refused without a look-up.
            matches.push(if i < max { self.store.resolve(d, 10).await? } else { Vec::new() });
        }
        let dir = self.directory();
        let (report, files) = verify(&form, &dir, &matches, max);
        let verified = report.verified();
        let details = json!({
            "requester": form.requester,
            "department": report.department.as_ref().map(|d| d.to_string()),
            "submitter": form.submitter,
            "verified": verified,
            "problems": report.problems,
            "report": report.lines.iter().map(|l| l.describe()).collect::<Vec<_>>(),
        });
        let case = NewCase {
            case_ref: r.to_string(),
            requester: form.requester.clone(),
            department: report.department.as_ref().map(|d| d.to_string()),
            submitter: form.submitter.clone(),
            report,
            files,
            opened_uid: actor.uid,
            self_service: None,
        };
        self.store
            .create_case(case, NewEvent::new(actor, EventKind::Opened, details))
            .await?;
        self.state_changed.notify_one();
        let case = self.store.case(r.as_str()).await?.ok_or_else(|| not_found(r.as_str()))?;
        Ok(Reply::Case(Box::new(self.view(&Role::Staff, case).await?)))
    }

    pub(super) async fn case_approve(self: &Arc<Self>, role: &Role, actor: &Actor, case_ref: &str, host: Option<&str>) -> Response {
        let case = self.visible_case(role, case_ref).await?;
        self.approve(role, actor, &case, host, json!({})).await?;
        let case = self.visible_case(role, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    /// The one approval path, for staff (`case approve`) and for workcopy
    /// under a department's `self_service = "auto"`: the state allows it,
    /// `four_eyes` holds, rule 1 still holds; then the case is approved on
    /// its serving host (`host`, else the department's first, else this
    /// one) with `extra` added to its record, and staging starts there.
    pub(super) async fn approve(
        self: &Arc<Self>,
        role: &Role,
        actor: &Actor,
        case: &CaseRecord,
        host: Option<&str>,
        extra: serde_json::Value,
    ) -> Result<(), Refusal> {
        transition(role, Action::Approve, case.facts())?;
        if let Some(reason) = four_eyes_refusal(self.cfg.four_eyes, case.opened_uid, actor.uid, &case.case_ref) {
            return Err(refuse(RefusalKind::Denied, format!("approval refused: {reason}")));
        }
        let files = self.store.case_files(&case.case_ref).await?;
        // The directory may have changed since the case was opened: rule 1 must still hold.
        if let Some(reason) = no_longer_authorized(&self.directory(), case.department.as_deref(), &files) {
            return Err(refuse(RefusalKind::Failed, format!("approval refused: {reason}")));
        }
        let host = self.choose_host(case.department.as_deref(), host).await?;
        let mut details = if self.cfg.shared_register() {
            json!({"mode": self.cfg.mode.to_string(), "host": host})
        } else {
            json!({"mode": self.cfg.mode.to_string()})
        };
        if let (Some(d), serde_json::Value::Object(extra)) = (details.as_object_mut(), extra) {
            d.extend(extra);
        }
        self.take_on(role, actor, case, Action::Approve, Some(&host), details).await?;
        if host == self.cfg.host {
            self.start_staging(case.case_ref.clone(), files)?;
        }
        Ok(())
    }

    pub(super) async fn case_reject(&self, role: &Role, actor: &Actor, case_ref: &str, reason: &str) -> Response {
        if reason.trim().is_empty() {
            return Err(refuse(RefusalKind::Invalid, "a rejection needs --reason"));
        }
        let case = self.visible_case(role, case_ref).await?;
        self.end_case(role, actor, &case.case_ref, Action::Reject, json!({"reason": reason}))
            .await?;
        let case = self.visible_case(role, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    pub(super) async fn case_confirm(&self, role: &Role, actor: &Actor, case_ref: &str, sums: &str) -> Response {
        let case = self.visible_case(role, case_ref).await?;
        let facts = case.facts();
        transition(role, Action::Confirm, facts)?;
        let files = self.store.case_files(&case.case_ref).await?;
        let expected: BTreeMap<String, String> = files.iter().map(|f| (f.export_name.clone(), f.file.sha256.clone())).collect();
        let sums_file = receipt::format_sums(files.iter().map(|f| (f.export_name.as_str(), f.file.sha256.as_str())));
        let sums_sha = audit::hex(&sha2::Sha256::digest(sums_file.as_bytes()));
        if let Err(e) = receipt::check_receipt(sums, &case.case_ref, &expected, SUMS_NAME, &sums_sha) {
            self.record_refused_receipt(actor, &case.case_ref, sums, json!(e.problems)).await?;
            return Err(refuse(RefusalKind::Failed, format!("receipt refused: {e}")));
        }
        // A receipt stands for files the department received: each must have
        // been opened in the mount by the department's account.
        let unread = self.unread_files(&case.case_ref, &files).await?;
        if !unread.is_empty() {
            self.record_refused_receipt(actor, &case.case_ref, sums, json!({"unread": unread.len()}))
                .await?;
            return Err(refuse(
                RefusalKind::Failed,
                format!(
                    "receipt refused: {} of the case's {} files were never opened in the mount by the department's transfer account (a receipt follows a pull): {}",
                    unread.len(),
                    files.len(),
                    unread.join(", ")
                ),
            ));
        }
        self.take(role, actor, &case, Action::Confirm, json!({"files": files.len()}))
            .await?;
        let case = self.visible_case(role, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    /// The case's files (export names) that no open by a non-staff caller —
    /// the department's transfer account — is recorded for.
    async fn unread_files(&self, case_ref: &str, files: &[CaseFile]) -> Result<Vec<String>, Refusal> {
        let opened = self.store.opened_files(case_ref, false).await?;
        let read: std::collections::HashSet<&str> = opened.iter().map(String::as_str).collect();
        Ok(files
            .iter()
            .filter(|f| !read.contains(f.export_name.as_str()))
            .map(|f| f.export_name.clone())
            .collect())
    }

    /// Records a refused receipt, short and typed: what was wrong by kind and
    /// a digest of what was sent, never the client's text. At most
    /// [`MAX_REFUSALS_RECORDED`] per case and daemon run; the refusal itself
    /// is answered either way.
    async fn record_refused_receipt(&self, actor: &Actor, case_ref: &str, sent: &str, problems: serde_json::Value) -> Result<(), Refusal> {
        let n = {
            let mut counts = crate::sync::lock(&self.refusals_recorded);
            let n = counts.entry(case_ref.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        if n > MAX_REFUSALS_RECORDED {
            return Ok(());
        }
        let mut details = json!({
            "problems": problems,
            "sent_bytes": sent.len(),
            "sent_sha256": audit::hex(&sha2::Sha256::digest(sent.as_bytes())),
        });
        if n == MAX_REFUSALS_RECORDED {
            details["further_refusals_not_recorded"] = json!(true);
        }
        let ev = NewEvent::new(actor, EventKind::ReceiptRefused, details);
        // Recorded only while the case is exported (never after a close).
        self.store.append_in(case_ref, &[CaseState::Exported], ev).await?;
        Ok(())
    }

    pub(super) async fn case_close(&self, role: &Role, actor: &Actor, case_ref: &str, force: bool, reason: Option<String>) -> Response {
        let case = self.visible_case(role, case_ref).await?;
        let reason = reason.filter(|r| !r.trim().is_empty());
        if force && reason.is_none() {
            return Err(refuse(RefusalKind::Invalid, "--force needs --reason"));
        }
        let action = if force { Action::ForceClose } else { Action::Close };
        let facts = case.facts();
        transition(role, action, facts)?;
        if let LogCheck::Broken(e) = self.check_log(&case.case_ref).await? {
            return Err(refuse(RefusalKind::Failed, format!("close refused: the case log is broken: {e}")));
        }
        self.end_case(role, actor, &case.case_ref, action, json!({"forced": force, "reason": reason}))
            .await?;
        let case = self.visible_case(role, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }
}
