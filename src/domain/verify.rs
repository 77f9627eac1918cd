//! Verification of a request: who asks, for which files, and whether every
//! rule of the service holds. Pure: the catalog matches are looked up before
//! and passed in.

use super::catalog::CatalogFile;
use super::directory::Directory;
use crate::names::{DirId, FileId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// What staff typed from the request form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestForm {
    pub requester: String,
    pub department: Option<String>,
    pub submitter: Option<String>,
    pub descriptors: Vec<String>,
}

/// The outcome for one descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Resolved {
        file_id: FileId,
        path: String,
        export_name: String,
    },
    NotFound,
    /// A self-service request: no file of the requester's user group
    /// matches (whether another group's does is not said).
    NotInGroup,
    Ambiguous {
        candidates: Vec<Candidate>,
    },
    NotAuthorized {
        file_id: FileId,
        submitted_by: DirId,
    },
    WrongSubmitter {
        file_id: FileId,
        submitted_by: DirId,
        stated: String,
    },
    OverLimit {
        limit: usize,
    },
    Duplicate {
        of_line: usize,
    },
    Invalid {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub file_id: FileId,
    pub path: String,
    pub department: DirId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportLine {
    pub line: usize,
    pub descriptor: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl ReportLine {
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Resolved { .. })
    }

    /// One line of text, as `case open` prints it.
    pub fn describe(&self) -> String {
        let d = &self.descriptor;
        match &self.outcome {
            Outcome::Resolved {
                file_id,
                path,
                export_name,
            } => {
                format!("ok        {d}: {file_id} {path} -> {export_name}")
            }
            Outcome::NotFound => format!("REFUSED   {d}: not found in the GDB catalog"),
            Outcome::NotInGroup => {
                format!("REFUSED   {d}: not found among the files of your user group (`workcopy catalog search` lists them)")
            }
            Outcome::Ambiguous { candidates } => format!(
                "REFUSED   {d}: ambiguous, matches {} files: {}",
                candidates.len(),
                candidates
                    .iter()
                    .map(|c| format!("{} ({}, {})", c.file_id, c.path, c.department))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Outcome::NotAuthorized { file_id, submitted_by } => format!(
                "REFUSED   {d}: not authorized: {file_id} was submitted by {submitted_by}, which is not in the requester's user group"
            ),
            Outcome::WrongSubmitter {
                file_id,
                submitted_by,
                stated,
            } => format!("REFUSED   {d}: {file_id} was submitted by {submitted_by}, the request states {stated}"),
            Outcome::OverLimit { limit } => format!("REFUSED   {d}: over the limit of {limit} files per case"),
            Outcome::Duplicate { of_line } => format!("REFUSED   {d}: duplicate of line {of_line} (same file)"),
            Outcome::Invalid { reason } => format!("REFUSED   {d}: {reason}"),
        }
    }
}

/// The whole verification report, kept with the case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Department of the requester: the case's owner.
    pub department: Option<DirId>,
    /// Problems with the request as a whole (requester, department, submitter).
    pub problems: Vec<String>,
    pub lines: Vec<ReportLine>,
}

impl Report {
    pub fn verified(&self) -> bool {
        self.department.is_some() && self.problems.is_empty() && !self.lines.is_empty() && self.lines.iter().all(ReportLine::ok)
    }
}

/// A resolved file of the case with the name it has in the case directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseFile {
    pub descriptor: String,
    pub export_name: String,
    pub file: CatalogFile,
}

/// Checks a request against the directory and the catalog matches
/// (`matches[i]` are the catalog files matching `form.descriptors[i]`).
pub fn verify(form: &RequestForm, directory: &Directory, matches: &[Vec<CatalogFile>], max_files: usize) -> (Report, Vec<CaseFile>) {
    let mut problems = Vec::new();
    let requester_dept = match UserId::parse(&form.requester) {
        Err(e) => {
            problems.push(e.to_string());
            None
        }
        Ok(u) => match directory.user_department(&u) {
            None => {
                problems.push(format!("requester {u} is not in the directory"));
                None
            }
            Some(d) => Some(d.id.clone()),
        },
    };
    let stated = match &form.department {
        None => None,
        Some(s) => match directory.department(s) {
            None => {
                problems.push(format!("department {s:?} is not in the directory"));
                None
            }
            Some(d) => Some(d.id.clone()),
        },
    };
    if let (Some(r), Some(s)) = (&requester_dept, &stated) {
        if r != s {
            problems.push(format!(
                "requester {} belongs to {r}, not to the stated department {s}",
                form.requester
            ));
        }
    }
    let department = stated.clone().or(requester_dept.clone());
    let submitter = match &form.submitter {
        None => None,
        Some(s) => match directory.department(s) {
            None => {
                problems.push(format!("submitting department {s:?} is not in the directory"));
                None
            }
            Some(d) => {
                if let Some(own) = &department {
                    if !directory.same_group(own, &d.id) {
                        problems.push(format!("submitting department {} is not in the same user group as {own}", d.id));
                    }
                }
                Some(d.id.clone())
            }
        },
    };
    if form.descriptors.is_empty() {
        problems.push("the request names no files".into());
    }

    let mut lines = Vec::with_capacity(form.descriptors.len());
    let mut files = Vec::new();
    let mut by_file: HashMap<FileId, usize> = HashMap::new();
    let mut by_text: HashMap<&str, usize> = HashMap::new();
    for (i, descriptor) in form.descriptors.iter().enumerate() {
        let line = i + 1;
        let empty = Vec::new();
        let found = matches.get(i).unwrap_or(&empty);
        let outcome = if let Some(first) = by_text.get(descriptor.as_str()) {
            Outcome::Duplicate { of_line: *first }
        } else if i >= max_files {
            Outcome::OverLimit { limit: max_files }
        } else if descriptor.trim().is_empty() || descriptor.chars().any(char::is_control) {
            Outcome::Invalid {
                reason: "an empty descriptor or one with control characters".into(),
            }
        } else {
            match found.as_slice() {
                [] => Outcome::NotFound,
                [f] => {
                    if let Some(first) = by_file.get(&f.file_id) {
                        Outcome::Duplicate { of_line: *first }
                    } else if !department.as_ref().is_some_and(|d| directory.same_group(d, &f.department)) {
                        Outcome::NotAuthorized {
                            file_id: f.file_id.clone(),
                            submitted_by: f.department.clone(),
                        }
                    } else if let Some(s) = submitter.as_ref().filter(|s| **s != f.department) {
                        Outcome::WrongSubmitter {
                            file_id: f.file_id.clone(),
                            submitted_by: f.department.clone(),
                            stated: s.to_string(),
                        }
                    } else {
                        by_file.insert(f.file_id.clone(), line);
                        files.push(CaseFile {
                            descriptor: descriptor.clone(),
                            export_name: String::new(),
                            file: f.clone(),
                        });
                        Outcome::Resolved {
                            file_id: f.file_id.clone(),
                            path: f.path.to_string(),
                            export_name: String::new(),
                        }
                    }
                }
                many => Outcome::Ambiguous {
                    candidates: many
                        .iter()
                        .map(|f| Candidate {
                            file_id: f.file_id.clone(),
                            path: f.path.to_string(),
                            department: f.department.clone(),
                        })
                        .collect(),
                },
            }
        };
        by_text.entry(descriptor.as_str()).or_insert(line);
        lines.push(ReportLine {
            line,
            descriptor: descriptor.clone(),
            outcome,
        });
    }

    let names = export_names(files.iter().map(|f| (&f.file.file_id, f.file.path.base_name())));
    // A name the mount cannot show (too long) or that two files would share
    // is refused here rather than make a case that can never be received.
    let mut seen = std::collections::HashSet::new();
    let unusable: Vec<Option<String>> = names
        .iter()
        .map(|n| {
            if n.len() > 255 {
                Some(format!("its name in the case directory, {n:?}, is longer than 255 bytes"))
            } else if !seen.insert(n.as_str()) {
                Some(format!("its name in the case directory, {n:?}, clashes with another file's"))
            } else {
                None
            }
        })
        .collect();
    for (f, n) in files.iter_mut().zip(&names) {
        f.export_name = n.clone();
    }
    let mut it = names.iter().zip(&unusable);
    for l in &mut lines {
        if let Outcome::Resolved { export_name, .. } = &mut l.outcome {
            let (name, problem) = it.next().map(|(n, p)| (n.clone(), p.clone())).unwrap_or_default();
            match problem {
                Some(reason) => l.outcome = Outcome::Invalid { reason },
                None => *export_name = name,
            }
        }
    }
    let files = files
        .into_iter()
        .zip(unusable)
        .filter(|(_, p)| p.is_none())
        .map(|(f, _)| f)
        .collect();
    (
        Report {
            department,
            problems,
            lines,
        },
        files,
    )
}

/// Checks a self-service request as [`verify`] checks a request form, where
/// `matches[i]` holds only the files of the requester's user group that match
/// `form.descriptors[i]` — what `catalog search` shows the requester. A file
/// of another group therefore reads exactly as a file that does not exist:
/// [`Outcome::NotInGroup`], naming nothing of it.
pub fn verify_request(
    form: &RequestForm,
    directory: &Directory,
    matches: &[Vec<CatalogFile>],
    max_files: usize,
) -> (Report, Vec<CaseFile>) {
    let (mut report, files) = verify(form, directory, matches, max_files);
    for l in &mut report.lines {
        // Not authorized cannot come from the group's own files; were it to,
        // it would name another group's file, so it reads as not found too.
        if matches!(l.outcome, Outcome::NotFound | Outcome::NotAuthorized { .. }) {
            l.outcome = Outcome::NotInGroup;
        }
    }
    (report, files)
}

/// The name reserved for the checksum list in every case directory.
pub const SUMS_NAME: &str = "SHA256SUMS";

/// Names for a case's files in its directory: the base name, unless two
/// files share it (or it is `SHA256SUMS`); then `<file_id>__<base name>`.
/// Deterministic and distinct.
pub fn export_names<'a>(files: impl Iterator<Item = (&'a FileId, &'a str)>) -> Vec<String> {
    let files: Vec<(&FileId, &str)> = files.collect();
    let mut names: Vec<String> = files.iter().map(|(_, b)| b.to_string()).collect();
    let mut prefixed = vec![false; files.len()];
    loop {
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        count.insert(SUMS_NAME, 1);
        for n in &names {
            *count.entry(n.as_str()).or_default() += 1;
        }
        let clash: Vec<usize> = (0..names.len())
            .filter(|&i| !prefixed[i] && count.get(names[i].as_str()).copied().unwrap_or(0) > 1)
            .collect();
        if clash.is_empty() {
            break;
        }
        for i in clash {
            prefixed[i] = true;
            names[i] = format!("{}__{}", files[i].0, files[i].1);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::directory::tests::sample;
    use crate::names::CatalogPath;
    use proptest::prelude::*;

    fn file(id: &str, path: &str, dept: &str) -> CatalogFile {
        CatalogFile {
            file_id: FileId::parse(id).unwrap_or_else(|e| panic!("{e}")),
            path: CatalogPath::parse(path).unwrap_or_else(|e| panic!("{e}")),
            department: DirId::parse(dept).unwrap_or_else(|e| panic!("{e}")),
            size: 1,
            sha256: "0".repeat(64),
            submitted_ns: 0,
            extra: String::new(),
        }
    }

    fn form(requester: &str, descriptors: &[&str]) -> RequestForm {
        RequestForm {
            requester: requester.into(),
            department: None,
            submitter: None,
            descriptors: descriptors.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn same_group_is_authorized() {
        let m = vec![vec![file("F1", "a/x.fq", "HGH-GEN")], vec![file("F2", "a/y.fq", "RH-KGA")]];
        let (r, files) = verify(&form("alice@regionh.dk", &["F1", "y.fq"]), &sample(), &m, 20);
        assert!(r.verified(), "{r:?}");
        assert_eq!(r.department.as_ref().map(|d| d.as_str()), Some("RH-KGA"));
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].export_name, "y.fq");
    }

    #[test]
    fn other_group_is_not_authorized() {
        let m = vec![vec![file("F1", "a/x.fq", "AUH-KGA")]];
        let (r, _) = verify(&form("alice@regionh.dk", &["F1"]), &sample(), &m, 20);
        assert!(!r.verified());
        assert!(matches!(r.lines[0].outcome, Outcome::NotAuthorized { .. }));
        assert!(r.lines[0].describe().contains("not authorized"));
    }

    #[test]
    fn a_request_reads_another_groups_file_as_not_found() {
        let m = vec![vec![], vec![file("F2", "a/y.fq", "RH-KGA")]];
        let f = form("alice@regionh.dk", &["F1", "F2"]);
        let (r, files) = verify_request(&f, &sample(), &m, 20);
        assert_eq!(r.lines[0].outcome, Outcome::NotInGroup);
        assert!(r.lines[0].describe().contains("not found among the files of your user group"));
        assert!(r.lines[1].ok() && files.len() == 1 && !r.verified());
        // Were another group's file ever passed in, nothing of it is named.
        let (r, _) = verify_request(
            &form("alice@regionh.dk", &["F9"]),
            &sample(),
            &[vec![file("F9", "b.fq", "AUH-KGA")]],
            20,
        );
        assert_eq!(r.lines[0].outcome, Outcome::NotInGroup);
        assert!(!r.lines[0].describe().contains("AUH"));
    }

    #[test]
    fn not_found_and_ambiguous_name_candidates() {
        let m = vec![vec![], vec![file("F1", "a/x.fq", "RH-KGA"), file("F2", "b/x.fq", "RH-KGA")]];
        let (r, _) = verify(&form("alice@regionh.dk", &["nope", "x.fq"]), &sample(), &m, 20);
        assert!(!r.verified());
        assert_eq!(r.lines[0].outcome, Outcome::NotFound);
        let text = r.lines[1].describe();
        assert!(
            text.contains("ambiguous") && text.contains("F1") && text.contains("b/x.fq"),
            "{text}"
        );
    }

    #[test]
    fn duplicates_and_limit() {
        let f1 = file("F1", "a/x.fq", "RH-KGA");
        let m = vec![
            vec![f1.clone()],
            vec![f1.clone()],
            vec![f1.clone()],
            vec![file("F3", "z.fq", "RH-KGA")],
        ];
        let (r, files) = verify(&form("alice@regionh.dk", &["F1", "a/x.fq", "F1", "z.fq"]), &sample(), &m, 3);
        assert_eq!(r.lines[1].outcome, Outcome::Duplicate { of_line: 1 });
        assert_eq!(r.lines[2].outcome, Outcome::Duplicate { of_line: 1 });
        assert_eq!(r.lines[3].outcome, Outcome::OverLimit { limit: 3 });
        assert_eq!(files.len(), 1);
        assert!(!r.verified());
    }

    #[test]
    fn requester_department_and_submitter_checks() {
        let m = vec![vec![file("F1", "x.fq", "RH-KGA")]];
        let dir = sample();
        let (r, _) = verify(&form("mallory@x", &["F1"]), &dir, &m, 20);
        assert!(!r.verified() && r.problems[0].contains("not in the directory"));

        let mut f = form("alice@regionh.dk", &["F1"]);
        f.department = Some("AUH-KGA".into());
        let (r, _) = verify(&f, &dir, &m, 20);
        assert!(!r.verified() && r.problems.iter().any(|p| p.contains("not to the stated department")));

        let mut f = form("alice@regionh.dk", &["F1"]);
        f.submitter = Some("HGH-GEN".into());
        let (r, _) = verify(&f, &dir, &m, 20);
        assert!(matches!(r.lines[0].outcome, Outcome::WrongSubmitter { .. }));

        let mut f = form("alice@regionh.dk", &["F1"]);
        f.submitter = Some("AUH-KGA".into());
        let (r, _) = verify(&f, &dir, &m, 20);
        assert!(!r.verified() && r.problems.iter().any(|p| p.contains("same user group")));

        let mut f = form("alice@regionh.dk", &["F1"]);
        f.submitter = Some("RH-KGA".into());
        f.department = Some("RH-KGA".into());
        assert!(verify(&f, &dir, &m, 20).0.verified());

        assert!(!verify(&form("alice@regionh.dk", &[]), &dir, &[], 20).0.verified());
    }

    #[test]
    fn names_the_mount_cannot_show_are_refused() {
        // Two files share a 200-byte base name; with 100-byte ids the prefixed names pass 255 bytes.
        let long = format!("{}.fastq", "a".repeat(200));
        let (id1, id2) = ("A".repeat(100), "B".repeat(100));
        let f1 = file(&id1, &format!("x/{long}"), "RH-KGA");
        let f2 = file(&id2, &format!("y/{long}"), "RH-KGA");
        let (r, files) = verify(&form("alice@regionh.dk", &[&id1, &id2]), &sample(), &[vec![f1], vec![f2]], 20);
        assert!(!r.verified());
        assert!(matches!(&r.lines[0].outcome, Outcome::Invalid { reason } if reason.contains("255")));
        assert!(files.is_empty());
        // Both prefixed names clash: F1 + "_x" and F1_ + "x" give "F1___x".
        let a = file("F1", "a/_x", "RH-KGA");
        let b = file("F1_", "b/x", "RH-KGA");
        let c = file("F9", "c/_x", "RH-KGA");
        let d = file("F8", "d/x", "RH-KGA");
        let m = [vec![a], vec![b], vec![c], vec![d]];
        let (r, _) = verify(&form("alice@regionh.dk", &["F1", "F1_", "F9", "F8"]), &sample(), &m, 20);
        assert!(!r.verified());
        assert!(
            r.lines
                .iter()
                .any(|l| matches!(&l.outcome, Outcome::Invalid { reason } if reason.contains("clashes")))
        );
    }

    #[test]
    fn shared_base_names_get_distinct_names_with_file_id() {
        let ids: Vec<FileId> = ["F1", "F2", "F3", "F4"]
            .iter()
            .map(|s| FileId::parse(s).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let names = export_names([(&ids[0], "x.fq"), (&ids[1], "x.fq"), (&ids[2], "SHA256SUMS"), (&ids[3], "F1__x.fq")].into_iter());
        assert_eq!(names, vec!["F1__x.fq", "F2__x.fq", "F3__SHA256SUMS", "F4__F1__x.fq"]);
    }

    proptest! {
        #[test]
        fn export_names_are_distinct_and_contain_id_when_renamed(
            bases in proptest::collection::vec("[ab]{1,2}(__[ab])?", 1..20)
        ) {
            let ids: Vec<FileId> = (0..bases.len()).map(|i| FileId::parse(&format!("a{i}")).unwrap_or_else(|e| panic!("{e}"))).collect();
            let names = export_names(ids.iter().zip(bases.iter().map(|s| s.as_str())));
            let set: std::collections::HashSet<_> = names.iter().collect();
            prop_assert_eq!(set.len(), names.len());
            prop_assert!(!names.iter().any(|n| n == SUMS_NAME));
            for (i, n) in names.iter().enumerate() {
                prop_assert!(n == &bases[i] || n.contains(ids[i].as_str()));
            }
        }
    }
}
