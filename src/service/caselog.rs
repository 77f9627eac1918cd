//! Case logs a page at a time, so a log of any length costs the daemon the
//! same memory: `case log`'s pages, the chain check of `audit verify` and
//! `case close`, and the sealed file, written at the seal and checked by
//! `audit verify` line by line.

use super::Service;
use super::request::{not_found, parse_ref, refuse};
use crate::audit::{self, ChainError, ChainVerifier, EventRecord};
use crate::control::proto::{LOG_PAGE_DEFAULT, LOG_PAGE_MAX, Refusal, RefusalKind, Reply, Response};
use crate::db::StoreError;
use std::io::Write;
use std::path::PathBuf;

/// Records read from the store at a time.
const PAGE: u32 = 1000;

/// The most bytes of records one `case log` reply carries (at least one
/// record): well under the protocol's reply limit, whatever the records hold.
const LOG_PAGE_BYTES: usize = 16 << 20;

/// The length of a record's JSON, without keeping the JSON.
pub(super) fn json_len(r: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, r);
    c.0
}

/// How a stored case log checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LogCheck {
    /// Every record up to the head read at the start is intact.
    Intact {
        records: u64,
        head: String,
    },
    Broken(ChainError),
}

impl Service {
    /// `case log`: the records after `since`, at most `limit` of them (and
    /// at most [`LOG_PAGE_BYTES`]), and where the next page starts when
    /// there are more.
    pub(super) async fn case_log(&self, case_ref: &str, since: Option<u64>, limit: Option<u32>) -> Response {
        let r = parse_ref(case_ref)?;
        let limit = match limit {
            None => LOG_PAGE_DEFAULT,
            Some(n) if (1..=LOG_PAGE_MAX).contains(&n) => n,
            Some(n) => {
                return Err(refuse(
                    RefusalKind::Invalid,
                    format!("a page holds 1 to {LOG_PAGE_MAX} records, not {n}"),
                ));
            }
        };
        let case = self.store.case(r.as_str()).await?.ok_or_else(|| not_found(r.as_str()))?;
        let mut records = self.store.events_page(r.as_str(), since.unwrap_or(0), limit).await?;
        let mut bytes = 0;
        let keep = records
            .iter()
            .take_while(|rec| {
                bytes += json_len(rec);
                bytes <= LOG_PAGE_BYTES
            })
            .count()
            .max(1);
        records.truncate(keep);
        let next = records.last().filter(|last| last.seq < case.event_count).map(|last| last.seq);
        Ok(Reply::Log { records, next })
    }

    /// Checks the case's log in the store page by page against the head read
    /// first; records appended meanwhile are left for the next check. `Err`
    /// only when the store cannot be read.
    pub(super) async fn check_log(&self, case_ref: &str) -> Result<LogCheck, Refusal> {
        let case = self.store.case(case_ref).await?.ok_or_else(|| not_found(case_ref))?;
        let (count, head) = (case.event_count, case.head_hash);
        let mut v = ChainVerifier::new(case_ref);
        let mut after = 0;
        'pages: while after < count {
            let page = self.store.events_page(case_ref, after, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                if r.seq > count {
                    break 'pages;
                }
                if let Err(e) = v.push(r) {
                    return Ok(LogCheck::Broken(e));
                }
                after = r.seq;
            }
        }
        if let Err(e) = v.finish(Some((count, &head))) {
            return Ok(LogCheck::Broken(e));
        }
        // A record beside the chain (numbered 0, or past the head) is not
        // in any page above, but an intact log has none.
        let stray = self.store.stray_records(case_ref).await?;
        if stray > 0 {
            return Ok(LogCheck::Broken(ChainError {
                case_ref: case_ref.to_string(),
                seq: count + 1,
                reason: format!(
                    "the case has {count} record(s) on record but {} were found (records were removed or added)",
                    count + stray
                ),
            }));
        }
        Ok(LogCheck::Intact { records: count, head })
    }

    /// The case's last record, `count` being its head's record count.
    pub(super) async fn last_record(&self, case_ref: &str, count: u64) -> Result<Option<EventRecord>, StoreError> {
        Ok(self.store.events_page(case_ref, count.saturating_sub(1), 1).await?.pop())
    }

    /// The sealed log file of a case.
    pub(super) fn sealed_path(&self, case_ref: &str) -> PathBuf {
        self.cfg.caselog_dir().join(format!("{case_ref}.jsonl"))
    }

    /// Writes the case's log out as its sealed file (JSON lines), page by
    /// page: into a temporary file, synced, then renamed into place. Returns
    /// the number of records written.
    pub(super) async fn write_sealed(&self, case_ref: &str) -> Result<u64, Refusal> {
        let failed = |e: std::io::Error| refuse(RefusalKind::Internal, format!("cannot write the sealed case log: {e}"));
        let dir = self.cfg.caselog_dir();
        let path = self.sealed_path(case_ref);
        let tmp = dir.join(format!(".{case_ref}.jsonl.tmp"));
        let created = {
            let (dir, tmp) = (dir.clone(), tmp.clone());
            blocking(move || {
                std::fs::create_dir_all(&dir)?;
                Ok(std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?))
            })
        };
        let mut out = created.await.map_err(failed)?;
        let mut after = 0;
        loop {
            let page = self.store.events_page(case_ref, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            out = blocking(move || {
                for r in &page {
                    out.write_all(audit::jsonl_line(r).as_bytes())?;
                }
                Ok(out)
            })
            .await
            .map_err(failed)?;
        }
        blocking(move || {
            let f = out.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .map_err(failed)?;
        Ok(after)
    }

    /// Checks a sealed log file on its own and against the stored log's
    /// `count` and `head` (which were checked): `None` when there is no file.
    pub(super) async fn check_sealed_file(&self, case_ref: &str, count: u64, head: &str) -> Option<Result<(), String>> {
        let path = self.sealed_path(case_ref);
        let shown = path.display().to_string();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => return Some(Err(format!("{shown}: cannot be read: {e}"))),
        };
        let checked = blocking(move || Ok(audit::verify_sealed_from(std::io::BufReader::with_capacity(1 << 20, file)))).await;
        Some(match checked {
            Err(e) => Err(format!("{shown}: cannot be read: {e}")),
            Ok(Err(e)) => Err(format!("{shown}: {e}")),
            // Each record's hash covers its fields and the one before it: the
            // same count and last hash mean the same records.
            Ok(Ok(sealed)) if sealed.case_ref != case_ref || sealed.records != count || sealed.head != head => {
                Err(format!("{shown}: differs from the case log in the database"))
            }
            Ok(Ok(_)) => Ok(()),
        })
    }
}

/// Runs file work off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}
