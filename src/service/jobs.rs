//! Staging jobs: the table of running jobs, and the workers that copy or
//! check a case's files and return where the verified bytes are.

use super::request::refuse;
use super::{CheckedAt, Counters, Service};
use crate::config::Mode;
use crate::control::proto::{Refusal, RefusalKind};
use crate::domain::verify::CaseFile;
use crate::export::table::Backing;
use crate::gdb::FileIdentity;
use crate::pool::{Halt, Stopped};
use crate::staging::{self, Expect};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tracing::warn;

/// Why a case's files cannot be served: the reason a case is blocked or
/// kept out of the mount, recorded in its log.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotServable {
    #[error("{0}")]
    File(#[source] Arc<staging::StageError>),
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        dir: std::path::PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("cannot sync {}: {source}", dir.display())]
    SyncDir {
        dir: std::path::PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("staging task failed: {0}")]
    Task(#[source] Arc<tokio::task::JoinError>),
    #[error("no longer authorized: {0}")]
    NotAuthorized(String),
    #[error("department {department:?} of case {case_ref} is not in the directory")]
    DepartmentGone { department: String, case_ref: String },
    #[error("staging outcome lost")]
    Lost,
}

impl NotServable {
    fn file(e: staging::StageError) -> NotServable {
        NotServable::File(Arc::new(e))
    }
}

/// A running staging job: its progress, and a flag that stops it.
#[derive(Debug, Default)]
pub struct StagingJob {
    pub progress: staging::Progress,
    pub total: u64,
}

impl Service {
    /// Enters a staging job for the case in the table `view` and `stop_staging` read.
    pub(super) fn register_job(&self, case_ref: &str, files: &[CaseFile]) -> Result<Arc<StagingJob>, Refusal> {
        let job = Arc::new(StagingJob {
            progress: staging::Progress::default(),
            total: files.iter().map(|f| f.file.size).sum(),
        });
        let mut jobs = crate::sync::lock(&self.jobs);
        if jobs.contains_key(case_ref) {
            return Err(refuse(RefusalKind::State, format!("case {case_ref} is being staged already")));
        }
        jobs.insert(case_ref.to_string(), job.clone());
        Ok(job)
    }

    /// Brings every file to a verified state; returns where each file's bytes are.
    /// The files go through the daemon's pool of workers (`verify_workers`)
    /// in parallel; the first file that fails stops the others, and its
    /// reason is the outcome.
    pub(super) async fn stage_files(
        &self,
        case_ref: &str,
        files: &[CaseFile],
        job: &Arc<StagingJob>,
    ) -> Result<Vec<(Backing, FileIdentity)>, NotServable> {
        let counted = Counted::start(job);
        let outcome = self.stage_files_pooled(case_ref, files, job).await;
        counted.end(&self.counters);
        if let Err(NotServable::File(e)) = &outcome {
            if mismatch(e) {
                self.counters.verification_failed(CheckedAt::Staging);
            }
        }
        outcome
    }

    async fn stage_files_pooled(
        &self,
        case_ref: &str,
        files: &[CaseFile],
        job: &Arc<StagingJob>,
    ) -> Result<Vec<(Backing, FileIdentity)>, NotServable> {
        job.progress.halt.store(false, Ordering::Relaxed);
        let root = self.gdb_root.clone();
        let files_owned: Arc<Vec<CaseFile>> = Arc::new(files.to_vec());
        let halt = job.clone();
        let job = job.clone();
        if self.cfg.mode == Mode::Direct {
            // Each file must match and be unable to change under a reader.
            let verified = self
                .pool
                .run(files.len(), halt, move |i| -> Result<FileIdentity, staging::StageError> {
                    staging::verify_in_place(&*root, &expect(&files_owned[i]), &job.progress)
                })
                .await
                .map_err(|stopped| not_servable(case_ref, stopped))?;
            return Ok(files
                .iter()
                .zip(verified)
                .map(|(f, id)| (Backing::Gdb(f.file.path.to_string()), id))
                .collect());
        }
        let staging = self.cfg.staging_dir();
        let dir = staging::case_dir(&staging, case_ref);
        let fresh = dir.clone();
        blocking(move || {
            let _ = std::fs::remove_dir_all(&fresh);
            std::fs::create_dir_all(&fresh).map_err(|e| NotServable::CreateDir {
                dir: fresh.clone(),
                source: Arc::new(e),
            })
        })
        .await?;
        // Copy and verify every file first, then make them durable
        // together; only then can the case be published. Copies of a case
        // that failed are deleted as they are dropped.
        let case_ref_owned = case_ref.to_string();
        let copies = self
            .pool
            .run(files.len(), halt, move |i| {
                let dest = staging::staged_file(&staging, &case_ref_owned, i);
                staging::stage_copy_unsynced(&*root, &expect(&files_owned[i]), &dest, &job.progress).map(|c| (c, dest))
            })
            .await
            .map_err(|stopped| not_servable(case_ref, stopped))?;
        blocking(move || {
            let mut out = Vec::new();
            for (c, dest) in copies {
                out.push((Backing::Staged(dest), c.commit().map_err(NotServable::file)?));
            }
            staging::sync_dir(&dir).map_err(|e| NotServable::SyncDir {
                dir: dir.clone(),
                source: Arc::new(e),
            })?;
            Ok(out)
        })
        .await
    }

    pub(super) async fn remove_staging(&self, case_ref: &str) -> std::io::Result<()> {
        let dir = staging::case_dir(&self.cfg.staging_dir(), case_ref);
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            // A job that stopped a moment ago may still have been creating a file.
            Err(_) => std::fs::remove_dir_all(&dir).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }),
            Ok(()) => Ok(()),
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
    }

    /// Stops a running staging job of the case and waits (up to 30 s) until it has let go.
    pub(super) async fn stop_staging(&self, case_ref: &str) {
        let job = crate::sync::lock(&self.jobs).get(case_ref).cloned();
        let Some(job) = job else { return };
        job.progress.cancel.store(true, Ordering::Relaxed);
        for _ in 0..300 {
            if !crate::sync::lock(&self.jobs).contains_key(case_ref) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        warn!(case = %case_ref, "staging did not stop within 30 s");
    }

    /// Staged mode, after a start: hashes the case's staged copies again
    /// against the catalog, so none is served again unless it is known
    /// intact. `None` when one is missing or no longer matches (the journal
    /// names its file id; the case is then staged again from the GDB), when
    /// the job was stopped, or in direct mode.
    pub(super) async fn verify_staged_copies(
        &self,
        case_ref: &str,
        files: &[CaseFile],
        job: &Arc<StagingJob>,
    ) -> Option<Vec<(Backing, FileIdentity)>> {
        if self.cfg.mode != Mode::Staged {
            return None;
        }
        job.progress.halt.store(false, Ordering::Relaxed);
        let staging = self.cfg.staging_dir();
        let counted = Counted::start(job);
        let files_owned: Arc<Vec<CaseFile>> = Arc::new(files.to_vec());
        let case_ref_owned = case_ref.to_string();
        let halt = job.clone();
        let job = job.clone();
        let verified = self
            .pool
            .run(files.len(), halt, move |i| {
                let p = staging::staged_file(&staging, &case_ref_owned, i);
                staging::verify_copy(&p, &expect(&files_owned[i]), &job.progress).map(|id| (Backing::Staged(p), id))
            })
            .await;
        counted.end(&self.counters);
        match verified {
            Ok(backings) => Some(backings),
            Err(Stopped::Failed { index, error }) => {
                if mismatch(&error) {
                    self.counters.verification_failed(CheckedAt::Restart);
                }
                // By file id and kind only: the error names the GDB path.
                let kind = match error {
                    staging::StageError::Cancelled(_) => return None,
                    staging::StageError::Checksum { .. } => "its sha256 differs from the catalog's",
                    staging::StageError::Size { .. } => "its size differs from the catalog's",
                    _ => "it cannot be read",
                };
                let file_id = files.get(index).map(|f| f.file.file_id.to_string()).unwrap_or_default();
                warn!(case = %case_ref, file_id = %file_id, "staged copy not intact ({kind}); staging the case again");
                None
            }
            Err(Stopped::Cancelled | Stopped::Panicked(_)) => None,
        }
    }
}

impl Halt for StagingJob {
    fn halted(&self) -> bool {
        self.progress.stopped()
    }

    fn halt(&self) {
        self.progress.halt.store(true, Ordering::Relaxed);
    }
}

/// What one file of a case must be.
fn expect(f: &CaseFile) -> Expect<'_> {
    Expect {
        rel: f.file.path.as_str(),
        size: f.file.size,
        sha256: &f.file.sha256,
    }
}

/// Why a batch of the pool stopped, as the reason a case cannot be served.
fn not_servable(case_ref: &str, stopped: Stopped<staging::StageError>) -> NotServable {
    match stopped {
        Stopped::Failed { error, .. } => NotServable::file(error),
        Stopped::Cancelled => NotServable::file(staging::StageError::Cancelled(case_ref.to_string())),
        Stopped::Panicked(e) => NotServable::Task(Arc::new(e)),
    }
}

/// Runs file-system work off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, NotServable> + Send + 'static) -> Result<T, NotServable> {
    tokio::task::spawn_blocking(f).await.map_err(|e| NotServable::Task(Arc::new(e)))?
}

/// A file whose bytes did not match the catalog (not one that could not be read).
fn mismatch(e: &staging::StageError) -> bool {
    matches!(e, staging::StageError::Checksum { .. } | staging::StageError::Size { .. })
}

/// Staging work being measured for `metrics`: the bytes a job's progress
/// moved on by, and the time, between [`start`](Counted::start) and
/// [`end`](Counted::end).
struct Counted {
    job: Arc<StagingJob>,
    bytes_before: u64,
    started: std::time::Instant,
}

impl Counted {
    fn start(job: &Arc<StagingJob>) -> Counted {
        Counted {
            job: job.clone(),
            bytes_before: job.progress.done.load(Ordering::Relaxed),
            started: std::time::Instant::now(),
        }
    }

    fn end(self, counters: &Counters) {
        let bytes = self.job.progress.done.load(Ordering::Relaxed).saturating_sub(self.bytes_before);
        counters.staged(bytes, self.started.elapsed());
    }
}
