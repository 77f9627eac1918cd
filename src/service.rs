//! The daemon's operations: one handler per control request, the staging
//! jobs, expiry, and recovery after a restart. Rules come from `domain`,
//! storage from `db`, visibility goes to the export table.

use crate::audit::{self, Actor, EventRecord, NewEvent};
use crate::config::{Config, Mode};
use crate::control::proto::{AuditReport, CaseView, Refusal, RefusalKind, Reply, Request, Response, StatusReply};
use crate::db::{CaseRecord, NewCase, Store, StoreError};
use crate::domain::case::{Action, CaseFacts, CaseState, Role, TransitionError, transition};
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
use tracing::{error, info, warn};

/// Who is on the other end of a request, from the kernel's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub groups: Vec<u32>,
}

/// Progress of a running staging job.
#[derive(Debug, Default)]
pub struct StagingJob {
    pub done: AtomicU64,
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
        let actor = Actor {
            name: self.names.name(a.uid),
            uid: a.uid,
        };
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
        let actor = Actor {
            name: self.names.name(a.uid),
            uid: a.uid,
        };
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
    /// What `status` says about the mount; set by the daemon once it mounted.
    pub mount_info: RwLock<Option<(bool, String)>>,
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
            mount_info: RwLock::new(None),
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
    pub fn reload_directory(&self) -> Result<(), String> {
        match Directory::load(&self.cfg.directory, &crate::unix::resolve_user) {
            Ok(d) => {
                let n = d.departments.len();
                let d = Arc::new(d);
                if let Ok(mut cur) = self.directory.write() {
                    *cur = d.clone();
                }
                // A department whose transfer account changed (or that left the
                // directory) must not keep the old account's access: exported
                // cases get their new owner (root only, for a removed department).
                for case in self.exports.all() {
                    let owner = d.department(&case.department).map(|x| x.transfer_uid).unwrap_or(0);
                    if owner != case.owner_uid {
                        info!(case = %case.case_ref, "case directory owner follows the reloaded directory");
                        let mut updated = (*case).clone();
                        updated.owner_uid = owner;
                        self.exports.publish(updated);
                    }
                }
                info!(departments = n, "directory reloaded");
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "directory reload refused; the previous directory stays in force");
                Err(e.to_string())
            }
        }
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

    pub fn actor(&self, uid: u32) -> Actor {
        Actor {
            name: self.names.name(uid),
            uid,
        }
    }

    pub async fn handle(self: &Arc<Self>, caller: &Caller, req: Request, fds: Vec<OwnedFd>) -> Response {
        let role = self.role(caller);
        let op = req.name();
        if role == Role::Nobody {
            warn!(op, uid = caller.uid, "refused: caller is neither staff nor a transfer account");
            return Err(refuse(
                RefusalKind::Denied,
                format!(
                    "permission denied: uid {} is neither workcopy staff nor a department's transfer account",
                    caller.uid
                ),
            ));
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
            .and_then(|j| j.get(&case.case_ref).map(|j| (j.done.load(Ordering::Relaxed), j.total)));
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
        let (mounted, read_path) = self
            .mount_info
            .read()
            .ok()
            .and_then(|m| m.clone())
            .unwrap_or((false, "none (not mounted)".into()));
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
        let facts = CaseFacts {
            state: case.state,
            verified: case.verified,
            department: case.department.as_deref(),
        };
        let to = transition(role, action, facts)?;
        Ok(self
            .store
            .transition(&case.case_ref, case.state, to, NewEvent::new(actor, action.event(), details))
            .await?)
    }

    async fn case_approve(self: &Arc<Self>, role: &Role, actor: &Actor, case_ref: &str) -> Response {
        let case = self.visible_case(role, case_ref).await?;
        self.take(role, actor, &case, Action::Approve, json!({"mode": self.cfg.mode.to_string()}))
            .await?;
        self.start_staging(case.case_ref.clone(), case.department.clone().unwrap_or_default())
            .await;
        let case = self.visible_case(role, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    /// Stages (or checks, in direct mode) every file of an approved case in
    /// the background, then exports or blocks it.
    async fn start_staging(self: &Arc<Self>, case_ref: String, department: String) {
        let files = match self.store.case_files(&case_ref).await {
            Ok(f) => f,
            Err(e) => {
                error!(case = %case_ref, error = %e, "cannot read the case's files to stage them");
                return;
            }
        };
        let job = Arc::new(StagingJob {
            done: AtomicU64::new(0),
            total: files.iter().map(|f| f.file.size).sum(),
        });
        if let Ok(mut jobs) = self.jobs.lock() {
            if jobs.contains_key(&case_ref) {
                return;
            }
            jobs.insert(case_ref.clone(), job.clone());
        }
        let svc = self.clone();
        tokio::spawn(async move {
            let outcome = svc.stage_files(&case_ref, &department, &files, &job).await;
            let system = Actor::system();
            let result = match outcome {
                Ok(exported) => {
                    let details = json!({"files": files.len(), "bytes": job.total, "mode": svc.cfg.mode.to_string()});
                    let r = svc
                        .store
                        .transition(
                            &case_ref,
                            CaseState::Approved,
                            CaseState::Exported,
                            NewEvent::new(&system, "exported", details),
                        )
                        .await;
                    if r.is_ok() {
                        svc.exports.publish(exported);
                        info!(case = %case_ref, files = files.len(), bytes = job.total, "case exported");
                    }
                    r
                }
                Err(reason) => {
                    let _ = std::fs::remove_dir_all(staging::case_dir(&svc.cfg.staging_dir(), &case_ref));
                    svc.store
                        .transition(
                            &case_ref,
                            CaseState::Approved,
                            CaseState::Blocked,
                            NewEvent::new(&system, "blocked", json!({"reason": reason})),
                        )
                        .await
                }
            };
            match result {
                Ok(rec) if rec.event == "blocked" => warn!(case = %case_ref, "staging failed; case blocked"),
                Ok(_) => {}
                // Closed or rejected while staging: the close already cleaned up.
                Err(StoreError::Conflict { actual, .. }) if actual.is_terminal() => {
                    info!(case = %case_ref, state = %actual, "staging ended after the case was closed");
                    let _ = std::fs::remove_dir_all(staging::case_dir(&svc.cfg.staging_dir(), &case_ref));
                }
                Err(e) => error!(case = %case_ref, error = %e, "could not record the end of staging"),
            }
            if let Ok(mut jobs) = svc.jobs.lock() {
                jobs.remove(&case_ref);
            }
        });
    }

    /// Brings every file to a verified state; returns what to publish.
    async fn stage_files(
        &self,
        case_ref: &str,
        department: &str,
        files: &[CaseFile],
        job: &Arc<StagingJob>,
    ) -> Result<ExportedCase, String> {
        let mode = self.cfg.mode;
        let staging = self.cfg.staging_dir();
        let root = self.gdb_root.clone();
        let files_owned = files.to_vec();
        let case_ref_owned = case_ref.to_string();
        let job = job.clone();
        let backings = tokio::task::spawn_blocking(move || -> Result<Vec<(Backing, FileIdentity)>, String> {
            let dir = staging::case_dir(&staging, &case_ref_owned);
            if mode == Mode::Staged {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let mut out = Vec::new();
            for (i, f) in files_owned.iter().enumerate() {
                let e = Expect {
                    rel: f.file.path.as_str(),
                    size: f.file.size,
                    sha256: &f.file.sha256,
                };
                match mode {
                    Mode::Staged => {
                        let dest = staging::staged_file(&staging, &case_ref_owned, i);
                        let id = staging::stage_copy(&*root, &e, &dest, &job.done).map_err(|e| e.to_string())?;
                        out.push((Backing::Staged(dest), id));
                    }
                    Mode::Direct => {
                        let id = staging::verify_in_place(&*root, &e, &job.done).map_err(|e| e.to_string())?;
                        out.push((Backing::Gdb(f.file.path.to_string()), id));
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| format!("staging task failed: {e}"))??;
        self.exported_case(case_ref, department, files, backings)
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

    async fn case_reject(&self, role: &Role, actor: &Actor, case_ref: &str, reason: &str) -> Response {
        if reason.trim().is_empty() {
            return Err(refuse(RefusalKind::Invalid, "a rejection needs --reason"));
        }
        let case = self.visible_case(role, case_ref).await?;
        self.take(role, actor, &case, Action::Reject, json!({"reason": reason})).await?;
        self.finish(&case.case_ref).await?;
        let case = self.visible_case(role, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    async fn case_confirm(&self, role: &Role, actor: &Actor, case_ref: &str, sums: &str) -> Response {
        let case = self.visible_case(role, case_ref).await?;
        let facts = CaseFacts {
            state: case.state,
            verified: case.verified,
            department: case.department.as_deref(),
        };
        transition(role, Action::Confirm, facts)?;
        let files = self.store.case_files(&case.case_ref).await?;
        let expected: BTreeMap<String, String> = files.iter().map(|f| (f.export_name.clone(), f.file.sha256.clone())).collect();
        let sums_file = receipt::format_sums(files.iter().map(|f| (f.export_name.as_str(), f.file.sha256.as_str())));
        let sums_sha = audit::hex(&sha2::Sha256::digest(sums_file.as_bytes()));
        if let Err(reason) = receipt::check_receipt(sums, &case.case_ref, &expected, SUMS_NAME, &sums_sha) {
            self.store
                .append(&case.case_ref, NewEvent::new(actor, "receipt_refused", json!({"reason": reason})))
                .await?;
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
        let facts = CaseFacts {
            state: case.state,
            verified: case.verified,
            department: case.department.as_deref(),
        };
        transition(role, action, facts)?;
        let events = self.store.events(&case.case_ref).await?;
        audit::verify_chain(&case.case_ref, &events, Some((case.event_count, &case.head_hash)))
            .map_err(|e| refuse(RefusalKind::Failed, format!("close refused: the case log is broken: {e}")))?;
        self.take(role, actor, &case, action, json!({"forced": force, "reason": reason}))
            .await?;
        self.finish(&case.case_ref).await?;
        let case = self.visible_case(role, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    /// After a case reached a terminal state: it leaves the mount, its
    /// staging area is deleted, the log is sealed and written out. Safe to
    /// run again after a crash part-way.
    pub async fn finish(&self, case_ref: &str) -> Result<(), Refusal> {
        self.exports.withdraw(case_ref);
        let dir = staging::case_dir(&self.cfg.staging_dir(), case_ref);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(refuse(
                    RefusalKind::Internal,
                    format!("cannot delete the staging area {}: {e}", dir.display()),
                ));
            }
        }
        let mut events = self.store.events(case_ref).await?;
        if events.last().map(|e| e.event.as_str()) != Some(audit::SEALED) {
            let head = events.last().map(|e| e.hash.clone()).unwrap_or_default();
            let seal = json!({"records": events.len(), "head": head, "staging_deleted": true});
            let rec = self
                .store
                .append(case_ref, NewEvent::new(&Actor::system(), audit::SEALED, seal))
                .await?;
            events.push(rec);
        }
        write_sealed(&self.cfg.caselog_dir(), case_ref, &events)
            .map_err(|e| refuse(RefusalKind::Internal, format!("cannot write the sealed case log: {e}")))?;
        info!(case = %case_ref, records = events.len(), "case log sealed");
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
            let events = self.store.events(&c.case_ref).await?;
            report.records += events.len() as u64;
            if let Err(e) = audit::verify_chain(&c.case_ref, &events, Some((c.event_count, &c.head_hash))) {
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

    /// Expires exported cases older than `case_ttl`.
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
            match self.take(&Role::System, &Actor::system(), &c, Action::Expire, details).await {
                Ok(_) => {
                    self.finish(&c.case_ref).await?;
                    info!(case = %c.case_ref, "case expired");
                    n += 1;
                }
                Err(e) => warn!(case = %c.case_ref, error = %e, "could not expire case"),
            }
        }
        Ok(n)
    }

    /// After a start: visible cases come back, interrupted staging restarts,
    /// terminal cases whose cleanup was cut short are finished.
    pub async fn recover(self: &Arc<Self>) -> Result<(), Refusal> {
        for c in self.store.list_cases(None, None).await? {
            match c.state {
                CaseState::Approved => {
                    info!(case = %c.case_ref, "restarting interrupted staging");
                    self.start_staging(c.case_ref.clone(), c.department.clone().unwrap_or_default())
                        .await;
                }
                s if s.is_visible() => {
                    let files = self.store.case_files(&c.case_ref).await?;
                    match self.restore(&c.case_ref, c.department.as_deref().unwrap_or_default(), &files).await {
                        Ok(case) => self.exports.publish(case),
                        Err(reason) => {
                            // The reason names GDB paths: it goes to the case log, not the journal.
                            error!(case = %c.case_ref, "cannot restore exported case; it stays hidden (see its case log)");
                            let ev = NewEvent::new(&Actor::system(), "restore_failed", json!({"reason": reason}));
                            self.store.append(&c.case_ref, ev).await?;
                        }
                    }
                }
                s if s.is_terminal() => {
                    let events = self.store.events(&c.case_ref).await?;
                    let sealed_file = self.cfg.caselog_dir().join(format!("{}.jsonl", c.case_ref));
                    if events.last().map(|e| e.event.as_str()) != Some(audit::SEALED) || !sealed_file.exists() {
                        info!(case = %c.case_ref, "finishing interrupted close");
                        self.finish(&c.case_ref).await?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Rebuilds an exported case after a restart: staged copies must still be
    /// there with their size (they were verified and fsynced before export);
    /// a missing copy is staged and verified again.
    async fn restore(&self, case_ref: &str, department: &str, files: &[CaseFile]) -> Result<ExportedCase, String> {
        if self.cfg.mode == Mode::Staged {
            let mut backings = Vec::new();
            for (i, f) in files.iter().enumerate() {
                let p = staging::staged_file(&self.cfg.staging_dir(), case_ref, i);
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_file() && m.len() == f.file.size => backings.push((Backing::Staged(p), FileIdentity::of(&m))),
                    _ => break,
                }
            }
            if backings.len() == files.len() {
                return self.exported_case(case_ref, department, files, backings);
            }
            warn!(case = %case_ref, "staged copies are missing; staging again");
        }
        // Direct mode: the GDB file may have changed while the daemon was down,
        // so its bytes are verified again before the case becomes visible.
        let job = Arc::new(StagingJob {
            done: AtomicU64::new(0),
            total: files.iter().map(|f| f.file.size).sum(),
        });
        self.stage_files(case_ref, department, files, &job).await
    }

    /// One line for systemd's STATUS=.
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

    pub fn caselog_path(&self, case_ref: &str) -> std::path::PathBuf {
        self.cfg.caselog_dir().join(format!("{case_ref}.jsonl"))
    }
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
