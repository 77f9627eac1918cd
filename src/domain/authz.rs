//! Who may have what: the rules every layer asks, kept in one place.

use crate::domain::directory::Directory;
use crate::domain::verify::CaseFile;

/// Whether credentials belong to staff: root, or a member of `staff_group`
/// (as primary or supplementary group).
pub fn is_staff(uid: u32, gid: u32, groups: &[u32], staff_gid: u32) -> bool {
    uid == 0 || gid == staff_gid || groups.contains(&staff_gid)
}

/// Why rule 1 (same user group as the submitting department) no longer holds
/// for a case under this directory, if it does not.
pub fn no_longer_authorized(dir: &Directory, department: Option<&str>, files: &[CaseFile]) -> Option<String> {
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

/// Why `four_eyes = true` refuses the uid `approver` the approval of a case
/// registered by `opened_uid`, if it does: the uid that opened a case may not
/// also approve it. A case whose opener is not known is refused (fails closed).
pub fn four_eyes_refusal(four_eyes: bool, opened_uid: Option<u32>, approver: u32, case_ref: &str) -> Option<String> {
    if !four_eyes {
        return None;
    }
    match opened_uid {
        Some(uid) if uid != approver => None,
        Some(uid) => Some(format!(
            "four_eyes: uid {uid} opened case {case_ref} and may not approve it too; another member of workcopy staff must approve it"
        )),
        None => Some(format!(
            "four_eyes: the register does not say who opened case {case_ref}, so no one may approve it; reject it and register it again"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_eyes_refuses_only_the_opener() {
        assert_eq!(four_eyes_refusal(false, Some(1500), 1500, "R"), None);
        assert_eq!(four_eyes_refusal(true, Some(1500), 1501, "R"), None);
        let m = four_eyes_refusal(true, Some(1500), 1500, "R").unwrap_or_default();
        assert!(m.starts_with("four_eyes") && m.contains("another member"), "{m}");
        assert!(four_eyes_refusal(true, None, 0, "R").is_some());
        assert_eq!(four_eyes_refusal(false, None, 0, "R"), None);
    }

    #[test]
    fn staff_is_root_or_a_member_of_the_staff_group() {
        assert!(is_staff(0, 100, &[], 900));
        assert!(is_staff(1000, 900, &[], 900));
        assert!(is_staff(1000, 100, &[5, 900], 900));
        assert!(!is_staff(1000, 100, &[5, 6], 900));
    }
}
