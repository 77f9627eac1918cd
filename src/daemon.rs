//! `workcopy serve`: loads config and directory, opens the case register,
//! recovers, listens on the control socket, expires cases, and reloads the
//! directory on SIGHUP until SIGTERM or SIGINT.

use crate::config::Config;
use crate::control::server;
use crate::domain::directory::Directory;
use crate::service::Service;
use anyhow::Context;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

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

/// Everything `serve` sets up before it accepts requests.
pub async fn start(cfg: Config) -> anyhow::Result<Arc<Service>> {
    prepare_dirs(&cfg)?;
    let directory = Directory::load(&cfg.directory, &crate::unix::resolve_user)?;
    let staff_gid = crate::unix::resolve_group(&cfg.staff_group)
        .map_err(|e| anyhow::anyhow!("config {}: key `staff_group`: {e}", cfg.source.display()))?;
    let store = crate::db::open(&cfg.database_url)
        .await
        .with_context(|| format!("cannot open the database {}", crate::config::redact_url(&cfg.database_url)))?;
    let svc = Service::new(cfg, store, directory, staff_gid)?;
    svc.recover().await.map_err(|e| anyhow::anyhow!("recovery failed: {e}"))?;
    Ok(svc)
}

pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let svc = start(cfg).await?;
    let listener = server::bind(&svc.cfg.socket).with_context(|| format!("cannot listen on {}", svc.cfg.socket.display()))?;
    let socket_path = svc.cfg.socket.clone();
    tokio::spawn(server::run(listener, svc.clone()));
    let expiry = svc.clone();
    tokio::spawn(async move {
        let every = (expiry.cfg.case_ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = expiry.expire_due().await {
                error!(error = %e, "expiry pass failed");
            }
        }
    });
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    info!(socket = %socket_path.display(), mode = %svc.cfg.mode, "workcopy serving");
    sd_notify("READY=1\nSTATUS=serving");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                sd_notify("RELOADING=1");
                let _ = svc.reload_directory();
                sd_notify("READY=1");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping");
    sd_notify("STOPPING=1");
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}
