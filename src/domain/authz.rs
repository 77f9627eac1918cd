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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staff_is_root_or_a_member_of_the_staff_group() {
        assert!(is_staff(0, 100, &[], 900));
        assert!(is_staff(1000, 900, &[], 900));
        assert!(is_staff(1000, 100, &[5, 900], 900));
        assert!(!is_staff(1000, 100, &[5, 6], 900));
    }
}
