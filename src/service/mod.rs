//! The daemon's operations. Requests enter in `request`, which authorizes
//! them and hands them to the handlers (`cases`, `admin`); state changes and
//! their effects (staging started, mount changed, staging deleted, log sealed)
//! live in `lifecycle`; `jobs` stage and verify files and return what they
//! found; `recovery` runs after a start and on the expiry timer; `access_log`
//! writes the mount's access records; `caselog` reads and writes case logs a
//! page at a time. Rules come from `domain`, storage from
//! `db`, visibility goes to the export table.

mod access_log;
mod admin;
mod caselog;
mod cases;
mod feed;
mod hosts;
mod jobs;
mod lifecycle;
mod metrics;
mod recovery;
mod request;
mod selfservice;

pub use access_log::StoreAccessLog;
pub use admin::import_catalog;
pub use jobs::StagingJob;
pub use metrics::{AUDIT_EVERY, AUDIT_FIRST, CheckedAt, Counters};
pub use selfservice::find as find_files;

use crate::audit::Actor;
use crate::config::Config;
use crate::db::Store;
use crate::domain::authz::no_longer_authorized;
use crate::domain::directory::{Directory, DirectoryError};
use crate::export::ReadPath;
use crate::export::table::ExportTable;
use crate::unix::NameCache;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use tracing::{error, info};

pub use crate::unix::Caller;

/// Counters the mount updates and `status` reports.
#[derive(Debug, Default)]
pub struct Stats {
    pub bytes_served: Arc<AtomicU64>,
    pub open_files: Arc<AtomicU64>,
}

pub struct Service {
    pub cfg: Config,
    store: Arc<dyn Store>,
    directory: RwLock<Arc<Directory>>,
    staff_gid: u32,
    names: NameCache,
    pub exports: Arc<ExportTable>,
    gdb_root: Arc<OwnedFd>,
    jobs: Mutex<HashMap<String, Arc<StagingJob>>>,
    /// The workers every staging job and re-verification shares (`verify_workers`).
    pool: crate::pool::Pool,
    pub stats: Arc<Stats>,
    /// What `metrics` counts besides `stats`.
    pub counters: Arc<Counters>,
    /// The read path `status` reports; set by the daemon once it mounted.
    pub read_path: RwLock<Option<ReadPath>>,
    /// Held across "state change + mount change" (export, close, reload), so
    /// the mount never shows what the case's state or the directory forbids.
    visibility: tokio::sync::Mutex<()>,
    /// Held while a case is cleaned up and sealed.
    finishing: tokio::sync::Mutex<()>,
    /// Refused receipts recorded per case in this run (bounded).
    refusals_recorded: Mutex<HashMap<String, u32>>,
    /// Signalled when a case is registered or changes state (the daemon
    /// refreshes systemd's STATUS= line on it). A change while nobody waits
    /// is kept until the next wait.
    pub state_changed: tokio::sync::Notify,
    /// When the service was built (the daemon's start), for `status`.
    started: (std::time::Instant, String),
    /// sha256 of the directory file in force, reported in heartbeats.
    directory_digest: RwLock<String>,
    /// Since when, and why, the database does not answer (`None`: it does).
    unreachable: Mutex<Option<crate::control::proto::Unreachable>>,
}

impl Service {
    pub fn new(cfg: Config, store: Arc<dyn Store>, directory: Directory, staff_gid: u32) -> std::io::Result<Arc<Service>> {
        let gdb_root =
            crate::gdb::open_root(&cfg.gdb_root).map_err(|e| std::io::Error::other(format!("gdb_root {}: {e}", cfg.gdb_root.display())))?;
        let cfg_directory = cfg.directory.clone();
        let pool = crate::pool::Pool::new(cfg.verify_workers);
        Ok(Arc::new(Service {
            cfg,
            store,
            directory: RwLock::new(Arc::new(directory)),
            staff_gid,
            names: NameCache::default(),
            exports: ExportTable::new(),
            gdb_root: Arc::new(gdb_root),
            jobs: Mutex::new(HashMap::new()),
            pool,
            stats: Arc::new(Stats::default()),
            counters: Arc::new(Counters::default()),
            read_path: RwLock::new(None),
            visibility: tokio::sync::Mutex::new(()),
            finishing: tokio::sync::Mutex::new(()),
            refusals_recorded: Mutex::new(HashMap::new()),
            state_changed: tokio::sync::Notify::new(),
            started: (std::time::Instant::now(), crate::audit::now_rfc3339()),
            directory_digest: RwLock::new(file_digest(&cfg_directory)),
            unreachable: Mutex::new(None),
        }))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn directory(&self) -> Arc<Directory> {
        crate::sync::read(&self.directory).clone()
    }

    pub fn gdb_root(&self) -> Arc<OwnedFd> {
        self.gdb_root.clone()
    }

    pub fn staff_gid(&self) -> u32 {
        self.staff_gid
    }

    /// Reads the directory file again; a bad file leaves the old one in force.
    /// Exported cases follow it: a case whose rule 1 no longer holds leaves
    /// the mount, and a case directory's owner is the department's current
    /// transfer account (root only, for a department that left).
    pub async fn reload_directory(&self) -> Result<(), DirectoryError> {
        let d = match Directory::load(&self.cfg.directory, &crate::unix::resolve_user) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                error!(error = %e, "directory reload refused; the previous directory stays in force");
                return Err(e);
            }
        };
        let _visibility = self.visibility.lock().await;
        *crate::sync::write(&self.directory) = d.clone();
        *crate::sync::write(&self.directory_digest) = file_digest(&self.cfg.directory);
        for case in self.exports.all() {
            let files = match self.store.case_files(&case.case_ref).await {
                Ok(f) => f,
                Err(e) => {
                    error!(case = %case.case_ref, error = %e, "cannot re-check the case after the reload");
                    continue;
                }
            };
            if let Some(reason) = no_longer_authorized(&d, Some(&case.department), &files) {
                self.hide(&case.case_ref, &format!("no longer authorized after a directory reload: {reason}"))
                    .await;
                continue;
            }
            let owner = d.department(&case.department).map(|x| x.transfer_uid).unwrap_or(0);
            if owner != case.owner_uid {
                info!(case = %case.case_ref, "case directory owner follows the reloaded directory");
                let mut updated = (*case).clone();
                updated.owner_uid = owner;
                self.publish(updated).await;
            }
        }
        info!(departments = d.departments.len(), "directory reloaded");
        Ok(())
    }

    pub fn actor(&self, uid: u32) -> Actor {
        self.names.actor(uid)
    }
}

/// The sha256 of a file's bytes (hex), or empty when it cannot be read: how
/// hosts compare their directory files.
fn file_digest(path: &std::path::Path) -> String {
    use sha2::Digest;
    std::fs::read(path)
        .map(|b| crate::audit::hex(&sha2::Sha256::digest(&b)))
        .unwrap_or_default()
}
