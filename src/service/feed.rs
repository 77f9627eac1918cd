//! The feed (`workcopy events`): every case-log record of every case in
//! commit order, each with its feed number, for scripts that keep another
//! system (the support system's tickets) in step. The control server streams
//! it a frame at a time; this module decides who may read it and what one
//! frame holds.

use super::request::refuse;
use super::{Caller, Service};
use crate::control::proto::{FEED_FRAME_RECORDS, Refusal, RefusalKind};
use crate::db::FeedRecord;
use crate::domain::case::Role;
use tracing::info;

/// The most bytes of records one frame carries (at least one record).
const FEED_FRAME_BYTES: usize = 4 << 20;

impl Service {
    /// Starts a feed reader at feed number `since`: staff only. Returns the
    /// feed head now. A `since` past the head is refused: the reader's
    /// bookmark belongs to another register (or one restored from an older
    /// backup), and waiting there would skip every record up to it.
    pub async fn open_feed(&self, caller: &Caller, since: u64, follow: bool) -> Result<u64, Refusal> {
        let opened = self.try_open_feed(caller, since).await;
        match &opened {
            Ok(head) => info!(op = "events", uid = caller.uid, since, follow, head, "streaming"),
            Err(r) => {
                info!(op = "events", uid = caller.uid, kind = ?r.kind, "refused");
                self.counters.refused(r.kind);
            }
        }
        opened
    }

    async fn try_open_feed(&self, caller: &Caller, since: u64) -> Result<u64, Refusal> {
        match self.role(caller) {
            Role::Staff => {}
            Role::Nobody => return Err(self.refuse_nobody(caller)),
            _ => {
                return Err(refuse(
                    RefusalKind::Denied,
                    "permission denied: only workcopy staff may use `events`",
                ));
            }
        }
        let head = self.store.feed_head().await?;
        if since > head {
            return Err(refuse(
                RefusalKind::Invalid,
                format!(
                    "--since {since} is past the last record of this register ({head}): \
                     was the number taken from another register, or was the database restored from an older backup?"
                ),
            ));
        }
        Ok(head)
    }

    /// The next frame of the feed after `after`: at most
    /// [`FEED_FRAME_RECORDS`] records and about [`FEED_FRAME_BYTES`]
    /// (always at least one record when there is one).
    pub async fn feed_frame(&self, after: u64) -> Result<Vec<FeedRecord>, Refusal> {
        let mut records = self.store.feed_page(after, FEED_FRAME_RECORDS).await?;
        let mut bytes = 0;
        let keep = records
            .iter()
            .take_while(|r| {
                bytes += super::caselog::json_len(r);
                bytes <= FEED_FRAME_BYTES
            })
            .count()
            .max(1);
        records.truncate(keep);
        Ok(records)
    }
}
