//! The mount's access records, written to the case log (counted where one
//! account repeats an access: see [`crate::domain::access`]).

use super::{Counters, Service};
use crate::db::Store;
use crate::domain::access::{AccessKind, COALESCING, FileAccess};
use crate::export::fs::{Access, AccessLog, AccessLogError};
use crate::unix::NameCache;
use std::sync::Arc;
use std::time::Duration;

/// How often counted accesses whose window is over are folded into the logs.
const FOLD_EVERY: Duration = Duration::from_secs(10);

/// Writes the mount's access records to the case log. Runs on FUSE threads,
/// which wait for the access to be durable (recorded or counted) before an
/// open succeeds.
pub struct StoreAccessLog {
    store: Arc<dyn Store>,
    rt: tokio::runtime::Handle,
    names: NameCache,
    counters: Arc<Counters>,
}

impl StoreAccessLog {
    pub fn new(svc: &Service, rt: tokio::runtime::Handle) -> StoreAccessLog {
        StoreAccessLog {
            store: svc.store.clone(),
            rt,
            names: svc.names.clone(),
            counters: svc.counters.clone(),
        }
    }

    fn access(&self, a: &Access, kind: AccessKind) -> FileAccess {
        FileAccess {
            case_ref: a.case_ref.clone(),
            actor: self.names.actor(a.uid),
            file: a.file.clone(),
            file_id: a.file_id.clone(),
            pid: a.pid,
            staff: a.staff,
            kind,
        }
    }
}

impl AccessLog for StoreAccessLog {
    fn opened(&self, a: &Access) -> Result<(), AccessLogError> {
        let access = self.access(a, AccessKind::Opened);
        self.rt
            .block_on(self.store.record_access(&access, &COALESCING))
            .map_err(AccessLogError::from)?;
        self.counters.file_opened();
        Ok(())
    }

    fn released(&self, a: &Access, bytes_read: u64, size: u64) {
        let access = self.access(a, AccessKind::Read { bytes_read, size });
        let store = self.store.clone();
        self.rt.spawn(async move {
            if let Err(e) = store.record_access(&access, &COALESCING).await {
                tracing::debug!(case = %access.case_ref, error = %e, "read record not written");
            }
        });
    }
}

impl Service {
    /// Folds counted accesses into their case logs once their window is
    /// over, for as long as the daemon runs (state changes fold them too).
    pub async fn fold_counted_accesses(self: Arc<Self>) {
        loop {
            tokio::time::sleep(FOLD_EVERY).await;
            match self.store.fold_accesses(None, COALESCING.window).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(records = n, "counted accesses written to the case logs"),
                Err(e) => tracing::warn!(error = %e, "counted accesses could not be written to the case logs; retried"),
            }
        }
    }
}
