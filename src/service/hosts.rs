//! Several hosts, one register: which host serves a case, heartbeats,
//! following changes made on other hosts, moves and retirement.
//!
//! On a shared register every host may change any case, but only the
//! case's serving host stages it, shows it in its mount, and cleans up and
//! seals it after it ends. Each host follows the register (notifications,
//! and a periodic look for what they missed) and brings its own mount and
//! staging in line with it: [`Service::reconcile`]. On SQLite there is one
//! host, which serves every case.

use super::Service;
use super::request::{not_found, refuse};
use crate::audit::{Actor, EventKind, NewEvent};
use crate::control::proto::{HostView, Refusal, RefusalKind, Reply, Response, Unreachable};
use crate::domain::case::{CaseRecord, CaseState, Role};
use crate::domain::hosts::{HostBeat, HostRecord, Liveness, Serving, directory_matches};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::{info, warn};

/// How often a host looks at the whole register for changes it was not told of.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How often a staging host reports its progress to the register.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long a close on another host waits for the serving host's cleanup.
const SEAL_WAIT: Duration = Duration::from_secs(30);

/// States in which a case has a serving host that works on it.
pub(super) const SERVED: [CaseState; 3] = [CaseState::Approved, CaseState::Exported, CaseState::Received];

impl Service {
    /// Whether this daemon serves the case: on a shared register the case's
    /// serving host, on SQLite every case.
    pub(super) fn serves(&self, case: &CaseRecord) -> bool {
        !self.cfg.shared_register() || case.host.as_deref() == Some(self.cfg.host.as_str())
    }

    /// Whether this daemon may finish (clean up and seal) a case that ended:
    /// its serving host, or any host once that one is retired (or when the
    /// case never had one).
    pub(super) async fn may_finish(&self, case: &CaseRecord) -> bool {
        if self.serves(case) {
            return true;
        }
        let Some(host) = case.host.as_deref() else { return true };
        matches!(self.store.hosts().await, Ok(hosts) if hosts.iter().any(|h| h.beat.name == host && h.retired_at.is_some()))
    }

    /// The host an approval of a case of `department` makes its serving host:
    /// `requested`, else the department's first listed host, else this one.
    pub(super) async fn choose_host(&self, department: Option<&str>, requested: Option<&str>) -> Result<String, Refusal> {
        let me = self.cfg.host.as_str();
        if !self.cfg.shared_register() {
            return match requested {
                Some(h) if h != me => Err(refuse(
                    RefusalKind::Invalid,
                    format!("--host {h}: this register is not shared (SQLite); only {me} serves its cases"),
                )),
                _ => Ok(me.to_string()),
            };
        }
        let listed: Vec<String> = department
            .and_then(|d| {
                self.directory()
                    .department(d)
                    .map(|d| d.hosts.iter().map(|h| h.to_string()).collect())
            })
            .unwrap_or_default();
        let host = match requested {
            Some(h) => h.to_string(),
            None => listed.first().cloned().unwrap_or_else(|| me.to_string()),
        };
        if !listed.is_empty() && !listed.contains(&host) {
            return Err(refuse(
                RefusalKind::Invalid,
                format!(
                    "host {host} may not serve cases of department {}; its hosts are {}",
                    department.unwrap_or_default(),
                    listed.join(", ")
                ),
            ));
        }
        self.usable_host(&host).await?;
        Ok(host)
    }

    /// Refuses a host that is unknown, retired or down.
    async fn usable_host(&self, host: &str) -> Result<(), Refusal> {
        let hosts = self.store.hosts().await?;
        let now = crate::unix::now_secs();
        match hosts.iter().find(|h| h.beat.name == host) {
            // This host, before its first heartbeat.
            None if host == self.cfg.host => Ok(()),
            None => Err(refuse(
                RefusalKind::NotFound,
                format!("no host {host} in the register (see `workcopy hosts`)"),
            )),
            Some(h) => match h.liveness(now) {
                Liveness::Up => Ok(()),
                // This host answers the request: it is up, however late its
                // last heartbeat on a loaded machine.
                Liveness::Down if host == self.cfg.host => Ok(()),
                Liveness::Retired => Err(refuse(RefusalKind::State, format!("host {host} is retired"))),
                Liveness::Down => Err(refuse(
                    RefusalKind::State,
                    format!(
                        "host {host} is down (last heartbeat {} s ago); choose another with --host, see `workcopy hosts`",
                        now.saturating_sub(h.beat.at)
                    ),
                )),
            },
        }
    }

    /// `workcopy hosts`.
    pub(super) async fn hosts_view(&self) -> Response {
        let hosts = self.store.hosts().await?;
        let now = crate::unix::now_secs();
        let matches = directory_matches(&hosts, now);
        let hosts = hosts
            .into_iter()
            .zip(matches)
            .map(|(h, directory_matches)| HostView {
                state: h.liveness(now),
                heartbeat_age_secs: now.saturating_sub(h.beat.at),
                directory_matches,
                host: h,
            })
            .collect();
        Ok(Reply::Hosts { hosts })
    }

    /// `workcopy host retire H --reason TEXT`.
    pub(super) async fn host_retire(&self, host: &str, reason: &str) -> Response {
        if reason.trim().is_empty() {
            return Err(refuse(RefusalKind::Invalid, "host retire needs --reason"));
        }
        if host == self.cfg.host {
            return Err(refuse(
                RefusalKind::Invalid,
                format!("{host} is this host; retire a host from another one (or stop this daemon first)"),
            ));
        }
        if !self.store.retire_host(host, reason).await? {
            return Err(refuse(RefusalKind::NotFound, format!("no host {host} in the register")));
        }
        warn!(host, reason, "host retired");
        Ok(Reply::Retired { host: host.to_string() })
    }

    /// `workcopy case move REF --to H`: records the move; the new host
    /// verifies the files again and serves the case, the old one (now, or
    /// when it comes back) withdraws it and deletes its staging.
    pub(super) async fn case_move(self: &Arc<Self>, actor: &Actor, case_ref: &str, to: &str) -> Response {
        let case = self.visible_case(&Role::Staff, case_ref).await?;
        if !self.cfg.shared_register() {
            return Err(refuse(
                RefusalKind::Invalid,
                "case move needs a shared register (PostgreSQL); this one has one host",
            ));
        }
        if !SERVED.contains(&case.state) {
            return Err(refuse(
                RefusalKind::State,
                format!(
                    "case {case_ref} is {}; only approved, exported or received cases have a host to move from",
                    case.state
                ),
            ));
        }
        if case.host.as_deref() == Some(to) {
            return Err(refuse(RefusalKind::Invalid, format!("case {case_ref} is served by {to} already")));
        }
        let to = self.choose_host(case.department.as_deref(), Some(to)).await?;
        let details = json!({"from": case.host, "to": to});
        self.store
            .move_case(&case.case_ref, &SERVED, &to, NewEvent::new(actor, EventKind::Moved, details))
            .await?;
        info!(case = %case_ref, from = ?case.host, to = %to, "case moved");
        self.state_changed.notify_one();
        self.reconcile_case(&case.case_ref).await;
        let case = self.visible_case(&Role::Staff, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(&Role::Staff, case).await?)))
    }

    /// What this host tells the register of a case it serves.
    pub(super) async fn report_serving(&self, case_ref: &str, published: bool, progress: (u64, u64)) {
        if !self.cfg.shared_register() {
            return;
        }
        let s = Serving {
            case_ref: case_ref.to_string(),
            host: self.cfg.host.clone(),
            published,
            done: progress.0,
            total: progress.1,
            updated_at: crate::unix::now_secs(),
        };
        if let Err(e) = self.store.report_serving(&s).await {
            warn!(case = %case_ref, error = %e, "cannot report the case's serving state");
        }
    }

    /// Reports a staging job's progress until it leaves the job table.
    pub(super) fn report_progress(self: &Arc<Self>, case_ref: String) {
        if !self.cfg.shared_register() {
            return;
        }
        let svc = self.clone();
        tokio::spawn(async move {
            loop {
                let job = crate::sync::lock(&svc.jobs).get(&case_ref).cloned();
                let Some(job) = job else { return };
                let done = job.progress.done.load(Ordering::Relaxed);
                svc.report_serving(&case_ref, false, (done, job.total)).await;
                tokio::time::sleep(PROGRESS_EVERY).await;
            }
        });
    }

    /// Whether and how far another host serves a case, for `case show` on a
    /// host that does not: (in its mount, staging progress).
    pub(super) async fn remote_serving(&self, case: &CaseRecord) -> (bool, Option<(u64, u64)>) {
        let Ok(Some(s)) = self.store.serving(&case.case_ref).await else {
            return (false, None);
        };
        if Some(s.host.as_str()) != case.host.as_deref() {
            // The report of the host the case moved away from.
            return (false, None);
        }
        let staging = (case.state == CaseState::Approved && s.total > 0 && !s.published).then_some((s.done, s.total));
        (s.published && case.state.is_visible(), staging)
    }

    /// After a close, reject or expiry recorded on a host that does not serve
    /// the case: waits for the serving host to clean up and seal it.
    pub(super) async fn wait_for_seal(&self, case_ref: &str, host: &str) -> Result<(), Refusal> {
        let deadline = tokio::time::Instant::now() + SEAL_WAIT;
        loop {
            let case = self.store.case(case_ref).await?.ok_or_else(|| not_found(case_ref))?;
            let last = self.last_record(case_ref, case.event_count).await?;
            if last.and_then(|e| e.kind()) == Some(EventKind::Sealed) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(refuse(
                    RefusalKind::State,
                    format!(
                        "case {case_ref} is {} (recorded), but its serving host {host} has not cleaned it up and sealed its log yet; \
                         it will when it is up (see `workcopy hosts`), or retire it with `workcopy host retire {host} --reason …`",
                        case.state
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Records this host's heartbeat every `heartbeat`, and whether the
    /// database answers (for `status`).
    pub async fn run_heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let beat = self.beat();
            match self.store.heartbeat(&beat).await {
                Ok(()) => self.database_answered(),
                Err(e) => self.database_failed(&e.to_string()),
            }
        }
    }

    fn beat(&self) -> HostBeat {
        HostBeat {
            name: self.cfg.host.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            mode: self.cfg.mode.to_string(),
            read_path: match *crate::sync::read(&self.read_path) {
                Some(crate::export::ReadPath::Passthrough) => "passthrough",
                Some(_) => "user space",
                None => "unmounted",
            }
            .to_string(),
            directory_sha256: crate::sync::read(&self.directory_digest).clone(),
            started_at: self.started.1.clone(),
            at: crate::unix::now_secs(),
            every_secs: self.cfg.heartbeat.as_secs().max(1) as i64,
            cases_served: self.exports.all().len() as u64,
        }
    }

    pub(super) fn database_answered(&self) {
        if crate::sync::lock(&self.unreachable).take().is_some() {
            info!("the database answers again");
        }
    }

    pub(super) fn database_failed(&self, error: &str) {
        let mut u = crate::sync::lock(&self.unreachable);
        if u.is_none() {
            warn!(
                error,
                "the database does not answer; exported cases stay in the mount, opens that cannot be recorded fail"
            );
        }
        let since = u.as_ref().map(|u| u.since.clone()).unwrap_or_else(crate::audit::now_rfc3339);
        *u = Some(Unreachable {
            since,
            error: error.to_string(),
        });
    }

    pub(super) fn unreachable(&self) -> Option<Unreachable> {
        crate::sync::lock(&self.unreachable).clone()
    }

    /// Follows the register (shared registers only): after every change
    /// notification and every [`RECONCILE_EVERY`], brings this host's
    /// mount and staging in line with it.
    pub async fn run_reconciler(self: Arc<Self>) {
        if !self.cfg.shared_register() {
            return;
        }
        let mut changes = self.store.case_changes();
        loop {
            self.reconcile().await;
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        }
    }

    /// One look at the register: every case that is served, every case that
    /// ended and is not sealed, and every case this host has something of.
    pub(super) async fn reconcile(self: &Arc<Self>) {
        let mut refs: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for state in SERVED {
            match self.store.list_cases(Some(state), None).await {
                Ok(cases) => refs.extend(cases.into_iter().map(|c| c.case_ref)),
                Err(e) => {
                    self.database_failed(&e.to_string());
                    return;
                }
            }
        }
        match self.store.unsealed_cases().await {
            Ok(cases) => refs.extend(cases),
            Err(e) => {
                self.database_failed(&e.to_string());
                return;
            }
        }
        refs.extend(self.exports.all().iter().map(|c| c.case_ref.clone()));
        refs.extend(crate::sync::lock(&self.jobs).keys().cloned());
        for r in refs {
            self.reconcile_case(&r).await;
        }
    }

    /// Brings this host's part in one case in line with the register.
    pub(super) async fn reconcile_case(self: &Arc<Self>, case_ref: &str) {
        if !self.cfg.shared_register() {
            return;
        }
        let case = match self.store.case(case_ref).await {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(e) => {
                self.database_failed(&e.to_string());
                return;
            }
        };
        let mine = self.serves(&case);
        let published = self.exports.get(case_ref).is_some();
        let staging = crate::sync::lock(&self.jobs).contains_key(case_ref);
        match case.state {
            CaseState::Approved | CaseState::Exported | CaseState::Received
                if !mine && (published || staging || self.has_staging(case_ref)) =>
            {
                info!(case = %case_ref, host = ?case.host, "case served by another host now; withdrawing it here");
                self.withdraw(case_ref).await;
                self.stop_staging(case_ref).await;
                let _ = self.remove_staging(case_ref).await;
            }
            CaseState::Approved if mine && !staging => {
                // Under the visibility lock, so a staging job that just ended
                // (and is recording its end) is not started again.
                let _visibility = self.visibility.lock().await;
                let still = matches!(self.store.case(case_ref).await, Ok(Some(c)) if c.state == CaseState::Approved && self.serves(&c));
                let staging = crate::sync::lock(&self.jobs).contains_key(case_ref);
                if still && !staging {
                    match self.store.case_files(case_ref).await {
                        Ok(files) => {
                            info!(case = %case_ref, "staging a case approved for this host");
                            if let Err(e) = self.start_staging(case_ref.to_string(), files) {
                                warn!(case = %case_ref, error = %e, "cannot start staging");
                            }
                        }
                        Err(e) => warn!(case = %case_ref, error = %e, "cannot read the case's files"),
                    }
                }
            }
            s if mine && s.is_visible() && !published && !staging => {
                // Kept out of the mount on purpose (its log's last record
                // says why): not verified again every pass, only after a
                // move or a restart.
                if matches!(self.last_record(case_ref, case.event_count).await,
                    Ok(Some(e)) if e.kind() == Some(EventKind::Hidden))
                {
                    return;
                }
                let _visibility = self.visibility.lock().await;
                if self.exports.get(case_ref).is_some() || crate::sync::lock(&self.jobs).contains_key(case_ref) {
                    return;
                }
                drop(_visibility);
                let files = match self.store.case_files(case_ref).await {
                    Ok(f) => f,
                    Err(e) => return warn!(case = %case_ref, error = %e, "cannot read the case's files"),
                };
                info!(case = %case_ref, "serving a case moved to this host");
                let svc = self.clone();
                let case_ref = case_ref.to_string();
                let department = case.department.clone().unwrap_or_default();
                tokio::spawn(async move { svc.restore(&case_ref, &department, &files).await });
            }
            s if s.is_terminal() => {
                if self.may_finish(&case).await {
                    let sealed = matches!(self.last_record(case_ref, case.event_count).await,
                        Ok(Some(e)) if e.kind() == Some(EventKind::Sealed));
                    if !sealed || published || self.has_staging(case_ref) {
                        self.stop_staging(case_ref).await;
                        if let Err(e) = self.finish(case_ref).await {
                            warn!(case = %case_ref, error = %e, "cannot finish the case");
                        }
                    }
                } else if published || staging || self.has_staging(case_ref) {
                    self.withdraw(case_ref).await;
                    self.stop_staging(case_ref).await;
                    let _ = self.remove_staging(case_ref).await;
                }
            }
            _ => {}
        }
    }

    fn has_staging(&self, case_ref: &str) -> bool {
        crate::staging::case_dir(&self.cfg.staging_dir(), case_ref).exists()
    }

    /// Hosts, for the seal of a case finished without its retired host.
    pub(super) async fn retired_host_of(&self, case: &CaseRecord) -> Option<HostRecord> {
        let host = case.host.as_deref()?;
        if self.serves(case) {
            return None;
        }
        self.store
            .hosts()
            .await
            .ok()?
            .into_iter()
            .find(|h| h.beat.name == host && h.retired_at.is_some())
    }
}
