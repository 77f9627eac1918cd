//! The FUSE adapter: translates each kernel request into a call on the
//! [`ExportFs`] core and its result into a reply. Errors become errno values
//! in one place ([`errno`]). Every mutating operation answers `EROFS`.

use super::fs::{Attr, Caller, ExportFs, FsError, Kind};
use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// The one mapping from core errors to errno.
pub fn errno(e: &FsError) -> Errno {
    match e {
        FsError::NotFound => Errno::ENOENT,
        FsError::ReadOnly => Errno::EROFS,
        FsError::NotDir => Errno::ENOTDIR,
        FsError::IsDir => Errno::EISDIR,
        FsError::NoAttr => Errno::NO_XATTR,
        FsError::Range => Errno::ERANGE,
        FsError::Revoked => Errno::EIO,
        FsError::AuditFailed(_) => Errno::EIO,
        FsError::Integrity(_) => Errno::EIO,
        FsError::Changeable(_) => Errno::EIO,
        FsError::BadHandle => Errno::EBADF,
        FsError::TooManyOpen => Errno::EMFILE,
        FsError::Io(io) => io.raw_os_error().map(Errno::from_i32).unwrap_or(Errno::EIO),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        groups: Vec::new(),
    }
}

fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let t = time(a.mtime_ns);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: match a.kind {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 1 << 20,
        flags: 0,
    }
}

/// Keeps one `BackingId` per inode while any open of it is live, as the
/// kernel requires for passthrough.
#[derive(Default)]
struct Backings {
    by_fh: HashMap<u64, Arc<BackingId>>,
    by_ino: HashMap<u64, Weak<BackingId>>,
}

pub struct FuseAdapter {
    core: Arc<ExportFs>,
    passthrough: Arc<AtomicBool>,
    backings: Mutex<Backings>,
}

impl FuseAdapter {
    /// `passthrough` says on entry whether passthrough may be used, and after
    /// `init` whether it is.
    pub fn new(core: Arc<ExportFs>, passthrough: Arc<AtomicBool>) -> FuseAdapter {
        FuseAdapter {
            core,
            passthrough,
            backings: Mutex::new(Backings::default()),
        }
    }

    fn fail(op: &str, e: FsError) -> Errno {
        match &e {
            FsError::NotFound | FsError::NoAttr | FsError::ReadOnly => debug!(op, error = %e),
            _ => warn!(op, error = %e, "request failed"),
        }
        errno(&e)
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(u32::MAX).or_else(|max| config.set_max_readahead(max));
        if self.passthrough.load(Ordering::Acquire)
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok()
        {
            self.passthrough.store(true, Ordering::Release);
            info!("kernel passthrough enabled: reads are served by the kernel from the backing files");
        } else {
            self.passthrough.store(false, Ordering::Release);
            info!("kernel passthrough unavailable: reads are served in user space");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.core.lookup(&caller(req), parent.0, name) {
            Ok((attr, ttl)) => reply.entry_with_ttls(&super::fs::TTL, &ttl, &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(Self::fail("lookup", e)),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.core.getattr(&caller(req), ino.0) {
            Ok(a) => reply.attr(&super::fs::TTL, &file_attr(&a)),
            Err(e) => reply.error(Self::fail("getattr", e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(Errno::EINVAL);
    }

    fn mknod(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _r: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _t: &Path, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn rename(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _np: INodeNo, _nn: &OsStr, _f: RenameFlags, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY) || flags.0 & (libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT) != 0;
        let (fh, file) = match self.core.open(&caller(req), ino.0, write) {
            Ok(x) => x,
            Err(e) => return reply.error(Self::fail("open", e)),
        };
        if self.passthrough.load(Ordering::Acquire) {
            let mut b = crate::sync::lock(&self.backings);
            let existing = b.by_ino.get(&ino.0).and_then(Weak::upgrade);
            let id = match existing {
                Some(id) => Some(id),
                None => match reply.open_backing(&*file) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        b.by_ino.insert(ino.0, Arc::downgrade(&id));
                        Some(id)
                    }
                    Err(e) => {
                        warn!(error = %e, "passthrough open failed; serving this file in user space");
                        None
                    }
                },
            };
            if let Some(id) = id {
                b.by_fh.insert(fh, id.clone());
                return reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
            }
        }
        // No FOPEN_KEEP_CACHE: each open reads through the daemon again, so
        // the read record written at release counts what this open was served.
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // `reply` is used in exactly one of the two arms.
        let reply = std::cell::Cell::new(Some(reply));
        let sent = self.core.read_with(fh.0, offset, size, |data| {
            if let Some(r) = reply.take() {
                r.data(data);
            }
        });
        if let (Err(e), Some(r)) = (sent, reply.take()) {
            r.error(Self::fail("read", e));
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lo: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lo: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _f: OpenFlags,
        _lo: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let passthrough = {
            let mut b = crate::sync::lock(&self.backings);
            let had = b.by_fh.remove(&fh.0).is_some();
            if had && b.by_ino.get(&ino.0).and_then(Weak::upgrade).is_none() {
                b.by_ino.remove(&ino.0);
            }
            had
        };
        self.core.release(fh.0, passthrough);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.core.opendir(&caller(req), ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(Self::fail("opendir", e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        match self.core.readdir(ino.0, fh.0, offset) {
            Ok(entries) => {
                for (ino, kind, name, next) in entries {
                    let ft = match kind {
                        Kind::Dir => FileType::Directory,
                        Kind::File => FileType::RegularFile,
                    };
                    if reply.add(INodeNo(ino), next, ft, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(Self::fail("readdir", e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 1 << 20, 255, 1 << 20);
    }

    fn setxattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, _v: &[u8], _f: i32, _p: u32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::NO_XATTR);
        };
        match self.core.getxattr(&caller(req), ino.0, name) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(errno(&FsError::Range)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(Self::fail("getxattr", e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.core.listxattr(&caller(req), ino.0) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(errno(&FsError::Range)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(Self::fail("listxattr", e)),
        }
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        match self.core.getattr(&caller(req), ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(Self::fail("access", e)),
        }
    }

    fn create(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, _f: i32, reply: ReplyCreate) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _o: u64, _l: u64, _m: i32, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}
