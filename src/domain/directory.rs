//! The directory: user groups, departments (with their transfer accounts and
//! self-service policies) and requesting users (with the unix accounts they
//! log in with, for self-service). Loaded as a whole; a bad file is refused as
//! a whole with the offending entry named. One uid has one role: it is a
//! department's transfer account or one user's account, never both.

use crate::names::{DirId, UserId};
use crate::unix::LookupError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("directory {path}: {message}")]
pub struct DirectoryError {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDirectory {
    #[serde(default)]
    group: Vec<RawGroup>,
    #[serde(default)]
    department: Vec<RawDepartment>,
    #[serde(default)]
    user: Vec<RawUser>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDepartment {
    id: String,
    name: String,
    group: String,
    transfer_account: AccountSpec,
    #[serde(default)]
    self_service: SelfService,
    #[serde(default)]
    hosts: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AccountSpec {
    Uid(u32),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    id: String,
    department: String,
    #[serde(default)]
    account: Option<AccountSpec>,
}

/// Whether a department's users may request their own group's files
/// themselves (`workcopy request open`), and what happens to such a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SelfService {
    /// Requests go through staff (`workcopy case open`) only.
    #[default]
    Off,
    /// A request waits in `open` for staff to approve or reject it.
    Review,
    /// A request whose every file verified is approved at once by workcopy.
    Auto,
}

impl SelfService {
    pub fn as_str(self) -> &'static str {
        match self {
            SelfService::Off => "off",
            SelfService::Review => "review",
            SelfService::Auto => "auto",
        }
    }

    pub fn parse(s: &str) -> Option<SelfService> {
        [SelfService::Off, SelfService::Review, SelfService::Auto]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for SelfService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A directory user as a requester: who they are and where they belong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub user: UserId,
    /// Their department (the owner of the cases they request).
    pub department: DirId,
    /// The account as written in the file.
    pub account: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Department {
    pub id: DirId,
    pub name: String,
    pub group: DirId,
    /// The transfer account as written in the file.
    pub transfer_account: String,
    /// Its uid, resolved when the directory was loaded.
    pub transfer_uid: u32,
    /// What `workcopy request open` does for this department's users.
    pub self_service: SelfService,
    /// The transfer hosts that may serve its cases, the first by default
    /// (empty: any host).
    pub hosts: Vec<DirId>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    pub groups: BTreeMap<DirId, Option<String>>,
    pub departments: BTreeMap<DirId, Department>,
    pub users: BTreeMap<UserId, DirId>,
    by_uid: HashMap<u32, DirId>,
    /// Users by the uid of their `account`.
    requesters: HashMap<u32, Requester>,
}

impl Directory {
    pub fn load(path: &Path, resolve: &dyn Fn(&str) -> Result<u32, LookupError>) -> Result<Directory, DirectoryError> {
        let text = std::fs::read_to_string(path).map_err(|e| DirectoryError {
            path: path.display().to_string(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string(), resolve)
    }

    /// Parses and validates. `resolve` turns a transfer account name into a uid.
    pub fn parse(text: &str, origin: &str, resolve: &dyn Fn(&str) -> Result<u32, LookupError>) -> Result<Directory, DirectoryError> {
        let fail = |message: String| DirectoryError {
            path: origin.to_string(),
            message,
        };
        let raw: RawDirectory = toml::from_str(text).map_err(|e| fail(e.to_string().trim_end().replace('\n', " ")))?;
        let mut dir = Directory::default();
        for g in raw.group {
            let id = DirId::parse(&g.id).map_err(|e| fail(format!("[[group]] {e}")))?;
            if dir.groups.insert(id.clone(), g.name).is_some() {
                return Err(fail(format!("[[group]] id {id:?} appears twice")));
            }
        }
        for d in raw.department {
            let id = DirId::parse(&d.id).map_err(|e| fail(format!("[[department]] {e}")))?;
            let group = DirId::parse(&d.group).map_err(|e| fail(format!("[[department]] {id}: group: {e}")))?;
            if !dir.groups.contains_key(&group) {
                return Err(fail(format!(
                    "[[department]] {id}: group {group:?} is not a [[group]] of this file"
                )));
            }
            if d.name.trim().is_empty() {
                return Err(fail(format!("[[department]] {id}: name is empty")));
            }
            let (account, uid) = match d.transfer_account {
                AccountSpec::Uid(u) => (u.to_string(), u),
                AccountSpec::Name(n) => {
                    let uid = resolve(&n).map_err(|e| fail(format!("[[department]] {id}: transfer_account: {e}")))?;
                    (n, uid)
                }
            };
            if uid == 0 {
                return Err(fail(format!("[[department]] {id}: transfer_account must not be root")));
            }
            if let Some(other) = dir.by_uid.get(&uid) {
                return Err(fail(format!(
                    "[[department]] {id}: transfer_account {account:?} (uid {uid}) is already the account of {other}; each department needs its own"
                )));
            }
            let mut hosts: Vec<DirId> = Vec::new();
            for h in &d.hosts {
                let host = DirId::parse(h).map_err(|e| fail(format!("[[department]] {id}: hosts: {e}")))?;
                if hosts.contains(&host) {
                    return Err(fail(format!("[[department]] {id}: hosts names {host} twice")));
                }
                hosts.push(host);
            }
            dir.by_uid.insert(uid, id.clone());
            let dept = Department {
                hosts,
                id: id.clone(),
                name: d.name,
                group,
                transfer_account: account,
                transfer_uid: uid,
                self_service: d.self_service,
            };
            if dir.departments.insert(id.clone(), dept).is_some() {
                return Err(fail(format!("[[department]] id {id:?} appears twice")));
            }
        }
        for u in raw.user {
            let id = UserId::parse(&u.id).map_err(|e| fail(format!("[[user]] {e}")))?;
            let dept = DirId::parse(&u.department).map_err(|e| fail(format!("[[user]] {id}: department: {e}")))?;
            if !dir.departments.contains_key(&dept) {
                return Err(fail(format!(
                    "[[user]] {id}: department {dept:?} is not a [[department]] of this file"
                )));
            }
            if dir.users.insert(id.clone(), dept.clone()).is_some() {
                return Err(fail(format!("[[user]] id {id:?} appears twice")));
            }
            let Some(spec) = u.account else { continue };
            let (account, uid) = match spec {
                AccountSpec::Uid(n) => (n.to_string(), n),
                AccountSpec::Name(n) => {
                    let uid = resolve(&n).map_err(|e| fail(format!("[[user]] {id}: account: {e}")))?;
                    (n, uid)
                }
            };
            if uid == 0 {
                return Err(fail(format!("[[user]] {id}: account must not be root")));
            }
            if let Some(other) = dir.by_uid.get(&uid) {
                return Err(fail(format!(
                    "[[user]] {id}: account {account:?} (uid {uid}) is the transfer_account of [[department]] {other}; \
                     one uid has one role: give the user an account of their own"
                )));
            }
            if let Some(other) = dir.requesters.get(&uid) {
                return Err(fail(format!(
                    "[[user]] {id}: account {account:?} (uid {uid}) is already the account of [[user]] {}; each user needs their own",
                    other.user
                )));
            }
            dir.requesters.insert(
                uid,
                Requester {
                    user: id,
                    department: dept,
                    account,
                },
            );
        }
        Ok(dir)
    }

    pub fn department(&self, id: &str) -> Option<&Department> {
        DirId::parse(id).ok().and_then(|d| self.departments.get(&d))
    }

    /// The department whose transfer account has this uid.
    pub fn department_of_uid(&self, uid: u32) -> Option<&Department> {
        self.by_uid.get(&uid).and_then(|d| self.departments.get(d))
    }

    /// The directory user whose `account` has this uid.
    pub fn requester_of_uid(&self, uid: u32) -> Option<&Requester> {
        self.requesters.get(&uid)
    }

    /// The departments in the same user group as `department` (itself
    /// included), in id order: whose files its users may have. Empty for a
    /// department not in the directory.
    pub fn group_departments(&self, department: &DirId) -> Vec<DirId> {
        let Some(own) = self.departments.get(department) else {
            return Vec::new();
        };
        self.departments
            .values()
            .filter(|d| d.group == own.group)
            .map(|d| d.id.clone())
            .collect()
    }

    pub fn user_department(&self, user: &UserId) -> Option<&Department> {
        self.users.get(user).and_then(|d| self.departments.get(d))
    }

    pub fn same_group(&self, a: &DirId, b: &DirId) -> bool {
        match (self.departments.get(a), self.departments.get(b)) {
            (Some(a), Some(b)) => a.group == b.group,
            _ => false,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SAMPLE: &str = r#"
[[group]]
id = "region-h-genetics"

[[group]]
id = "region-m-genetics"

[[department]]
id = "RH-KGA"
name = "Klinisk Genetisk Afdeling, Rigshospitalet"
group = "region-h-genetics"
transfer_account = "xfer-rh"

[[department]]
id = "HGH-GEN"
name = "Genetik, Herlev"
group = "region-h-genetics"
transfer_account = 2002

[[department]]
id = "AUH-KGA"
name = "Klinisk Genetisk Afdeling, AUH"
group = "region-m-genetics"
transfer_account = "xfer-auh"

[[user]]
id = "alice@regionh.dk"
department = "RH-KGA"

[[user]]
id = "bob@rm.dk"
department = "AUH-KGA"
"#;

    pub(crate) fn fake_resolve(name: &str) -> Result<u32, LookupError> {
        match name {
            "xfer-rh" => Ok(2001),
            "xfer-auh" => Ok(2003),
            "root" => Ok(0),
            _ => Err(LookupError::NoUser(name.to_string())),
        }
    }

    pub(crate) fn sample() -> Directory {
        match Directory::parse(SAMPLE, "test", &fake_resolve) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    fn refused(text: &str) -> String {
        match Directory::parse(text, "dir.toml", &fake_resolve) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn loads_sample() {
        let d = sample();
        assert_eq!(d.departments.len(), 3);
        assert_eq!(d.department_of_uid(2001).map(|d| d.id.as_str()), Some("RH-KGA"));
        assert_eq!(d.department_of_uid(2002).map(|d| d.id.as_str()), Some("HGH-GEN"));
        let rh = DirId::parse("RH-KGA").ok();
        let hgh = DirId::parse("HGH-GEN").ok();
        let auh = DirId::parse("AUH-KGA").ok();
        if let (Some(rh), Some(hgh), Some(auh)) = (rh, hgh, auh) {
            assert!(d.same_group(&rh, &hgh));
            assert!(!d.same_group(&rh, &auh));
        } else {
            panic!("ids");
        }
    }

    #[test]
    fn refuses_bad_entries_naming_them() {
        let m = refused(&SAMPLE.replace("id = \"HGH-GEN\"", "id = \"RH-KGA\""));
        assert!(m.contains("RH-KGA") && m.contains("twice"), "{m}");
        let m = refused(&SAMPLE.replace("group = \"region-m-genetics\"", "group = \"nowhere\""));
        assert!(m.contains("AUH-KGA") && m.contains("nowhere"), "{m}");
        let m = refused(&SAMPLE.replace("\"xfer-auh\"", "\"nobody-here\""));
        assert!(m.contains("AUH-KGA") && m.contains("nobody-here"), "{m}");
        let m = refused(&SAMPLE.replace("transfer_account = 2002", "transfer_account = 2001"));
        assert!(m.contains("HGH-GEN") && m.contains("already"), "{m}");
        let m = refused(&SAMPLE.replace("department = \"AUH-KGA\"", "department = \"XX\""));
        assert!(m.contains("bob@rm.dk"), "{m}");
        let m = refused(&SAMPLE.replace("id = \"RH-KGA\"", "id = \"RH KGA\""));
        assert!(m.contains("RH KGA"), "{m}");
        let m = refused(&format!("{SAMPLE}\n[[printer]]\nid = \"x\"\n"));
        assert!(m.contains("printer"), "{m}");
        let m = refused(&SAMPLE.replace("\"xfer-auh\"", "\"root\""));
        assert!(m.contains("root"), "{m}");
    }

    const WITH_REQUESTERS: &str = r#"
[[user]]
id = "carol@regionh.dk"
department = "HGH-GEN"
account = "carol"

[[user]]
id = "dave@rm.dk"
department = "AUH-KGA"
account = 5002
"#;

    fn resolve_with_people(name: &str) -> Result<u32, LookupError> {
        match name {
            "carol" => Ok(5001),
            other => fake_resolve(other),
        }
    }

    fn with_requesters(text: &str) -> Result<Directory, String> {
        Directory::parse(text, "dir.toml", &resolve_with_people).map_err(|e| e.to_string())
    }

    #[test]
    fn users_with_accounts_are_requesters_and_policies_default_to_off() {
        let text = SAMPLE.replace("transfer_account = 2002\n", "transfer_account = 2002\nself_service = \"review\"\n") + WITH_REQUESTERS;
        let d = match with_requesters(&text) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        };
        let carol = d
            .requester_of_uid(5001)
            .map(|r| (r.user.as_str(), r.department.as_str(), r.account.as_str()));
        assert_eq!(carol, Some(("carol@regionh.dk", "HGH-GEN", "carol")));
        assert_eq!(d.requester_of_uid(5002).map(|r| r.account.as_str()), Some("5002"));
        // Users without an account, and transfer accounts, are no requesters.
        assert!(d.requester_of_uid(2001).is_none() && d.requester_of_uid(0).is_none());
        assert_eq!(d.department("HGH-GEN").map(|x| x.self_service), Some(SelfService::Review));
        assert_eq!(d.department("RH-KGA").map(|x| x.self_service), Some(SelfService::Off));
        let rh = DirId::parse("RH-KGA").unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<String> = d.group_departments(&rh).iter().map(|x| x.to_string()).collect();
        assert_eq!(ids, ["HGH-GEN", "RH-KGA"]);
        let nowhere = DirId::parse("NOWHERE").unwrap_or_else(|e| panic!("{e}"));
        assert!(d.group_departments(&nowhere).is_empty());
    }

    #[test]
    fn one_uid_has_one_role() {
        // A user's account that is a transfer account: both are named.
        let m = with_requesters(&(SAMPLE.to_string() + &WITH_REQUESTERS.replace("account = 5002", "account = \"xfer-rh\"")))
            .err()
            .unwrap_or_default();
        assert!(m.contains("dave@rm.dk") && m.contains("RH-KGA") && m.contains("2001"), "{m}");
        // Two users with one account: both are named.
        let m = with_requesters(&(SAMPLE.to_string() + &WITH_REQUESTERS.replace("account = 5002", "account = 5001")))
            .err()
            .unwrap_or_default();
        assert!(m.contains("dave@rm.dk") && m.contains("carol@regionh.dk"), "{m}");
        let m = with_requesters(&(SAMPLE.to_string() + &WITH_REQUESTERS.replace("account = 5002", "account = 0")))
            .err()
            .unwrap_or_default();
        assert!(m.contains("dave@rm.dk") && m.contains("root"), "{m}");
        let m = with_requesters(&(SAMPLE.to_string() + &WITH_REQUESTERS.replace("account = \"carol\"", "account = \"nobody-here\"")))
            .err()
            .unwrap_or_default();
        assert!(m.contains("carol@regionh.dk") && m.contains("nobody-here"), "{m}");
        let m = with_requesters(&SAMPLE.replace("transfer_account = 2002\n", "transfer_account = 2002\nself_service = \"yes\"\n"))
            .err()
            .unwrap_or_default();
        assert!(m.contains("self_service") && m.contains("yes"), "{m}");
    }
}
