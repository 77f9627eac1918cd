//! The set of cases visible in the mount, as the daemon publishes them. The
//! export filesystem reads only this (never the database) to answer lookups,
//! listings and reads.

use crate::gdb::FileIdentity;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// A file of a visible case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedFile {
    /// Its name in the case directory.
    pub name: String,
    pub file_id: String,
    pub sha256: String,
    pub size: u64,
    /// The file's `submitted_at`, unix nanoseconds: its mtime in the mount.
    pub mtime_ns: i64,
    /// Where its verified bytes are: the staged copy, or the GDB file in direct mode.
    pub backing: Backing,
    /// The backing file as it was when its bytes were verified; an open that
    /// finds anything else (the file was replaced or changed) fails.
    pub identity: Option<FileIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// An absolute path in the staging area.
    Staged(PathBuf),
    /// A catalog path, opened beneath `gdb_root` without following symlinks.
    Gdb(String),
}

/// A case as the mount shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedCase {
    pub case_ref: String,
    pub department: String,
    /// The department's transfer account: owner of the case directory.
    pub owner_uid: u32,
    /// The newest of its files' mtimes: the directory's mtime.
    pub mtime_ns: i64,
    pub files: Vec<ExportedFile>,
    /// The `SHA256SUMS` file's contents.
    pub sums: Vec<u8>,
}

/// Receives publish and withdraw events (the FUSE layer uses this to
/// invalidate kernel caches at once).
pub trait ExportListener: Send + Sync {
    fn published(&self, case: &ExportedCase);
    fn withdrawn(&self, case: &ExportedCase);
}

#[derive(Default)]
pub struct ExportTable {
    cases: RwLock<BTreeMap<String, Arc<ExportedCase>>>,
    listeners: RwLock<Vec<Arc<dyn ExportListener>>>,
}

impl ExportTable {
    pub fn new() -> Arc<ExportTable> {
        Arc::new(ExportTable::default())
    }

    pub fn listen(&self, l: Arc<dyn ExportListener>) {
        crate::sync::write(&self.listeners).push(l);
    }

    fn listeners(&self) -> Vec<Arc<dyn ExportListener>> {
        crate::sync::read(&self.listeners).clone()
    }

    pub fn publish(&self, case: ExportedCase) {
        let case = Arc::new(case);
        crate::sync::write(&self.cases).insert(case.case_ref.clone(), case.clone());
        for l in self.listeners() {
            l.published(&case);
        }
    }

    /// Removes a case; returns whether it was visible.
    pub fn withdraw(&self, case_ref: &str) -> bool {
        let gone = crate::sync::write(&self.cases).remove(case_ref);
        match gone {
            Some(c) => {
                for l in self.listeners() {
                    l.withdrawn(&c);
                }
                true
            }
            None => false,
        }
    }

    pub fn get(&self, case_ref: &str) -> Option<Arc<ExportedCase>> {
        crate::sync::read(&self.cases).get(case_ref).cloned()
    }

    /// All visible cases, in name order.
    pub fn all(&self) -> Vec<Arc<ExportedCase>> {
        crate::sync::read(&self.cases).values().cloned().collect()
    }
}
