//! The daemon's operations: one handler per control request, the staging
//! jobs, expiry, and recovery after a restart. Rules come from `domain`,
//! storage from `db`, visibility goes to the export table.

use crate::audit::{self, Actor, EventRecord, NewEvent};
use crate::config::{Config, Mode};
use crate::control::proto::{AuditReport, CaseView, Refusal, RefusalKind, Reply, Request, Response, StatusReply};
use crate::db::{CaseRecord, NewCase, Store, StoreError};
use crate::domain::case::{Action, CaseState, Role, TransitionError, transition};
use crate::domain::catalog::{CatalogError, parse_catalog};
use crate::domain::directory::Directory;
use crate::domain::verify::{CaseFile, RequestForm, SUMS_NAME, verify};
use crate::export::fs::{Access, AccessLog};
use crate::export::table::{Backing, ExportTable, ExportedCase, ExportedFile, FileIdentity};
use crate::names::CaseRef;
use crate::receipt;
use crate::staging::{self, Expect};
use crate::unix::NameCache;
use serde_json::json;
use sha2::Digest;
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tracing::{error, info, warn};

/// Who is on the other end of a request, from the kernel's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub groups: Vec<u32>,
}

/// A running staging job: its progress, and a flag that stops it.
#[derive(Debug, Default)]
pub struct StagingJob {
    pub progress: staging::Progress,
    pub total: u64,
}

/// Counters the mount updates and `status` reports.
#[derive(Debug, Default)]
pub struct Stats {
    pub bytes_served: Arc<AtomicU64>,
    pub open_files: Arc<AtomicU64>,
}

/// Writes the mount's access records to the case log. Runs on FUSE threads,
/// which wait for the record to be committed before an open succeeds.
pub struct StoreAccessLog {
    store: Arc<dyn Store>,
    rt: tokio::runtime::Handle,
    names: NameCache,
}

impl StoreAccessLog {
    pub fn new(svc: &Service, rt: tokio::runtime::Handle) -> StoreAccessLog {
        StoreAccessLog {
            store: svc.store.clone(),
            rt,
            names: svc.names.clone(),
        }
    }
}

const VISIBLE: [CaseState; 2] = [CaseState::Exported, CaseState::Received];

impl AccessLog for StoreAccessLog {
    fn opened(&self, a: &Access) -> Result<(), String> {
        let actor = self.names.actor(a.uid);
        let details = json!({"file": a.file, "file_id": a.file_id, "pid": a.pid, "staff": a.staff});
        self.rt
            .block_on(
                self.store
                    .append_in(&a.case_ref, &VISIBLE, NewEvent::new(&actor, "file_opened", details)),
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn released(&self, a: &Access, bytes_read: u64, size: u64) {
        let actor = self.names.actor(a.uid);
        let details = json!({"file": a.file, "file_id": a.file_id, "pid": a.pid, "bytes_read": bytes_read, "size": size, "complete": bytes_read >= size});
        let store = self.store.clone();
        let case_ref = a.case_ref.clone();
        self.rt.spawn(async move {
            if let Err(e) = store
                .append_in(&case_ref, &VISIBLE, NewEvent::new(&actor, "file_read", details))
                .await
            {
                tracing::debug!(case = %case_ref, error = %e, "read record not written");
            }
        });
    }
}

pub struct Service {
    pub cfg: Config,
    store: Arc<dyn Store>,
    directory: RwLock<Arc<Directory>>,
    staff_gid: u32,
    names: NameCache,
    pub exports: Arc<ExportTable>,
    gdb_root: Arc<OwnedFd>,
    jobs: Mutex<HashMap<String, Arc<StagingJob>>>,
    pub stats: Arc<Stats>,
    /// The read path `status` reports; set by the daemon once it mounted.
    pub read_path: RwLock<Option<String>>,
    /// Held across "state change + mount change" (export, close, reload), so
    /// the mount never shows what the case's state or the directory forbids.
    visibility: tokio::sync::Mutex<()>,
    /// Held while a case is cleaned up and sealed.
    finishing: tokio::sync::Mutex<()>,
}

fn refuse(kind: RefusalKind, message: impl Into<String>) -> Refusal {
    Refusal::new(kind, message)
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        match e {
            StoreError::Exists(_) | StoreError::Conflict { .. } => refuse(RefusalKind::State, e.to_string()),
            StoreError::NoCase(_) => refuse(RefusalKind::NotFound, e.to_string()),
            StoreError::Catalog(_) => refuse(RefusalKind::Invalid, e.to_string()),
            StoreError::Db(_) | StoreError::Corrupt(..) => {
                error!(error = %e, "store failure");
                refuse(RefusalKind::Internal, e.to_string())
            }
        }
    }
}

impl From<TransitionError> for Refusal {
    fn from(e: TransitionError) -> Refusal {
        let kind = match e {
            TransitionError::NotStaff(_) | TransitionError::NotOwner(_) => RefusalKind::Denied,
            TransitionError::WrongState { .. } => RefusalKind::State,
            TransitionError::NotVerified => RefusalKind::Failed,
        };
        refuse(kind, e.to_string())
    }
}

fn parse_ref(s: &str) -> Result<CaseRef, Refusal> {
    CaseRef::parse(s).map_err(|e| refuse(RefusalKind::Invalid, e.to_string()))
}

fn not_found(case_ref: &str) -> Refusal {
    refuse(RefusalKind::NotFound, format!("no case {case_ref}"))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Service {
    pub fn new(cfg: Config, store: Arc<dyn Store>, directory: Directory, staff_gid: u32) -> std::io::Result<Arc<Service>> {
        let gdb_root =
            staging::open_root(&cfg.gdb_root).map_err(|e| std::io::Error::other(format!("gdb_root {}: {e}", cfg.gdb_root.display())))?;
        Ok(Arc::new(Service {
            cfg,
            store,
            directory: RwLock::new(Arc::new(directory)),
            staff_gid,
            names: NameCache::default(),
            exports: ExportTable::new(),
            gdb_root: Arc::new(gdb_root),
            jobs: Mutex::new(HashMap::new()),
            stats: Arc::new(Stats::default()),
            read_path: RwLock::new(None),
            visibility: tokio::sync::Mutex::new(()),
            finishing: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn directory(&self) -> Arc<Directory> {
        self.directory.read().map(|d| d.clone()).unwrap_or_default()
    }

    pub fn gdb_root(&self) -> Arc<OwnedFd> {
        self.gdb_root.clone()
    }

    pub fn staff_gid(&self) -> u32 {
        self.staff_gid
    }

    /// Reads the directory file again; a bad file leaves the old one in force.
    /// Exported cases follow it: a case whose rule 1 no longer holds leaves
    /// the mount, and a case directory's owner is the department's current
    /// transfer account (root only, for a department that left).
    pub async fn reload_directory(&self) -> Result<(), String> {
        let d = match Directory::load(&self.cfg.directory, &crate::unix::resolve_user) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                error!(error = %e, "directory reload refused; the previous directory stays in force");
                return Err(e.to_string());
            }
        };
        let _visibility = self.visibility.lock().await;
        if let Ok(mut cur) = self.directory.write() {
            *cur = d.clone();
        }
        for case in self.exports.all() {
            let files = match self.store.case_files(&case.case_ref).await {
                Ok(f) => f,
                Err(e) => {
                    error!(case = %case.case_ref, error = %e, "cannot re-check the case after the reload");
                    continue;
                }
            };
            if let Some(reason) = no_longer_authorized(&d, Some(&case.department), &files) {
                self.hide(&case.case_ref, &format!("no longer authorized after a directory reload: {reason}"))
                    .await;
                continue;
            }
            let owner = d.department(&case.department).map(|x| x.transfer_uid).unwrap_or(0);
            if owner != case.owner_uid {
                info!(case = %case.case_ref, "case directory owner follows the reloaded directory");
                let mut updated = (*case).clone();
                updated.owner_uid = owner;
                self.publish(updated).await;
            }
        }
        info!(departments = d.departments.len(), "directory reloaded");
        Ok(())
    }

    pub fn role(&self, c: &Caller) -> Role {
        if c.uid == 0 || c.gid == self.staff_gid || c.groups.contains(&self.staff_gid) {
            return Role::Staff;
        }
        match self.directory().department_of_uid(c.uid) {
            Some(d) => Role::Transfer {
                department: d.id.to_string(),
            },
            None => Role::Nobody,
        }
    }

    /// The answer to a caller who is neither staff nor a transfer account.
    pub fn refuse_nobody(&self, caller: &Caller) -> Refusal {
        warn!(uid = caller.uid, "refused: caller is neither staff nor a transfer account");
        refuse(
            RefusalKind::Denied,
            format!(
                "permission denied: uid {} is neither workcopy staff nor a department's transfer account",
                caller.uid
            ),
        )
    }

    pub fn actor(&self, uid: u32) -> Actor {
        self.names.actor(uid)
    }

    pub async fn handle(self: &Arc<Self>, caller: &Caller, req: Request, fds: Vec<OwnedFd>) -> Response {
        let role = self.role(caller);
        let op = req.name();
        if role == Role::Nobody {
            return Err(self.refuse_nobody(caller));
        }
        let actor = self.actor(caller.uid);
        let result = self.dispatch(&role, &actor, req, fds).await;
        match &result {
            Ok(_) => info!(op, uid = caller.uid, "done"),
            Err(r) => info!(op, uid = caller.uid, kind = ?r.kind, "refused"),
        }
        result
    }

    async fn dispatch(self: &Arc<Self>, role: &Role, actor: &Actor, req: Request, fds: Vec<OwnedFd>) -> Response {
        let staff_only = |what: &str| -> Result<(), Refusal> {
            if *role == Role::Staff {
                Ok(())
            } else {
                Err(refuse(
                    RefusalKind::Denied,
                    format!("permission denied: only workcopy staff may use `{what}`"),
                ))
            }
        };
        match req {
            Request::Status => {
                staff_only("status")?;
                self.status().await
            }
            Request::CatalogImport => {
                staff_only("catalog import")?;
                let fd = fds
                    .into_iter()
                    .next()
                    .ok_or_else(|| refuse(RefusalKind::Invalid, "catalog import needs the catalog file"))?;
                self.catalog_import(fd).await
            }
            Request::CatalogShow { descriptor } => {
                staff_only("catalog show")?;
                let files = self.store.resolve(&descriptor, 50).await?;
                if files.is_empty() {
                    return Err(refuse(RefusalKind::NotFound, format!("no catalog file matches {descriptor:?}")));
                }
                Ok(Reply::Files { files })
            }
            Request::CaseOpen { case_ref, form } => {
                staff_only("case open")?;
                self.case_open(actor, &case_ref, form).await
            }
            Request::CaseApprove { case_ref } => self.case_approve(role, actor, &case_ref).await,
            Request::CaseReject { case_ref, reason } => self.case_reject(role, actor, &case_ref, &reason).await,
            Request::CaseConfirm { case_ref, sha256sums } => self.case_confirm(role, actor, &case_ref, &sha256sums).await,
            Request::CaseClose { case_ref, force, reason } => self.case_close(role, actor, &case_ref, force, reason).await,
            Request::CaseList { state } => {
                let dept = match role {
                    Role::Staff => None,
                    Role::Transfer { department } => Some(department.as_str()),
                    _ => return Err(refuse(RefusalKind::Denied, "permission denied")),
                };
                let mut cases = self.store.list_cases(state, dept).await?;
                if *role != Role::Staff {
                    cases.iter_mut().for_each(redact);
                }
                Ok(Reply::Cases { cases })
            }
            Request::CaseShow { case_ref } => {
                let case = self.visible_case(role, &case_ref).await?;
                Ok(Reply::Case(Box::new(self.view(role, case).await?)))
            }
            Request::CaseLog { case_ref } => {
                staff_only("case log")?;
                let case_ref = parse_ref(&case_ref)?;
                if self.store.case(case_ref.as_str()).await?.is_none() {
                    return Err(not_found(case_ref.as_str()));
                }
                Ok(Reply::Log {
                    records: self.store.events(case_ref.as_str()).await?,
                })
            }
            Request::AuditVerify => {
                staff_only("audit verify")?;
                self.audit_verify().await
            }
        }
    }

    /// The case, if the caller may know of it (others get the same answer as for no case).
    async fn visible_case(&self, role: &Role, case_ref: &str) -> Result<CaseRecord, Refusal> {
        let r = parse_ref(case_ref)?;
        let case = self.store.case(r.as_str()).await?.ok_or_else(|| not_found(r.as_str()))?;
        match role {
            Role::Staff | Role::System => Ok(case),
            Role::Transfer { department } if case.department.as_deref() == Some(department.as_str()) => Ok(case),
            _ => Err(not_found(r.as_str())),
        }
    }

    async fn view(&self, role: &Role, mut case: CaseRecord) -> Result<CaseView, Refusal> {
        let files = self.store.case_files(&case.case_ref).await?;
        let staging = self
            .jobs
            .lock()
            .ok()
            .and_then(|j| j.get(&case.case_ref).map(|j| (j.progress.done.load(Ordering::Relaxed), j.total)));
        let blocked_reason = if case.state == CaseState::Blocked {
            let events = self.store.events(&case.case_ref).await?;
            events
                .iter()
                .rev()
                .find(|e| e.event == "blocked")
                .and_then(|e| e.details.get("reason"))
                .and_then(|r| r.as_str())
                .map(String::from)
        } else {
            None
        };
        if *role != Role::Staff {
            redact(&mut case);
        }
        let visible = self.exports.get(&case.case_ref).is_some();
        Ok(CaseView {
            visible,
            case,
            files,
            staging,
            blocked_reason,
        })
    }

    async fn status(&self) -> Response {
        let read_path = self.read_path.read().ok().and_then(|m| m.clone());
        let mounted = read_path.is_some() && crate::export::mount::is_mounted(&self.cfg.mount_point);
        let read_path = read_path.unwrap_or_else(|| "none (not mounted)".into());
        Ok(Reply::Status(StatusReply {
            version: env!("CARGO_PKG_VERSION").into(),
            mode: self.cfg.mode.to_string(),
            mount_point: self.cfg.mount_point.display().to_string(),
            mounted,
            read_path,
            catalog_files: self.store.catalog_size().await?,
            cases: self.store.count_by_state().await?,
            directory_departments: self.directory().departments.len(),
            bytes_served: self.stats.bytes_served.load(Ordering::Relaxed),
            pulls_in_progress: self.stats.open_files.load(Ordering::Relaxed),
        }))
    }

    async fn catalog_import(&self, fd: OwnedFd) -> Response {
        let dir = self.directory();
        let parsed = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::from(fd);
            let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
            parse_catalog(&mut reader, &|d| dir.departments.contains_key(d))
        })
        .await
        .map_err(|e| refuse(RefusalKind::Internal, format!("catalog import failed: {e}")))?;
        let rows = parsed.map_err(|e: CatalogError| refuse(RefusalKind::Invalid, e.to_string()))?;
        let summary = self.store.import_catalog(rows).await?;
        info!(
            rows = summary.rows,
            added = summary.added,
            updated = summary.updated,
            "catalog imported"
        );
        Ok(Reply::Imported(summary))
    }

    async fn case_open(&self, actor: &Actor, case_ref: &str, form: RequestForm) -> Response {
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
        };
        self.store.create_case(case, NewEvent::new(actor, "opened", details)).await?;
        let case = self.store.case(r.as_str()).await?.ok_or_else(|| not_found(r.as_str()))?;
        Ok(Reply::Case(Box::new(self.view(&Role::Staff, case).await?)))
    }

    async fn take(
        &self,
        role: &Role,
        actor: &Actor,
        case: &CaseRecord,
        action: Action,
        details: serde_json::Value,
    ) -> Result<EventRecord, Refusal> {
        let facts = case.facts();
        let to = transition(role, action, facts)?;
        Ok(self
            .store
            .transition(&case.case_ref, case.state, to, NewEvent::new(actor, action.event(), details))
            .await?)
    }

    async fn case_approve(self: &Arc<Self>, role: &Role, actor: &Actor, case_ref: &str) -> Response {
        let case = self.visible_case(role, case_ref).await?;
        let facts = case.facts();
        transition(role, Action::Approve, facts)?;
        let files = self.store.case_files(&case.case_ref).await?;
        // The directory may have changed since the case was opened: rule 1 must still hold.
        if let Some(reason) = no_longer_authorized(&self.directory(), case.department.as_deref(), &files) {
            return Err(refuse(RefusalKind::Failed, format!("approval refused: {reason}")));
        }
        self.take(role, actor, &case, Action::Approve, json!({"mode": self.cfg.mode.to_string()}))
            .await?;
        self.start_staging(case.case_ref.clone(), files)?;
        let case = self.visible_case(role, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    /// Enters a staging job for the case in the table `view` and `stop_staging` read.
    fn register_job(&self, case_ref: &str, files: &[CaseFile]) -> Result<Arc<StagingJob>, Refusal> {
        let job = Arc::new(StagingJob {
            progress: staging::Progress::default(),
            total: files.iter().map(|f| f.file.size).sum(),
        });
        let mut jobs = self
            .jobs
            .lock()
            .map_err(|_| refuse(RefusalKind::Internal, "staging table poisoned"))?;
        if jobs.contains_key(case_ref) {
            return Err(refuse(RefusalKind::State, format!("case {case_ref} is being staged already")));
        }
        jobs.insert(case_ref.to_string(), job.clone());
        Ok(job)
    }

    /// Stages (or checks, in direct mode) every file of an approved case in
    /// the background, then exports or blocks it.
    fn start_staging(self: &Arc<Self>, case_ref: String, files: Vec<CaseFile>) -> Result<(), Refusal> {
        let job = self.register_job(&case_ref, &files)?;
        let svc = self.clone();
        tokio::spawn(async move {
            let outcome = svc.stage_files(&case_ref, &files, &job).await;
            // Off the table before the final transition, so the case can be approved again after a block.
            if let Ok(mut jobs) = svc.jobs.lock() {
                jobs.remove(&case_ref);
            }
            if job.progress.cancel.load(Ordering::Relaxed) {
                // Stopped by a close, which takes the case from here.
                let _ = svc.remove_staging(&case_ref).await;
                return;
            }
            svc.end_staging(&case_ref, &files, job.total, outcome).await;
        });
        Ok(())
    }

    /// Exports or blocks a case whose staging ended, under the visibility lock
    /// so no close, reload or other export interleaves.
    async fn end_staging(&self, case_ref: &str, files: &[CaseFile], bytes: u64, outcome: Result<Vec<(Backing, FileIdentity)>, String>) {
        let mut outcome = Some(outcome);
        // A busy or briefly failing database must not leave the case approved
        // for good: retry, waiting without holding the lock.
        for attempt in 0..6u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
            match self.try_end_staging(case_ref, files, bytes, &mut outcome).await {
                Ok(()) => return,
                Err(e) => warn!(case = %case_ref, error = %e, attempt, "recording the end of staging failed"),
            }
        }
        error!(case = %case_ref, "could not record the end of staging; it stays approved until the next start");
    }

    /// One attempt of [`end_staging`](Self::end_staging); `Err` only for a database failure.
    async fn try_end_staging(
        &self,
        case_ref: &str,
        files: &[CaseFile],
        bytes: u64,
        outcome: &mut Option<Result<Vec<(Backing, FileIdentity)>, String>>,
    ) -> Result<(), Refusal> {
        let _visibility = self.visibility.lock().await;
        let case = match self.store.case(case_ref).await? {
            Some(c) if c.state == CaseState::Approved => c,
            Some(c) => {
                // Closed while staging: that already cleaned up; leave nothing behind.
                info!(case = %case_ref, state = %c.state, "staging ended after the case left the approved state");
                let _ = self.remove_staging(case_ref).await;
                return Ok(());
            }
            None => return Ok(()),
        };
        let dir = self.directory();
        let department = case.department.clone().unwrap_or_default();
        let staged = outcome.take().unwrap_or_else(|| Err("staging outcome lost".into()));
        // Kept for another attempt should this one fail to record its result.
        let keep = staged.clone();
        let checked = staged.and_then(|backings| match no_longer_authorized(&dir, case.department.as_deref(), files) {
            Some(reason) => Err(format!("no longer authorized: {reason}")),
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
                self.publish(exported).await;
                info!(case = %case_ref, files = files.len(), bytes, "case exported");
            }
            Err(reason) => {
                let _ = self.remove_staging(case_ref).await;
                let details = json!({"reason": reason});
                if let Err(e) = self.take(&Role::System, &system, &case, Action::Block, details).await {
                    *outcome = Some(keep);
                    return Err(e);
                }
                warn!(case = %case_ref, "staging failed; case blocked");
            }
        }
        Ok(())
    }

    /// Brings every file to a verified state; returns where each file's bytes are.
    async fn stage_files(&self, case_ref: &str, files: &[CaseFile], job: &Arc<StagingJob>) -> Result<Vec<(Backing, FileIdentity)>, String> {
        let mode = self.cfg.mode;
        let staging = self.cfg.staging_dir();
        let root = self.gdb_root.clone();
        let files_owned = files.to_vec();
        let case_ref_owned = case_ref.to_string();
        let job = job.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<(Backing, FileIdentity)>, String> {
            let dir = staging::case_dir(&staging, &case_ref_owned);
            fn expect(f: &CaseFile) -> Expect<'_> {
                Expect {
                    rel: f.file.path.as_str(),
                    size: f.file.size,
                    sha256: &f.file.sha256,
                }
            }
            if mode == Mode::Direct {
                let mut out = Vec::new();
                for f in &files_owned {
                    let id = staging::verify_in_place(&*root, &expect(f), &job.progress).map_err(|e| e.to_string())?;
                    out.push((Backing::Gdb(f.file.path.to_string()), id));
                }
                return Ok(out);
            }
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            // Copy and verify every file first, then make them durable
            // together; only then can the case be published.
            let mut copies = Vec::new();
            for (i, f) in files_owned.iter().enumerate() {
                let dest = staging::staged_file(&staging, &case_ref_owned, i);
                match staging::stage_copy_unsynced(&*root, &expect(f), &dest, &job.progress) {
                    Ok(c) => copies.push((c, dest)),
                    Err(e) => {
                        copies.into_iter().for_each(|(c, _): (staging::StagedCopy, _)| c.discard());
                        return Err(e.to_string());
                    }
                }
            }
            let mut out = Vec::new();
            for (c, dest) in copies {
                out.push((Backing::Staged(dest), c.commit().map_err(|e| e.to_string())?));
            }
            staging::sync_dir(&dir).map_err(|e| format!("cannot sync {}: {e}", dir.display()))?;
            Ok(out)
        })
        .await
        .map_err(|e| format!("staging task failed: {e}"))?
    }

    fn exported_case(
        &self,
        case_ref: &str,
        department: &str,
        files: &[CaseFile],
        backings: Vec<(Backing, FileIdentity)>,
    ) -> Result<ExportedCase, String> {
        let owner_uid = self
            .directory()
            .department(department)
            .map(|d| d.transfer_uid)
            .ok_or_else(|| format!("department {department:?} of case {case_ref} is not in the directory"))?;
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
    async fn publish(&self, case: ExportedCase) {
        let table = self.exports.clone();
        let _ = tokio::task::spawn_blocking(move || table.publish(case)).await;
    }

    async fn withdraw(&self, case_ref: &str) {
        let table = self.exports.clone();
        let case_ref = case_ref.to_string();
        let _ = tokio::task::spawn_blocking(move || table.withdraw(&case_ref)).await;
    }

    async fn remove_staging(&self, case_ref: &str) -> std::io::Result<()> {
        let dir = staging::case_dir(&self.cfg.staging_dir(), case_ref);
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            // A job that stopped a moment ago may still have been creating a file.
            Err(_) => std::fs::remove_dir_all(&dir).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }),
            Ok(()) => Ok(()),
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    }

    /// Stops a running staging job of the case and waits (up to 30 s) until it has let go.
    async fn stop_staging(&self, case_ref: &str) {
        let job = self.jobs.lock().ok().and_then(|j| j.get(case_ref).cloned());
        let Some(job) = job else { return };
        job.progress.cancel.store(true, Ordering::Relaxed);
        for _ in 0..300 {
            if self.jobs.lock().map(|j| !j.contains_key(case_ref)).unwrap_or(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        warn!(case = %case_ref, "staging did not stop within 30 s");
    }

    /// Takes a case to a terminal state: staging stopped, the state change and
    /// the mount change together, then cleanup and the seal.
    async fn end_case(
        &self,
        role: &Role,
        actor: &Actor,
        case_ref: &str,
        action: Action,
        details: serde_json::Value,
    ) -> Result<(), Refusal> {
        // Only a change the rules allow may stop a running staging job.
        let case = self.store.case(case_ref).await?.ok_or_else(|| not_found(case_ref))?;
        let facts = case.facts();
        transition(role, action, facts)?;
        self.stop_staging(case_ref).await;
        {
            let _visibility = self.visibility.lock().await;
            let case = self.store.case(case_ref).await?.ok_or_else(|| not_found(case_ref))?;
            self.take(role, actor, &case, action, details).await?;
            self.withdraw(case_ref).await;
        }
        self.finish(case_ref).await
    }

    async fn case_reject(&self, role: &Role, actor: &Actor, case_ref: &str, reason: &str) -> Response {
        if reason.trim().is_empty() {
            return Err(refuse(RefusalKind::Invalid, "a rejection needs --reason"));
        }
        let case = self.visible_case(role, case_ref).await?;
        self.end_case(role, actor, &case.case_ref, Action::Reject, json!({"reason": reason}))
            .await?;
        let case = self.visible_case(role, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    async fn case_confirm(&self, role: &Role, actor: &Actor, case_ref: &str, sums: &str) -> Response {
        let case = self.visible_case(role, case_ref).await?;
        let facts = case.facts();
        transition(role, Action::Confirm, facts)?;
        let files = self.store.case_files(&case.case_ref).await?;
        let expected: BTreeMap<String, String> = files.iter().map(|f| (f.export_name.clone(), f.file.sha256.clone())).collect();
        let sums_file = receipt::format_sums(files.iter().map(|f| (f.export_name.as_str(), f.file.sha256.as_str())));
        let sums_sha = audit::hex(&sha2::Sha256::digest(sums_file.as_bytes()));
        if let Err(reason) = receipt::check_receipt(sums, &case.case_ref, &expected, SUMS_NAME, &sums_sha) {
            // Recorded only while the case is exported (never after a close), and bounded.
            let recorded: String = reason.chars().take(2000).collect();
            let ev = NewEvent::new(actor, "receipt_refused", json!({"reason": recorded}));
            self.store.append_in(&case.case_ref, &[CaseState::Exported], ev).await?;
            return Err(refuse(RefusalKind::Failed, format!("receipt refused: {reason}")));
        }
        self.take(role, actor, &case, Action::Confirm, json!({"files": files.len()}))
            .await?;
        let case = self.visible_case(role, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    async fn case_close(&self, role: &Role, actor: &Actor, case_ref: &str, force: bool, reason: Option<String>) -> Response {
        let case = self.visible_case(role, case_ref).await?;
        let reason = reason.filter(|r| !r.trim().is_empty());
        if force && reason.is_none() {
            return Err(refuse(RefusalKind::Invalid, "--force needs --reason"));
        }
        let action = if force { Action::ForceClose } else { Action::Close };
        let facts = case.facts();
        transition(role, action, facts)?;
        let (count, head, events) = self.store.log_snapshot(&case.case_ref).await?;
        audit::verify_chain(&case.case_ref, &events, Some((count, &head)))
            .map_err(|e| refuse(RefusalKind::Failed, format!("close refused: the case log is broken: {e}")))?;
        self.end_case(role, actor, &case.case_ref, action, json!({"forced": force, "reason": reason}))
            .await?;
        let case = self.visible_case(role, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    /// After a case reached a terminal state: it leaves the mount, its
    /// staging area is deleted, the log is sealed and written out. Safe to
    /// run again after a crash part-way.
    pub async fn finish(&self, case_ref: &str) -> Result<(), Refusal> {
        // A close and the expiry pass's retry must not both seal the same log.
        let _finishing = self.finishing.lock().await;
        self.withdraw(case_ref).await;
        self.remove_staging(case_ref).await.map_err(|e| {
            refuse(
                RefusalKind::Internal,
                format!("cannot delete the staging area of {case_ref}: {e}; it is retried at the next expiry pass"),
            )
        })?;
        let mut events = self.store.events(case_ref).await?;
        if events.last().map(|e| e.event.as_str()) != Some(audit::SEALED) {
            let head = events.last().map(|e| e.hash.clone()).unwrap_or_default();
            let seal = json!({"records": events.len(), "head": head, "staging_deleted": true});
            let terminal = [CaseState::Closed, CaseState::Rejected, CaseState::Expired];
            let rec = self
                .store
                .append_in(case_ref, &terminal, NewEvent::new(&Actor::system(), audit::SEALED, seal))
                .await?;
            events.push(rec);
        }
        let dir = self.cfg.caselog_dir();
        let case_ref_owned = case_ref.to_string();
        let n = events.len();
        tokio::task::spawn_blocking(move || write_sealed(&dir, &case_ref_owned, &events))
            .await
            .map_err(|e| refuse(RefusalKind::Internal, e.to_string()))?
            .map_err(|e| refuse(RefusalKind::Internal, format!("cannot write the sealed case log: {e}")))?;
        info!(case = %case_ref, records = n, "case log sealed");
        Ok(())
    }

    async fn audit_verify(&self) -> Response {
        let cases = self.store.list_cases(None, None).await?;
        let mut report = AuditReport {
            cases: cases.len() as u64,
            records: 0,
            sealed_files: 0,
            failures: Vec::new(),
        };
        for c in &cases {
            // Head and records from one snapshot: pulls append records all the time.
            let (count, head, events) = self.store.log_snapshot(&c.case_ref).await?;
            report.records += events.len() as u64;
            if let Err(e) = audit::verify_chain(&c.case_ref, &events, Some((count, &head))) {
                report.failures.push(e.to_string());
                continue;
            }
            let path = self.cfg.caselog_dir().join(format!("{}.jsonl", c.case_ref));
            if let Ok(text) = std::fs::read_to_string(&path) {
                report.sealed_files += 1;
                match audit::verify_sealed(&text) {
                    Err(e) => report.failures.push(format!("{}: {e}", path.display())),
                    Ok(_) if text != audit::to_jsonl(&events) => report
                        .failures
                        .push(format!("{}: differs from the case log in the database", path.display())),
                    Ok(_) => {}
                }
            } else if c.state.is_terminal() {
                report
                    .failures
                    .push(format!("case {}: the sealed log {} is missing", c.case_ref, path.display()));
            }
        }
        Ok(Reply::Audit(report))
    }

    /// Expires exported cases older than `case_ttl`, and finishes any case
    /// whose cleanup failed earlier. One case's failure does not stop the others.
    pub async fn expire_due(&self) -> Result<usize, Refusal> {
        // `state_since` is whole seconds, rounded down: expire only once a
        // whole `case_ttl` has surely passed, never early.
        let ttl = self.cfg.case_ttl.as_secs_f64().ceil() as i64;
        let now = unix_now();
        let mut n = 0;
        for c in self.store.list_cases(Some(CaseState::Exported), None).await? {
            if c.state_since.saturating_add(ttl) >= now {
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
    async fn finish_unsealed(&self) {
        let Ok(cases) = self.store.list_cases(None, None).await else {
            return;
        };
        for c in cases.iter().filter(|c| c.state.is_terminal()) {
            let sealed_file = self.cfg.caselog_dir().join(format!("{}.jsonl", c.case_ref));
            let sealed = match self.store.events(&c.case_ref).await {
                Ok(ev) => ev.last().map(|e| e.event.as_str()) == Some(audit::SEALED),
                Err(_) => continue,
            };
            if !sealed || !sealed_file.exists() {
                info!(case = %c.case_ref, "finishing an interrupted close");
                if let Err(e) = self.finish(&c.case_ref).await {
                    warn!(case = %c.case_ref, error = %e, "could not finish the case");
                }
            }
        }
    }

    /// After a start: visible cases come back (at once where their staged
    /// copies are complete, after verification otherwise), interrupted staging
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
                    let department = c.department.clone().unwrap_or_default();
                    match self.staged_copies(&c.case_ref, &files) {
                        Some(backings) => match self.exported_case(&c.case_ref, &department, &files, backings) {
                            Ok(case) => self.publish(case).await,
                            Err(reason) => self.hide(&c.case_ref, &reason).await,
                        },
                        None => {
                            // Direct mode, or staged copies lost: verify again, in the background.
                            let svc = self.clone();
                            let case_ref = c.case_ref.clone();
                            tokio::spawn(async move { svc.restore(&case_ref, &department, &files).await });
                        }
                    }
                }
                _ => {}
            }
        }
        self.finish_unsealed().await;
        self.remove_orphan_staging(&cases).await;
        Ok(())
    }

    /// Staged copies that are all there with their sizes (they were verified
    /// and fsynced before the case was exported); `None` in direct mode.
    fn staged_copies(&self, case_ref: &str, files: &[CaseFile]) -> Option<Vec<(Backing, FileIdentity)>> {
        if self.cfg.mode != Mode::Staged {
            return None;
        }
        let mut backings = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let p = staging::staged_file(&self.cfg.staging_dir(), case_ref, i);
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() && m.len() == f.file.size => backings.push((Backing::Staged(p), FileIdentity::of(&m))),
                _ => return None,
            }
        }
        Some(backings)
    }

    /// Verifies an exported case's files again (direct mode: the GDB file may
    /// have changed while the daemon was down) and publishes it if it is still visible.
    async fn restore(&self, case_ref: &str, department: &str, files: &[CaseFile]) {
        warn!(case = %case_ref, "verifying an exported case again before it comes back");
        // Registered like any staging job, so a close stops it and waits.
        let job = match self.register_job(case_ref, files) {
            Ok(job) => job,
            Err(e) => {
                warn!(case = %case_ref, error = %e, "cannot verify the case again");
                return;
            }
        };
        let outcome = self.stage_files(case_ref, files, &job).await;
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.remove(case_ref);
        }
        let _visibility = self.visibility.lock().await;
        let still_visible = matches!(self.store.case(case_ref).await, Ok(Some(c)) if c.state.is_visible());
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
            Err(reason) => self.hide(case_ref, &reason).await,
        }
    }

    /// Keeps an exported case out of the mount, saying why in its log (the
    /// reason may name GDB paths, so the journal gets only the reference).
    async fn hide(&self, case_ref: &str, reason: &str) {
        self.withdraw(case_ref).await;
        error!(case = %case_ref, "case kept out of the mount (see its case log)");
        let ev = NewEvent::new(&Actor::system(), "hidden", json!({"reason": reason}));
        if let Err(e) = self.store.append_in(case_ref, &VISIBLE, ev).await {
            warn!(case = %case_ref, error = %e, "could not record why the case is hidden");
        }
    }

    async fn remove_orphan_staging(&self, cases: &[CaseRecord]) {
        let live: std::collections::HashSet<&str> = cases
            .iter()
            .filter(|c| matches!(c.state, CaseState::Approved) || c.state.is_visible())
            .map(|c| c.case_ref.as_str())
            .collect();
        let Ok(entries) = std::fs::read_dir(self.cfg.staging_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(name.as_str()) {
                warn!(entry = %name, "deleting a staging area that belongs to no live case");
                let _ = self.remove_staging(&name).await;
            }
        }
    }

    pub async fn status_line(&self) -> String {
        match self.store.count_by_state().await {
            Ok(counts) => {
                let get = |s: CaseState| counts.iter().find(|(x, _)| *x == s).map(|(_, n)| *n).unwrap_or(0);
                format!(
                    "{} exported, {} awaiting approval, {} staging, {} received; {} file(s) open",
                    get(CaseState::Exported),
                    get(CaseState::Open),
                    get(CaseState::Approved),
                    get(CaseState::Received),
                    self.stats.open_files.load(Ordering::Relaxed)
                )
            }
            Err(e) => format!("case register unreadable: {e}"),
        }
    }
}

/// Why rule 1 (same user group as the submitting department) no longer holds
/// for a case under this directory, if it does not.
fn no_longer_authorized(dir: &Directory, department: Option<&str>, files: &[CaseFile]) -> Option<String> {
    let Some(dept) = department.and_then(|d| dir.department(d)) else {
        return Some(format!("department {} is not in the directory", department.unwrap_or("-")));
    };
    files.iter().find(|f| !dir.same_group(&dept.id, &f.file.department)).map(|f| {
        format!(
            "file {} was submitted by {}, which is not in the user group of {}",
            f.file.file_id, f.file.department, dept.id
        )
    })
}

/// What a transfer account may see of a case: not the verification report,
/// which can name other departments' files.
fn redact(case: &mut CaseRecord) {
    case.report.lines.clear();
    case.report.problems.clear();
}

fn write_sealed(dir: &Path, case_ref: &str, events: &[EventRecord]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{case_ref}.jsonl"));
    let tmp = dir.join(format!(".{case_ref}.jsonl.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(audit::to_jsonl(events).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}
