//! The export filesystem's core: who may see what, attributes, directory
//! listings, opens with their access record, reads. No kernel in the loop:
//! `fuse.rs` translates FUSE requests into these calls and their errors into
//! errno values.

use super::inodes::{InodeTable, Node, ROOT, Removed};
use super::table::{Backing, ExportListener, ExportedCase};
use crate::gdb::{Changeable, FileIdentity, open_beneath, unchangeable};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;
use tracing::{error, warn};

pub const XATTR_FILE_ID: &str = "user.workcopy.file_id";
pub const XATTR_SHA256: &str = "user.workcopy.sha256";

/// How long the kernel may cache a case directory's entry: zero, so every
/// path walk asks again and another department's caller never profits from
/// an entry cached for the owner.
pub const CASE_ENTRY_TTL: Duration = Duration::ZERO;
/// Files inside a case directory (reachable only through it) and attributes.
pub const TTL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such entry")]
    NotFound,
    #[error("read-only file system")]
    ReadOnly,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("no such attribute")]
    NoAttr,
    #[error("attribute buffer too small")]
    Range,
    #[error("the case was closed while the file was open")]
    Revoked,
    #[error("the account holds its share of open files already")]
    TooManyOpen,
    #[error("the access record could not be written: {0}")]
    AuditFailed(#[source] AccessLogError),
    #[error("the backing file is not the verified one: {0}")]
    Integrity(String),
    #[error("direct mode serves only files that cannot change under a reader: the GDB file {0}")]
    Changeable(Changeable),
    #[error("bad file handle")]
    BadHandle,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

use crate::sync as lock;
pub use crate::unix::Caller;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// Attributes in the form the adapter turns into `FileAttr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub mtime_ns: i64,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
}

/// An open by a caller, as written to the case log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub case_ref: String,
    pub uid: u32,
    pub pid: u32,
    pub file: String,
    pub file_id: String,
    pub staff: bool,
}

/// Why an access could not be recorded (the log's own error, kept as the source).
pub type AccessLogError = Box<dyn std::error::Error + Send + Sync>;

/// Where accesses are recorded. `opened` must succeed before the open does.
pub trait AccessLog: Send + Sync {
    fn opened(&self, a: &Access) -> Result<(), AccessLogError>;
    fn released(&self, a: &Access, bytes_read: u64, size: u64);
}

/// Tells the kernel to drop cached entries and inodes.
pub trait Invalidator: Send + Sync {
    fn entry(&self, parent: u64, name: &str);
    fn inode(&self, ino: u64);
}

/// Decides whether a caller is staff (its primary or supplementary groups).
pub trait StaffCheck: Send + Sync {
    fn is_staff(&self, c: &Caller) -> bool;
}

impl StaffCheck for crate::unix::ProcStaff {
    fn is_staff(&self, c: &Caller) -> bool {
        self.is_member(c.uid, c.gid, c.pid)
    }
}

struct OpenFile {
    file: Arc<File>,
    access: Access,
    size: u64,
    read: AtomicU64,
    revoked: Arc<AtomicBool>,
}

struct DirHandle {
    entries: Vec<(u64, Kind, String)>,
}

/// The filesystem core.
pub struct ExportFs {
    table: RwLock<InodeTable>,
    staff: Box<dyn StaffCheck>,
    staff_gid: u32,
    gdb_root: Arc<OwnedFd>,
    log: Arc<dyn AccessLog>,
    invalidator: OnceLock<Arc<dyn Invalidator>>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, DirHandle>>,
    /// Per case: a flag every open file of it shares; set when the case leaves.
    revoked: Mutex<HashMap<String, Arc<AtomicBool>>>,
    next_fh: AtomicU64,
    pub bytes_served: Arc<AtomicU64>,
    pub open_files: Arc<AtomicU64>,
    open_limits: OpenLimits,
    /// Files each uid holds open now.
    open_per_uid: Mutex<HashMap<u32, usize>>,
}

/// How many files may be open in the mount at once. Each open holds one of
/// the daemon's descriptors, so no account may take them from the others or
/// from the daemon itself (its database, gdb_root, staging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenLimits {
    /// For one transfer account (staff are bounded only by `total`).
    pub per_account: usize,
    /// For everyone together: what the daemon can spare.
    pub total: usize,
}

impl Default for OpenLimits {
    fn default() -> OpenLimits {
        OpenLimits {
            per_account: 1024,
            total: 16 * 1024,
        }
    }
}

impl ExportFs {
    pub fn new(
        staff: Box<dyn StaffCheck>,
        staff_gid: u32,
        gdb_root: Arc<OwnedFd>,
        log: Arc<dyn AccessLog>,
        bytes_served: Arc<AtomicU64>,
        open_files: Arc<AtomicU64>,
    ) -> ExportFs {
        ExportFs {
            open_limits: OpenLimits::default(),
            open_per_uid: Mutex::new(HashMap::new()),
            table: RwLock::new(InodeTable::default()),
            staff,
            staff_gid,
            gdb_root,
            log,
            invalidator: OnceLock::new(),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            bytes_served,
            open_files,
        }
    }

    /// Bounds the files held open in the mount (see [`OpenLimits`]).
    pub fn with_open_limits(mut self, limits: OpenLimits) -> ExportFs {
        self.open_limits = limits;
        self
    }

    /// Takes one of `c`'s open-file slots, or says it holds its share already.
    fn take_open_slot(&self, c: &Caller, staff: bool) -> Result<(), FsError> {
        let mut held = lock::lock(&self.open_per_uid);
        let total: usize = held.values().sum();
        let mine = held.get(&c.uid).copied().unwrap_or(0);
        if total >= self.open_limits.total || (!staff && mine >= self.open_limits.per_account) {
            warn!(uid = c.uid, open = mine, "open refused: the account holds its share of open files");
            return Err(FsError::TooManyOpen);
        }
        held.insert(c.uid, mine + 1);
        Ok(())
    }

    fn give_open_slot(&self, uid: u32) {
        let mut held = lock::lock(&self.open_per_uid);
        if let Some(n) = held.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&uid);
            }
        }
    }

    pub fn set_invalidator(&self, inv: Arc<dyn Invalidator>) {
        let _ = self.invalidator.set(inv);
    }

    fn may_see(&self, c: &Caller, case: &ExportedCase) -> bool {
        c.uid == case.owner_uid || self.staff.is_staff(c)
    }

    fn node(&self, ino: u64) -> Option<Node> {
        lock::read(&self.table).get(ino).cloned()
    }

    fn root_attr(&self) -> Attr {
        Attr {
            ino: ROOT,
            kind: Kind::Dir,
            size: 0,
            mtime_ns: 0,
            perm: 0o555,
            uid: 0,
            gid: 0,
            nlink: 2,
        }
    }

    fn attr_of(&self, ino: u64, node: &Node) -> Attr {
        let case = node.case();
        match node {
            Node::CaseDir { .. } => Attr {
                ino,
                kind: Kind::Dir,
                size: 0,
                mtime_ns: case.mtime_ns,
                perm: 0o550,
                uid: case.owner_uid,
                gid: self.staff_gid,
                nlink: 2,
            },
            Node::File { idx, .. } => {
                let f = &case.files[*idx];
                Attr {
                    ino,
                    kind: Kind::File,
                    size: f.size,
                    mtime_ns: f.mtime_ns,
                    perm: 0o440,
                    uid: case.owner_uid,
                    gid: self.staff_gid,
                    nlink: 1,
                }
            }
            Node::Sums { .. } => Attr {
                ino,
                kind: Kind::File,
                size: case.sums.len() as u64,
                mtime_ns: case.mtime_ns,
                perm: 0o440,
                uid: case.owner_uid,
                gid: self.staff_gid,
                nlink: 1,
            },
        }
    }

    /// Looks a name up; returns the attributes and how long the kernel may cache the entry.
    pub fn lookup(&self, c: &Caller, parent: u64, name: &str) -> Result<(Attr, Duration), FsError> {
        let t = lock::read(&self.table);
        if parent == ROOT {
            let dir = t.case_dir(name).ok_or(FsError::NotFound)?;
            let node = t.get(dir).ok_or(FsError::NotFound)?;
            if !self.may_see(c, node.case()) {
                return Err(FsError::NotFound);
            }
            return Ok((self.attr_of(dir, node), CASE_ENTRY_TTL));
        }
        let node = t.get(parent).ok_or(FsError::NotFound)?;
        if !matches!(node, Node::CaseDir { .. }) {
            return Err(FsError::NotDir);
        }
        if !self.may_see(c, node.case()) {
            return Err(FsError::NotFound);
        }
        let ino = t.child(parent, name).ok_or(FsError::NotFound)?;
        let child = t.get(ino).ok_or(FsError::NotFound)?;
        Ok((self.attr_of(ino, child), TTL))
    }

    pub fn getattr(&self, c: &Caller, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT {
            return Ok(self.root_attr());
        }
        let node = self.node(ino).ok_or(FsError::NotFound)?;
        if !self.may_see(c, node.case()) {
            return Err(FsError::NotFound);
        }
        Ok(self.attr_of(ino, &node))
    }

    /// Opens a directory: the listing is taken now, for this caller.
    pub fn opendir(&self, c: &Caller, ino: u64) -> Result<u64, FsError> {
        let t = lock::read(&self.table);
        let entries = if ino == ROOT {
            t.cases()
                .filter_map(|(name, dir)| {
                    t.get(dir)
                        .filter(|n| self.may_see(c, n.case()))
                        .map(|_| (dir, Kind::Dir, name.to_string()))
                })
                .collect()
        } else {
            let node = t.get(ino).ok_or(FsError::NotFound)?;
            let Node::CaseDir { case, children } = node else {
                return Err(FsError::NotDir);
            };
            if !self.may_see(c, case) {
                return Err(FsError::NotFound);
            }
            let mut v: Vec<(u64, Kind, String)> = case
                .files
                .iter()
                .zip(children)
                .map(|(f, ino)| (*ino, Kind::File, f.name.clone()))
                .collect();
            if let Some(s) = children.last() {
                v.push((*s, Kind::File, crate::domain::verify::SUMS_NAME.to_string()));
            }
            v
        };
        drop(t);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock::lock(&self.dirs).insert(fh, DirHandle { entries });
        Ok(fh)
    }

    /// Entries from `offset` on: (inode, kind, name, offset of the next entry).
    /// `.` and `..` come first.
    pub fn readdir(&self, dir_ino: u64, fh: u64, offset: u64) -> Result<Vec<(u64, Kind, String, u64)>, FsError> {
        let d = lock::lock(&self.dirs);
        let h = d.get(&fh).ok_or(FsError::BadHandle)?;
        let mut all = vec![(dir_ino, Kind::Dir, ".".to_string()), (ROOT, Kind::Dir, "..".to_string())];
        all.extend(h.entries.iter().cloned());
        Ok(all
            .into_iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (ino, k, n))| (ino, k, n, i as u64 + 1))
            .collect())
    }

    pub fn releasedir(&self, fh: u64) {
        lock::lock(&self.dirs).remove(&fh);
    }

    /// The flag shared by a visible case's open files; none once it left.
    fn revoked_flag(&self, case_ref: &str) -> Option<Arc<AtomicBool>> {
        lock::lock(&self.revoked).get(case_ref).cloned()
    }

    /// Opens a file read-only. The access is recorded before the open
    /// succeeds; the backing file must be the verified one.
    pub fn open(&self, c: &Caller, ino: u64, write: bool) -> Result<(u64, Arc<File>), FsError> {
        // The node and its case's revocation flag are read together, so an
        // open cannot pair a replaced node with the new version's flag.
        let (node, revoked) = {
            let t = lock::read(&self.table);
            let node = t.get(ino).cloned().ok_or(FsError::NotFound)?;
            let revoked = self.revoked_flag(&node.case().case_ref).ok_or(FsError::NotFound)?;
            (node, revoked)
        };
        let case = node.case().clone();
        if !self.may_see(c, &case) {
            return Err(FsError::NotFound);
        }
        if write {
            return Err(FsError::ReadOnly);
        }
        // A slot first, so an account that holds its share gets EMFILE before
        // anything is opened or recorded; given back on every failure below.
        let staff = c.uid != case.owner_uid;
        self.take_open_slot(c, staff)?;
        let opened = self.open_slot_taken(c, &node, &case, revoked);
        if opened.is_err() {
            self.give_open_slot(c.uid);
        }
        opened
    }

    fn open_slot_taken(&self, c: &Caller, node: &Node, case: &ExportedCase, revoked: Arc<AtomicBool>) -> Result<(u64, Arc<File>), FsError> {
        let (file, name, file_id, size) = match node {
            Node::CaseDir { .. } => return Err(FsError::IsDir),
            Node::Sums { .. } => (
                Arc::new(sums_file(&case.sums)?),
                crate::domain::verify::SUMS_NAME.to_string(),
                String::new(),
                case.sums.len() as u64,
            ),
            Node::File { idx, .. } => {
                let f = &case.files[*idx];
                let file = match &f.backing {
                    Backing::Staged(p) => std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                        .open(p)?,
                    // The error names the catalog path; logs get only the file id.
                    Backing::Gdb(rel) => open_beneath(&*self.gdb_root, rel)
                        .map_err(|_| FsError::Integrity(format!("GDB file {} cannot be opened beneath gdb_root", f.file_id)))?,
                };
                if let Some(id) = f.identity {
                    let now = FileIdentity::of(&file.metadata()?);
                    if now != id {
                        error!(case = %case.case_ref, file_id = %f.file_id, "backing file changed since verification; open refused");
                        return Err(FsError::Integrity("the backing file changed since it was verified".into()));
                    }
                }
                // A reader keeps what it opened: only a GDB file that cannot
                // change under it may be handed out. Logged by file id, not path.
                if matches!(f.backing, Backing::Gdb(_)) {
                    unchangeable(&file).map_err(|why| {
                        error!(
                            case = %case.case_ref,
                            file_id = %f.file_id,
                            "GDB file {why}, so it could change under a reader; open refused (direct mode)"
                        );
                        FsError::Changeable(why)
                    })?;
                }
                (Arc::new(file), f.name.clone(), f.file_id.clone(), f.size)
            }
        };
        let access = Access {
            case_ref: case.case_ref.clone(),
            uid: c.uid,
            pid: c.pid,
            file: name,
            file_id,
            staff: c.uid != case.owner_uid,
        };
        self.log.opened(&access).map_err(FsError::AuditFailed)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let open = Arc::new(OpenFile {
            file: file.clone(),
            access,
            size,
            read: AtomicU64::new(0),
            revoked,
        });
        lock::lock(&self.files).insert(fh, open);
        self.open_files.fetch_add(1, Ordering::Relaxed);
        Ok((fh, file))
    }

    /// Reads up to `size` bytes at `offset`: the full length unless the file ends first.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        self.read_with(fh, offset, size, <[u8]>::to_vec)
    }

    /// Like [`read`](Self::read), handing the bytes to `reply` from a buffer
    /// each FUSE thread keeps, so the hot path neither allocates nor zeroes.
    pub fn read_with<R>(&self, fh: u64, offset: u64, size: u32, reply: impl FnOnce(&[u8]) -> R) -> Result<R, FsError> {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let f = lock::lock(&self.files).get(&fh).cloned().ok_or(FsError::BadHandle)?;
        if f.revoked.load(Ordering::Acquire) {
            return Err(FsError::Revoked);
        }
        let want = (size as u64).min(f.size.saturating_sub(offset)) as usize;
        BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let buf = &mut buf[..want];
            let mut done = 0;
            while done < want {
                match f.file.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            if done < want {
                // The verified file is shorter than it was: never serve short data silently.
                return Err(FsError::Integrity(format!(
                    "backing file ended after {} bytes",
                    offset + done as u64
                )));
            }
            if f.revoked.load(Ordering::Acquire) {
                return Err(FsError::Revoked);
            }
            f.read.fetch_add(done as u64, Ordering::Relaxed);
            self.bytes_served.fetch_add(done as u64, Ordering::Relaxed);
            Ok(reply(buf))
        })
    }

    /// Bytes delivered through a passthrough open are read by the kernel
    /// without us, so only user-space opens get a read record.
    pub fn release(&self, fh: u64, passthrough: bool) {
        let f = lock::lock(&self.files).remove(&fh);
        if let Some(f) = f {
            self.give_open_slot(f.access.uid);
            self.open_files.fetch_sub(1, Ordering::Relaxed);
            if !passthrough {
                self.log.released(&f.access, f.read.load(Ordering::Relaxed), f.size);
            }
        }
    }

    pub fn getxattr(&self, c: &Caller, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        if ino == ROOT {
            return Err(FsError::NoAttr);
        }
        let node = self.node(ino).ok_or(FsError::NotFound)?;
        if !self.may_see(c, node.case()) {
            return Err(FsError::NotFound);
        }
        let Node::File { case, idx } = &node else {
            return Err(FsError::NoAttr);
        };
        let f = &case.files[*idx];
        match name {
            XATTR_FILE_ID => Ok(f.file_id.as_bytes().to_vec()),
            XATTR_SHA256 => Ok(f.sha256.as_bytes().to_vec()),
            _ => Err(FsError::NoAttr),
        }
    }

    pub fn listxattr(&self, c: &Caller, ino: u64) -> Result<Vec<u8>, FsError> {
        if ino == ROOT {
            return Ok(Vec::new());
        }
        let node = self.node(ino).ok_or(FsError::NotFound)?;
        if !self.may_see(c, node.case()) {
            return Err(FsError::NotFound);
        }
        Ok(match node {
            Node::File { .. } => format!("{XATTR_FILE_ID}\0{XATTR_SHA256}\0").into_bytes(),
            _ => Vec::new(),
        })
    }

    fn invalidate(&self, removed: &Removed) {
        let Some(inv) = self.invalidator.get() else { return };
        inv.entry(ROOT, &removed.case_ref);
        for ino in removed.children.iter().chain(std::iter::once(&removed.dir)) {
            inv.inode(*ino);
        }
    }

    pub fn case_count(&self) -> usize {
        lock::read(&self.table).cases().count()
    }
}

fn sums_file(bytes: &[u8]) -> std::io::Result<File> {
    // SHA256SUMS lives in memory; an anonymous sealed memfd gives it a file
    // descriptor like every other file, for both read paths.
    use std::io::Write;
    let fd = nix::sys::memfd::memfd_create(
        c"SHA256SUMS",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(std::io::Error::from)?;
    let mut f = File::from(fd);
    f.write_all(bytes)?;
    let seals = libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own with an integer argument.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::F_ADD_SEALS, seals) };
    Ok(f)
}

use std::os::unix::fs::OpenOptionsExt;

impl ExportListener for ExportFs {
    fn published(&self, case: &ExportedCase) {
        let case = Arc::new(case.clone());
        let replaced = {
            let mut t = lock::write(&self.table);
            let existed = t.case_dir(&case.case_ref).is_some();
            let (_, replaced) = t.insert(case.clone());
            // Files opened under an earlier version of the case (another owner,
            // say) must not go on reading: their flag is set, new opens get a
            // new one. Swapped while the table is still locked, so no open
            // can pair the new node with the old flag (same lock order as open).
            if !existed || replaced.is_some() {
                if let Some(old) = lock::lock(&self.revoked).insert(case.case_ref.clone(), Arc::new(AtomicBool::new(false))) {
                    old.store(true, Ordering::Release);
                }
            }
            replaced
        };
        if let Some(r) = replaced {
            self.invalidate(&r);
        }
        if let Some(inv) = self.invalidator.get() {
            inv.entry(ROOT, &case.case_ref);
        }
    }

    fn withdrawn(&self, case: &ExportedCase) {
        if let Some(flag) = lock::lock(&self.revoked).remove(&case.case_ref) {
            flag.store(true, Ordering::Release);
        }
        let removed = lock::write(&self.table).remove(&case.case_ref);
        match removed {
            Some(r) => self.invalidate(&r),
            None => warn!(case = %case.case_ref, "withdrawn case was not in the mount"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::table::{ExportTable, ExportedFile};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    const STAFF_UID: u32 = 1500;
    const OWNERS: [u32; 2] = [2001, 2002];

    struct FakeStaff;
    impl StaffCheck for FakeStaff {
        fn is_staff(&self, c: &Caller) -> bool {
            c.uid == 0 || c.uid == STAFF_UID
        }
    }

    #[derive(Default)]
    struct FakeLog {
        fail: AtomicBool,
        opened: Mutex<Vec<Access>>,
        released: Mutex<Vec<(Access, u64)>>,
    }
    impl AccessLog for FakeLog {
        fn opened(&self, a: &Access) -> Result<(), AccessLogError> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("disk full").into());
            }
            lock::lock(&self.opened).push(a.clone());
            Ok(())
        }
        fn released(&self, a: &Access, bytes: u64, _size: u64) {
            {
                let mut r = lock::lock(&self.released);
                r.push((a.clone(), bytes));
            }
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        table: Arc<ExportTable>,
        fs: Arc<ExportFs>,
        log: Arc<FakeLog>,
    }

    fn fixture() -> Fixture {
        fixture_with(OpenLimits::default())
    }

    fn fixture_with(limits: OpenLimits) -> Fixture {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root: OwnedFd = File::open(dir.path()).unwrap_or_else(|e| panic!("{e}")).into();
        let log = Arc::new(FakeLog::default());
        let fs = Arc::new(
            ExportFs::new(
                Box::new(FakeStaff),
                3000,
                Arc::new(root),
                log.clone(),
                Arc::new(AtomicU64::new(0)),
                Arc::new(AtomicU64::new(0)),
            )
            .with_open_limits(limits),
        );
        let table = ExportTable::new();
        table.listen(fs.clone());
        Fixture { dir, table, fs, log }
    }

    fn content(case: &str, file: &str) -> Vec<u8> {
        format!("@{case}/{file}\nACGTACGTNN\n+\n##########\n").repeat(3).into_bytes()
    }

    impl Fixture {
        fn publish(&self, case: &str, owner: u32, files: &[&str]) {
            let mut exported = Vec::new();
            for f in files {
                let data = content(case, f);
                let path = self.dir.path().join(format!("{case}-{f}"));
                std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{e}"));
                exported.push(ExportedFile {
                    name: f.to_string(),
                    file_id: format!("ID-{f}"),
                    sha256: crate::audit::hex(&<sha2::Sha256 as sha2::Digest>::digest(&data)),
                    size: data.len() as u64,
                    mtime_ns: 1_700_000_000_000_000_000,
                    backing: Backing::Staged(path),
                    identity: None,
                });
            }
            let sums = crate::receipt::format_sums(exported.iter().map(|f| (f.name.as_str(), f.sha256.as_str()))).into_bytes();
            self.table.publish(ExportedCase {
                case_ref: case.into(),
                department: "D".into(),
                owner_uid: owner,
                mtime_ns: 1_700_000_000_000_000_000,
                files: exported,
                sums,
            });
        }
    }

    /// The inode of a case's file, looked up as `c`.
    fn file_ino(f: &Fixture, c: &Caller, case: &str, name: &str) -> u64 {
        let (dir, _) = f.fs.lookup(c, ROOT, case).unwrap_or_else(|e| panic!("{e}"));
        f.fs.lookup(c, dir.ino, name).unwrap_or_else(|e| panic!("{e}")).0.ino
    }

    fn who(uid: u32) -> Caller {
        Caller {
            uid,
            gid: uid,
            pid: 4242,
            groups: Vec::new(),
        }
    }

    fn list(fs: &ExportFs, c: &Caller, ino: u64) -> Result<Vec<String>, FsError> {
        let fh = fs.opendir(c, ino)?;
        let names = fs
            .readdir(ino, fh, 0)?
            .into_iter()
            .map(|e| e.2)
            .filter(|n| n != "." && n != "..")
            .collect();
        fs.releasedir(fh);
        Ok(names)
    }

    fn read_all(fs: &ExportFs, c: &Caller, ino: u64) -> Result<Vec<u8>, FsError> {
        let (fh, _) = fs.open(c, ino, false)?;
        let mut out = Vec::new();
        loop {
            let chunk = fs.read(fh, out.len() as u64, 7)?;
            if chunk.is_empty() {
                break;
            }
            out.extend(chunk);
        }
        fs.release(fh, false);
        Ok(out)
    }

    #[test]
    fn isolation_readonly_xattrs_and_sums() {
        let f = fixture();
        f.publish("R-A", 2001, &["a b.fastq.gz", "x.spring"]);
        f.publish("R-B", 2002, &["y.fastq"]);
        let (a, b, staff) = (who(2001), who(2002), who(STAFF_UID));
        assert_eq!(list(&f.fs, &a, ROOT).ok(), Some(vec!["R-A".to_string()]));
        assert_eq!(list(&f.fs, &b, ROOT).ok(), Some(vec!["R-B".to_string()]));
        assert_eq!(list(&f.fs, &staff, ROOT).ok(), Some(vec!["R-A".to_string(), "R-B".to_string()]));
        assert!(matches!(f.fs.lookup(&b, ROOT, "R-A"), Err(FsError::NotFound)));
        let (dir, ttl) = f.fs.lookup(&a, ROOT, "R-A").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ttl, CASE_ENTRY_TTL);
        assert_eq!((dir.uid, dir.gid, dir.perm), (2001, 3000, 0o550));
        assert!(matches!(f.fs.opendir(&b, dir.ino), Err(FsError::NotFound)));
        assert!(matches!(f.fs.lookup(&b, dir.ino, "x.spring"), Err(FsError::NotFound)));
        let (file, _) = f.fs.lookup(&a, dir.ino, "a b.fastq.gz").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(f.fs.open(&b, file.ino, false), Err(FsError::NotFound)));
        assert!(matches!(f.fs.open(&a, file.ino, true), Err(FsError::ReadOnly)));
        assert!(matches!(f.fs.getxattr(&b, file.ino, XATTR_SHA256), Err(FsError::NotFound)));
        assert_eq!(f.fs.getxattr(&a, file.ino, XATTR_FILE_ID).ok(), Some(b"ID-a b.fastq.gz".to_vec()));
        assert!(matches!(f.fs.getxattr(&a, file.ino, "user.other"), Err(FsError::NoAttr)));
        assert_eq!(read_all(&f.fs, &a, file.ino).ok(), Some(content("R-A", "a b.fastq.gz")));
        let (sums, _) = f.fs.lookup(&a, dir.ino, "SHA256SUMS").unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8(read_all(&f.fs, &staff, sums.ino).unwrap_or_default()).unwrap_or_default();
        assert!(text.contains("  a b.fastq.gz\n") && text.contains("  x.spring\n"), "{text}");
        assert_eq!(
            list(&f.fs, &a, dir.ino).ok(),
            Some(vec!["a b.fastq.gz".into(), "x.spring".into(), "SHA256SUMS".into()])
        );
        let opened = lock::lock(&f.log.opened).clone();
        assert_eq!(opened.len(), 2);
        assert!(!opened[0].staff && opened[1].staff);
        let released = lock::lock(&f.log.released).clone();
        assert_eq!(released[0].1, content("R-A", "a b.fastq.gz").len() as u64);
    }

    #[test]
    fn an_account_gets_emfile_past_its_share_and_only_it() {
        let f = fixture_with(OpenLimits { per_account: 3, total: 5 });
        f.publish("A", 2001, &["a.fq"]);
        f.publish("B", 2002, &["b.fq"]);
        let (a, b) = (who(2001), who(2002));
        let fa = file_ino(&f, &a, "A", "a.fq");
        let fb = file_ino(&f, &b, "B", "b.fq");
        let held: Vec<u64> = (0..3)
            .map(|_| f.fs.open(&a, fa, false).unwrap_or_else(|e| panic!("{e}")).0)
            .collect();
        assert!(matches!(f.fs.open(&a, fa, false), Err(FsError::TooManyOpen)));
        assert_eq!(lock::lock(&f.log.opened).len(), 3, "a refused open is not recorded");
        // Another department is not affected.
        let fh_b = f.fs.open(&b, fb, false).unwrap_or_else(|e| panic!("{e}")).0;
        // Giving one back gives the account its slot back.
        f.fs.release(held[0], true);
        assert!(f.fs.open(&a, fa, false).is_ok());
        // The total bounds everyone together: 4 held, one more, then no more.
        let fifth = f.fs.open(&b, fb, false).unwrap_or_else(|e| panic!("{e}")).0;
        assert!(matches!(f.fs.open(&b, fb, false), Err(FsError::TooManyOpen)));
        f.fs.release(fh_b, true);
        f.fs.release(fifth, true);
        // A failed open gives its slot back too.
        f.log.fail.store(true, Ordering::Relaxed);
        assert!(matches!(f.fs.open(&b, fb, false), Err(FsError::AuditFailed(_))));
        f.log.fail.store(false, Ordering::Relaxed);
        assert!(f.fs.open(&b, fb, false).is_ok());
    }

    #[test]
    fn failing_access_log_refuses_the_open() {
        let f = fixture();
        f.publish("R", 2001, &["a.fq"]);
        let a = who(2001);
        let file = file_ino(&f, &a, "R", "a.fq");
        f.log.fail.store(true, Ordering::Relaxed);
        assert!(matches!(f.fs.open(&a, file, false), Err(FsError::AuditFailed(_))));
        assert_eq!(f.fs.open_files.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn reader_inside_a_withdrawn_case_gets_errors_not_short_data() {
        let f = fixture();
        f.publish("R", 2001, &["a.fq"]);
        let a = who(2001);
        let file = file_ino(&f, &a, "R", "a.fq");
        let (fh, _) = f.fs.open(&a, file, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f.fs.read(fh, 0, 4).ok(), Some(b"@R/a".to_vec()));
        f.table.withdraw("R");
        assert!(matches!(f.fs.read(fh, 4, 4), Err(FsError::Revoked)));
        assert!(matches!(f.fs.getattr(&a, file), Err(FsError::NotFound)));
        assert!(matches!(f.fs.open(&a, file, false), Err(FsError::NotFound)));
        assert!(matches!(f.fs.lookup(&a, ROOT, "R"), Err(FsError::NotFound)));
    }

    #[test]
    fn a_changed_backing_file_is_refused() {
        let f = fixture();
        f.publish("R", 2001, &["a.fq"]);
        let a = who(2001);
        let case = f.table.get("R").unwrap_or_else(|| panic!("published"));
        let mut changed = (*case).clone();
        let Backing::Staged(p) = changed.files[0].backing.clone() else {
            panic!("staged")
        };
        let meta = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{e}"));
        changed.files[0].identity = Some(FileIdentity::of(&meta));
        f.table.publish(changed);
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&p, b"tampered").unwrap_or_else(|e| panic!("{e}"));
        let file = file_ino(&f, &a, "R", "a.fq");
        assert!(matches!(f.fs.open(&a, file, false), Err(FsError::Integrity(_))));
    }

    #[test]
    fn a_gdb_file_that_can_change_under_a_reader_is_refused_at_open() {
        let f = fixture();
        let data = content("R", "a.fq");
        let path = f.dir.path().join("a.fq");
        std::fs::write(&path, &data).unwrap_or_else(|e| panic!("{e}"));
        // Published as direct mode does, with the identity the file has now.
        let publish = || {
            let identity = FileIdentity::of(&std::fs::metadata(&path).unwrap_or_else(|e| panic!("{e}")));
            let sha256 = crate::audit::hex(&<sha2::Sha256 as sha2::Digest>::digest(&data));
            f.table.publish(ExportedCase {
                case_ref: "R".into(),
                department: "D".into(),
                owner_uid: 2001,
                mtime_ns: 1_700_000_000_000_000_000,
                sums: crate::receipt::format_sums([("a.fq", sha256.as_str())].into_iter()).into_bytes(),
                files: vec![ExportedFile {
                    name: "a.fq".into(),
                    file_id: "ID-a".into(),
                    sha256,
                    size: data.len() as u64,
                    mtime_ns: 1_700_000_000_000_000_000,
                    backing: Backing::Gdb("a.fq".into()),
                    identity: Some(identity),
                }],
            });
        };
        publish();
        let a = who(2001);
        let file = file_ino(&f, &a, "R", "a.fq");
        let refused = f.fs.open(&a, file, false);
        assert!(
            matches!(
                refused,
                Err(FsError::Changeable(Changeable::Mutable | Changeable::NoImmutableAttribute))
            ),
            "{:?}",
            refused.map(|o| o.0)
        );
        assert_eq!(lock::lock(&f.log.opened).len(), 0, "a refused open was recorded");
        assert_eq!(f.fs.open_files.load(Ordering::Relaxed), 0);
        if !crate::gdb::test_support::privileged() {
            eprintln!("not root: the immutable attribute is not tried");
            return;
        }
        let _immutable = crate::gdb::test_support::Immutable::set(&path);
        // Setting the attribute changed the ctime: the case is verified again and republished.
        publish();
        let file = file_ino(&f, &a, "R", "a.fq");
        assert_eq!(read_all(&f.fs, &a, file).ok(), Some(data.clone()));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Publish { case: u8, owner: usize, files: BTreeSet<u8> },
        Withdraw(u8),
        List(usize),
        Read { who: usize, case: u8, file: u8 },
        OpenThenWithdraw { case: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, 0usize..2, proptest::collection::btree_set(0u8..4, 0..4)).prop_map(|(case, owner, files)| Op::Publish {
                case,
                owner,
                files
            }),
            (0u8..4).prop_map(Op::Withdraw),
            (0usize..4).prop_map(Op::List),
            (0usize..4, 0u8..4, 0u8..4).prop_map(|(who, case, file)| Op::Read { who, case, file }),
            (0u8..4).prop_map(|case| Op::OpenThenWithdraw { case }),
        ]
    }

    /// Callers: the two owners, staff, and an account that owns nothing.
    fn caller_of(i: usize) -> Caller {
        who([OWNERS[0], OWNERS[1], STAFF_UID, 4242][i])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn core_matches_a_model(ops in proptest::collection::vec(op(), 1..40)) {
            let f = fixture();
            let mut model: BTreeMap<String, (u32, Vec<String>)> = BTreeMap::new();
            for o in ops {
                match o {
                    Op::Publish { case, owner, files } => {
                        let name = format!("C{case}");
                        if model.contains_key(&name) { continue; }
                        let files: Vec<String> = files.iter().map(|x| format!("f{x}.fq")).collect();
                        let refs: Vec<&str> = files.iter().map(String::as_str).collect();
                        f.publish(&name, OWNERS[owner], &refs);
                        model.insert(name, (OWNERS[owner], files));
                    }
                    Op::Withdraw(case) => {
                        let name = format!("C{case}");
                        prop_assert_eq!(f.table.withdraw(&name), model.remove(&name).is_some());
                    }
                    Op::List(i) => {
                        let c = caller_of(i);
                        let staff = c.uid == STAFF_UID;
                        let want: Vec<String> = model.iter().filter(|(_, (o, _))| staff || *o == c.uid).map(|(k, _)| k.clone()).collect();
                        prop_assert_eq!(list(&f.fs, &c, ROOT).ok(), Some(want));
                    }
                    Op::Read { who, case, file } => {
                        let c = caller_of(who);
                        let name = format!("C{case}");
                        let fname = format!("f{file}.fq");
                        let visible = model.get(&name).filter(|(o, _)| c.uid == STAFF_UID || *o == c.uid);
                        match f.fs.lookup(&c, ROOT, &name) {
                            Ok((dir, _)) => {
                                prop_assert!(visible.is_some());
                                let has = visible.map(|(_, fs)| fs.contains(&fname)).unwrap_or(false);
                                match f.fs.lookup(&c, dir.ino, &fname) {
                                    Ok((file, _)) => {
                                        prop_assert!(has);
                                        let got = read_all(&f.fs, &c, file.ino);
                                        prop_assert_eq!(got.ok(), Some(content(&name, &fname)));
                                    }
                                    Err(e) => prop_assert!(!has && matches!(e, FsError::NotFound)),
                                }
                            }
                            Err(e) => prop_assert!(visible.is_none() && matches!(e, FsError::NotFound)),
                        }
                    }
                    Op::OpenThenWithdraw { case } => {
                        let name = format!("C{case}");
                        let Some((owner, files)) = model.get(&name).cloned() else { continue };
                        let Some(first) = files.first() else { continue };
                        let c = who(owner);
                        let dir = f.fs.lookup(&c, ROOT, &name).map(|x| x.0.ino);
                        let file = dir.and_then(|d| f.fs.lookup(&c, d, first)).map(|x| x.0.ino);
                        let fh = file.and_then(|i| f.fs.open(&c, i, false)).map(|x| x.0);
                        prop_assert!(fh.is_ok());
                        let fh = fh.unwrap_or(0);
                        f.table.withdraw(&name);
                        model.remove(&name);
                        prop_assert!(matches!(f.fs.read(fh, 0, 16), Err(FsError::Revoked)));
                        f.fs.release(fh, false);
                    }
                }
            }
            prop_assert_eq!(f.fs.case_count(), model.len());
        }
    }
}
