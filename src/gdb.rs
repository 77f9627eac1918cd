//! GDB files as the daemon reads them: `gdb_root` opened once, catalog paths
//! opened strictly beneath it, and the identity of a file whose bytes were
//! verified. Staging (which verifies) and the export (which serves direct-mode
//! files) both rest on this and on nothing of each other.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, OFlag, OpenHow, ResolveFlag, fcntl, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::warn;

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
    /// Absolute, or climbing out with `..`.
    #[error("the path leads outside gdb_root")]
    Outside,
    #[error("the path goes through a symbolic link")]
    Symlink,
    #[error("no such file")]
    NotFound,
    #[error("not a regular file")]
    NotRegular,
    /// Empty, or with an empty or `.` component, or a NUL byte.
    #[error("not a plain relative path")]
    Malformed,
    /// Another file took the name between the type check and the open.
    #[error("the file was replaced while it was being opened")]
    Replaced,
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

/// How a path is resolved beneath `gdb_root`. Both refuse the same paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// One `openat2` call with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`
    /// (Linux 5.6; refused by some seccomp filters, such as systemd's
    /// `RestrictSUIDSGID=`).
    Openat2,
    /// One `openat` per component, each with `O_NOFOLLOW`.
    Walk,
}

/// Set once `openat2` has answered ENOSYS or EPERM: from then on every open walks.
static OPENAT2_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Opens a catalog path read-only beneath the root: no symlink anywhere on
/// the way, no escape by `..` or an absolute path, nothing but a regular
/// file. The final object's type is checked on an `O_PATH` descriptor before
/// it is opened for reading, so a FIFO or device is never opened. Uses
/// `openat2` where the kernel (and the seccomp filter) allow it, and walks
/// the path otherwise.
pub fn open_beneath(root: impl AsFd, rel: &str) -> Result<File, BeneathError> {
    open_choosing(root.as_fd(), rel, &OPENAT2_UNAVAILABLE, &sys_openat2)
}

/// [`open_beneath`] by the given strategy, whether or not it is the one
/// this system would use.
pub fn open_beneath_with(strategy: Strategy, root: impl AsFd, rel: &str) -> Result<File, BeneathError> {
    check_path(rel)?;
    match strategy {
        Strategy::Openat2 => via_openat2(root.as_fd(), rel, &sys_openat2).unwrap_or_else(|e| Err(e.into())),
        Strategy::Walk => walk(root.as_fd(), rel),
    }
}

/// The `openat2` call, replaceable in tests.
type Openat2<'a> = dyn Fn(BorrowedFd<'_>, &str, OpenHow) -> nix::Result<OwnedFd> + 'a;

fn sys_openat2(dir: BorrowedFd<'_>, rel: &str, how: OpenHow) -> nix::Result<OwnedFd> {
    openat2(dir, rel, how)
}

/// Tries `openat2` unless it is known to be unavailable; on ENOSYS or EPERM
/// remembers that in `unavailable` and walks instead.
fn open_choosing(root: BorrowedFd<'_>, rel: &str, unavailable: &AtomicBool, call: &Openat2<'_>) -> Result<File, BeneathError> {
    check_path(rel)?;
    if !unavailable.load(Ordering::Relaxed) {
        match via_openat2(root, rel, call) {
            Ok(opened) => return opened,
            Err(e) => {
                if !unavailable.swap(true, Ordering::Relaxed) {
                    warn!(
                        "openat2 is not available ({}); GDB files are opened by walking their path",
                        e.desc()
                    );
                }
            }
        }
    }
    walk(root, rel)
}

/// Refuses, before anything is opened, what is not a plain relative path.
fn check_path(rel: &str) -> Result<(), BeneathError> {
    if rel.starts_with('/') {
        return Err(BeneathError::Outside);
    }
    if rel.contains('\0') {
        return Err(BeneathError::Malformed);
    }
    for part in rel.split('/') {
        match part {
            ".." => return Err(BeneathError::Outside),
            "" | "." => return Err(BeneathError::Malformed),
            _ => {}
        }
    }
    Ok(())
}

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_BENEATH
    .union(ResolveFlag::RESOLVE_NO_SYMLINKS)
    .union(ResolveFlag::RESOLVE_NO_MAGICLINKS);
/// The final component, to look at: a symlink gives a descriptor of the link itself.
const PATH_ONLY: OFlag = OFlag::O_PATH.union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);
/// A directory on the way.
const DIR_ON_THE_WAY: OFlag = PATH_ONLY.union(OFlag::O_DIRECTORY);
/// The final component, to read. O_NONBLOCK so that a FIFO swapped in after
/// the type check cannot hang the open; cleared once the file is known regular.
const READ: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NOCTTY);

/// Opens by `openat2`. The outer error says `openat2` itself is unavailable
/// (ENOSYS or EPERM on its first call); the inner result is the open's.
fn via_openat2(root: BorrowedFd<'_>, rel: &str, call: &Openat2<'_>) -> Result<Result<File, BeneathError>, Errno> {
    let path = match call(root, rel, OpenHow::new().flags(PATH_ONLY).resolve(RESOLVE)) {
        Err(e @ (Errno::ENOSYS | Errno::EPERM)) => return Err(e),
        Err(e) => return Ok(Err(e.into())),
        Ok(fd) => fd,
    };
    Ok((|| {
        let checked = regular(&path)?;
        let reader = call(root, rel, OpenHow::new().flags(READ).resolve(RESOLVE))?;
        same_regular_file(&checked, reader)
    })())
}

/// Opens by walking the path one component at a time, never following a symlink.
fn walk(root: BorrowedFd<'_>, rel: &str) -> Result<File, BeneathError> {
    let (dirs, name) = match rel.rsplit_once('/') {
        Some((dirs, name)) => (Some(dirs), name),
        None => (None, rel),
    };
    let mut held: Option<OwnedFd> = None;
    for part in dirs.into_iter().flat_map(|d| d.split('/')) {
        let dir = held.as_ref().map_or(root, |fd| fd.as_fd());
        let next = openat(dir, part, DIR_ON_THE_WAY, Mode::empty()).map_err(|e| not_a_directory(dir, part, e))?;
        held = Some(next);
    }
    let dir = held.as_ref().map_or(root, |fd| fd.as_fd());
    let path = openat(dir, name, PATH_ONLY, Mode::empty())?;
    let checked = regular(&path)?;
    let reader = openat(dir, name, READ, Mode::empty())?;
    same_regular_file(&checked, reader)
}

/// Why a component on the way did not open as a directory. O_NOFOLLOW with
/// O_DIRECTORY answers a symlink with ENOTDIR (with O_PATH) or ELOOP, so
/// ENOTDIR is told apart by looking at the entry itself.
fn not_a_directory(dir: BorrowedFd<'_>, part: &str, e: Errno) -> BeneathError {
    match e {
        Errno::ENOTDIR => match fstatat(dir, part, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if kind(&st) == SFlag::S_IFLNK => BeneathError::Symlink,
            _ => BeneathError::Os(e),
        },
        e => e.into(),
    }
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// The type check, on a descriptor that has not opened the object for reading.
fn regular(path: &OwnedFd) -> Result<FileStat, BeneathError> {
    let st = fstat(path)?;
    match kind(&st) {
        SFlag::S_IFREG => Ok(st),
        SFlag::S_IFLNK => Err(BeneathError::Symlink),
        _ => Err(BeneathError::NotRegular),
    }
}

/// Accepts the descriptor opened for reading only if it is the object that
/// passed the type check. Callers keep that object's `O_PATH` descriptor open
/// until this returns, so its inode number cannot pass to another file meanwhile.
fn same_regular_file(checked: &FileStat, reader: OwnedFd) -> Result<File, BeneathError> {
    let st = fstat(&reader)?;
    if (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino) {
        return Err(BeneathError::Replaced);
    }
    if kind(&st) != SFlag::S_IFREG {
        return Err(BeneathError::NotRegular);
    }
    fcntl(&reader, FcntlArg::F_SETFL(OFlag::empty()))?;
    Ok(File::from(reader))
}

/// Why an opened GDB file could change under a reader that holds it open.
/// Each reads after "GDB file X".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Changeable {
    /// A writable filesystem that keeps the immutable attribute, which is not set.
    #[error("is on a writable filesystem and not immutable")]
    Mutable,
    /// A writable filesystem that does not report the immutable attribute.
    #[error("is on a writable filesystem that has no immutable attribute")]
    NoImmutableAttribute,
    #[error("could not be checked ({})", .0.desc())]
    Os(Errno),
}

/// What a refusal by [`unchangeable`] tells an administrator to do.
pub const DIRECT_MODE_REMEDY: &str = "use mode = \"staged\", or make the file immutable (chattr +i) or its filesystem read-only";

/// Whether an opened file cannot change under a reader: its filesystem is
/// mounted read-only, or it has the immutable attribute. Direct mode serves
/// only such files, since Linux cannot take back a file a reader has open:
/// bytes changed in place would reach that reader unverified.
pub fn unchangeable(file: &File) -> Result<(), Changeable> {
    use nix::sys::statvfs::{FsFlags, fstatvfs};
    if fstatvfs(file).map_err(Changeable::Os)?.flags().contains(FsFlags::ST_RDONLY) {
        return Ok(());
    }
    let (attributes, supported) = statx_attributes(file).map_err(Changeable::Os)?;
    let immutable = libc::STATX_ATTR_IMMUTABLE as u64;
    if supported & immutable == 0 {
        Err(Changeable::NoImmutableAttribute)
    } else if attributes & immutable == 0 {
        Err(Changeable::Mutable)
    } else {
        Ok(())
    }
}

/// The file's attributes (`stx_attributes`) and those its filesystem
/// supports (`stx_attributes_mask`).
fn statx_attributes(file: &File) -> nix::Result<(u64, u64)> {
    use std::os::fd::AsRawFd;
    // SAFETY: `statx` is plain data, for which all zeroes is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the call, the path is a NUL-terminated
    // empty string (AT_EMPTY_PATH: the descriptor itself), and `st` is a
    // writable `statx` the kernel fills.
    let rc = unsafe { libc::statx(file.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_TYPE, &mut st) };
    Errno::result(rc)?;
    Ok((st.stx_attributes, st.stx_attributes_mask))
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

/// Helpers for tests that need a file which cannot change.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};

    /// Whether this process may set the immutable attribute and mount (as root).
    pub fn privileged() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// The immutable attribute on a file, removed again when dropped (an
    /// immutable file cannot be deleted, nor its directory).
    pub struct Immutable(PathBuf);

    impl Immutable {
        pub fn set(path: &Path) -> Immutable {
            let set = chattr("+i", path);
            assert!(set, "chattr +i {} failed", path.display());
            Immutable(path.to_path_buf())
        }
    }

    impl Drop for Immutable {
        fn drop(&mut self) {
            chattr("-i", &self.0);
        }
    }

    fn chattr(flag: &str, path: &Path) -> bool {
        let status = std::process::Command::new("chattr").arg(flag).arg(path).status();
        matches!(status, Ok(s) if s.success())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::{OpenOptionsExt, symlink};
    use std::path::PathBuf;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::Duration;

    use test_support::{Immutable, privileged};

    const BOTH: [Strategy; 2] = [Strategy::Openat2, Strategy::Walk];

    struct Tree {
        tmp: tempfile::TempDir,
        root: OwnedFd,
        /// Whether `null`, a character device, could be made (it takes CAP_MKNOD).
        device: bool,
    }

    impl Tree {
        fn path(&self, rel: &str) -> PathBuf {
            self.tmp.path().join("gdb").join(rel)
        }
    }

    fn tree() -> Tree {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = tmp.path().join("gdb");
        let made = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(root.join("runs/x"))?;
            std::fs::write(root.join("a.fq"), b"depth 0")?;
            std::fs::write(root.join("runs/x/b.fq"), b"depth 2")?;
            std::fs::write(tmp.path().join("secret"), b"outside")?;
            symlink("a.fq", root.join("inside.fq"))?;
            symlink(tmp.path().join("secret"), root.join("outside.fq"))?;
            symlink("x", root.join("runs/dirlink"))?;
            symlink(tmp.path(), root.join("up"))?;
            nix::unistd::mkfifo(&root.join("pipe"), Mode::from_bits_truncate(0o666))?;
            Ok(())
        })();
        made.unwrap_or_else(|e| panic!("{e}"));
        let device = nix::sys::stat::mknod(
            &root.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .is_ok();
        let root = open_root(&root).unwrap_or_else(|e| panic!("{e}"));
        Tree { tmp, root, device }
    }

    fn read(strategy: Strategy, root: &OwnedFd, rel: &str) -> Result<Vec<u8>, BeneathError> {
        let mut f = open_beneath_with(strategy, root, rel)?;
        let flags = OFlag::from_bits_truncate(fcntl(&f, FcntlArg::F_GETFL)?);
        assert!(!flags.contains(OFlag::O_NONBLOCK), "{strategy:?} {rel}: O_NONBLOCK left set");
        let mut out = Vec::new();
        f.read_to_end(&mut out)
            .map_err(|e| BeneathError::Os(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        Ok(out)
    }

    #[test]
    fn both_strategies_open_and_refuse_the_same_paths() {
        use BeneathError::*;
        let t = tree();
        let absolute = t.path("a.fq").to_string_lossy().into_owned();
        let mut cases: Vec<(&str, Result<&[u8], BeneathError>)> = vec![
            ("a.fq", Ok(b"depth 0")),
            ("runs/x/b.fq", Ok(b"depth 2")),
            ("../secret", Err(Outside)),
            ("runs/../../secret", Err(Outside)),
            ("runs/../a.fq", Err(Outside)),
            ("/etc/passwd", Err(Outside)),
            (&absolute, Err(Outside)),
            ("inside.fq", Err(Symlink)),
            ("outside.fq", Err(Symlink)),
            ("runs/dirlink/b.fq", Err(Symlink)),
            ("up/secret", Err(Symlink)),
            ("pipe", Err(NotRegular)),
            ("runs", Err(NotRegular)),
            ("runs/x", Err(NotRegular)),
            ("runs/none.fq", Err(NotFound)),
            ("none/b.fq", Err(NotFound)),
            ("a.fq/b", Err(Os(Errno::ENOTDIR))),
            ("", Err(Malformed)),
            (".", Err(Malformed)),
            ("./a.fq", Err(Malformed)),
            ("runs/./x/b.fq", Err(Malformed)),
            ("runs//x/b.fq", Err(Malformed)),
            ("runs/x/", Err(Malformed)),
            ("a.fq\0", Err(Malformed)),
        ];
        if t.device {
            cases.push(("null", Err(NotRegular)));
        }
        for strategy in BOTH {
            for (rel, want) in &cases {
                let got = read(strategy, &t.root, rel);
                assert_eq!(got.as_deref().map_err(Clone::clone), *want, "{strategy:?} {rel:?}");
            }
        }
    }

    #[test]
    fn a_fifo_is_refused_without_being_opened_for_reading() {
        let t = tree();
        for strategy in BOTH {
            // A writer's open blocks until a reader opens the FIFO: if it is
            // still blocked afterwards, nothing opened the FIFO for reading.
            let fifo = t.path("pipe");
            let target = fifo.clone();
            let writer = std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(target).map(drop));
            std::thread::sleep(Duration::from_millis(100));
            let root = t.root.try_clone().unwrap_or_else(|e| panic!("{e}"));
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || tx.send(open_beneath_with(strategy, &root, "pipe").map(drop)));
            let got = rx.recv_timeout(Duration::from_secs(10));
            let opened = writer.is_finished();
            // Let the writer go.
            let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo);
            assert!(matches!(writer.join(), Ok(Ok(()))), "{strategy:?}: the writer failed");
            drop(reader);
            assert_eq!(got, Ok(Err(BeneathError::NotRegular)), "{strategy:?}");
            assert!(!opened, "{strategy:?}: the FIFO was opened for reading");
        }
    }

    #[test]
    fn the_walk_takes_over_when_openat2_is_unavailable() {
        let t = tree();
        for errno in [Errno::ENOSYS, Errno::EPERM] {
            let unavailable = AtomicBool::new(false);
            let calls = AtomicUsize::new(0);
            let refusing = |_: BorrowedFd<'_>, _: &str, _: OpenHow| {
                calls.fetch_add(1, Ordering::Relaxed);
                Err(errno)
            };
            let mut out = Vec::new();
            let opened = open_choosing(t.root.as_fd(), "runs/x/b.fq", &unavailable, &refusing);
            opened
                .map(|mut f| f.read_to_end(&mut out))
                .unwrap_or_else(|e| panic!("{errno}: {e}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(out, b"depth 2");
            assert!(unavailable.load(Ordering::Relaxed), "{errno}");
            // Decided once: later opens walk without asking openat2 again, and refuse as it would.
            let refused = open_choosing(t.root.as_fd(), "runs/dirlink/b.fq", &unavailable, &refusing);
            assert_eq!(refused.err(), Some(BeneathError::Symlink), "{errno}");
            assert_eq!(calls.load(Ordering::Relaxed), 1, "{errno}");
        }
        // A refusal by a working openat2 is an answer, not a reason to walk.
        let unavailable = AtomicBool::new(false);
        let calls = AtomicUsize::new(0);
        let counting = |dir: BorrowedFd<'_>, rel: &str, how: OpenHow| {
            calls.fetch_add(1, Ordering::Relaxed);
            sys_openat2(dir, rel, how)
        };
        let refused = open_choosing(t.root.as_fd(), "outside.fq", &unavailable, &counting);
        assert_eq!(refused.err(), Some(BeneathError::Symlink));
        assert!(open_choosing(t.root.as_fd(), "a.fq", &unavailable, &counting).is_ok());
        assert!(!unavailable.load(Ordering::Relaxed));
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn an_entry_swapped_after_the_type_check_is_refused() {
        let t = tree();
        let open = |rel: &str, flags: OFlag| openat(t.root.as_fd(), rel, flags, Mode::empty()).unwrap_or_else(|e| panic!("{rel}: {e}"));
        let checked = fstat(open("a.fq", PATH_ONLY)).unwrap_or_else(|e| panic!("{e}"));
        let other = open("runs/x/b.fq", READ);
        assert_eq!(same_regular_file(&checked, other).err(), Some(BeneathError::Replaced));
        // A FIFO that took the name (and so passed the identity check) is still refused.
        let fifo = open("pipe", READ);
        let checked = fstat(&fifo).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(same_regular_file(&checked, fifo).err(), Some(BeneathError::NotRegular));
        let same = open("a.fq", READ);
        assert!(same_regular_file(&fstat(&same).unwrap_or_else(|e| panic!("{e}")), same).is_ok());
    }

    #[test]
    fn a_writable_file_can_change_until_it_is_made_immutable() {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = tmp.path().join("a.fq");
        std::fs::write(&path, b"depth 0").unwrap_or_else(|e| panic!("{e}"));
        let open = || File::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let f = open();
        let refused = unchangeable(&f);
        assert!(
            matches!(refused, Err(Changeable::Mutable | Changeable::NoImmutableAttribute)),
            "{refused:?}"
        );
        if !privileged() {
            eprintln!("not root: the immutable attribute is not tried");
            return;
        }
        {
            let _immutable = Immutable::set(&path);
            assert_eq!(unchangeable(&open()), Ok(()));
            // The attribute is read from the file each time, also through a descriptor opened before.
            assert_eq!(unchangeable(&f), Ok(()));
        }
        assert_eq!(unchangeable(&f), Err(Changeable::Mutable));
    }

    #[test]
    fn a_file_on_a_read_only_mount_cannot_change() {
        use nix::mount::{MsFlags, mount};
        if !privileged() {
            eprintln!("not root: read-only mounts are not tried");
            return;
        }
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir = tmp.path().join("gdb");
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join("a.fq"), b"depth 0").unwrap_or_else(|e| panic!("{e}"));
        let none = None::<&str>;
        let seen = std::thread::spawn(move || -> Result<_, String> {
            // A mount namespace for this thread alone: its mounts go with it.
            // SAFETY: unshare takes no pointers; it affects the calling thread.
            Errno::result(unsafe { libc::unshare(libc::CLONE_NEWNS) }).map_err(|e| format!("unshare: {e}"))?;
            let remount = |flags: MsFlags| mount(none, &dir, none, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags, none);
            (|| {
                mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
                mount(Some(&dir), &dir, none, MsFlags::MS_BIND, none)?;
                remount(MsFlags::MS_RDONLY)
            })()
            .map_err(|e| format!("read-only bind mount: {e}"))?;
            let f = File::open(dir.join("a.fq")).map_err(|e| e.to_string())?;
            let read_only = unchangeable(&f);
            remount(MsFlags::empty()).map_err(|e| format!("remount read-write: {e}"))?;
            Ok((read_only, unchangeable(&f)))
        })
        .join();
        let seen = seen.unwrap_or_else(|_| panic!("the mounting thread panicked"));
        assert_eq!(seen, Ok((Ok(()), Err(Changeable::Mutable))));
    }
}
