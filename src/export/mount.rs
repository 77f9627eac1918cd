//! Attaching the export filesystem to `mount_point`, and detaching it: on
//! shutdown, and at start when a crashed daemon left a dead mount behind.

use super::fs::{ExportFs, Invalidator};
use super::fuse::FuseAdapter;
use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, Session, SessionACL};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tracing::{info, warn};

pub const FSNAME: &str = "workcopy";

struct KernelInvalidator(Notifier);

impl Invalidator for KernelInvalidator {
    fn entry(&self, parent: u64, name: &str) {
        // ENOENT only means the kernel had nothing cached.
        let _ = self.0.inval_entry(INodeNo(parent), OsStr::new(name));
    }
    fn inode(&self, ino: u64) {
        let _ = self.0.inval_inode(INodeNo(ino), 0, 0);
    }
}

/// Whether a workcopy FUSE filesystem is mounted at `path` (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let mp = f.get(4).map(|m| m.replace("\\040", " ")).unwrap_or_default();
        let fstype = f.iter().position(|x| *x == "-").and_then(|i| f.get(i + 1)).copied().unwrap_or("");
        mp == want && fstype.starts_with("fuse")
    })
}

/// Detaches a mount left at `path` by a daemon that died (its FUSE
/// connection is gone: `stat` fails with ENOTCONN), or any FUSE mount there
/// while no daemon owns the control socket. Returns whether it detached one.
pub fn detach_stale(path: &Path) -> std::io::Result<bool> {
    let stale = match std::fs::metadata(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => true,
        _ => is_mounted(path),
    };
    if !stale {
        return Ok(false);
    }
    warn!(mount_point = %path.display(), "detaching a stale mount left by an earlier run");
    nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH).map_err(std::io::Error::from)?;
    Ok(true)
}

/// Readahead of the mount, in KiB. The kernel's default (128) makes the
/// user-space read path issue small requests; at 4 MiB it reads at about
/// twice the speed (scripts/bench, read). Passthrough reads are unaffected.
const READAHEAD_KB: u32 = 4096;

/// Sets the mount's readahead through its backing-device entry in sysfs
/// (best effort: a kernel without it reads with the default).
fn raise_readahead(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else { return };
    let dev = meta.dev();
    let bdi = format!("/sys/class/bdi/{}:{}/read_ahead_kb", libc::major(dev), libc::minor(dev));
    match std::fs::write(&bdi, READAHEAD_KB.to_string()) {
        Ok(()) => info!(read_ahead_kb = READAHEAD_KB, "mount readahead raised"),
        Err(e) => warn!(error = %e, path = %bdi, "cannot raise the mount's readahead"),
    }
}

pub struct Mounted {
    session: Option<BackgroundSession>,
    path: PathBuf,
}

/// Mounts read-only for everyone, with kernel permission checks on top of
/// the core's own, no set-uid, devices or execution.
pub fn mount(core: Arc<ExportFs>, path: &Path, passthrough: Arc<AtomicBool>) -> std::io::Result<Mounted> {
    detach_stale(path)?;
    std::fs::create_dir_all(path)?;
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(FSNAME.into()),
        MountOption::Subtype(FSNAME.into()),
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::NoAtime,
        MountOption::DefaultPermissions,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(4);
    let adapter = FuseAdapter::new(core.clone(), passthrough);
    let session = Session::new(adapter, path, &config)?;
    core.set_invalidator(Arc::new(KernelInvalidator(session.notifier())));
    let session = session.spawn()?;
    info!(mount_point = %path.display(), "export mounted");
    raise_readahead(path);
    Ok(Mounted {
        session: Some(session),
        path: path.to_path_buf(),
    })
}

impl Mounted {
    /// Detaches the mount. Readers still inside get errors; the kernel ends
    /// the connection when the process exits.
    pub fn unmount(mut self) {
        if let Err(e) = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH) {
            warn!(error = %e, "unmount failed");
        }
        if let Some(s) = self.session.take() {
            // Do not join: with a reader still inside, the session lives until it lets go.
            std::mem::forget(s);
        }
        info!(mount_point = %self.path.display(), "export unmounted");
    }
}
