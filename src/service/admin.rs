//! Catalog import, status and audit verification.

use super::Service;
use super::caselog::LogCheck;
use super::request::refuse;
use crate::control::proto::{AuditReport, RefusalKind, Reply, Response, StatusReply};
use crate::db::{CatalogRows, ImportSummary, Store, StoreError};
use crate::domain::case::CaseState;
use crate::domain::catalog::{CatalogError, parse_catalog_batches};
use crate::names::DirId;
use crate::sync::{Cancel, CancelRead};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use tracing::info;

/// The largest catalog file one import reads (a national catalog of ten
/// million files is about 1.7 GB).
pub const MAX_CATALOG_BYTES: u64 = 8 << 30;

/// Parses the catalog `reader` gives, on a thread of its own, while `store`
/// writes the rows already parsed: one import, committed only if the whole
/// file is good. What `catalog import` runs.
pub async fn import_catalog(
    store: &dyn Store,
    reader: impl std::io::Read + Send + 'static,
    known_department: impl Fn(&DirId) -> bool + Send + 'static,
) -> Result<ImportSummary, StoreError> {
    let (tx, rows) = CatalogRows::channel();
    let parser = tokio::task::spawn_blocking(move || {
        let mut reader = std::io::BufReader::with_capacity(1 << 20, reader);
        let parsed = parse_catalog_batches(&mut reader, &known_department, &mut |batch| tx.send_blocking(batch));
        tx.end_blocking(parsed.map(|_| ()));
    });
    let stored = store.import_catalog(rows).await;
    // The store read to the end, or gave up and so stopped the parse.
    parser
        .await
        .map_err(|e| StoreError::Catalog(CatalogError::Io(format!("the catalog parser failed: {e}"))))?;
    stored
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a pipe"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// The sizes of the regular files beneath `dir`, added up (symlinks not followed).
pub(super) fn bytes_under(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

impl Service {
    pub(super) async fn status(&self) -> Response {
        let read_path = *crate::sync::read(&self.read_path);
        let mounted = read_path.is_some() && crate::export::mount::is_mounted(&self.cfg.mount_point);
        // The register's figures, if the database answers: status must
        // answer without it, and say so.
        let register = async {
            Ok::<_, crate::db::StoreError>((
                self.store.catalog_size().await?,
                self.store.catalog_changed_at().await?,
                self.store.count_by_state().await?,
            ))
        }
        .await;
        let (catalog_files, catalog_changed_at, cases) = match register {
            Ok(r) => {
                self.database_answered();
                r
            }
            Err(e) => {
                self.database_failed(&e.to_string());
                (0, None, Vec::new())
            }
        };
        Ok(Reply::Status(StatusReply {
            version: env!("CARGO_PKG_VERSION").into(),
            mode: self.cfg.mode,
            mount_point: self.cfg.mount_point.display().to_string(),
            mounted,
            read_path,
            catalog_files,
            catalog_changed_at,
            cases,
            directory_departments: self.directory().departments.len(),
            bytes_served: self.stats.bytes_served.load(Ordering::Relaxed),
            pulls_in_progress: self.stats.open_files.load(Ordering::Relaxed),
            started_at: self.started.1.clone(),
            uptime_secs: self.started.0.elapsed().as_secs(),
            staging_bytes: tokio::task::spawn_blocking({
                let dir = self.cfg.staging_dir();
                move || bytes_under(&dir)
            })
            .await
            .unwrap_or(0),
            host: self.cfg.host.clone(),
            shared_register: self.cfg.shared_register(),
            database_unreachable: self.unreachable(),
        }))
    }

    pub(super) async fn catalog_import(&self, fd: OwnedFd, cancel: Cancel) -> Response {
        let dir = self.directory();
        let file = std::fs::File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| refuse(RefusalKind::Invalid, format!("cannot read the catalog file: {e}")))?;
        if !meta.is_file() {
            return Err(refuse(
                RefusalKind::Invalid,
                format!("the catalog must be a regular file, not {}", file_kind(&meta)),
            ));
        }
        if meta.len() > MAX_CATALOG_BYTES {
            return Err(refuse(
                RefusalKind::Invalid,
                format!(
                    "the catalog is {} bytes; the limit is {MAX_CATALOG_BYTES} (split it into several imports)",
                    meta.len()
                ),
            ));
        }
        let reader = CancelRead { inner: file, cancel };
        let summary = import_catalog(self.store.as_ref(), reader, move |d| dir.departments.contains_key(d)).await?;
        info!(
            rows = summary.rows,
            added = summary.added,
            updated = summary.updated,
            "catalog imported"
        );
        Ok(Reply::Imported(summary))
    }

    pub(super) async fn audit_verify(&self) -> Response {
        let started = std::time::Instant::now();
        let cases = self.store.list_cases(None, None).await?;
        let mut report = AuditReport {
            cases: cases.len() as u64,
            records: 0,
            sealed_files: 0,
            failures: Vec::new(),
        };
        for c in &cases {
            // Page by page up to the head read first: pulls append records all the time.
            let (count, head) = match self.check_log(&c.case_ref).await? {
                LogCheck::Intact { records, head } => (records, head),
                LogCheck::Broken(e) => {
                    report.records += c.event_count;
                    report.failures.push(e.to_string());
                    continue;
                }
            };
            report.records += count;
            match self.check_sealed_file(&c.case_ref, count, &head).await {
                Some(checked) => {
                    report.sealed_files += 1;
                    if let Err(failure) = checked {
                        report.failures.push(failure);
                    }
                }
                // On a shared register the host that sealed the case keeps its file.
                None if c.state.is_terminal() && self.sealed_elsewhere(&c.case_ref, count).await => {}
                None if c.state.is_terminal() => report.failures.push(format!(
                    "case {}: the sealed log {} is missing",
                    c.case_ref,
                    self.sealed_path(&c.case_ref).display()
                )),
                None => {}
            }
        }
        self.audited(report.cases, report.failures.len() as u64, started.elapsed());
        Ok(Reply::Audit(report))
    }

    /// Whether the case's seal says another host of a shared register sealed
    /// it (and so holds its sealed log file).
    async fn sealed_elsewhere(&self, case_ref: &str, count: u64) -> bool {
        if !self.cfg.shared_register() {
            return false;
        }
        match self.last_record(case_ref, count).await {
            Ok(Some(e)) if e.kind() == Some(crate::audit::EventKind::Sealed) => {
                e.details.get("host").and_then(|h| h.as_str()).is_some_and(|h| h != self.cfg.host)
            }
            _ => false,
        }
    }

    pub async fn status_line(&self) -> String {
        match self.store.count_by_state().await {
            Ok(counts) => {
                let get = |s: CaseState| counts.iter().find(|(x, _)| *x == s).map(|(_, n)| *n).unwrap_or(0);
                format!(
                    "{} exported, {} awaiting approval, {} staging, {} received; {} file(s) open",
                    get(CaseState::Exported),
                    get(CaseState::Open),
                    get(CaseState::Approved),
                    get(CaseState::Received),
                    self.stats.open_files.load(Ordering::Relaxed)
                )
            }
            Err(e) => format!("case register unreadable: {e}"),
        }
    }
}
