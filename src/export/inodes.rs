//! Inode numbers for the export filesystem. The root is 1; every published
//! case gets a directory inode and one inode per file plus one for
//! `SHA256SUMS`. Numbers are not reused while the daemon runs (a 62-bit
//! keyed hash of a counter), so a kernel that still holds an old inode
//! cannot reach another case's file.

use super::table::ExportedCase;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub const ROOT: u64 = 1;

#[derive(Debug, Clone)]
pub enum Node {
    CaseDir {
        case: Arc<ExportedCase>,
        children: Vec<u64>,
    },
    /// `idx` indexes `case.files`.
    File {
        case: Arc<ExportedCase>,
        idx: usize,
    },
    Sums {
        case: Arc<ExportedCase>,
    },
}

impl Node {
    pub fn case(&self) -> &Arc<ExportedCase> {
        match self {
            Node::CaseDir { case, .. } | Node::File { case, .. } | Node::Sums { case } => case,
        }
    }
}

/// Inode numbers are a keyed hash of an allocation counter: unique in
/// practice (and checked against the live ones), and unordered, so the
/// numbers a department sees say nothing about how many other cases were
/// exported in between.
#[derive(Debug)]
pub struct InodeTable {
    next: u64,
    key: std::collections::hash_map::RandomState,
    nodes: HashMap<u64, Node>,
    by_case: BTreeMap<String, u64>,
}

impl Default for InodeTable {
    fn default() -> Self {
        InodeTable {
            next: 0,
            key: std::collections::hash_map::RandomState::new(),
            nodes: HashMap::new(),
            by_case: BTreeMap::new(),
        }
    }
}

/// What a removal took away, for kernel invalidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub case_ref: String,
    pub dir: u64,
    pub children: Vec<u64>,
}

impl InodeTable {
    fn alloc(&mut self) -> u64 {
        use std::hash::BuildHasher;
        loop {
            self.next += 1;
            // 62 bits: positive as an i64 everywhere, never 0 or the root.
            let ino = self.key.hash_one(self.next) >> 2;
            if ino > ROOT && !self.nodes.contains_key(&ino) {
                return ino;
            }
        }
    }

    /// Adds a case, replacing an earlier one of the same name (whose inodes go).
    /// Returns the case directory's inode and what was replaced.
    pub fn insert(&mut self, case: Arc<ExportedCase>) -> (u64, Option<Removed>) {
        if let Some(&dir) = self.by_case.get(&case.case_ref) {
            if let Some(Node::CaseDir { case: old, .. }) = self.nodes.get(&dir) {
                if **old == *case {
                    return (dir, None);
                }
            }
        }
        let replaced = self.remove(&case.case_ref);
        let dir = self.alloc();
        let mut children = Vec::with_capacity(case.files.len() + 1);
        for idx in 0..case.files.len() {
            let ino = self.alloc();
            self.nodes.insert(ino, Node::File { case: case.clone(), idx });
            children.push(ino);
        }
        let sums = self.alloc();
        self.nodes.insert(sums, Node::Sums { case: case.clone() });
        children.push(sums);
        self.by_case.insert(case.case_ref.clone(), dir);
        self.nodes.insert(dir, Node::CaseDir { case, children });
        (dir, replaced)
    }

    pub fn remove(&mut self, case_ref: &str) -> Option<Removed> {
        let dir = self.by_case.remove(case_ref)?;
        let children = match self.nodes.remove(&dir) {
            Some(Node::CaseDir { children, .. }) => children,
            _ => Vec::new(),
        };
        for c in &children {
            self.nodes.remove(c);
        }
        Some(Removed {
            case_ref: case_ref.to_string(),
            dir,
            children,
        })
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn case_dir(&self, case_ref: &str) -> Option<u64> {
        self.by_case.get(case_ref).copied()
    }

    /// The child of a case directory with this name.
    pub fn child(&self, dir: u64, name: &str) -> Option<u64> {
        let Some(Node::CaseDir { case, children }) = self.nodes.get(&dir) else {
            return None;
        };
        if name == crate::domain::verify::SUMS_NAME {
            return children.last().copied();
        }
        case.files
            .iter()
            .position(|f| f.name == name)
            .and_then(|i| children.get(i).copied())
    }

    /// Cases in name order with their directory inodes.
    pub fn cases(&self) -> impl Iterator<Item = (&str, u64)> {
        self.by_case.iter().map(|(k, v)| (k.as_str(), *v))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::export::table::{Backing, ExportedFile};
    use proptest::prelude::*;
    use std::collections::HashSet;

    pub(crate) fn case(name: &str, files: &[&str]) -> ExportedCase {
        ExportedCase {
            case_ref: name.into(),
            department: "D".into(),
            owner_uid: 2001,
            mtime_ns: 0,
            files: files
                .iter()
                .map(|f| ExportedFile {
                    name: f.to_string(),
                    file_id: format!("id-{f}"),
                    sha256: "0".repeat(64),
                    size: 0,
                    mtime_ns: 0,
                    backing: Backing::Gdb(f.to_string()),
                    identity: None,
                })
                .collect(),
            sums: Vec::new(),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, Vec<u8>),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, proptest::collection::vec(0u8..5, 0..4)).prop_map(|(c, f)| Op::Insert(c, f)),
            (0u8..6).prop_map(Op::Remove),
        ]
    }

    #[test]
    fn inode_numbers_say_nothing_about_order_or_other_tables() {
        let mut a = InodeTable::default();
        let mut b = InodeTable::default();
        let files = ["f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9"];
        let mut seq = Vec::new();
        // Twelve: a random order comes out sorted once in 479 million runs.
        for i in 0..12 {
            let (da, _) = a.insert(Arc::new(case(&format!("C{i}"), &files)));
            let (db, _) = b.insert(Arc::new(case(&format!("C{i}"), &files)));
            assert_ne!(da, db, "two daemons number the same cases alike");
            seq.push(da);
        }
        let mut sorted = seq.clone();
        sorted.sort_unstable();
        assert_ne!(seq, sorted, "directory inodes grow in allocation order");
        assert!(seq.iter().all(|i| *i > ROOT && *i < 1 << 62));
    }

    proptest! {
        #[test]
        fn table_matches_a_model(ops in proptest::collection::vec(op(), 1..60)) {
            let mut t = InodeTable::default();
            let mut model: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut ever: HashSet<u64> = HashSet::new();
            let mut live: HashSet<u64> = HashSet::new();
            for o in ops {
                match o {
                    Op::Insert(c, files) => {
                        let name = format!("C{c}");
                        let mut names: Vec<String> = files.iter().map(|f| format!("f{f}")).collect();
                        names.sort();
                        names.dedup();
                        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                        let before: HashSet<u64> = t.nodes.keys().copied().collect();
                        t.insert(Arc::new(case(&name, &refs)));
                        for ino in t.nodes.keys() {
                            if !before.contains(ino) {
                                prop_assert!(!ever.contains(ino), "inode {} reused", ino);
                            }
                        }
                        model.insert(name, names);
                    }
                    Op::Remove(c) => {
                        let name = format!("C{c}");
                        let had = model.remove(&name).is_some();
                        prop_assert_eq!(t.remove(&name).is_some(), had);
                    }
                }
                live.clear();
                live.extend(t.nodes.keys().copied());
                ever.extend(live.iter().copied());
                prop_assert!(!live.contains(&ROOT) && !live.contains(&0));
                let cases: Vec<String> = t.cases().map(|(n, _)| n.to_string()).collect();
                prop_assert_eq!(cases, model.keys().cloned().collect::<Vec<_>>());
                let mut expected_nodes = 0;
                for (name, files) in &model {
                    let dir = t.case_dir(name);
                    prop_assert!(dir.is_some());
                    let dir = dir.unwrap_or(0);
                    for f in files {
                        let ino = t.child(dir, f);
                        prop_assert!(ino.is_some());
                        match ino.and_then(|i| t.get(i)) {
                            Some(Node::File { case, idx }) => {
                                prop_assert_eq!(&case.case_ref, name);
                                prop_assert_eq!(&case.files[*idx].name, f);
                            }
                            other => prop_assert!(false, "{:?}", other),
                        }
                    }
                    let sums_is_sums = matches!(t.child(dir, "SHA256SUMS").and_then(|i| t.get(i)), Some(Node::Sums { .. }));
                    prop_assert!(sums_is_sums);
                    prop_assert!(t.child(dir, "missing").is_none());
                    expected_nodes += files.len() + 2;
                }
                prop_assert_eq!(t.len(), expected_nodes);
            }
        }
    }
}
