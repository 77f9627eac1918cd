//! `workcopy serve`: starts the runtime and logging, loads the directory,
//! opens the case register, recovers, listens on the control socket, expires
//! cases, and reloads the directory on SIGHUP until SIGTERM or SIGINT.

use crate::config::Config;
use crate::control::server;
use crate::domain::directory::Directory;
use crate::export::ReadPath;
use crate::export::fs::{ExportFs, OpenLimits};
use crate::service::{Service, StoreAccessLog};
use crate::unix::ProcStaff;
use anyhow::Context;
use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

/// The exit status of `serve` (and `config check`) when the config or the
/// directory is wrong: EX_CONFIG of sysexits.h. The unit names it in
/// `RestartPreventExitStatus=`, so systemd stops there instead of restarting
/// a daemon that cannot start until an admin edits a file.
pub const EX_CONFIG: u8 = 78;

/// Why `serve` ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config or the directory is wrong: starting again cannot help.
    #[error("{0:#}")]
    Config(anyhow::Error),
    /// Anything else (the database, the mount, the socket, gdb_root), which
    /// may well work on the next start.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

/// Runs the daemon until SIGTERM or SIGINT: `workcopy serve`.
pub fn run_serve(cfg: Config, verbose: u8) -> Result<(), ServeError> {
    init_logging(verbose);
    let setup = check_setup(&cfg, &cfg.directory).map_err(ServeError::Config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let result = rt.block_on(serve(cfg, setup));
    // Staging or hashing still running must not hold up the stop.
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(result?)
}

/// What the daemon reads at start besides the config and what a restart
/// cannot change: the directory (from `directory`, normally the config's)
/// and the staff group the config names. `workcopy config check` runs it too.
pub struct Setup {
    pub directory: Directory,
    pub staff_gid: u32,
}

pub fn check_setup(cfg: &Config, directory: &std::path::Path) -> anyhow::Result<Setup> {
    let directory = Directory::load(directory, &crate::unix::resolve_user)?;
    let staff_gid = crate::unix::resolve_group(&cfg.staff_group)
        .map_err(|e| anyhow::anyhow!("config {}: key `staff_group`: {e}", cfg.source.display()))?;
    Ok(Setup { directory, staff_gid })
}

/// Logs to stderr at info (-v info, -vv debug); `WORKCOPY_LOG` overrides.
/// Under systemd, in the journal's form (see [`crate::journal`]); elsewhere
/// with a timestamp and the level, coloured only on a terminal without
/// `NO_COLOR`.
fn init_logging(verbose: u8) {
    let filter = std::env::var("WORKCOPY_LOG")
        .ok()
        .unwrap_or_else(|| if verbose < 2 { "info" } else { "debug" }.to_string());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    let _ = if crate::journal::stderr_is_journal() {
        builder
            .with_ansi(false)
            .event_format(crate::journal::JournalFormat::default())
            .try_init()
    } else {
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        builder.with_target(false).with_ansi(colour).try_init()
    };
}

/// Tells systemd (when it started us with `Type=notify`) how we are.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = std::path::PathBuf::from(path);
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_os_str().as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name).and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

fn prepare_dirs(cfg: &Config) -> anyhow::Result<()> {
    for (dir, mode) in [(&cfg.state_dir, 0o700), (&cfg.staging_dir(), 0o700), (&cfg.caselog_dir(), 0o700)] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    }
    Ok(())
}

/// Opens the case register and builds the service (nothing mounted or listening yet).
pub async fn open_service(cfg: Config, setup: Setup) -> anyhow::Result<Arc<Service>> {
    prepare_dirs(&cfg)?;
    let Setup { directory, staff_gid } = setup;
    // A store error's text already names its cause, which it also keeps as its
    // source: one message, so the cause is not printed twice.
    let store = crate::db::open(&cfg.database_url, cfg.database_password_file.as_deref())
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the database {}: {e}", crate::config::redact_url(&cfg.database_url)))?;
    Ok(Service::new(cfg, store, directory, staff_gid)?)
}

/// Descriptors kept for the daemon itself (database, gdb_root, staging,
/// sockets) beyond what the mount's open files may take.
const DAEMON_RESERVE: usize = 1024;

/// Raises the soft limit on open descriptors to the hard one (systemd's
/// default hard limit is 524288) and returns the limit in force.
fn raise_descriptor_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the one struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// The export filesystem core for a service, listening to its export table.
pub fn export_fs(svc: &Arc<Service>) -> Arc<ExportFs> {
    let limits = OpenLimits {
        per_account: svc.cfg.max_open_files_per_account,
        total: raise_descriptor_limit().saturating_sub(DAEMON_RESERVE).max(64),
    };
    let fs = Arc::new(
        ExportFs::new(
            Box::new(ProcStaff::new(svc.staff_gid())),
            svc.staff_gid(),
            svc.gdb_root(),
            Arc::new(StoreAccessLog::new(svc, tokio::runtime::Handle::current())),
            svc.stats.bytes_served.clone(),
            svc.stats.open_files.clone(),
        )
        .with_open_limits(limits),
    );
    svc.exports.listen(fs.clone());
    fs
}

pub async fn serve(cfg: Config, setup: Setup) -> anyhow::Result<()> {
    let svc = open_service(cfg, setup).await?;
    // Binding first also tells whether another daemon is running.
    let listener = server::bind(&svc.cfg.socket).with_context(|| format!("cannot listen on {}", svc.cfg.socket.display()))?;
    let socket_path = svc.cfg.socket.clone();
    let fs = export_fs(&svc);
    let passthrough = Arc::new(AtomicBool::new(svc.cfg.passthrough));
    let mount_point = svc.cfg.mount_point.clone();
    let mounted = tokio::task::spawn_blocking({
        let fs = fs.clone();
        let passthrough = passthrough.clone();
        move || crate::export::mount::mount(fs, &mount_point, passthrough)
    })
    .await?
    .with_context(|| format!("cannot mount the export at {}", svc.cfg.mount_point.display()));
    let mounted = match mounted {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&socket_path);
            return Err(e);
        }
    };
    let read_path = if passthrough.load(Ordering::Acquire) {
        ReadPath::Passthrough
    } else if svc.cfg.passthrough {
        ReadPath::UserSpaceNoKernelSupport
    } else {
        ReadPath::UserSpaceByConfig
    };
    *crate::sync::write(&svc.read_path) = Some(read_path);
    if let Err(e) = svc.recover().await {
        mounted.unmount();
        let _ = std::fs::remove_file(&socket_path);
        anyhow::bail!("recovery failed: {e}");
    }
    tokio::spawn(server::run(listener, svc.clone()));
    let expiry = svc.clone();
    tokio::spawn(async move {
        let every = (expiry.cfg.case_ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = expiry.expire_due().await {
                error!(error = %e, "expiry pass failed");
            }
            sd_notify(&format!("STATUS={}", expiry.status_line().await));
        }
    });
    // STATUS= follows every registration and state change, not only the timer.
    let status = svc.clone();
    tokio::spawn(async move {
        loop {
            status.state_changed.notified().await;
            sd_notify(&format!("STATUS={}", status.status_line().await));
        }
    });
    tokio::spawn(svc.clone().fold_counted_accesses());
    tokio::spawn(svc.clone().audit_periodically());
    // The first heartbeat before anything else asks who the hosts are.
    tokio::spawn(svc.clone().run_heartbeat());
    tokio::spawn(svc.clone().run_reconciler());
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    info!(socket = %socket_path.display(), mode = %svc.cfg.mode, verify_workers = svc.cfg.verify_workers, read_path = ?read_path, "workcopy serving");
    sd_notify(&format!("READY=1\nSTATUS={}", svc.status_line().await));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                sd_notify("RELOADING=1");
                let _ = svc.reload_directory().await;
                sd_notify("READY=1");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping");
    sd_notify("STOPPING=1");
    let _ = std::fs::remove_file(&socket_path);
    mounted.unmount();
    Ok(())
}
