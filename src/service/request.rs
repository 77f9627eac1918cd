//! The request entry: who the caller is, what they may ask, and how refusals are shaped.

use super::cases::redact;
use super::{Caller, Service};
use crate::audit::Actor;
use crate::control::proto::{Refusal, RefusalKind, Reply, Request, Response};
use crate::db::StoreError;
use crate::domain::case::CaseRecord;
use crate::domain::case::{Role, TransitionError};
use crate::names::CaseRef;
use crate::sync::Cancel;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use tracing::{error, info, warn};

pub(super) fn refuse(kind: RefusalKind, message: impl Into<String>) -> Refusal {
    Refusal::new(kind, message)
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        match e {
            StoreError::Exists(_) | StoreError::Conflict { .. } | StoreError::Busy(_) => refuse(RefusalKind::State, e.to_string()),
            StoreError::TooManyRequests { .. } | StoreError::RequestsToday { .. } => refuse(RefusalKind::Limit, e.to_string()),
            StoreError::NoCase(_) => refuse(RefusalKind::NotFound, e.to_string()),
            StoreError::Catalog(_) => refuse(RefusalKind::Invalid, e.to_string()),
            StoreError::Db(_)
            | StoreError::Migrate(_)
            | StoreError::Unsupported(_)
            | StoreError::CatalogRow(_)
            | StoreError::Corrupt(..) => {
                error!(error = %e, "store failure");
                refuse(RefusalKind::Internal, e.to_string())
            }
        }
    }
}

impl From<TransitionError> for Refusal {
    fn from(e: TransitionError) -> Refusal {
        let kind = match e {
            TransitionError::NotStaff(_) | TransitionError::NotOwner(_) | TransitionError::NotRequester(_) => RefusalKind::Denied,
            TransitionError::WrongState { .. } => RefusalKind::State,
            TransitionError::NotVerified => RefusalKind::Failed,
        };
        refuse(kind, e.to_string())
    }
}

pub(super) fn parse_ref(s: &str) -> Result<CaseRef, Refusal> {
    CaseRef::parse(s).map_err(|e| refuse(RefusalKind::Invalid, e.to_string()))
}

pub(super) fn not_found(case_ref: &str) -> Refusal {
    refuse(RefusalKind::NotFound, format!("no case {case_ref}"))
}

/// The requests a requester may make; any other is refused.
fn for_requesters(req: &Request) -> bool {
    matches!(
        req,
        Request::RequestOpen { .. }
            | Request::RequestList
            | Request::RequestShow { .. }
            | Request::RequestCancel { .. }
            | Request::CatalogSearch { .. }
    )
}

impl Service {
    /// Who the caller is: staff (root or `staff_group`), else a department's
    /// transfer account, else a directory user whose `account` it is (one
    /// uid has one role; the directory refuses a uid in both), else nobody.
    pub fn role(&self, c: &Caller) -> Role {
        if crate::domain::authz::is_staff(c.uid, c.gid, &c.groups, self.staff_gid) {
            return Role::Staff;
        }
        let dir = self.directory();
        if let Some(d) = dir.department_of_uid(c.uid) {
            return Role::Transfer {
                department: d.id.to_string(),
            };
        }
        match dir.requester_of_uid(c.uid) {
            Some(r) => Role::Requester {
                user: r.user.to_string(),
                department: r.department.to_string(),
            },
            None => Role::Nobody,
        }
    }

    /// The answer to a caller who is neither staff, a transfer account nor a requester.
    pub fn refuse_nobody(&self, caller: &Caller) -> Refusal {
        warn!(
            uid = caller.uid,
            "refused: caller is neither staff nor a transfer account nor a requester"
        );
        refuse(
            RefusalKind::Denied,
            format!(
                "permission denied: uid {} is neither workcopy staff nor a department's transfer account, nor a directory user's account \
                 (to request files yourself, ask workcopy staff to add your account to the directory)",
                caller.uid
            ),
        )
    }

    /// Answers one request. `cancel` is set when the client hangs up; work
    /// that may run long (a catalog import) stops then.
    pub async fn handle(self: &Arc<Self>, caller: &Caller, req: Request, fds: Vec<OwnedFd>, cancel: &Cancel) -> Response {
        let role = self.role(caller);
        let op = req.name();
        // Every line about a case names it (`journalctl -g 'case=REF'`).
        let case_ref = req.case_ref().map(str::to_owned);
        let case = case_ref.as_deref().map(tracing::field::display);
        if role == Role::Nobody {
            let refusal = self.refuse_nobody(caller);
            self.counters.refused(refusal.kind);
            return Err(refusal);
        }
        let actor = self.actor(caller.uid);
        let result = self.dispatch(&role, &actor, req, fds, cancel).await;
        match &result {
            Ok(_) => info!(op, case, uid = caller.uid, "done"),
            Err(r) => {
                info!(op, case, uid = caller.uid, kind = ?r.kind, "refused");
                self.counters.refused(r.kind);
            }
        }
        result
    }

    pub(super) async fn dispatch(
        self: &Arc<Self>,
        role: &Role,
        actor: &Actor,
        req: Request,
        fds: Vec<OwnedFd>,
        cancel: &Cancel,
    ) -> Response {
        // A requester may use self-service and nothing else: every other
        // request, known now or added later, is refused before it is looked at.
        if let Role::Requester { user, .. } = role {
            if !for_requesters(&req) {
                return Err(refuse(
                    RefusalKind::Denied,
                    format!(
                        "permission denied: {user} may use `workcopy request open|list|show|cancel` and `workcopy catalog search` only, not `{}`",
                        req.name()
                    ),
                ));
            }
        }
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
                self.catalog_import(fd, cancel.clone()).await
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
            Request::CaseApprove { case_ref, host } => self.case_approve(role, actor, &case_ref, host.as_deref()).await,
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
            Request::CaseLog { case_ref, since, limit } => {
                staff_only("case log")?;
                self.case_log(&case_ref, since, limit).await
            }
            Request::AuditVerify => {
                staff_only("audit verify")?;
                self.audit_verify().await
            }
            Request::RequestOpen { case_ref, descriptors } => self.request_open(role, actor, case_ref, descriptors).await,
            Request::RequestList => self.request_list(role).await,
            Request::RequestShow { case_ref } => self.request_show(role, &case_ref).await,
            Request::RequestCancel { case_ref } => self.request_cancel(role, actor, &case_ref).await,
            Request::CatalogSearch { pattern, sample, since } => self.catalog_search(role, pattern, sample, since).await,
            Request::Metrics => {
                staff_only("metrics")?;
                self.metrics().await
            }
            // The control server streams the feed itself (`Service::open_feed`).
            Request::Events { .. } => {
                staff_only("events")?;
                Err(refuse(
                    RefusalKind::Invalid,
                    "the feed is a streamed reply; read it with `workcopy events`",
                ))
            }
            Request::CaseMove { case_ref, to } => {
                staff_only("case move")?;
                self.case_move(actor, &case_ref, &to).await
            }
            Request::Hosts => {
                staff_only("hosts")?;
                self.hosts_view().await
            }
            Request::HostRetire { host, reason } => {
                staff_only("host retire")?;
                self.host_retire(&host, &reason).await
            }
            Request::Reload => {
                staff_only("reload")?;
                self.reload_directory().await.map_err(|e| {
                    refuse(
                        RefusalKind::Invalid,
                        format!("directory refused; the previous directory stays in force: {e}"),
                    )
                })?;
                Ok(Reply::Reloaded {
                    departments: self.directory().departments.len(),
                })
            }
        }
    }

    /// The case, if the caller may know of it (others get the same answer as
    /// for no case). A requester knows only their own requests (`request show`).
    pub(super) async fn visible_case(&self, role: &Role, case_ref: &str) -> Result<CaseRecord, Refusal> {
        let r = parse_ref(case_ref)?;
        let case = self.store.case(r.as_str()).await?.ok_or_else(|| not_found(r.as_str()))?;
        match role {
            Role::Staff | Role::System => Ok(case),
            Role::Transfer { department } if case.department.as_deref() == Some(department.as_str()) => Ok(case),
            _ => Err(not_found(r.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A requester may search and request; everything else is refused
    /// before it is looked at (a request added later too: the list is of
    /// what is allowed).
    #[test]
    fn requesters_may_make_self_service_requests_only() {
        let allowed = [
            Request::RequestOpen {
                case_ref: None,
                descriptors: vec!["F1".into()],
            },
            Request::RequestList,
            Request::RequestShow { case_ref: "R".into() },
            Request::RequestCancel { case_ref: "R".into() },
            Request::CatalogSearch {
                pattern: None,
                sample: None,
                since: None,
            },
        ];
        assert!(allowed.iter().all(for_requesters));
        let refused = [
            Request::Status,
            Request::CatalogImport,
            Request::CatalogShow { descriptor: "F1".into() },
            Request::CaseApprove {
                case_ref: "R".into(),
                host: None,
            },
            Request::CaseReject {
                case_ref: "R".into(),
                reason: "x".into(),
            },
            Request::CaseConfirm {
                case_ref: "R".into(),
                sha256sums: String::new(),
            },
            Request::CaseClose {
                case_ref: "R".into(),
                force: true,
                reason: None,
            },
            Request::CaseList { state: None },
            Request::CaseShow { case_ref: "R".into() },
            Request::CaseLog {
                case_ref: "R".into(),
                since: None,
                limit: None,
            },
            Request::AuditVerify,
            Request::Reload,
            Request::Hosts,
            Request::Metrics,
            Request::Events { since: 0, follow: true },
        ];
        assert!(!refused.iter().any(for_requesters));
    }
}
