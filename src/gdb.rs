//! GDB files as the daemon reads them: `gdb_root` opened once, catalog paths
//! opened strictly beneath it, and the identity of a file whose bytes were
//! verified. Staging (which verifies) and the export (which serves direct-mode
//! files) both rest on this and on nothing of each other.

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{SFlag, fstat};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// Opens `gdb_root` once; files are resolved relative to it.
pub fn open_root(root: &Path) -> std::io::Result<OwnedFd> {
    let f = File::open(root)?;
    if !f.metadata()?.is_dir() {
        return Err(std::io::Error::other(format!("{} is not a directory", root.display())));
    }
    Ok(f.into())
}

/// Why a catalog path was not opened beneath `gdb_root`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeneathError {
    #[error("the path leads outside gdb_root")]
    Outside,
    #[error("the path goes through a symbolic link")]
    Symlink,
    #[error("no such file")]
    NotFound,
    #[error("not a regular file")]
    NotRegular,
    #[error("{}", .0.desc())]
    Os(Errno),
}

impl From<Errno> for BeneathError {
    fn from(e: Errno) -> Self {
        match e {
            Errno::EXDEV => BeneathError::Outside,
            Errno::ELOOP => BeneathError::Symlink,
            Errno::ENOENT => BeneathError::NotFound,
            e => BeneathError::Os(e),
        }
    }
}

/// Opens a catalog path read-only beneath the root: no symlink anywhere on
/// the way, no escape by `..` or an absolute path, nothing but a regular file.
pub fn open_beneath(root: impl AsFd, rel: &str) -> Result<File, BeneathError> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let file = File::from(openat2(root, rel, how)?);
    if SFlag::from_bits_truncate(fstat(&file)?.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(BeneathError::NotRegular);
    }
    // Clear O_NONBLOCK (used only so opening a FIFO cannot hang) for plain reads.
    let _ = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_RDONLY));
    Ok(file)
}

/// What identifies a file's verified state: a changed file changes at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileIdentity {
    pub fn of(meta: &std::fs::Metadata) -> FileIdentity {
        use std::os::unix::fs::MetadataExt;
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        }
    }
}
