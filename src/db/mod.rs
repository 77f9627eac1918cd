//! The case register's storage, behind one trait so the domain code does not
//! know which database holds it. SQLite (WAL) is the default; the schema
//! lives in `migrations/<backend>/`.

use crate::audit::{EventRecord, NewEvent};
use crate::domain::access::{Coalescing, FileAccess};
use crate::domain::case::CaseState;
use crate::domain::catalog::CatalogFile;
use crate::domain::hosts::{HostBeat, HostRecord, Serving};
use crate::domain::search::{CatalogQuery, FoundFile, SearchKey};
use crate::domain::verify::CaseFile;

#[cfg(test)]
pub mod conformance;
mod import;
#[cfg(test)]
pub mod pg_test_server;
pub mod postgres;
mod search;
pub mod sqlite;

pub use crate::domain::case::{CaseRecord, NewCase};
pub use crate::domain::catalog::ImportSummary;
pub use import::{CatalogRows, CatalogRowsSender};

/// Why a store method failed. Whatever the variant, nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("case {0} already exists")]
    Exists(String),
    /// [`Store::create_request`]: the requester has `open` live self-service cases, the most allowed.
    #[error("{requester} has {open} open requests, the most allowed")]
    TooManyRequests { requester: String, open: u64 },
    /// [`Store::create_request`]: the requester made `made` requests in the last 24 hours, the most allowed.
    #[error("{requester} made {made} requests in the last 24 hours, the most allowed")]
    RequestsToday { requester: String, made: u64 },
    #[error("no case {0}")]
    NoCase(String),
    #[error("case {case_ref} is {actual}, no longer {expected}; try again")]
    Conflict {
        case_ref: String,
        expected: CaseState,
        actual: CaseState,
    },
    /// The case's head kept moving under a write, more often than a backend retries.
    #[error("case {0} is being changed by someone else; try again")]
    Busy(String),
    #[error("{0}")]
    Catalog(#[from] crate::domain::catalog::CatalogError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database URL names a backend this build does not have.
    #[error("database: {0}")]
    Unsupported(String),
    #[error("database: stored catalog row is invalid: {0}")]
    CatalogRow(#[source] crate::names::NameError),
    #[error("the stored case {0} cannot be read: {1}")]
    Corrupt(String, String),
}

/// The case register's storage. Every backend keeps this contract, whatever
/// its number of connections, processes or hosts; `conformance` tests it.
///
/// **Serialised.** Two kinds of write are serialised per case:
///
/// * *Appends to a case's log.* Each append reads the case's head (record
///   count `n` and last hash), then writes record `n + 1` chained to that hash
///   and moves the head to it, in one transaction. The backend takes the
///   case's write lock before it reads the head (SQLite: `BEGIN IMMEDIATE`;
///   a server database: a row lock on the case), moves the head only if it
///   still is the head it read (compare-and-set on count and hash), and the
///   schema refuses a second record with the same `(case_ref, seq)`. A log
///   therefore never forks and has no gaps, however many writers there are.
///   Should the head move anyway, the append starts over on the new head a
///   few times and then fails with [`StoreError::Busy`].
/// * *State transitions.* A transition is a compare-and-set on the current
///   state: it happens only if the case is still in the state the caller
///   decided on, together with the record that says so. In the same
///   transaction, before its record, every access counted for the case (see
///   [`Store::record_access`]) is folded into the log, so a state change —
///   and the seal after the last one — follows every access made before it.
/// * *Access counts.* Each [`Store::record_access`] reads and updates its
///   key's count under the case's write lock, as appends do.
///
/// Other writes (catalog imports, new cases) are single transactions; a case
/// reference exists at most once (the schema's key, not a prior lookup).
///
/// **Ordering.** Records of a case are returned in sequence order (1, 2, …);
/// case files in the order they were registered.
///
/// **Durability.** A write method returns `Ok` only after its transaction
/// committed; what it returns is what was stored.
///
/// **Failure.** An `Err` means nothing of that call was written (its
/// transaction was rolled back), and the store stays usable for the next call.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Adds and updates catalog files by `file_id` in one transaction, as the
    /// rows arrive. Refuses the whole import ([`StoreError::Catalog`], nothing
    /// changed) when the stream ends badly, when a row would change a file a
    /// live case holds, or would give a file's path to another file.
    /// Importing the same rows again changes nothing.
    async fn import_catalog(&self, rows: CatalogRows) -> Result<ImportSummary, StoreError>;
    /// Catalog files whose `file_id`, `path` or base name equals `descriptor`,
    /// at most `limit`, ordered by `file_id`.
    async fn resolve(&self, descriptor: &str, limit: u32) -> Result<Vec<CatalogFile>, StoreError>;
    /// As [`resolve`](Store::resolve), among the files submitted by one of
    /// `departments` only (none for an empty list).
    async fn resolve_among(&self, descriptor: &str, departments: &[String], limit: u32) -> Result<Vec<CatalogFile>, StoreError>;
    /// Catalog files for a search, with their `sample_id`: every file for
    /// which each condition of `query` holds (the name filter's `LIKE` as
    /// the backend evaluates it; case-sensitive in both built-in backends'
    /// configuration), in [`query.order()`](CatalogQuery::order), where
    /// strings compare byte by byte; only those whose
    /// [`SearchKey`] in that order is above `after`; at most `limit`.
    /// Served by indexes in that order: its cost follows the files it
    /// returns, except that a `LIKE` starting with a wildcard may read the
    /// whole name index (never the table).
    async fn search_catalog(&self, query: &CatalogQuery, after: Option<&SearchKey>, limit: u32) -> Result<Vec<FoundFile>, StoreError>;
    /// The number of files in the catalog.
    async fn catalog_size(&self) -> Result<u64, StoreError>;
    /// When an import last added or changed a catalog file (RFC 3339), or
    /// `None` for an empty catalog. An import that changed nothing leaves it.
    async fn catalog_changed_at(&self) -> Result<Option<String>, StoreError>;

    /// Registers a case in state `open` with its files and its first log
    /// record (seq 1), atomically; [`StoreError::Exists`] when the reference
    /// is taken.
    async fn create_case(&self, case: NewCase, event: NewEvent) -> Result<EventRecord, StoreError>;
    /// Registers a self-service request as [`create_case`](Store::create_case)
    /// does, unless its requester already has `limits.open` or more
    /// self-service cases that are not closed, rejected, cancelled or expired
    /// ([`StoreError::TooManyRequests`]), or registered `limits.per_day` or
    /// more self-service cases in the last 24 hours, whatever became of them
    /// ([`StoreError::RequestsToday`]); then nothing is written. The counts
    /// and the insert are one transaction, serialised with the requester's
    /// other registrations (so concurrent requests of one person never pass
    /// a limit together).
    async fn create_request(&self, case: NewCase, event: NewEvent, limits: RequestLimits) -> Result<EventRecord, StoreError>;
    /// The `limit` most recent of a requester's self-service cases (those
    /// registered with `self_service` set), oldest first.
    async fn list_requests(&self, requester: &str, limit: u32) -> Result<Vec<CaseRecord>, StoreError>;
    /// The case as last committed, or `None`.
    async fn case(&self, case_ref: &str) -> Result<Option<CaseRecord>, StoreError>;
    /// The case's files in registration order (empty for an unknown case).
    async fn case_files(&self, case_ref: &str) -> Result<Vec<CaseFile>, StoreError>;
    /// Cases in the given state and/or department (all when `None`), oldest first.
    async fn list_cases(&self, state: Option<CaseState>, department: Option<&str>) -> Result<Vec<CaseRecord>, StoreError>;
    /// Moves a case from `from` to `to` and appends `event`, atomically.
    /// Fails with [`StoreError::Conflict`] when the case is no longer in
    /// `from` (of two concurrent transitions from one state exactly one
    /// wins), and [`StoreError::NoCase`] when there is no such case.
    async fn transition(&self, case_ref: &str, from: CaseState, to: CaseState, event: NewEvent) -> Result<EventRecord, StoreError>;
    /// Appends a record only while the case is in one of `states` (checked in
    /// the same transaction), so no access is ever recorded after a close.
    /// Out of those states: [`StoreError::Conflict`] naming the first of them.
    async fn append_in(&self, case_ref: &str, states: &[CaseState], event: NewEvent) -> Result<EventRecord, StoreError>;
    /// Records an access of a case file while the case is visible (exported
    /// or received, checked in the same transaction; otherwise
    /// [`StoreError::Conflict`] naming `exported`, and nothing is written).
    ///
    /// Accesses are recorded per key (case, event, file, uid, staff): the
    /// first `policy.plain_per_window` of each `policy.window` get a record of
    /// their own ([`FileAccess::record`]); further ones are added to the key's
    /// durable count, which becomes one counted record
    /// ([`AccessCount::record`](crate::domain::access::AccessCount::record))
    /// at the key's first access after the window, by
    /// [`fold_accesses`](Store::fold_accesses), and always before the case's
    /// next transition. `Ok` means the access is durable, as a record or in
    /// the count.
    async fn record_access(&self, access: &FileAccess, policy: &Coalescing) -> Result<Recorded, StoreError>;
    /// Folds the counted accesses into their cases' logs as counted records:
    /// of `case_ref` (all cases when `None`), of keys whose window began at
    /// least `older_than` ago (all of them for zero). Returns the number of
    /// records written.
    async fn fold_accesses(&self, case_ref: Option<&str>, older_than: std::time::Duration) -> Result<u64, StoreError>;
    /// The mount names of the case's files that a caller with this `staff`
    /// flag has opened (each once, in name order), from the access counts:
    /// whatever the length of the log, a look-up per file.
    async fn opened_files(&self, case_ref: &str, staff: bool) -> Result<Vec<String>, StoreError>;
    /// The case's records in sequence order (empty for an unknown case), all
    /// in memory: for short logs. Long ones are read with
    /// [`events_page`](Store::events_page).
    async fn events(&self, case_ref: &str) -> Result<Vec<EventRecord>, StoreError>;
    /// At most `limit` of the case's records with a sequence number above
    /// `after_seq`, in sequence order (empty for an unknown case or past the
    /// end). Records never change once written, so pages read one after the
    /// other form the log as it was when the last of them was read.
    async fn events_page(&self, case_ref: &str, after_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError>;
    /// The number of the case's records whose sequence number lies outside
    /// `1..=` its head's record count, read in one snapshot: none in an
    /// intact log, where every record was written together with its head.
    async fn stray_records(&self, case_ref: &str) -> Result<u64, StoreError>;
    /// The number of cases in each state, for every state in [`CaseState::ALL`] order.
    async fn count_by_state(&self) -> Result<Vec<(CaseState, u64)>, StoreError>;

    /// A [`transition`](Store::transition) that also makes `host` the case's
    /// serving host, in the same transaction (an approval names the host
    /// that stages the case).
    async fn transition_to_host(
        &self,
        case_ref: &str,
        from: CaseState,
        to: CaseState,
        host: &str,
        event: NewEvent,
    ) -> Result<EventRecord, StoreError>;
    /// Makes `host` the serving host of a case that is in one of `states`,
    /// appending `event`, atomically; [`StoreError::Conflict`] (naming the
    /// first of `states`) otherwise. Two moves of one case are serialised
    /// like any append: the later one sees the earlier one's host.
    async fn move_case(&self, case_ref: &str, states: &[CaseState], host: &str, event: NewEvent) -> Result<EventRecord, StoreError>;
    /// The cases in a terminal state whose last record is not the seal
    /// (their cleanup has not finished), by reference.
    async fn unsealed_cases(&self) -> Result<Vec<String>, StoreError>;
    /// Records what a case's serving host reports of it, replacing its last report.
    async fn report_serving(&self, serving: &Serving) -> Result<(), StoreError>;
    /// The serving host's last report of a case, if any.
    async fn serving(&self, case_ref: &str) -> Result<Option<Serving>, StoreError>;
    /// Records a host's heartbeat (adding the host at its first); a retired
    /// host stays retired.
    async fn heartbeat(&self, beat: &HostBeat) -> Result<(), StoreError>;
    /// Every host that ever beat, by name.
    async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError>;
    /// Marks a host as gone for good; `false` when there is no such host.
    /// Retiring a retired host keeps its first retirement.
    async fn retire_host(&self, name: &str, reason: &str) -> Result<bool, StoreError>;
    /// Moves forward whenever a case's state or serving host changed, here
    /// or (on a shared register) on another host: a prompt to look again,
    /// not a list of changes. A missed change is caught by looking again
    /// periodically.
    fn case_changes(&self) -> tokio::sync::watch::Receiver<u64>;

    /// For every state in [`CaseState::ALL`] order: how many cases are in
    /// it, and since when (unix seconds) the case longest in it has been
    /// there (`None` when no case is), read in one snapshot.
    async fn state_summary(&self) -> Result<Vec<StateSummary>, StoreError>;

    /// **The feed.** Every record of every case log carries a second,
    /// global number, its *feed number*: 1, 2, 3, … in the order the
    /// records' transactions committed, without gaps. The transaction that
    /// writes a record takes the next feed number from a single counter row
    /// (`UPDATE feed_head SET seq = seq + 1 RETURNING seq`) after it holds
    /// the case's write lock, and stores it with the record; on a server
    /// database the counter row's lock orders the committers, so a number is
    /// visible only once every smaller one is, and a transaction that rolls
    /// back gives its number back.
    ///
    /// At most `limit` records with a feed number above `after_seq`, in feed
    /// order (empty past the head). Pages read one after the other, each
    /// after the last feed number of the one before, form the feed without
    /// gaps or repeats, across restarts and whichever host wrote a record.
    async fn feed_page(&self, after_seq: u64, limit: u32) -> Result<Vec<FeedRecord>, StoreError>;
    /// The last feed number given (0 while no case log has a record). Every
    /// record up to it has committed and is visible to [`feed_page`](Store::feed_page).
    async fn feed_head(&self) -> Result<u64, StoreError>;
    /// A prompt to read the feed again, without asking the database: its
    /// value moves forward (to at least the new feed head) after every commit
    /// that wrote records, in this process or — on a shared register —
    /// learnt of from another host, and never moves back. It starts at the
    /// head when the store was opened. A follower reads
    /// [`feed_page`](Store::feed_page) until it is empty, then waits for a
    /// change; it marks the value seen *before* reading, so no commit slips
    /// between its last page and its wait.
    fn committed(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// One record of the feed: a case-log record (which names its case and
/// its number in the case's log) and its feed number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FeedRecord {
    pub feed_seq: u64,
    pub record: EventRecord,
}

/// Cases in one state, for [`Store::state_summary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateSummary {
    pub state: CaseState,
    pub cases: u64,
    /// `state_since` (unix seconds) of the case longest in this state.
    pub oldest_since: Option<i64>,
}

/// The query both backends answer [`Store::state_summary`] with.
const STATE_SUMMARY: &str = "SELECT state, COUNT(*), MIN(state_since) FROM cases GROUP BY state";

/// Every state, in [`CaseState::ALL`] order, from the `(state, cases, oldest
/// state_since)` rows of [`STATE_SUMMARY`]; a state without rows has none.
fn state_summaries(rows: Vec<(String, i64, Option<i64>)>) -> Vec<StateSummary> {
    CaseState::ALL
        .iter()
        .map(|s| {
            let row = rows.iter().find(|(state, ..)| state == s.as_str());
            StateSummary {
                state: *s,
                cases: row.map_or(0, |r| r.1.max(0) as u64),
                oldest_since: row.and_then(|r| r.2),
            }
        })
        .collect()
}

/// The limits [`Store::create_request`] keeps per requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Self-service cases not yet closed, rejected, cancelled or expired.
    pub open: u64,
    /// Self-service cases registered in the last 24 hours.
    pub per_day: u64,
}

impl RequestLimits {
    /// Refuses a new request of `requester`, who has `open` live requests
    /// and made `today` in the last 24 hours, when that reaches a limit.
    pub fn check(&self, requester: &str, open: i64, today: i64) -> Result<(), StoreError> {
        let (open, today) = (open.max(0) as u64, today.max(0) as u64);
        if open >= self.open {
            return Err(StoreError::TooManyRequests {
                requester: requester.to_string(),
                open,
            });
        }
        if today >= self.per_day {
            return Err(StoreError::RequestsToday {
                requester: requester.to_string(),
                made: today,
            });
        }
        Ok(())
    }

    /// The earliest `created_at` (RFC 3339, UTC) that counts for `per_day`.
    pub fn day_ago() -> String {
        let t = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        t.replace_nanosecond(0)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default()
    }
}

/// How [`Store::record_access`] recorded an access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// In a record of its own: the last record written (a counted record of
    /// the window before may precede it).
    Record(EventRecord),
    /// Added to its key's count.
    Counted,
}

/// Opens the store named by a database URL (`sqlite:…` or `postgres://…`),
/// creating and migrating it. `password_file` holds a PostgreSQL password.
pub async fn open(url: &str, password_file: Option<&std::path::Path>) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(postgres::PgStore::open(url, password_file).await?))
    } else {
        Err(StoreError::Unsupported(format!(
            "{}: not a database URL this version knows (sqlite://PATH or postgres://…)",
            crate::config::redact_url(url)
        )))
    }
}
