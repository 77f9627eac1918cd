//! The mount's access records, written to the case log.

use super::Service;
use crate::audit::{EventKind, NewEvent};
use crate::db::Store;
use crate::domain::case::CaseState;
use crate::export::fs::{Access, AccessLog, AccessLogError};
use crate::unix::NameCache;
use serde_json::json;
use std::sync::Arc;

/// Writes the mount's access records to the case log. Runs on FUSE threads,
/// which wait for the record to be committed before an open succeeds.
pub struct StoreAccessLog {
    store: Arc<dyn Store>,
    rt: tokio::runtime::Handle,
    names: NameCache,
}

impl StoreAccessLog {
    pub fn new(svc: &Service, rt: tokio::runtime::Handle) -> StoreAccessLog {
        StoreAccessLog {
            store: svc.store.clone(),
            rt,
            names: svc.names.clone(),
        }
    }
}

impl AccessLog for StoreAccessLog {
    fn opened(&self, a: &Access) -> Result<(), AccessLogError> {
        let actor = self.names.actor(a.uid);
        let details = json!({"file": a.file, "file_id": a.file_id, "pid": a.pid, "staff": a.staff});
        self.rt
            .block_on(self.store.append_in(
                &a.case_ref,
                &CaseState::VISIBLE,
                NewEvent::new(&actor, EventKind::FileOpened, details),
            ))
            .map(|_| ())
            .map_err(AccessLogError::from)
    }

    fn released(&self, a: &Access, bytes_read: u64, size: u64) {
        let actor = self.names.actor(a.uid);
        let details = json!({"file": a.file, "file_id": a.file_id, "pid": a.pid, "bytes_read": bytes_read, "size": size, "complete": bytes_read >= size});
        let store = self.store.clone();
        let case_ref = a.case_ref.clone();
        self.rt.spawn(async move {
            if let Err(e) = store
                .append_in(&case_ref, &CaseState::VISIBLE, NewEvent::new(&actor, EventKind::FileRead, details))
                .await
            {
                tracing::debug!(case = %case_ref, error = %e, "read record not written");
            }
        });
    }
}
