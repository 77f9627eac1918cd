//! SQLite in WAL mode. Every write transaction begins with `BEGIN IMMEDIATE`:
//! it holds the database's write lock before it reads anything, so it sees
//! the last commit and no other write interleaves, however many connections
//! write. Reads use a small pool of read-only connections.

use super::{CaseRecord, CatalogRows, FeedRecord, ImportSummary, NewCase, Recorded, RequestLimits, StateSummary, Store, StoreError};
use crate::audit::{self, Actor, EventKind, EventRecord, GENESIS, NewEvent};
use crate::domain::access::{self, AccessCount, Coalescing, FileAccess, Step};
use crate::domain::case::CaseState;
use crate::domain::catalog::{CatalogFile, CatalogRow, RowErrors};
use crate::domain::directory::SelfService;
use crate::domain::hosts::{HostBeat, HostRecord, Serving};
use crate::domain::search::{CatalogQuery, FoundFile, SearchKey};
use crate::domain::verify::CaseFile;
use crate::names::{CatalogPath, DirId, FileId};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, Sqlite};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Rows per multi-row INSERT (10 parameters each, well under SQLite's limit).
const BATCH: usize = 1000;

/// Rows `ANALYZE` samples per index: enough for the planner to tell a
/// department (many files) from a sample or a name (a few).
const ANALYSIS_LIMIT: u32 = 1000;

/// How often an append starts over when the case's head moved under it.
/// Under `BEGIN IMMEDIATE` the head cannot move; the limit only bounds a
/// writer that does not take the lock.
const ATTEMPTS: usize = 5;

/// How many connections a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// Writers queue for these in the pool and then for SQLite's write lock;
    /// one is enough, as SQLite writes one transaction at a time anyway.
    pub writers: u32,
    pub readers: u32,
}

impl Default for Connections {
    fn default() -> Self {
        Connections { writers: 1, readers: 4 }
    }
}

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    changes: tokio::sync::watch::Sender<u64>,
    /// Moved to the feed head after every commit that wrote records.
    committed: Arc<watch::Sender<u64>>,
}

/// A unique-key violation, which some writes turn into a domain answer.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// A transaction on a pool connection of its own, begun with an explicit
/// statement and ended by [`finish`].
///
/// Its connection goes back to the pool only when the transaction ended
/// cleanly: committed, or rolled back after a refusal of this crate's own
/// (the case moved, the reference is taken). After any database error, and
/// when the transaction is dropped unfinished (a cancelled request), the
/// connection is closed instead and the pool opens a fresh one for the next
/// call. SQLite may already have rolled a transaction back by itself after
/// an I/O error or a full disk, or may still hold it open; a connection in
/// such a state is never used again, so a later write can neither fail for
/// ever nor land inside a transaction that will never commit.
struct Tx {
    conn: PoolConnection<Sqlite>,
    ended: bool,
    /// The last feed number this transaction took, if it wrote a record.
    feed_seq: Option<u64>,
    /// Told that feed number once the transaction committed.
    committed: Arc<watch::Sender<u64>>,
}

impl Tx {
    async fn begin(pool: &SqlitePool, statement: &'static str, committed: &Arc<watch::Sender<u64>>) -> Result<Tx, StoreError> {
        // A connection may refuse every transaction for good although the
        // database is fine now: SQLite opens the database read-only when it
        // cannot be written at the moment the connection is made (and the
        // pool keeps connections idle). A failed BEGIN drops `tx`
        // unfinished, which closes its connection; the next attempt gets
        // another, down to a fresh one. Waiting for another writer's lock
        // is not tried again.
        let attempts = pool.options().get_max_connections() + 1;
        let mut attempt = 1;
        loop {
            let mut tx = Tx {
                conn: pool.acquire().await?,
                ended: false,
                feed_seq: None,
                committed: committed.clone(),
            };
            match sqlx::query(statement).execute(&mut *tx.conn).await {
                Ok(_) => return Ok(tx),
                Err(e) if attempt < attempts && !is_locked(&e) => attempt += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl std::ops::Deref for Tx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.ended {
            // Closing the connection rolls back whatever it still holds.
            self.conn.close_on_drop();
        }
    }
}

/// SQLITE_BUSY or SQLITE_LOCKED (with any extended code): another
/// connection held the lock for longer than the busy timeout.
fn is_locked(e: &sqlx::Error) -> bool {
    let code = e.as_database_error().and_then(|d| d.code()).and_then(|c| c.parse::<i32>().ok());
    matches!(code.map(|c| c & 0xff), Some(5 | 6))
}

/// Whether a failed call left the database as it was by this crate's own
/// decision (a refusal), rather than because the database failed.
fn is_refusal(e: &StoreError) -> bool {
    match e {
        StoreError::Exists(_)
        | StoreError::TooManyRequests { .. }
        | StoreError::RequestsToday { .. }
        | StoreError::NoCase(_)
        | StoreError::Conflict { .. }
        | StoreError::Busy(_)
        | StoreError::Catalog(_)
        | StoreError::CatalogRow(_)
        | StoreError::Corrupt(..) => true,
        StoreError::Db(_) | StoreError::Migrate(_) | StoreError::Unsupported(_) => false,
    }
}

/// Ends a transaction: commits it when `result` is `Ok`, rolls it back
/// otherwise. `Ok` only once the commit succeeded; a failed commit is an
/// error, and nothing of the transaction stays (SQLite rolled it back, or
/// closing its connection does).
async fn finish<T>(mut tx: Tx, result: Result<T, StoreError>) -> Result<T, StoreError> {
    match result {
        Ok(v) => match sqlx::query("COMMIT").execute(&mut *tx.conn).await {
            Ok(_) => {
                tx.ended = true;
                if let Some(seq) = tx.feed_seq {
                    tx.committed.send_if_modified(|head| {
                        let moved = seq > *head;
                        *head = (*head).max(seq);
                        moved
                    });
                }
                Ok(v)
            }
            Err(e) => {
                tracing::warn!(error = %e, "a commit failed; the transaction is rolled back and its connection replaced");
                let _ = sqlx::query("ROLLBACK").execute(&mut *tx.conn).await;
                Err(e.into())
            }
        },
        Err(e) => {
            match sqlx::query("ROLLBACK").execute(&mut *tx.conn).await {
                Ok(_) if is_refusal(&e) => tx.ended = true,
                Ok(_) => {}
                Err(rollback) => tracing::warn!(error = %rollback, "rolling back a transaction failed; its connection is replaced"),
            }
            Err(e)
        }
    }
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `url` with the default connections.
    pub async fn open(url: &str) -> Result<SqliteStore, StoreError> {
        Self::open_with(url, Connections::default()).await
    }

    /// Opens (creating and migrating) the database at `url` with `connections`.
    pub async fn open_with(url: &str, connections: Connections) -> Result<SqliteStore, StoreError> {
        // LIKE compares case-sensitively, as PostgreSQL's does: a search's
        // candidates are then its matches, and a literal prefix can use an index.
        let base = SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("case_sensitive_like", "ON");
        let writer = SqlitePoolOptions::new()
            .max_connections(connections.writers.max(1))
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .pragma("temp_store", "memory")
                    .pragma("journal_size_limit", "67108864"),
            )
            .await?;
        MIGRATOR.run(&writer).await?;
        // A catalog migrated from before its search indexes existed has no
        // statistics yet: without them the planner cannot tell a department
        // (many files) from a sample (a few).
        let analyzed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'")
            .fetch_one(&writer)
            .await?;
        if analyzed == 0 {
            analyze_catalog(&writer).await;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(connections.readers.max(1))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(base.read_only(true))
            .await?;
        let head = feed_head(&reader).await?;
        Ok(SqliteStore {
            writer,
            reader,
            changes: tokio::sync::watch::Sender::new(0),
            committed: Arc::new(watch::Sender::new(head)),
        })
    }

    /// Registers a case; for a self-service request (`limits` given), only
    /// within its requester's limits.
    async fn create(&self, case: NewCase, event: NewEvent, limits: Option<RequestLimits>) -> Result<EventRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let result = async {
            if let Some(limits) = limits {
                let (open, today): (i64, i64) = sqlx::query_as(&format!(
                    "SELECT COALESCE(SUM(CASE WHEN state IN {LIVE} THEN 1 ELSE 0 END), 0), \
                     COALESCE(SUM(CASE WHEN created_at >= $2 THEN 1 ELSE 0 END), 0) \
                     FROM cases WHERE requester = $1 AND self_service IS NOT NULL"
                ))
                .bind(&case.requester)
                .bind(RequestLimits::day_ago())
                .fetch_one(&mut *tx)
                .await?;
                limits.check(&case.requester, open, today)?;
            }
            Self::try_create_case(&mut tx, case, event).await
        }
        .await;
        finish(tx, result).await
    }

    /// A write transaction holding the database's write lock from its start.
    async fn begin_write(&self) -> Result<Tx, StoreError> {
        Tx::begin(&self.writer, "BEGIN IMMEDIATE", &self.committed).await
    }

    /// Appends `events` to a case's log in one transaction, whatever the
    /// case's state: for loading many records at once (benchmarks, imports).
    /// The daemon appends through [`Store`], record by record.
    pub async fn append_many(&self, case_ref: &str, events: Vec<NewEvent>) -> Result<Option<EventRecord>, StoreError> {
        let mut tx = self.begin_write().await?;
        let result = async {
            let (_, mut count, mut head) = Self::head(&mut tx, case_ref).await?;
            let mut last = None;
            for e in events {
                let rec = Self::push_event(&mut tx, case_ref, count, &head, e).await?;
                count = rec.seq;
                head.clone_from(&rec.hash);
                last = Some(rec);
            }
            Ok(last)
        }
        .await;
        finish(tx, result).await
    }

    /// A transition, moving the serving host to `host` when given.
    async fn transition_on(
        &self,
        case_ref: &str,
        from: CaseState,
        to: CaseState,
        host: Option<&str>,
        event: NewEvent,
    ) -> Result<EventRecord, StoreError> {
        let mut attempt = 1;
        loop {
            let mut tx = self.begin_write().await?;
            let result = Self::try_transition(&mut tx, case_ref, from, to, host, event.clone()).await;
            match finish(tx, result).await {
                Err(StoreError::Busy(_)) if attempt < ATTEMPTS => attempt += 1,
                done => {
                    if done.is_ok() {
                        self.changes.send_modify(|n| *n += 1);
                    }
                    return done;
                }
            }
        }
    }

    /// The case's state and head (record count, last hash).
    async fn head(tx: &mut Tx, case_ref: &str) -> Result<(CaseState, u64, String), StoreError> {
        let row = sqlx::query("SELECT state, event_count, head_hash FROM cases WHERE ref = $1")
            .bind(case_ref)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NoCase(case_ref.to_string()))?;
        let state: String = row.try_get(0)?;
        let state = CaseState::parse(&state).ok_or_else(|| StoreError::Corrupt(case_ref.into(), format!("unknown state {state:?}")))?;
        Ok((state, row.try_get::<i64, _>(1)? as u64, row.try_get(2)?))
    }

    /// Chains `event` onto the head (`count`, `head`) read in this
    /// transaction: moves the head if it still is that head, then writes the
    /// record. [`StoreError::Busy`] when the head moved: the caller rolls back
    /// and may start over.
    async fn push_event(tx: &mut Tx, case_ref: &str, count: u64, head: &str, event: NewEvent) -> Result<EventRecord, StoreError> {
        let busy = || StoreError::Busy(case_ref.to_string());
        let rec = audit::chain(case_ref, count, head, event);
        let moved = sqlx::query("UPDATE cases SET event_count = $1, head_hash = $2 WHERE ref = $3 AND event_count = $4 AND head_hash = $5")
            .bind(rec.seq as i64)
            .bind(&rec.hash)
            .bind(case_ref)
            .bind(count as i64)
            .bind(head)
            .execute(&mut **tx)
            .await?;
        if moved.rows_affected() != 1 {
            return Err(busy());
        }
        // The next feed number, under the case's write lock (see `Store::feed_page`).
        let feed_seq: i64 = sqlx::query_scalar("UPDATE feed_head SET seq = seq + 1 WHERE id = 1 RETURNING seq")
            .fetch_one(&mut **tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO case_events (case_ref, seq, at, actor, uid, event, details, prev_hash, hash, feed_seq) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&rec.case_ref)
        .bind(rec.seq as i64)
        .bind(&rec.at)
        .bind(&rec.actor)
        .bind(rec.uid as i64)
        .bind(&rec.event)
        .bind(rec.details.to_string())
        .bind(&rec.prev_hash)
        .bind(&rec.hash)
        .bind(feed_seq)
        .execute(&mut **tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => Err(busy()),
            Err(e) => Err(e.into()),
            Ok(_) => {
                tx.feed_seq = Some(feed_seq.max(0) as u64);
                Ok(rec)
            }
        }
    }

    /// One attempt at a transition, inside `tx`.
    async fn try_transition(
        tx: &mut Tx,
        case_ref: &str,
        from: CaseState,
        to: CaseState,
        host: Option<&str>,
        event: NewEvent,
    ) -> Result<EventRecord, StoreError> {
        let (state, count, head) = Self::head(tx, case_ref).await?;
        if state != from {
            return Err(StoreError::Conflict {
                case_ref: case_ref.to_string(),
                expected: from,
                actual: state,
            });
        }
        let (count, head) = Self::fold_case(tx, case_ref, count, head, None).await?;
        let moved = sqlx::query("UPDATE cases SET state = $1, state_since = $2, host = COALESCE($5, host) WHERE ref = $3 AND state = $4")
            .bind(to.as_str())
            .bind(crate::unix::now_secs())
            .bind(case_ref)
            .bind(from.as_str())
            .bind(host)
            .execute(&mut **tx)
            .await?;
        if moved.rows_affected() != 1 {
            return Err(StoreError::Busy(case_ref.to_string()));
        }
        Self::push_event(tx, case_ref, count, &head, event).await
    }

    /// One attempt at an append while the case is in one of `states`, inside `tx`.
    async fn try_append_in(tx: &mut Tx, case_ref: &str, states: &[CaseState], event: NewEvent) -> Result<EventRecord, StoreError> {
        let (state, count, head) = Self::head(tx, case_ref).await?;
        if !states.contains(&state) {
            return Err(StoreError::Conflict {
                case_ref: case_ref.to_string(),
                expected: states.first().copied().unwrap_or(state),
                actual: state,
            });
        }
        Self::push_event(tx, case_ref, count, &head, event).await
    }

    /// One attempt at a move to `host`, inside `tx`.
    async fn try_move(tx: &mut Tx, case_ref: &str, states: &[CaseState], host: &str, event: NewEvent) -> Result<EventRecord, StoreError> {
        let rec = Self::try_append_in(tx, case_ref, states, event).await?;
        sqlx::query("UPDATE cases SET host = $1 WHERE ref = $2")
            .bind(host)
            .bind(case_ref)
            .execute(&mut **tx)
            .await?;

        Ok(rec)
    }

    /// Folds the case's counted accesses into its log, inside `tx`, onto the
    /// head (`count`, `head`) read in it: of keys whose window began at or
    /// before `cutoff` (unix seconds), of all keys for `None`. Returns the new head.
    async fn fold_case(
        tx: &mut Tx,
        case_ref: &str,
        mut count: u64,
        mut head: String,
        cutoff: Option<i64>,
    ) -> Result<(u64, String), StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM access_counts WHERE case_ref = $1 AND pending > 0 AND ($2 IS NULL OR window_start <= $2) \
             ORDER BY event, file, uid, staff",
        )
        .bind(case_ref)
        .bind(cutoff)
        .fetch_all(&mut **tx)
        .await?;
        for row in &rows {
            let rec = Self::push_event(tx, case_ref, count, &head, access_count(case_ref, row)?.record()).await?;
            sqlx::query(
                "UPDATE access_counts SET pending = 0, pending_bytes = 0, pending_complete = 0, first_at = NULL, last_at = NULL, last_pid = NULL \
                 WHERE case_ref = $1 AND event = $2 AND file = $3 AND uid = $4 AND staff = $5",
            )
            .bind(case_ref)
            .bind(row.try_get::<String, _>("event")?)
            .bind(row.try_get::<String, _>("file")?)
            .bind(row.try_get::<i64, _>("uid")?)
            .bind(row.try_get::<i64, _>("staff")?)
            .execute(&mut **tx)
            .await?;
            (count, head) = (rec.seq, rec.hash);
        }
        Ok((count, head))
    }

    /// One attempt at recording an access, inside `tx`.
    async fn try_record_access(tx: &mut Tx, a: &FileAccess, policy: &Coalescing) -> Result<Recorded, StoreError> {
        let (state, count, head) = Self::head(tx, &a.case_ref).await?;
        if !state.is_visible() {
            return Err(StoreError::Conflict {
                case_ref: a.case_ref.clone(),
                expected: CaseState::VISIBLE[0],
                actual: state,
            });
        }
        let event = a.event().as_str();
        let key = "case_ref = $1 AND event = $2 AND file = $3 AND uid = $4 AND staff = $5";
        let window = sqlx::query(&format!("SELECT window_start, window_records FROM access_counts WHERE {key}"))
            .bind(&a.case_ref)
            .bind(event)
            .bind(&a.file)
            .bind(a.actor.uid as i64)
            .bind(a.staff as i64)
            .fetch_optional(&mut **tx)
            .await?;
        let now = crate::unix::now_secs();
        let step = match &window {
            None => Step::NewWindow,
            Some(w) => access::step(
                policy,
                now,
                w.try_get("window_start")?,
                w.try_get::<i64, _>("window_records")?.clamp(0, u32::MAX as i64) as u32,
            ),
        };
        let (bytes, complete) = a.read();
        if step == Step::Count {
            let at = audit::now_rfc3339();
            sqlx::query(&format!(
                "UPDATE access_counts SET pending = pending + 1, pending_bytes = pending_bytes + $6, pending_complete = pending_complete + $7, \
                 first_at = CASE WHEN pending = 0 THEN $8 ELSE first_at END, last_at = $8, last_pid = $9, actor = $10 WHERE {key}"
            ))
            .bind(&a.case_ref)
            .bind(event)
            .bind(&a.file)
            .bind(a.actor.uid as i64)
            .bind(a.staff as i64)
            .bind(bytes as i64)
            .bind(complete as i64)
            .bind(&at)
            .bind(a.pid as i64)
            .bind(&a.actor.name)
            .execute(&mut **tx)
            .await?;
            return Ok(Recorded::Counted);
        }
        // A new window first folds what the last ones counted (this key's
        // among them), so the log keeps the order of time.
        let new_window = step == Step::NewWindow;
        let (count, head) = if window.is_some() && new_window {
            let cutoff = now.saturating_sub(policy.window.as_secs() as i64);
            Self::fold_case(tx, &a.case_ref, count, head, Some(cutoff)).await?
        } else {
            (count, head)
        };
        let rec = Self::push_event(tx, &a.case_ref, count, &head, a.record()).await?;
        sqlx::query(
            "INSERT INTO access_counts (case_ref, event, file, uid, staff, actor, file_id, size, window_start, window_records, \
             pending, pending_bytes, pending_complete) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, 0, 0, 0) \
             ON CONFLICT (case_ref, event, file, uid, staff) DO UPDATE SET actor = excluded.actor, file_id = excluded.file_id, \
             size = excluded.size, \
             window_start = CASE WHEN $10 THEN excluded.window_start ELSE access_counts.window_start END, \
             window_records = CASE WHEN $10 THEN 1 ELSE access_counts.window_records + 1 END",
        )
        .bind(&a.case_ref)
        .bind(event)
        .bind(&a.file)
        .bind(a.actor.uid as i64)
        .bind(a.staff as i64)
        .bind(&a.actor.name)
        .bind(&a.file_id)
        .bind(a.size() as i64)
        .bind(now)
        .bind(new_window)
        .execute(&mut **tx)
        .await?;
        Ok(Recorded::Record(rec))
    }

    async fn try_create_case(tx: &mut Tx, case: NewCase, event: NewEvent) -> Result<EventRecord, StoreError> {
        let report = serde_json::to_string(&case.report).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let inserted = sqlx::query(
            "INSERT INTO cases (ref, state, requester, department, submitter, verified, report, created_at, state_since, event_count, head_hash, \
             opened_uid, self_service) VALUES ($1, 'open', $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, $11)",
        )
        .bind(&case.case_ref)
        .bind(&case.requester)
        .bind(&case.department)
        .bind(&case.submitter)
        .bind(case.report.verified() as i64)
        .bind(report)
        .bind(audit::now_rfc3339())
        .bind(crate::unix::now_secs())
        .bind(GENESIS)
        .bind(case.opened_uid as i64)
        .bind(case.self_service.map(|p| p.as_str()))
        .execute(&mut **tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => return Err(StoreError::Exists(case.case_ref)),
            other => other?,
        };
        for (i, f) in case.files.iter().enumerate() {
            sqlx::query(
                "INSERT INTO case_files (case_ref, idx, descriptor, export_name, file_id, path, department, size, sha256, submitted_ns, extra) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(&case.case_ref)
            .bind(i as i64)
            .bind(&f.descriptor)
            .bind(&f.export_name)
            .bind(f.file.file_id.as_str())
            .bind(f.file.path.as_str())
            .bind(f.file.department.as_str())
            .bind(f.file.size as i64)
            .bind(&f.file.sha256)
            .bind(f.file.submitted_ns)
            .bind(&f.file.extra)
            .execute(&mut **tx)
            .await?;
        }
        Self::push_event(tx, &case.case_ref, 0, GENESIS, event).await
    }

    async fn try_import(tx: &mut Tx, rows: Vec<CatalogRow>) -> Result<ImportSummary, StoreError> {
        sqlx::query(
            "CREATE TEMP TABLE IF NOT EXISTS import_rows (line INTEGER NOT NULL, file_id TEXT PRIMARY KEY NOT NULL, path TEXT NOT NULL, \
             base_name TEXT NOT NULL, department TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL, submitted_ns INTEGER NOT NULL, extra TEXT NOT NULL, \
             sample_id TEXT)",
        )
        .execute(&mut **tx)
        .await?;
        sqlx::query("DELETE FROM import_rows").execute(&mut **tx).await?;
        let full_sql = insert_sql(BATCH);
        let mut rows = rows.into_iter();
        loop {
            let chunk: Vec<CatalogRow> = rows.by_ref().take(BATCH).collect();
            if chunk.is_empty() {
                break;
            }
            let sql = if chunk.len() == BATCH {
                full_sql.clone()
            } else {
                insert_sql(chunk.len())
            };
            let mut q = sqlx::query(&sql);
            // Owned values: sqlx moves them to its worker instead of copying each one.
            for r in chunk {
                let f = r.file;
                let base_name = f.path.base_name().to_string();
                q = q
                    .bind(r.line as i64)
                    .bind(String::from(f.file_id))
                    .bind(String::from(f.path))
                    .bind(base_name)
                    .bind(String::from(f.department))
                    .bind(f.size as i64)
                    .bind(f.sha256)
                    .bind(f.submitted_ns)
                    .bind(f.extra)
                    .bind(r.sample_id);
            }
            q.execute(&mut **tx).await?;
        }
        const CHANGED: &str = "(k.path <> i.path OR k.department <> i.department OR k.size <> i.size OR k.sha256 <> i.sha256 OR k.submitted_ns <> i.submitted_ns)";
        let mut errors = RowErrors::default();
        let held = sqlx::query(&format!(
            "SELECT i.line, i.file_id, MIN(c.ref) FROM import_rows i JOIN catalog k ON k.file_id = i.file_id \
             JOIN case_files cf ON cf.file_id = i.file_id JOIN cases c ON c.ref = cf.case_ref \
             WHERE c.state IN {LIVE} AND {CHANGED} GROUP BY i.line, i.file_id ORDER BY i.line"
        ))
        .fetch_all(&mut **tx)
        .await?;
        for row in &held {
            let line: i64 = row.try_get(0)?;
            let id: String = row.try_get(1)?;
            let case_ref: String = row.try_get(2)?;
            errors.push(
                line as usize,
                format!("file {id} is held by case {case_ref}; its path, department, size, sha256 and submitted_at cannot change until that case ends"),
            );
        }
        let counts = sqlx::query(&format!(
            "SELECT COUNT(*), SUM(k.file_id IS NULL), SUM(k.file_id IS NOT NULL AND ({CHANGED} OR k.extra <> i.extra)) \
             FROM import_rows i LEFT JOIN catalog k ON k.file_id = i.file_id"
        ))
        .fetch_one(&mut **tx)
        .await?;
        let total = counts.try_get::<i64, _>(0)? as u64;
        let added = counts.try_get::<Option<i64>, _>(1)?.unwrap_or(0) as u64;
        let updated = counts.try_get::<Option<i64>, _>(2)?.unwrap_or(0) as u64;
        let now = audit::now_rfc3339();
        sqlx::query(
            "INSERT INTO catalog (file_id, path, base_name, department, size, sha256, submitted_ns, extra, sample_id, imported_at) \
             SELECT file_id, path, base_name, department, size, sha256, submitted_ns, extra, sample_id, $1 FROM import_rows WHERE true \
             ON CONFLICT (file_id) DO UPDATE SET path = excluded.path, base_name = excluded.base_name, department = excluded.department, \
             size = excluded.size, sha256 = excluded.sha256, submitted_ns = excluded.submitted_ns, extra = excluded.extra, \
             sample_id = excluded.sample_id, imported_at = excluded.imported_at \
             WHERE catalog.path <> excluded.path OR catalog.department <> excluded.department OR catalog.size <> excluded.size \
             OR catalog.sha256 <> excluded.sha256 OR catalog.submitted_ns <> excluded.submitted_ns OR catalog.extra <> excluded.extra",
        )
        .bind(&now)
        .execute(&mut **tx)
        .await?;
        let clashes = sqlx::query(
            "SELECT i.line, i.path, k.file_id FROM import_rows i JOIN catalog k ON k.path = i.path AND k.file_id <> i.file_id ORDER BY i.line",
        )
        .fetch_all(&mut **tx)
        .await?;
        for row in &clashes {
            let line: i64 = row.try_get(0)?;
            let path: String = row.try_get(1)?;
            let other: String = row.try_get(2)?;
            errors.push(line as usize, format!("path {path:?} is already the path of file {other}"));
        }
        sqlx::query("DELETE FROM import_rows").execute(&mut **tx).await?;
        if !errors.is_empty() {
            return errors.into_result(ImportSummary::default()).map_err(StoreError::from);
        }
        let catalog_files = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM catalog")
            .fetch_one(&mut **tx)
            .await? as u64;
        Ok(ImportSummary {
            rows: total,
            added,
            updated,
            unchanged: total - added - updated,
            catalog_files,
        })
    }
}

#[async_trait::async_trait]
impl super::search::SearchOnce for SqliteStore {
    async fn search_once(&self, sql: &str, args: Vec<super::search::Arg>) -> Result<Vec<FoundFile>, StoreError> {
        let mut query = sqlx::query(sql);
        for a in args {
            query = match a {
                super::search::Arg::Text(t) => query.bind(t),
                super::search::Arg::Int(n) => query.bind(n),
            };
        }
        let rows = query.fetch_all(&self.reader).await?;
        rows.iter()
            .map(|r| {
                Ok(FoundFile {
                    file: catalog_file(r)?,
                    sample_id: r.try_get("sample_id")?,
                })
            })
            .collect()
    }
}

fn catalog_file(row: &SqliteRow) -> Result<CatalogFile, StoreError> {
    let bad = StoreError::CatalogRow;
    Ok(CatalogFile {
        file_id: FileId::parse(row.try_get("file_id")?).map_err(bad)?,
        path: CatalogPath::parse(row.try_get("path")?).map_err(bad)?,
        department: DirId::parse(row.try_get("department")?).map_err(bad)?,
        size: row.try_get::<i64, _>("size")? as u64,
        sha256: row.try_get("sha256")?,
        submitted_ns: row.try_get("submitted_ns")?,
        extra: row.try_get("extra")?,
    })
}

fn case_record(row: &SqliteRow) -> Result<CaseRecord, StoreError> {
    let case_ref: String = row.try_get("ref")?;
    let state: String = row.try_get("state")?;
    let state = CaseState::parse(&state).ok_or_else(|| StoreError::Corrupt(case_ref.clone(), format!("unknown state {state:?}")))?;
    let report: String = row.try_get("report")?;
    let report = serde_json::from_str(&report).map_err(|e| StoreError::Corrupt(case_ref.clone(), format!("report: {e}")))?;
    let self_service = match row.try_get::<Option<String>, _>("self_service")? {
        None => None,
        Some(p) => {
            Some(SelfService::parse(&p).ok_or_else(|| StoreError::Corrupt(case_ref.clone(), format!("unknown self_service {p:?}")))?)
        }
    };
    Ok(CaseRecord {
        state,
        requester: row.try_get("requester")?,
        department: row.try_get("department")?,
        submitter: row.try_get("submitter")?,
        verified: row.try_get::<i64, _>("verified")? != 0,
        report,
        created_at: row.try_get("created_at")?,
        state_since: row.try_get("state_since")?,
        event_count: row.try_get::<i64, _>("event_count")? as u64,
        head_hash: row.try_get("head_hash")?,
        opened_uid: row.try_get::<Option<i64>, _>("opened_uid")?.map(|u| u as u32),
        self_service,
        host: row.try_get("host")?,
        case_ref,
    })
}

fn event_record(row: &SqliteRow) -> Result<EventRecord, StoreError> {
    let case_ref: String = row.try_get("case_ref")?;
    let details: String = row.try_get("details")?;
    // A record whose details are not JSON was edited: keep it as a string so
    // the chain check reports it instead of failing to read the log.
    let details = serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details));
    Ok(EventRecord {
        seq: row.try_get::<i64, _>("seq")? as u64,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        uid: row.try_get::<i64, _>("uid")? as u32,
        event: row.try_get("event")?,
        details,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
        case_ref,
    })
}

/// The pending count of an `access_counts` row.
fn access_count(case_ref: &str, row: &SqliteRow) -> Result<AccessCount, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(case_ref.to_string(), what);
    let event: String = row.try_get("event")?;
    let event = EventKind::parse(&event).ok_or_else(|| corrupt(format!("unknown access event {event:?}")))?;
    let n = |col: &str| -> Result<u64, StoreError> { Ok(row.try_get::<i64, _>(col)?.max(0) as u64) };
    Ok(AccessCount {
        event,
        actor: Actor {
            name: row.try_get("actor")?,
            uid: row.try_get::<i64, _>("uid")? as u32,
        },
        file: row.try_get("file")?,
        file_id: row.try_get("file_id")?,
        staff: row.try_get::<i64, _>("staff")? != 0,
        size: n("size")?,
        count: n("pending")?,
        bytes_read: n("pending_bytes")?,
        complete: n("pending_complete")?,
        first_at: row.try_get::<Option<String>, _>("first_at")?.unwrap_or_default(),
        last_at: row.try_get::<Option<String>, _>("last_at")?.unwrap_or_default(),
        last_pid: row.try_get::<Option<i64>, _>("last_pid")?.unwrap_or(0) as u32,
    })
}

const LIVE: &str = "('open','approved','blocked','exported','received')";

/// The last feed number given.
async fn feed_head(pool: &SqlitePool) -> Result<u64, StoreError> {
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM feed_head WHERE id = 1").fetch_one(pool).await?;
    Ok(seq.max(0) as u64)
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn import_catalog(&self, rows: CatalogRows) -> Result<ImportSummary, StoreError> {
        let rows = rows.collect().await?;
        let mut tx = self.begin_write().await?;
        let result = Self::try_import(&mut tx, rows).await;
        let summary = finish(tx, result).await?;
        if summary.added + summary.updated > 0 {
            analyze_catalog(&self.writer).await;
        }
        // A large import leaves a write-ahead log as large as the database: give the space back.
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await {
            tracing::debug!(error = %e, "WAL checkpoint after import failed");
        }
        Ok(summary)
    }

    async fn resolve(&self, descriptor: &str, limit: u32) -> Result<Vec<CatalogFile>, StoreError> {
        let rows = sqlx::query(
            "SELECT file_id, path, department, size, sha256, submitted_ns, extra FROM catalog \
             WHERE file_id = $1 OR path = $1 OR base_name = $1 ORDER BY file_id LIMIT $2",
        )
        .bind(descriptor)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(catalog_file).collect()
    }

    async fn resolve_among(&self, descriptor: &str, departments: &[String], limit: u32) -> Result<Vec<CatalogFile>, StoreError> {
        if departments.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (0..departments.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "SELECT file_id, path, department, size, sha256, submitted_ns, extra FROM catalog \
             WHERE (file_id = $1 OR path = $1 OR base_name = $1) AND department IN ({}) ORDER BY file_id LIMIT $2",
            list.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(descriptor).bind(limit as i64);
        for d in departments {
            q = q.bind(d);
        }
        let rows = q.fetch_all(&self.reader).await?;
        rows.iter().map(catalog_file).collect()
    }

    async fn search_catalog(&self, query: &CatalogQuery, after: Option<&SearchKey>, limit: u32) -> Result<Vec<FoundFile>, StoreError> {
        super::search::search_catalog(self, query, after, limit).await
    }

    async fn catalog_size(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM catalog")
            .fetch_one(&self.reader)
            .await? as u64)
    }

    async fn catalog_changed_at(&self) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar::<_, Option<String>>("SELECT MAX(imported_at) FROM catalog")
            .fetch_one(&self.reader)
            .await?)
    }

    async fn create_case(&self, case: NewCase, event: NewEvent) -> Result<EventRecord, StoreError> {
        self.create(case, event, None).await
    }

    async fn create_request(&self, case: NewCase, event: NewEvent, limits: RequestLimits) -> Result<EventRecord, StoreError> {
        self.create(case, event, Some(limits)).await
    }

    async fn list_requests(&self, requester: &str, limit: u32) -> Result<Vec<CaseRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM cases WHERE requester = $1 AND self_service IS NOT NULL \
             ORDER BY created_at DESC, ref DESC LIMIT $2) AS recent ORDER BY created_at, ref",
        )
        .bind(requester)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(case_record).collect()
    }

    async fn case(&self, case_ref: &str) -> Result<Option<CaseRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM cases WHERE ref = $1")
            .bind(case_ref)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(case_record).transpose()
    }

    async fn case_files(&self, case_ref: &str) -> Result<Vec<CaseFile>, StoreError> {
        let rows = sqlx::query("SELECT * FROM case_files WHERE case_ref = $1 ORDER BY idx")
            .bind(case_ref)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(CaseFile {
                    descriptor: r.try_get("descriptor")?,
                    export_name: r.try_get("export_name")?,
                    file: catalog_file(r)?,
                })
            })
            .collect()
    }

    async fn list_cases(&self, state: Option<CaseState>, department: Option<&str>) -> Result<Vec<CaseRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM cases WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR department = $2) ORDER BY created_at, ref",
        )
        .bind(state.map(|s| s.as_str()))
        .bind(department)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(case_record).collect()
    }

    async fn transition(&self, case_ref: &str, from: CaseState, to: CaseState, event: NewEvent) -> Result<EventRecord, StoreError> {
        self.transition_on(case_ref, from, to, None, event).await
    }

    async fn append_in(&self, case_ref: &str, states: &[CaseState], event: NewEvent) -> Result<EventRecord, StoreError> {
        let mut attempt = 1;
        loop {
            let mut tx = self.begin_write().await?;
            let result = Self::try_append_in(&mut tx, case_ref, states, event.clone()).await;
            match finish(tx, result).await {
                Err(StoreError::Busy(_)) if attempt < ATTEMPTS => attempt += 1,
                done => return done,
            }
        }
    }

    async fn events(&self, case_ref: &str) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM case_events WHERE case_ref = $1 ORDER BY seq")
            .bind(case_ref)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(event_record).collect()
    }

    async fn record_access(&self, access: &FileAccess, policy: &Coalescing) -> Result<Recorded, StoreError> {
        let mut attempt = 1;
        loop {
            let mut tx = self.begin_write().await?;
            let result = Self::try_record_access(&mut tx, access, policy).await;
            match finish(tx, result).await {
                Err(StoreError::Busy(_)) if attempt < ATTEMPTS => attempt += 1,
                done => return done,
            }
        }
    }

    async fn fold_accesses(&self, case_ref: Option<&str>, older_than: Duration) -> Result<u64, StoreError> {
        let cutoff = crate::unix::now_secs().saturating_sub(older_than.as_secs() as i64);
        let cases: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT case_ref FROM access_counts WHERE pending > 0 AND window_start <= $1 AND ($2 IS NULL OR case_ref = $2) ORDER BY case_ref",
        )
        .bind(cutoff)
        .bind(case_ref)
        .fetch_all(&self.reader)
        .await?;
        let mut written = 0;
        for case_ref in cases {
            let mut attempt = 1;
            loop {
                let mut tx = self.begin_write().await?;
                let result = match Self::head(&mut tx, &case_ref).await {
                    Ok((_, count, head)) => Self::fold_case(&mut tx, &case_ref, count, head, Some(cutoff))
                        .await
                        .map(|(after, _)| after - count),
                    Err(e) => Err(e),
                };
                match finish(tx, result).await {
                    Err(StoreError::Busy(_)) if attempt < ATTEMPTS => attempt += 1,
                    done => {
                        written += done?;
                        break;
                    }
                }
            }
        }
        Ok(written)
    }

    async fn opened_files(&self, case_ref: &str, staff: bool) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT file FROM access_counts WHERE case_ref = $1 AND event = $2 AND staff = $3 ORDER BY file")
                .bind(case_ref)
                .bind(EventKind::FileOpened.as_str())
                .bind(staff as i64)
                .fetch_all(&self.reader)
                .await?,
        )
    }

    async fn events_page(&self, case_ref: &str, after_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM case_events WHERE case_ref = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .bind(case_ref)
            .bind(after_seq.min(i64::MAX as u64) as i64)
            .bind(limit as i64)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(event_record).collect()
    }

    async fn stray_records(&self, case_ref: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM case_events WHERE case_ref = $1 \
             AND (seq < 1 OR seq > COALESCE((SELECT event_count FROM cases WHERE ref = $1), 0))",
        )
        .bind(case_ref)
        .fetch_one(&self.reader)
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn count_by_state(&self) -> Result<Vec<(CaseState, u64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM cases GROUP BY state")
            .fetch_all(&self.reader)
            .await?;
        let mut map: HashMap<String, u64> = HashMap::new();
        for r in &rows {
            map.insert(r.try_get(0)?, r.try_get::<i64, _>(1)? as u64);
        }
        Ok(CaseState::ALL
            .iter()
            .map(|s| (*s, map.get(s.as_str()).copied().unwrap_or(0)))
            .collect())
    }

    async fn transition_to_host(
        &self,
        case_ref: &str,
        from: CaseState,
        to: CaseState,
        host: &str,
        event: NewEvent,
    ) -> Result<EventRecord, StoreError> {
        self.transition_on(case_ref, from, to, Some(host), event).await
    }

    async fn move_case(&self, case_ref: &str, states: &[CaseState], host: &str, event: NewEvent) -> Result<EventRecord, StoreError> {
        let mut attempt = 1;
        loop {
            let mut tx = self.begin_write().await?;
            let result = Self::try_move(&mut tx, case_ref, states, host, event.clone()).await;
            match finish(tx, result).await {
                Err(StoreError::Busy(_)) if attempt < ATTEMPTS => attempt += 1,
                done => {
                    if done.is_ok() {
                        self.changes.send_modify(|n| *n += 1);
                    }
                    return done;
                }
            }
        }
    }

    async fn unsealed_cases(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&unsealed_sql()).fetch_all(&self.reader).await?)
    }

    async fn report_serving(&self, s: &Serving) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(SERVING_UPSERT)
            .bind(&s.case_ref)
            .bind(&s.host)
            .bind(s.published as i64)
            .bind(s.done.min(i64::MAX as u64) as i64)
            .bind(s.total.min(i64::MAX as u64) as i64)
            .bind(s.updated_at)
            .execute(&mut *tx)
            .await
            .map(|_| ())
            .map_err(StoreError::from);
        finish(tx, result).await
    }

    async fn serving(&self, case_ref: &str) -> Result<Option<Serving>, StoreError> {
        let row = sqlx::query("SELECT * FROM serving WHERE case_ref = $1")
            .bind(case_ref)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(serving_record).transpose()
    }

    async fn heartbeat(&self, b: &HostBeat) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(HEARTBEAT_UPSERT)
            .bind(&b.name)
            .bind(&b.version)
            .bind(&b.mode)
            .bind(&b.read_path)
            .bind(&b.directory_sha256)
            .bind(&b.started_at)
            .bind(b.at)
            .bind(b.every_secs)
            .bind(b.cases_served.min(i64::MAX as u64) as i64)
            .execute(&mut *tx)
            .await
            .map(|_| ())
            .map_err(StoreError::from);
        finish(tx, result).await
    }

    async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM hosts ORDER BY name").fetch_all(&self.reader).await?;
        rows.iter().map(host_record).collect()
    }

    async fn retire_host(&self, name: &str, reason: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let result = sqlx::query(RETIRE)
            .bind(name)
            .bind(audit::now_rfc3339())
            .bind(reason)
            .execute(&mut *tx)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(StoreError::from);
        let found = finish(tx, result).await?;
        self.changes.send_modify(|n| *n += 1);
        Ok(found)
    }

    fn case_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn state_summary(&self) -> Result<Vec<StateSummary>, StoreError> {
        let rows = sqlx::query_as(super::STATE_SUMMARY).fetch_all(&self.reader).await?;
        Ok(super::state_summaries(rows))
    }

    async fn feed_page(&self, after_seq: u64, limit: u32) -> Result<Vec<FeedRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM case_events WHERE feed_seq > $1 ORDER BY feed_seq LIMIT $2")
            .bind(after_seq.min(i64::MAX as u64) as i64)
            .bind(limit as i64)
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(FeedRecord {
                    feed_seq: r.try_get::<i64, _>("feed_seq")?.max(0) as u64,
                    record: event_record(r)?,
                })
            })
            .collect()
    }

    async fn feed_head(&self) -> Result<u64, StoreError> {
        feed_head(&self.reader).await
    }

    fn committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }
}

/// Statements the host register shares between backends.
pub(super) fn unsealed_sql() -> String {
    let terminal: Vec<String> = CaseState::TERMINAL.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!(
        "SELECT c.ref FROM cases c JOIN case_events e ON e.case_ref = c.ref AND e.seq = c.event_count \
         WHERE c.state IN ({}) AND e.event <> '{}' ORDER BY c.ref",
        terminal.join(", "),
        EventKind::Sealed.as_str()
    )
}
pub(super) const SERVING_UPSERT: &str = "INSERT INTO serving (case_ref, host, published, done, total, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (case_ref) DO UPDATE SET host = excluded.host, published = excluded.published, done = excluded.done, \
     total = excluded.total, updated_at = excluded.updated_at";
pub(super) const HEARTBEAT_UPSERT: &str = "INSERT INTO hosts (name, version, mode, read_path, directory_sha256, started_at, heartbeat_at, \
     heartbeat_secs, cases_served) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
     ON CONFLICT (name) DO UPDATE SET version = excluded.version, mode = excluded.mode, read_path = excluded.read_path, \
     directory_sha256 = excluded.directory_sha256, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, \
     heartbeat_secs = excluded.heartbeat_secs, cases_served = excluded.cases_served";
pub(super) const RETIRE: &str =
    "UPDATE hosts SET retired_at = COALESCE(retired_at, $2), retired_reason = COALESCE(retired_reason, $3) WHERE name = $1";

/// A `serving` row, from either backend.
pub(super) fn serving_record<R: HostRow>(row: &R) -> Result<Serving, StoreError> {
    Ok(Serving {
        case_ref: row.text("case_ref")?,
        host: row.text("host")?,
        published: row.int("published")? != 0,
        done: row.int("done")?.max(0) as u64,
        total: row.int("total")?.max(0) as u64,
        updated_at: row.int("updated_at")?,
    })
}

/// A `hosts` row, from either backend.
pub(super) fn host_record<R: HostRow>(row: &R) -> Result<HostRecord, StoreError> {
    Ok(HostRecord {
        beat: HostBeat {
            name: row.text("name")?,
            version: row.text("version")?,
            mode: row.text("mode")?,
            read_path: row.text("read_path")?,
            directory_sha256: row.text("directory_sha256")?,
            started_at: row.text("started_at")?,
            at: row.int("heartbeat_at")?,
            every_secs: row.int("heartbeat_secs")?,
            cases_served: row.int("cases_served")?.max(0) as u64,
        },
        retired_at: row.opt_text("retired_at")?,
        retired_reason: row.opt_text("retired_reason")?,
    })
}

/// The column reads the shared row decoders need, for each backend's rows.
pub(super) trait HostRow {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
}

impl HostRow for SqliteRow {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        Ok(self.try_get(col)?)
    }
}

/// The multi-row INSERT of `n` import rows. Its parameters are anonymous
/// (`?`), unlike every other statement's `$N`: sqlx looks each parameter's
/// name up when it binds, and SQLite finds a name by walking the statement's
/// list of them, so 10,000 named parameters cost 50 million steps a batch;
/// anonymous ones have no name to look up. (The import table is this
/// backend's own; other backends import their own way.)
fn insert_sql(n: usize) -> String {
    let mut s = String::from(
        "INSERT INTO import_rows (line, file_id, path, base_name, department, size, sha256, submitted_ns, extra, sample_id) VALUES ",
    );
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str("(?,?,?,?,?,?,?,?,?,?)");
    }
    s
}

/// Refreshes the planner's statistics of the catalog (sampled, so quick at
/// any size). A failure only costs query plans, so it is logged, not returned.
async fn analyze_catalog(pool: &SqlitePool) {
    let analyzed = async {
        let mut conn = pool.acquire().await?;
        sqlx::query(&format!("PRAGMA analysis_limit = {ANALYSIS_LIMIT}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query("ANALYZE catalog").execute(&mut *conn).await?;
        Ok::<_, sqlx::Error>(())
    };
    if let Err(e) = analyzed.await {
        tracing::warn!(error = %e, "cannot refresh the catalog's statistics; searches may be slower");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::catalog::CatalogRow;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn row(line: usize, id: &str, path: &str) -> CatalogRow {
        CatalogRow {
            line,
            file: CatalogFile {
                file_id: FileId::parse(id).unwrap_or_else(|e| panic!("{e}")),
                path: CatalogPath::parse(path).unwrap_or_else(|e| panic!("{e}")),
                department: DirId::parse("RH-KGA").unwrap_or_else(|e| panic!("{e}")),
                size: line as u64,
                sha256: "a".repeat(64),
                submitted_ns: 0,
                extra: String::new(),
            },
            sample_id: None,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// A descriptor matches exactly the files whose file_id, path or base
        /// name equals it, whatever the catalog holds.
        #[test]
        fn resolution_matches_the_definition(
            files in proptest::collection::btree_map("[a-c]{1,2}", "[a-c]{1,2}(/[a-c]{1,2}){0,2}", 1..25),
            probes in proptest::collection::vec("[a-c]{1,2}(/[a-c]{1,2}){0,2}", 1..20),
        ) {
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let url = format!("sqlite://{}/t.db", dir.path().display());
            let rt = runtime();
            // Paths must be unique in the catalog: keep the first file per path.
            let mut seen = BTreeSet::new();
            let rows: Vec<CatalogRow> = files
                .iter()
                .filter(|(_, p)| seen.insert(p.to_string()))
                .enumerate()
                .map(|(i, (id, p))| row(i + 2, &format!("ID{id}"), p))
                .collect();
            let store = rt.block_on(SqliteStore::open(&url)).unwrap_or_else(|e| panic!("{e}"));
            rt.block_on(store.import_catalog(rows.clone().into())).unwrap_or_else(|e| panic!("{e}"));
            let mut all_probes = probes.clone();
            all_probes.extend(rows.iter().map(|r| r.file.file_id.to_string()));
            for d in all_probes {
                let got: BTreeSet<String> = rt
                    .block_on(store.resolve(&d, 100))
                    .unwrap_or_else(|e| panic!("{e}"))
                    .into_iter()
                    .map(|f| f.file_id.to_string())
                    .collect();
                let want: BTreeSet<String> = rows
                    .iter()
                    .filter(|r| r.file.file_id.as_str() == d || r.file.path.as_str() == d || r.file.path.base_name() == d)
                    .map(|r| r.file.file_id.to_string())
                    .collect();
                prop_assert_eq!(got, want, "descriptor {}", d);
            }
        }
    }

    /// Behind the write lock, an append still refuses a head that is not the
    /// current one, and a second record with a taken sequence number.
    #[tokio::test]
    async fn an_append_on_a_stale_head_writes_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&format!("sqlite://{}/t.db", dir.path().display())).await?;
        let ev = event;
        let first = store.create_case(empty_case("C-1"), ev("opened")).await?;

        // The head moved on (as if another writer had appended): record 2
        // on the old head would not collide, the compare-and-set refuses it.
        let mut tx = store.begin_write().await?;
        sqlx::query("UPDATE cases SET event_count = 2, head_hash = 'moved' WHERE ref = 'C-1'")
            .execute(&mut *tx)
            .await?;
        let stale = SqliteStore::push_event(&mut tx, "C-1", 1, &first.hash, ev("forked")).await;
        anyhow::ensure!(matches!(stale, Err(StoreError::Busy(_))), "stale head: {stale:?}");
        finish(tx, Err::<(), _>(StoreError::Busy("C-1".into()))).await.ok();

        // A head set back by hand: the schema's key still refuses record 1 twice.
        let mut tx = store.begin_write().await?;
        sqlx::query("UPDATE cases SET event_count = 0, head_hash = $1 WHERE ref = 'C-1'")
            .bind(GENESIS)
            .execute(&mut *tx)
            .await?;
        let taken = SqliteStore::push_event(&mut tx, "C-1", 0, GENESIS, ev("forked")).await;
        anyhow::ensure!(matches!(taken, Err(StoreError::Busy(_))), "taken seq: {taken:?}");
        finish(tx, Err::<(), _>(StoreError::Busy("C-1".into()))).await.ok();

        anyhow::ensure!(store.events("C-1").await? == vec![first], "a refused append wrote a record");
        Ok(())
    }

    fn event(name: &str) -> NewEvent {
        NewEvent {
            actor: "alice".into(),
            uid: 1000,
            event: name.into(),
            details: serde_json::json!({}),
        }
    }

    fn empty_case(case_ref: &str) -> NewCase {
        NewCase {
            case_ref: case_ref.into(),
            requester: "alice".into(),
            department: None,
            submitter: None,
            report: crate::domain::verify::Report {
                department: None,
                problems: Vec::new(),
                lines: Vec::new(),
            },
            files: Vec::new(),
            opened_uid: 1000,
            self_service: None,
        }
    }

    /// Writes whose commit fails (the database and its write-ahead log made
    /// immutable under the open store, which fails their writes as a failing
    /// disk would) are errors
    /// and leave nothing, however often they fail; once the files can be
    /// written again the same store takes the next writes, and a reopened
    /// database holds exactly what was acknowledged.
    #[tokio::test]
    async fn failed_commits_are_errors_and_the_store_takes_writes_again() -> anyhow::Result<()> {
        use crate::gdb::test_support::{Immutable, privileged};
        if !privileged() {
            eprintln!("not root: the database cannot be made immutable; not tried");
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let store = SqliteStore::open(&url).await?;
        store.create_case(empty_case("C-1"), event("opened")).await?;
        {
            // Not the shared-memory index: SQLite maps it, and a write to a
            // mapped immutable file is a SIGBUS, not an error.
            let _frozen: Vec<Immutable> = ["t.db", "t.db-wal"].iter().map(|f| Immutable::set(&dir.path().join(f))).collect();
            for _ in 0..4 {
                let r = store.append_in("C-1", &[CaseState::Open], event("noted")).await;
                anyhow::ensure!(matches!(r, Err(StoreError::Db(_))), "an append on a frozen database: {r:?}");
                let r = store.create_case(empty_case("C-2"), event("opened")).await;
                anyhow::ensure!(matches!(r, Err(StoreError::Db(_))), "a new case on a frozen database: {r:?}");
            }
            // A connection made now opens the database read-only; the pool keeps it idle.
            let mut idle = store.writer.acquire().await?;
            sqlx::query("SELECT 1").execute(&mut *idle).await?;
            drop(idle);
        }
        anyhow::ensure!(store.events("C-1").await?.len() == 1, "a failed append left a record");
        anyhow::ensure!(store.case("C-2").await?.is_none(), "a failed create left a case");
        let second = store.append_in("C-1", &[CaseState::Open], event("noted")).await?;
        anyhow::ensure!(second.seq == 2, "{second:?}");
        store.create_case(empty_case("C-2"), event("opened")).await?;
        drop(store);
        let store = SqliteStore::open(&url).await?;
        anyhow::ensure!(store.events("C-1").await?.len() == 2);
        anyhow::ensure!(store.events("C-2").await?.len() == 1);
        Ok(())
    }

    fn note(name: &str, details: serde_json::Value, uid: u32) -> NewEvent {
        NewEvent {
            actor: format!("u{uid}"),
            uid,
            event: name.into(),
            details,
        }
    }

    async fn exported(store: &SqliteStore, case_ref: &str) -> anyhow::Result<()> {
        store
            .create_case(empty_case(case_ref), note("opened", serde_json::json!({}), 0))
            .await?;
        store
            .transition(
                case_ref,
                CaseState::Open,
                CaseState::Approved,
                note("approved", serde_json::json!({}), 0),
            )
            .await?;
        store
            .transition(
                case_ref,
                CaseState::Approved,
                CaseState::Exported,
                note("exported", serde_json::json!({}), 0),
            )
            .await?;
        Ok(())
    }

    fn open_of(case_ref: &str, file: &str, uid: u32) -> FileAccess {
        FileAccess {
            case_ref: case_ref.into(),
            actor: Actor {
                name: format!("u{uid}"),
                uid,
            },
            file: file.into(),
            file_id: "F1".into(),
            pid: 1,
            staff: false,
            kind: access::AccessKind::Opened,
        }
    }

    /// An access whose count cannot be written fails, writes nothing, and
    /// leaves the store usable: the mount refuses such an open.
    #[tokio::test]
    async fn an_access_whose_count_cannot_be_written_fails_and_writes_nothing() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open(&format!("sqlite://{}/t.db", dir.path().display())).await?;
        exported(&store, "C-1").await?;
        let open = open_of("C-1", "a.fq", 2001);
        let one = Coalescing {
            window: Duration::from_secs(3600),
            plain_per_window: 1,
        };
        anyhow::ensure!(matches!(store.record_access(&open, &one).await?, Recorded::Record(_)), "first open");
        sqlx::query("CREATE TRIGGER refuse_counts BEFORE UPDATE ON access_counts BEGIN SELECT RAISE(ABORT, 'no space'); END")
            .execute(&store.writer)
            .await?;
        let before = store.events("C-1").await?;
        // Counted, and recorded with its count moved on: both refused.
        let counted = store.record_access(&open, &one).await;
        anyhow::ensure!(matches!(counted, Err(StoreError::Db(_))), "a counted open: {counted:?}");
        let new_window = Coalescing {
            window: Duration::ZERO,
            plain_per_window: 1,
        };
        let recorded = store.record_access(&open, &new_window).await;
        anyhow::ensure!(matches!(recorded, Err(StoreError::Db(_))), "a recorded open: {recorded:?}");
        anyhow::ensure!(store.events("C-1").await? == before, "a refused access wrote a record");
        sqlx::query("DROP TRIGGER refuse_counts").execute(&store.writer).await?;
        anyhow::ensure!(
            matches!(store.record_access(&open, &one).await?, Recorded::Counted),
            "after the fault"
        );
        Ok(())
    }

    /// Logs from before access counting: their opens still count for a
    /// receipt, and the next access starts a window.
    #[tokio::test]
    async fn the_migration_counts_opens_logged_before_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/t.db", dir.path().display());
        {
            let store = SqliteStore::open(&url).await?;
            exported(&store, "C-1").await?;
            let opened = |file: &str, staff: bool, uid: u32| {
                note(
                    "file_opened",
                    serde_json::json!({"file": file, "file_id": "F1", "pid": 1, "staff": staff}),
                    uid,
                )
            };
            let read = note(
                "file_read",
                serde_json::json!({"file": "a.fq", "file_id": "F1", "pid": 1, "bytes_read": 3, "size": 3, "complete": true}),
                2001,
            );
            for e in [
                opened("a.fq", false, 2001),
                opened("a.fq", false, 2001),
                opened("b.fq", true, 1500),
                read,
            ] {
                store.append_in("C-1", &CaseState::VISIBLE, e).await?;
            }
            // As the database was before the migration.
            sqlx::query("DROP TABLE access_counts").execute(&store.writer).await?;
            sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 20261201000001")
                .execute(&store.writer)
                .await?;
            store.writer.close().await;
            store.reader.close().await;
        }
        let store = SqliteStore::open(&url).await?;
        anyhow::ensure!(store.opened_files("C-1", false).await? == ["a.fq"], "department's opens");
        anyhow::ensure!(store.opened_files("C-1", true).await? == ["b.fq"], "staff's opens");
        let n = store.events("C-1").await?.len();
        let rec = store.record_access(&open_of("C-1", "a.fq", 2001), &access::COALESCING).await?;
        anyhow::ensure!(matches!(rec, Recorded::Record(r) if r.seq == n as u64 + 1), "the next open");
        Ok(())
    }

    /// Logs written before the feed: their records are numbered in the order
    /// they were written, and the next record continues the numbers.
    #[tokio::test]
    async fn the_migration_numbers_records_written_before_the_feed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let written = {
            let store = SqliteStore::open(&url).await?;
            let mut written = Vec::new();
            for case_ref in ["C-2", "C-1"] {
                written.push(store.create_case(empty_case(case_ref), event("opened")).await?);
            }
            for i in 0..6 {
                let case_ref = ["C-1", "C-2"][i % 2];
                written.push(store.append_in(case_ref, &[CaseState::Open], event("noted")).await?);
            }
            // As the database was before the migration.
            for statement in [
                "DROP INDEX case_events_feed",
                "ALTER TABLE case_events DROP COLUMN feed_seq",
                "DROP TABLE feed_head",
                "DELETE FROM _sqlx_migrations WHERE version = 20261204000001",
            ] {
                sqlx::query(statement).execute(&store.writer).await?;
            }
            store.writer.close().await;
            store.reader.close().await;
            written
        };
        let store = SqliteStore::open(&url).await?;
        anyhow::ensure!(store.feed_head().await? == 8, "head after the migration");
        anyhow::ensure!(*store.committed().borrow() == 8, "the prompt starts at the head");
        let feed = store.feed_page(0, 100).await?;
        anyhow::ensure!(
            feed.iter().map(|r| r.feed_seq).collect::<Vec<_>>() == (1..=8).collect::<Vec<u64>>(),
            "{feed:?}"
        );
        anyhow::ensure!(
            feed.into_iter().map(|r| r.record).collect::<Vec<_>>() == written,
            "not in the order written"
        );
        store.append_in("C-2", &[CaseState::Open], event("noted")).await?;
        let next = store.feed_page(8, 100).await?;
        anyhow::ensure!(
            matches!(&next[..], [r] if r.feed_seq == 9 && r.record.case_ref == "C-2"),
            "{next:?}"
        );
        Ok(())
    }

    /// The store contract on the default store: one writer connection.
    mod conformance_one_writer {
        use super::*;
        use std::sync::Arc;

        async fn open() -> anyhow::Result<(tempfile::TempDir, Arc<dyn Store>)> {
            let dir = tempfile::tempdir()?;
            let store = SqliteStore::open(&format!("sqlite://{}/t.db", dir.path().display())).await?;
            Ok((dir, Arc::new(store)))
        }

        crate::db::conformance::conformance_tests!(open);
    }

    /// The store contract with several writer connections: what is serialised
    /// must not rest on there being only one.
    mod conformance_four_writers {
        use super::*;
        use std::sync::Arc;

        async fn open() -> anyhow::Result<(tempfile::TempDir, Arc<dyn Store>)> {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}/t.db", dir.path().display());
            let store = SqliteStore::open_with(&url, Connections { writers: 4, readers: 4 }).await?;
            Ok((dir, Arc::new(store)))
        }

        crate::db::conformance::conformance_tests!(open);
    }
}
