//! Self-service: a requester's own requests (`request open|list|show|cancel`)
//! and `catalog search`, under their department's `self_service` policy.
//!
//! A requester finds and requests only the files their user group's
//! departments submitted. Both questions go to the store narrowed to those
//! departments, so what search hides, a request cannot resolve either: it
//! reads as not found, naming nothing of another group.

use super::Service;
use super::request::{parse_ref, refuse};
use crate::audit::{Actor, EventKind, NewEvent};
use crate::control::proto::{Refusal, RefusalKind, Reply, Response};
use crate::db::{RequestLimits, Store, StoreError};
use crate::domain::case::{Action, CaseRecord, NewCase, Role};
use crate::domain::catalog::CatalogFile;
use crate::domain::directory::{Directory, SelfService};
use crate::domain::search::{CatalogQuery, FoundFile, Glob, MAX_RESULTS, SearchHit, SearchKey, check_sample, parse_since};
use crate::domain::verify::{CaseFile, Report, RequestForm, verify_request};
use crate::names::CaseRef;
use serde_json::json;
use std::sync::Arc;
use tracing::{info, warn};

/// Matches a descriptor may have among a group's files before it is ambiguous anyway.
const RESOLVE_LIMIT: u32 = 10;
/// Candidates a search reads a page at a time.
const SEARCH_PAGE: u32 = MAX_RESULTS as u32 + 1;
/// Candidates one search examines at most (they are its matches unless the
/// backend's `LIKE` ignores case).
const SEARCH_EXAMINED: usize = 20 * SEARCH_PAGE as usize;
/// Generated references tried before giving up.
const REF_ATTEMPTS: usize = 8;
/// Open requests a limit refusal names.
const NAMED_OPEN: usize = 10;
/// Requests `request list` shows: the most recent.
pub(super) const LISTED: u32 = 500;
/// The longest descriptor a request takes (no GDB path is longer).
const MAX_DESCRIPTOR: usize = 4096;

/// Requesters' searches run two at a time, whoever asks: a search that
/// matches little reads a whole name index, and requesters (who may be
/// hostile) must leave the store's readers to staff and the mount.
static REQUESTER_SEARCHES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Who a requester is, for the handlers below.
struct Me<'a> {
    user: &'a str,
    department: &'a str,
}

fn requester<'a>(role: &'a Role, what: &str) -> Result<Me<'a>, Refusal> {
    match role {
        Role::Requester { user, department } => Ok(Me { user, department }),
        _ => Err(refuse(
            RefusalKind::Denied,
            format!(
                "`workcopy {what}` is for requesters (directory users who log in with their own account); \
                 staff register a request with `workcopy case open`"
            ),
        )),
    }
}

/// The refusal for a department whose self-service is off: whom to ask.
fn off(department: &str) -> Refusal {
    refuse(
        RefusalKind::Denied,
        format!(
            "self-service is off for {department}: ask workcopy staff to register your request (`workcopy case open`), \
             or ask them to turn self_service on for your department"
        ),
    )
}

/// A new reference: `SS-<UTC date>-<5 characters>`, e.g. `SS-20261203-7K2Q9`
/// (digits and capitals without I, L, O and U: nothing to misread).
fn generate_ref() -> String {
    use sha2::Digest;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let now = time::OffsetDateTime::now_utc();
    let mut seed = sha2::Sha256::new();
    seed.update(now.unix_timestamp_nanos().to_le_bytes());
    seed.update(std::process::id().to_le_bytes());
    seed.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let mut noise = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut noise);
    }
    seed.update(noise);
    let digest = seed.finalize();
    let bits = u64::from_le_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]);
    let tail: String = (0..5).map(|i| ALPHABET[((bits >> (5 * i)) & 31) as usize] as char).collect();
    format!("SS-{:04}{:02}{:02}-{tail}", now.year(), u8::from(now.month()), now.day())
}

/// The departments of `department`'s user group, as the store's arguments.
fn group_of(dir: &Directory, department: &str) -> Vec<String> {
    dir.department(department)
        .map(|d| dir.group_departments(&d.id).iter().map(|g| g.to_string()).collect())
        .unwrap_or_default()
}

/// Up to [`MAX_RESULTS`] files for `query` that `glob` matches, and whether
/// more matched. Reads the store's candidates a page at a time and stops at
/// the first file past the limit, or after [`SEARCH_EXAMINED`] candidates
/// (then it says more may match).
pub async fn find(store: &dyn Store, query: &CatalogQuery, glob: Option<&Glob>) -> Result<(Vec<FoundFile>, bool), StoreError> {
    let order = query.order();
    let mut found = Vec::new();
    let mut after: Option<SearchKey> = None;
    let mut examined = 0;
    loop {
        let page = store.search_catalog(query, after.as_ref(), SEARCH_PAGE).await?;
        let full = page.len() == SEARCH_PAGE as usize;
        examined += page.len();
        after = page.last().map(|f| SearchKey::of(order, &f.file));
        found.extend(page.into_iter().filter(|f| glob.is_none_or(|g| g.matches(g.subject(&f.file)))));
        if found.len() > MAX_RESULTS {
            found.truncate(MAX_RESULTS);
            return Ok((found, true));
        }
        if !full {
            return Ok((found, false));
        }
        if examined >= SEARCH_EXAMINED {
            return Ok((found, true));
        }
    }
}

impl Service {
    /// The files a requester of `department` may have that `descriptors`
    /// name, checked as `case open` checks a request form: the same report,
    /// where another group's file reads as not found.
    pub(super) async fn verify_request(
        &self,
        dir: &Directory,
        user: &str,
        department: &str,
        descriptors: Vec<String>,
    ) -> Result<(RequestForm, Report, Vec<CaseFile>), Refusal> {
        let group = group_of(dir, department);
        let max = self.cfg.max_files_per_case;
        let mut matches: Vec<Vec<CatalogFile>> = Vec::with_capacity(descriptors.len());
        for (i, d) in descriptors.iter().enumerate() {
            matches.push(if i < max {
                self.store.resolve_among(d, &group, RESOLVE_LIMIT).await?
            } else {
                Vec::new()
            });
        }
        let form = RequestForm {
            requester: user.to_string(),
            department: Some(department.to_string()),
            submitter: None,
            descriptors,
        };
        let (report, files) = verify_request(&form, dir, &matches, max);
        Ok((form, report, files))
    }

    pub(super) async fn request_open(
        self: &Arc<Self>,
        role: &Role,
        actor: &Actor,
        case_ref: Option<String>,
        descriptors: Vec<String>,
    ) -> Response {
        let me = requester(role, "request open")?;
        let dir = self.directory();
        let policy = dir.department(me.department).map(|d| d.self_service).unwrap_or_default();
        if policy == SelfService::Off {
            return Err(off(me.department));
        }
        let given = case_ref.as_deref().map(parse_ref).transpose()?;
        let max = self.cfg.max_files_per_case;
        if descriptors.is_empty() {
            return Err(refuse(
                RefusalKind::Invalid,
                "the request names no files: give descriptors (file_id, path or base name; `workcopy catalog search` finds them) or --files-from",
            ));
        }
        if let Some(d) = descriptors.iter().find(|d| d.len() > MAX_DESCRIPTOR) {
            return Err(refuse(
                RefusalKind::Invalid,
                format!(
                    "a descriptor of {} bytes is longer than any GDB path ({MAX_DESCRIPTOR} bytes)",
                    d.len()
                ),
            ));
        }
        if descriptors.len() > max {
            return Err(refuse(
                RefusalKind::Limit,
                format!(
                    "max_files_per_case: a request holds at most {max} files and this one names {}; split it into requests of {max} or fewer",
                    descriptors.len()
                ),
            ));
        }
        let limit = self.cfg.max_open_requests_per_user as u64;
        let limits = RequestLimits {
            open: limit,
            per_day: self.cfg.max_requests_per_user_per_day as u64,
        };
        // Checked before the look-ups, and again as the case is registered.
        self.open_requests_allow(me.user, limit).await?;
        let (form, report, files) = self.verify_request(&dir, me.user, me.department, descriptors).await?;
        let verified = report.verified();
        let details = json!({
            "requester": form.requester,
            "department": me.department,
            "self_service": policy.as_str(),
            "verified": verified,
            "problems": report.problems,
            "report": report.lines.iter().map(|l| l.describe()).collect::<Vec<_>>(),
        });
        let mut attempt = 0;
        let case_ref = loop {
            attempt += 1;
            let r = match &given {
                Some(r) => r.clone(),
                None => CaseRef::parse(&generate_ref()).map_err(|e| refuse(RefusalKind::Internal, e.to_string()))?,
            };
            let case = NewCase {
                case_ref: r.to_string(),
                requester: me.user.to_string(),
                department: Some(me.department.to_string()),
                submitter: None,
                report: report.clone(),
                files: files.clone(),
                opened_uid: actor.uid,
                self_service: Some(policy),
            };
            let event = NewEvent::new(actor, EventKind::Opened, details.clone());
            match self.store.create_request(case, event, limits).await {
                Ok(_) => break r,
                Err(StoreError::Exists(_)) if given.is_none() && attempt < REF_ATTEMPTS => continue,
                Err(StoreError::Exists(_)) if given.is_some() => {
                    return Err(refuse(
                        RefusalKind::State,
                        format!("the reference {r} is taken; choose another --ref, or leave --ref out for a generated one"),
                    ));
                }
                Err(StoreError::TooManyRequests { .. }) => {
                    self.open_requests_allow(me.user, limit).await?;
                    return Err(self.too_many(me.user, limit, &[]));
                }
                Err(StoreError::RequestsToday { made, .. }) => {
                    return Err(refuse(
                        RefusalKind::Limit,
                        format!(
                            "max_requests_per_user_per_day: {} made {made} requests in the last 24 hours, the most allowed; \
                             try again later (each counts for 24 hours), or ask workcopy staff",
                            me.user
                        ),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.state_changed.notify_one();
        info!(case = %case_ref, policy = policy.as_str(), verified, "self-service request registered");
        let case = self.own_request(&me, case_ref.as_str()).await?;
        if policy == SelfService::Auto && verified {
            let details = json!({
                "policy": "self_service = auto",
                "department": me.department,
            });
            // The request stands whatever happens here; staff see it open.
            if let Err(e) = self.approve(&Role::System, &Actor::system(), &case, None, details).await {
                warn!(case = %case_ref, error = %e, "a self-service request could not be approved under the auto policy; it stays open for staff");
            }
        }
        let case = self.own_request(&me, case_ref.as_str()).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    /// Refuses when `user` has `limit` or more live self-service requests.
    async fn open_requests_allow(&self, user: &str, limit: u64) -> Result<(), Refusal> {
        let open: Vec<CaseRecord> = self
            .store
            .list_requests(user, LISTED)
            .await?
            .into_iter()
            .filter(|c| !c.state.is_terminal())
            .collect();
        if open.len() as u64 >= limit {
            return Err(self.too_many(user, limit, &open));
        }
        Ok(())
    }

    fn too_many(&self, user: &str, limit: u64, open: &[CaseRecord]) -> Refusal {
        let mut named: Vec<&str> = open.iter().take(NAMED_OPEN).map(|c| c.case_ref.as_str()).collect();
        if open.len() > NAMED_OPEN {
            named.push("…");
        }
        let which = if named.is_empty() {
            String::new()
        } else {
            format!(" ({})", named.join(", "))
        };
        refuse(
            RefusalKind::Limit,
            format!(
                "max_open_requests_per_user: {user} has {limit} open requests{which}, the most allowed; \
                 cancel one you no longer need (`workcopy request cancel REF`), or wait until one is received and closed"
            ),
        )
    }

    /// The caller's own self-service request; anything else (another's case,
    /// a case staff registered, no such case) gets the same answer.
    async fn own_request(&self, me: &Me<'_>, case_ref: &str) -> Result<CaseRecord, Refusal> {
        let r = parse_ref(case_ref)?;
        match self.store.case(r.as_str()).await? {
            Some(c) if c.self_service.is_some() && c.requester == me.user => Ok(c),
            _ => Err(refuse(RefusalKind::NotFound, format!("no request {r} of yours"))),
        }
    }

    pub(super) async fn request_list(&self, role: &Role) -> Response {
        let me = requester(role, "request list")?;
        Ok(Reply::Cases {
            cases: self.store.list_requests(me.user, LISTED).await?,
        })
    }

    pub(super) async fn request_show(&self, role: &Role, case_ref: &str) -> Response {
        let me = requester(role, "request show")?;
        let case = self.own_request(&me, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    /// Withdraws the caller's request until it is exported: staging stops
    /// and is deleted, the log is sealed.
    pub(super) async fn request_cancel(&self, role: &Role, actor: &Actor, case_ref: &str) -> Response {
        let me = requester(role, "request cancel")?;
        let case = self.own_request(&me, case_ref).await?;
        self.end_case(role, actor, &case.case_ref, Action::Cancel, json!({"was": case.state.as_str()}))
            .await?;
        let case = self.own_request(&me, case_ref).await?;
        Ok(Reply::Case(Box::new(self.view(role, case).await?)))
    }

    /// `catalog search`: staff search every file; a requester the files of
    /// their own user group, while their department takes part in self-service.
    pub(super) async fn catalog_search(
        &self,
        role: &Role,
        pattern: Option<String>,
        sample: Option<String>,
        since: Option<String>,
    ) -> Response {
        let mut _turn = None;
        let departments = match role {
            Role::Staff => None,
            Role::Requester { department, .. } => {
                let dir = self.directory();
                if dir.department(department).map(|d| d.self_service).unwrap_or_default() == SelfService::Off {
                    return Err(off(department));
                }
                _turn = Some(
                    REQUESTER_SEARCHES
                        .acquire()
                        .await
                        .map_err(|e| refuse(RefusalKind::Internal, e.to_string()))?,
                );
                Some(group_of(&dir, department))
            }
            _ => {
                return Err(refuse(
                    RefusalKind::Denied,
                    "permission denied: only workcopy staff and requesters may use `catalog search`",
                ));
            }
        };
        let invalid = |m: String| refuse(RefusalKind::Invalid, m);
        let glob = pattern.as_deref().map(Glob::parse).transpose().map_err(invalid)?;
        if let Some(s) = &sample {
            check_sample(s).map_err(invalid)?;
        }
        let since_ns = since.as_deref().map(parse_since).transpose().map_err(invalid)?;
        let query = CatalogQuery {
            departments,
            name: glob.as_ref().map(Glob::filter),
            sample_id: sample,
            since_ns,
        };
        let (files, more) = find(self.store.as_ref(), &query, glob.as_ref()).await?;
        Ok(Reply::Found {
            files: files.into_iter().map(SearchHit::from).collect(),
            more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::db::sqlite::SqliteStore;
    use crate::domain::catalog::CatalogRow;
    use crate::domain::verify::Outcome;
    use crate::names::{CatalogPath, DirId, FileId};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Two groups: RH-KGA and HGH-GEN (alice, account 5001), AUH-KGA (bob, 5002).
    fn directory() -> Directory {
        let text = crate::domain::directory::tests::SAMPLE
            .replace(
                "[[user]]\nid = \"alice@regionh.dk\"\ndepartment = \"RH-KGA\"\n",
                "[[user]]\nid = \"alice@regionh.dk\"\ndepartment = \"RH-KGA\"\naccount = 5001\n",
            )
            .replace(
                "[[user]]\nid = \"bob@rm.dk\"\ndepartment = \"AUH-KGA\"\n",
                "[[user]]\nid = \"bob@rm.dk\"\ndepartment = \"AUH-KGA\"\naccount = 5002\n",
            )
            .replace(
                "group = \"region-h-genetics\"\n",
                "group = \"region-h-genetics\"\nself_service = \"review\"\n",
            )
            .replace(
                "group = \"region-m-genetics\"\n",
                "group = \"region-m-genetics\"\nself_service = \"auto\"\n",
            );
        match Directory::parse(&text, "test", &crate::domain::directory::tests::fake_resolve) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    async fn service(tmp: &std::path::Path) -> anyhow::Result<Arc<Service>> {
        std::fs::create_dir_all(tmp.join("gdb"))?;
        let d = |p: &str| tmp.join(p).display().to_string();
        let cfg = Config::parse(
            &format!(
                "gdb_root = {:?}\nstate_dir = {:?}\nmount_point = {:?}\nsocket = {:?}\ndirectory = {:?}\nstaff_group = 3000\n",
                d("gdb"),
                d("state"),
                d("mnt"),
                d("s.sock"),
                d("dir.toml")
            ),
            &tmp.join("workcopy.toml"),
        )?;
        let store = SqliteStore::open(&format!("sqlite://{}", tmp.join("t.db").display())).await?;
        Ok(Service::new(cfg, Arc::new(store), directory(), 3000)?)
    }

    fn requester_role(dir: &Directory, uid: u32) -> Role {
        let r = dir.requester_of_uid(uid).unwrap_or_else(|| panic!("no requester {uid}"));
        Role::Requester {
            user: r.user.to_string(),
            department: r.department.to_string(),
        }
    }

    /// A glob matching exactly `text`.
    fn literal(text: &str) -> String {
        text.chars()
            .flat_map(|c| if matches!(c, '*' | '?' | '\\') { vec!['\\', c] } else { vec![c] })
            .collect()
    }

    async fn search(svc: &Service, role: &Role, pattern: Option<String>) -> anyhow::Result<BTreeSet<String>> {
        match svc.catalog_search(role, pattern, None, None).await {
            Ok(Reply::Found { files, more: false }) => Ok(files.into_iter().map(|f| f.file_id).collect()),
            other => anyhow::bail!("search: {other:?}"),
        }
    }

    async fn outcome(svc: &Service, role: &Role, descriptor: &str) -> anyhow::Result<Outcome> {
        let Role::Requester { user, department } = role else {
            anyhow::bail!("not a requester")
        };
        let (_, report, _) = svc
            .verify_request(&svc.directory(), user, department, vec![descriptor.to_string()])
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(report.lines[0].outcome.clone())
    }

    /// What the request says of a descriptor, given the files search shows
    /// for it: one is resolved, several ambiguous among exactly those, none
    /// is not found — whatever other groups hold.
    fn agrees(outcome: &Outcome, shown: &BTreeSet<String>) -> bool {
        match (outcome, shown.len()) {
            (Outcome::Resolved { file_id, .. }, 1) => shown.contains(file_id.as_str()),
            (Outcome::Ambiguous { candidates }, n) if n > 1 => {
                candidates.iter().map(|c| c.file_id.to_string()).collect::<BTreeSet<_>>() == *shown
            }
            (Outcome::NotInGroup, 0) => true,
            _ => false,
        }
    }

    async fn check(files: Vec<(String, String, usize)>) -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let svc = service(tmp.path()).await?;
        let depts = ["RH-KGA", "HGH-GEN", "AUH-KGA"];
        let mut paths = BTreeSet::new();
        let mut rows = Vec::new();
        for (i, (dir, base, d)) in files.iter().enumerate() {
            let path = format!("{dir}/{base}");
            if !paths.insert(path.clone()) {
                continue;
            }
            rows.push(CatalogRow {
                line: i + 2,
                file: CatalogFile {
                    file_id: FileId::parse(&format!("F{i}"))?,
                    path: CatalogPath::parse(&path)?,
                    department: DirId::parse(depts[*d])?,
                    size: 1,
                    sha256: "a".repeat(64),
                    submitted_ns: 0,
                    extra: String::new(),
                },
                sample_id: None,
            });
        }
        svc.store.import_catalog(rows.clone().into()).await?;
        let dir = svc.directory();
        for uid in [5001, 5002] {
            let role = requester_role(&dir, uid);
            let Role::Requester { department, .. } = &role else {
                unreachable!()
            };
            let department = DirId::parse(department)?;
            let own: BTreeSet<String> = rows
                .iter()
                .filter(|r| dir.same_group(&department, &r.file.department))
                .map(|r| r.file.file_id.to_string())
                .collect();
            anyhow::ensure!(
                search(&svc, &role, None).await? == own,
                "search without a pattern shows the group's files"
            );
            for r in &rows {
                let f = &r.file;
                // By file_id: shown (by any search) exactly when requestable.
                let by_id = outcome(&svc, &role, f.file_id.as_str()).await?;
                let shown: BTreeSet<String> = own.iter().filter(|id| *id == f.file_id.as_str()).cloned().collect();
                anyhow::ensure!(agrees(&by_id, &shown), "{} for uid {uid}: {by_id:?}, shown {shown:?}", f.file_id);
                // By base name and by path: the request resolves among what search shows for them.
                for d in [f.path.base_name(), f.path.as_str()] {
                    let shown = search(&svc, &role, Some(literal(d))).await?;
                    let got = outcome(&svc, &role, d).await?;
                    anyhow::ensure!(agrees(&got, &shown), "{d:?} for uid {uid}: {got:?}, search shows {shown:?}");
                }
            }
            // A hidden file and a file that does not exist: the same answer.
            anyhow::ensure!(outcome(&svc, &role, "no-such-file").await? == Outcome::NotInGroup, "a missing file");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever search shows a requester, a request resolves; whatever it
        /// hides (another group's file, or none), a request refuses as not
        /// found among their group's files — never naming the other group's.
        #[test]
        fn search_and_request_never_disagree(
            files in proptest::collection::vec(("[xy]", "[ab*?]{1,2}\\.fq", 0usize..3), 1..16)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
            let result = rt.block_on(check(files));
            prop_assert!(result.is_ok(), "{:?}", result);
        }
    }

    #[test]
    fn generated_refs_are_readable_references() {
        let a = generate_ref();
        assert!(CaseRef::parse(&a).is_ok(), "{a}");
        assert!(a.starts_with("SS-") && a.len() == "SS-20261203-7K2Q9".len(), "{a}");
        let tail = &a[12..];
        assert!(
            tail.chars()
                .all(|c| c.is_ascii_digit() || (c.is_ascii_uppercase() && !"ILOU".contains(c))),
            "{a}"
        );
        let many: BTreeSet<String> = (0..1000).map(|_| generate_ref()).collect();
        assert!(many.len() > 990, "refs repeat: {} distinct of 1000", many.len());
    }
}
