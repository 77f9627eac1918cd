//! PostgreSQL, for a register shared by several transfer hosts. Every write
//! is one transaction; appends to a case's log lock the case's row first
//! (`SELECT … FOR UPDATE`), which serialises them across connections and
//! hosts, and then compare-and-set the head as on SQLite. Catalog imports
//! arrive with `COPY` and lock the catalog against concurrent imports and
//! new cases, so the check that a live case's files do not change holds.

use super::sqlite::{HEARTBEAT_UPSERT, RETIRE, SERVING_UPSERT, host_record, serving_record, unsealed_sql};
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
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// How often a write starts over when the case's head moved under it or the
/// server chose it as a deadlock victim.
const ATTEMPTS: usize = 5;

/// How long a call waits for a connection; while the server cannot be
/// reached, calls fail after this instead of hanging.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pooled connection idle this long is pinged before it is used again.
const PING_IDLE_AFTER: Duration = Duration::from_secs(1);

pub struct PgStore {
    pool: PgPool,
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Moved to the feed head after every commit that wrote records, here
    /// or (by a notification on [`FEED_CHANNEL`]) on another host.
    committed: Arc<watch::Sender<u64>>,
}

/// The connection options of `url`, with the password from `password_file`
/// when given (else from the URL, else `$PGPASSWORD`).
pub fn connect_options(url: &str, password_file: Option<&Path>) -> Result<PgConnectOptions, StoreError> {
    let mut options = PgConnectOptions::from_str(url)?
        .application_name("workcopy")
        // A catalog import stages its rows in a temporary table.
        .options([("temp_buffers", "128MB"), ("maintenance_work_mem", "256MB")]);
    if let Some(path) = password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StoreError::Unsupported(format!("cannot read the database password file {}: {e}", path.display())))?;
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(StoreError::Unsupported(format!(
                "the database password file {} is empty",
                path.display()
            )));
        }
        options = options.password(password);
    }
    Ok(options)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// A deadlock or serialisation failure: the server rolled the transaction
/// back and it may simply be tried again.
fn is_retryable(e: &sqlx::Error) -> bool {
    matches!(e.as_database_error().and_then(|d| d.code()).as_deref(), Some("40P01" | "40001"))
}

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

/// A transaction on a pool connection of its own. As on SQLite, its
/// connection goes back to the pool only when the transaction ended cleanly;
/// after a database error (the server may have gone away) or when dropped
/// unfinished, the connection is closed and the pool opens a fresh one.
struct Tx {
    conn: PoolConnection<Postgres>,
    ended: bool,
    /// The last feed number this transaction took, if it wrote a record.
    feed_seq: Option<u64>,
    /// Told that feed number once the transaction committed.
    committed: Arc<watch::Sender<u64>>,
}

impl Tx {
    async fn begin(pool: &PgPool, committed: &Arc<watch::Sender<u64>>) -> Result<Tx, StoreError> {
        let mut tx = Tx {
            conn: pool.acquire().await?,
            ended: false,
            feed_seq: None,
            committed: committed.clone(),
        };
        sqlx::query("BEGIN").execute(&mut *tx.conn).await?;
        Ok(tx)
    }
}

impl std::ops::Deref for Tx {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.ended {
            self.conn.close_on_drop();
        }
    }
}

/// Ends a transaction: commits it when `result` is `Ok`, rolls it back
/// otherwise. `Ok` only once the commit succeeded. A deadlock or
/// serialisation failure becomes [`StoreError::Busy`], which callers retry.
async fn finish<T>(mut tx: Tx, case_ref: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
    let busy = |e: sqlx::Error| -> StoreError {
        if is_retryable(&e) {
            StoreError::Busy(case_ref.to_string())
        } else {
            e.into()
        }
    };
    // The other hosts' feed readers learn of the records at the commit.
    let result = match (result, tx.feed_seq) {
        (Ok(v), Some(seq)) => sqlx::query("SELECT pg_notify($1, $2)")
            .bind(FEED_CHANNEL)
            .bind(seq.to_string())
            .execute(&mut *tx.conn)
            .await
            .map(|_| v)
            .map_err(StoreError::from),
        (result, _) => result,
    };
    match result {
        Ok(v) => match sqlx::query("COMMIT").execute(&mut *tx.conn).await {
            Ok(_) => {
                tx.ended = true;
                if let Some(seq) = tx.feed_seq {
                    advance(&tx.committed, seq);
                }
                Ok(v)
            }
            Err(e) => {
                tracing::warn!(error = %e, "a commit failed; the transaction is rolled back and its connection replaced");
                Err(busy(e))
            }
        },
        Err(e) => {
            let e = match e {
                StoreError::Db(db) => busy(db),
                other => other,
            };
            match sqlx::query("ROLLBACK").execute(&mut *tx.conn).await {
                Ok(_) if is_refusal(&e) => tx.ended = true,
                Ok(_) => {}
                Err(rollback) => tracing::warn!(error = %rollback, "rolling back a transaction failed; its connection is replaced"),
            }
            Err(e)
        }
    }
}

impl PgStore {
    /// Connects to the server at `url` and brings its schema up to date
    /// (several daemons may do this at once: the migrator takes a lock).
    pub async fn open(url: &str, password_file: Option<&Path>) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection back from its last use a moment ago is alive (the
            // pool pinged it on its return); one idle for longer may have
            // outlived a server restart and is pinged first. A round trip
            // less for every query of a busy daemon.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    use sqlx::Connection as _;
                    Ok(meta.idle_for < PING_IDLE_AFTER || conn.ping().await.is_ok())
                })
            })
            .connect_with(connect_options(url, password_file)?)
            .await?;
        MIGRATOR.run(&pool).await?;
        let changes = Arc::new(tokio::sync::watch::Sender::new(0));
        tokio::spawn(listen(pool.clone(), Arc::downgrade(&changes)));
        let committed = Arc::new(watch::Sender::new(feed_head(&pool).await?));
        tokio::spawn(listen_feed(pool.clone(), Arc::downgrade(&committed)));
        Ok(PgStore { pool, changes, committed })
    }

    /// The pool, for the host register and notifications beside the store.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends `events` to a case's log in one transaction, whatever the
    /// case's state: for loading many records at once (benchmarks).
    pub async fn append_many(&self, case_ref: &str, events: Vec<NewEvent>) -> Result<Option<EventRecord>, StoreError> {
        let mut tx = Tx::begin(&self.pool, &self.committed).await?;
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
        finish(tx, case_ref, result).await
    }

    /// The case's state and head (record count, last hash), with the case's
    /// row locked until the transaction ends.
    async fn head(tx: &mut Tx, case_ref: &str) -> Result<(CaseState, u64, String), StoreError> {
        let row = sqlx::query("SELECT state, event_count, head_hash FROM cases WHERE ref = $1 FOR UPDATE")
            .bind(case_ref)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NoCase(case_ref.to_string()))?;
        let state: String = row.try_get(0)?;
        let state = CaseState::parse(&state).ok_or_else(|| StoreError::Corrupt(case_ref.into(), format!("unknown state {state:?}")))?;
        Ok((state, row.try_get::<i64, _>(1)? as u64, row.try_get(2)?))
    }

    /// Chains `event` onto the head read in this transaction (see the SQLite store).
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
        // The next feed number: this row's lock, held to the commit, orders
        // the committers (taken after the case's row, as every writer does).
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
        let moved =
            sqlx::query("UPDATE cases SET state = $1, state_since = $2, host = COALESCE($5::text, host) WHERE ref = $3 AND state = $4")
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
        notify_change(tx, case_ref).await?;
        Self::push_event(tx, case_ref, count, &head, event).await
    }

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
        notify_change(tx, case_ref).await?;
        Ok(rec)
    }

    /// Folds the case's counted accesses into its log (see the SQLite store).
    async fn fold_case(
        tx: &mut Tx,
        case_ref: &str,
        mut count: u64,
        mut head: String,
        cutoff: Option<i64>,
    ) -> Result<(u64, String), StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM access_counts WHERE case_ref = $1 AND pending > 0 AND ($2::bigint IS NULL OR window_start <= $2) \
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
        // No import may change the catalog while a case is registered from it.
        sqlx::query("LOCK TABLE catalog IN SHARE MODE").execute(&mut **tx).await?;
        let report = serde_json::to_string(&case.report).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let inserted = sqlx::query(
            "INSERT INTO cases (ref, state, requester, department, submitter, verified, report, created_at, state_since, event_count, head_hash, \
             opened_uid, self_service) VALUES ($1, 'open', $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, $11) ON CONFLICT (ref) DO NOTHING",
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
        .await?;
        if inserted.rows_affected() != 1 {
            return Err(StoreError::Exists(case.case_ref));
        }
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

    async fn try_import(tx: &mut Tx, rows: CatalogRows) -> Result<ImportSummary, StoreError> {
        // Whatever the server's default: a first import's COPY FREEZE needs
        // the transaction to hold no snapshot from before its TRUNCATE.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .execute(&mut **tx)
            .await?;
        // One import at a time, and no new case while one runs.
        sqlx::query("LOCK TABLE catalog IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut **tx)
            .await?;
        // The joins below compare whole catalogs: hash them in memory; and
        // rebuilt indexes sort in memory.
        sqlx::query("SET LOCAL work_mem = '256MB'").execute(&mut **tx).await?;
        sqlx::query("SET LOCAL maintenance_work_mem = '512MB'").execute(&mut **tx).await?;
        let empty: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM catalog)")
            .fetch_one(&mut **tx)
            .await?;
        if empty {
            Self::load_empty_catalog(tx, rows).await
        } else {
            Self::merge_into_catalog(tx, rows).await
        }
    }

    /// The first import: the rows go straight into the catalog, and its
    /// indexes are built once they are all there. (The stream's good end
    /// says no file_id and no path came twice.)
    async fn load_empty_catalog(tx: &mut Tx, mut rows: CatalogRows) -> Result<ImportSummary, StoreError> {
        Self::drop_catalog_indexes(tx).await?;
        // Emptied in this transaction (it was empty already), the table takes
        // the rows already frozen: the index builds and the statistics that
        // follow read them without checking each one's visibility.
        sqlx::query("TRUNCATE catalog").execute(&mut **tx).await?;
        let now = audit::now_rfc3339();
        let total = copy_rows(
            tx,
            "COPY catalog (file_id, path, base_name, department, size, sha256, submitted_ns, extra, sample_id, imported_at) FROM STDIN (FREEZE)",
            &mut rows,
            |buf, r| {
                copy_fields(buf, r);
                buf.push(b'\t');
                copy_text(buf, &now);
            },
        )
        .await?;
        Self::create_catalog_indexes(tx).await?;
        Ok(ImportSummary {
            rows: total,
            added: total,
            updated: 0,
            unchanged: 0,
            catalog_files: total,
        })
    }

    /// Any later import: the rows go to a temporary table, and only the
    /// files that are new or changed (usually few) are compared further.
    async fn merge_into_catalog(tx: &mut Tx, mut rows: CatalogRows) -> Result<ImportSummary, StoreError> {
        sqlx::query(
            "CREATE TEMP TABLE IF NOT EXISTS import_rows (line BIGINT NOT NULL, file_id TEXT COLLATE \"C\" NOT NULL, \
             path TEXT COLLATE \"C\" NOT NULL, base_name TEXT COLLATE \"C\" NOT NULL, department TEXT COLLATE \"C\" NOT NULL, \
             size BIGINT NOT NULL, sha256 TEXT COLLATE \"C\" NOT NULL, submitted_ns BIGINT NOT NULL, extra TEXT COLLATE \"C\" NOT NULL, \
             sample_id TEXT COLLATE \"C\") ON COMMIT DELETE ROWS",
        )
        .execute(&mut **tx)
        .await?;
        sqlx::query("TRUNCATE import_rows").execute(&mut **tx).await?;
        let total = copy_rows(
            tx,
            "COPY import_rows (line, file_id, path, base_name, department, size, sha256, submitted_ns, extra, sample_id) FROM STDIN",
            &mut rows,
            |buf, r| {
                push_int(buf, r.line as i64);
                buf.push(b'\t');
                copy_fields(buf, r);
            },
        )
        .await?;
        // A temporary table has no statistics until asked: without them the
        // planner would join a million rows by nested loops. (The parser
        // refuses a file_id twice, so the table needs no key.)
        sqlx::query("ANALYZE import_rows").execute(&mut **tx).await?;
        // The one pass over the whole import: what is new or changed.
        let delta = sqlx::query(
            "CREATE TEMP TABLE import_delta ON COMMIT DROP AS \
             SELECT i.*, k.file_id IS NULL AS new, \
             (k.file_id IS NOT NULL AND (k.path <> i.path OR k.department <> i.department OR k.size <> i.size \
             OR k.sha256 <> i.sha256 OR k.submitted_ns <> i.submitted_ns)) AS changed \
             FROM import_rows i LEFT JOIN catalog k ON k.file_id = i.file_id \
             WHERE k.file_id IS NULL OR k.path <> i.path OR k.department <> i.department OR k.size <> i.size \
             OR k.sha256 <> i.sha256 OR k.submitted_ns <> i.submitted_ns OR k.extra <> i.extra",
        )
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if delta == 0 {
            let catalog_files = Self::catalog_files(tx).await?;
            return Ok(ImportSummary {
                rows: total,
                unchanged: total,
                catalog_files,
                ..ImportSummary::default()
            });
        }
        if delta >= DELTA_STATISTICS_AT {
            sqlx::query("ANALYZE import_delta").execute(&mut **tx).await?;
        }
        let mut errors = RowErrors::default();
        let held = sqlx::query(&format!(
            "SELECT d.line, d.file_id, MIN(c.ref) FROM import_delta d \
             JOIN case_files cf ON cf.file_id = d.file_id JOIN cases c ON c.ref = cf.case_ref \
             WHERE d.changed AND c.state IN {LIVE} GROUP BY d.line, d.file_id ORDER BY d.line"
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
        let added: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM import_delta WHERE new")
            .fetch_one(&mut **tx)
            .await?;
        let (added, updated) = (added as u64, delta - added as u64);
        // Changed files first (their paths may make room), then new files
        // as plain inserts: cheaper than an upsert per row.
        let now = audit::now_rfc3339();
        if updated > 0 {
            sqlx::query(
                "UPDATE catalog k SET path = d.path, base_name = d.base_name, department = d.department, size = d.size, \
                 sha256 = d.sha256, submitted_ns = d.submitted_ns, extra = d.extra, sample_id = d.sample_id, imported_at = $1 \
                 FROM import_delta d WHERE k.file_id = d.file_id AND NOT d.new",
            )
            .bind(&now)
            .execute(&mut **tx)
            .await?;
        }
        // Many new files: the indexes are built again once, in sorted
        // order, rather than updated row by row (several times faster for a
        // large import; the catalog is locked against readers until the
        // import commits, which the caller's lock mostly does anyway).
        let rebuild = added >= REBUILD_INDEXES_AT;
        if rebuild {
            Self::drop_catalog_indexes(tx).await?;
        }
        if added > 0 {
            sqlx::query(
                "INSERT INTO catalog (file_id, path, base_name, department, size, sha256, submitted_ns, extra, sample_id, imported_at) \
                 SELECT d.file_id, d.path, d.base_name, d.department, d.size, d.sha256, d.submitted_ns, d.extra, d.sample_id, $1 \
                 FROM import_delta d WHERE d.new",
            )
            .bind(&now)
            .execute(&mut **tx)
            .await?;
        }
        if rebuild {
            Self::create_catalog_indexes(tx).await?;
        }
        // A path can only clash where a file is new or changed: the catalog
        // had no clash before.
        let clashes = sqlx::query(
            "SELECT d.line, d.path, k.file_id FROM import_delta d JOIN catalog k ON k.path = d.path AND k.file_id <> d.file_id \
             ORDER BY d.line, k.file_id",
        )
        .fetch_all(&mut **tx)
        .await?;
        for row in &clashes {
            let line: i64 = row.try_get(0)?;
            let path: String = row.try_get(1)?;
            let other: String = row.try_get(2)?;
            errors.push(line as usize, format!("path {path:?} is already the path of file {other}"));
        }
        if !errors.is_empty() {
            return errors.into_result(ImportSummary::default()).map_err(StoreError::from);
        }
        let catalog_files = Self::catalog_files(tx).await?;
        Ok(ImportSummary {
            rows: total,
            added,
            updated,
            unchanged: total - delta,
            catalog_files,
        })
    }

    async fn catalog_files(tx: &mut Tx) -> Result<u64, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM catalog")
            .fetch_one(&mut **tx)
            .await? as u64)
    }

    async fn drop_catalog_indexes(tx: &mut Tx) -> Result<(), StoreError> {
        sqlx::query(&format!("DROP INDEX {}", SECONDARY_INDEXES.map(|(name, _)| name).join(", ")))
            .execute(&mut **tx)
            .await?;
        sqlx::query("ALTER TABLE catalog DROP CONSTRAINT catalog_pkey")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn create_catalog_indexes(tx: &mut Tx) -> Result<(), StoreError> {
        sqlx::query("ALTER TABLE catalog ADD CONSTRAINT catalog_pkey PRIMARY KEY (file_id)")
            .execute(&mut **tx)
            .await?;
        for (name, columns) in SECONDARY_INDEXES {
            sqlx::query(&format!("CREATE INDEX {name} ON catalog ({columns})"))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// New files in one import from which the catalog's indexes are built
/// again rather than updated.
const REBUILD_INDEXES_AT: u64 = 100_000;

/// New or changed files in one import from which their temporary table is
/// analysed before it is joined with the catalog.
const DELTA_STATISTICS_AT: u64 = 10_000;

/// The catalog's secondary indexes (name, columns), as the migrations made them.
const SECONDARY_INDEXES: [(&str, &str); 4] = [
    ("catalog_path", "path, department"),
    ("catalog_base_name", "base_name, department"),
    ("catalog_sample", "sample_id"),
    ("catalog_submitted", "submitted_ns, department"),
];

/// Bytes of COPY data sent per message.
const COPY_CHUNK: usize = 1 << 20;

/// Sends the stream's rows through `statement` (a `COPY … FROM STDIN` in
/// text format) as they arrive, each row written by `line` without its
/// newline; returns how many. A stream that ends badly aborts the COPY.
async fn copy_rows(
    tx: &mut Tx,
    statement: &str,
    rows: &mut CatalogRows,
    line: impl Fn(&mut Vec<u8>, &CatalogRow),
) -> Result<u64, StoreError> {
    let mut copy = tx.copy_in_raw(statement).await?;
    let mut buf = Vec::with_capacity(COPY_CHUNK + 4096);
    let mut count = 0u64;
    loop {
        let batch = match rows.next_batch().await {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(e) => {
                copy.abort("the catalog import was refused").await?;
                return Err(e);
            }
        };
        count += batch.len() as u64;
        for r in &batch {
            line(&mut buf, r);
            buf.push(b'\n');
        }
        if buf.len() >= COPY_CHUNK {
            copy.send(std::mem::take(&mut buf)).await?;
            buf.reserve(COPY_CHUNK + 4096);
        }
    }
    if !buf.is_empty() {
        copy.send(buf).await?;
    }
    copy.finish().await?;
    Ok(count)
}

/// The catalog's columns of a row in COPY's text format, tab-separated:
/// file_id, path, base_name, department, size, sha256, submitted_ns, extra, sample_id.
fn copy_fields(buf: &mut Vec<u8>, r: &CatalogRow) {
    let f = &r.file;
    for text in [f.file_id.as_str(), f.path.as_str(), f.path.base_name(), f.department.as_str()] {
        copy_text(buf, text);
        buf.push(b'\t');
    }
    push_int(buf, f.size as i64);
    buf.push(b'\t');
    copy_text(buf, &f.sha256);
    buf.push(b'\t');
    push_int(buf, f.submitted_ns);
    buf.push(b'\t');
    copy_text(buf, &f.extra);
    buf.push(b'\t');
    match &r.sample_id {
        Some(s) => copy_text(buf, s),
        None => buf.extend_from_slice(b"\\N"),
    }
}

fn push_int(buf: &mut Vec<u8>, n: i64) {
    use std::io::Write as _;
    let _ = write!(buf, "{n}");
}

/// `text` escaped for COPY's text format (backslash, tab, newline, carriage return).
fn copy_text(buf: &mut Vec<u8>, text: &str) {
    let special = |b: &u8| matches!(b, b'\\' | b'\t' | b'\n' | b'\r');
    if !text.as_bytes().iter().any(special) {
        buf.extend_from_slice(text.as_bytes());
        return;
    }
    for b in text.bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

fn catalog_file(row: &PgRow) -> Result<CatalogFile, StoreError> {
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

fn case_record(row: &PgRow) -> Result<CaseRecord, StoreError> {
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
        host: row.try_get("host")?,
        opened_uid: row.try_get::<Option<i64>, _>("opened_uid")?.map(|u| u as u32),
        self_service,
        case_ref,
    })
}

fn event_record(row: &PgRow) -> Result<EventRecord, StoreError> {
    let case_ref: String = row.try_get("case_ref")?;
    let details: String = row.try_get("details")?;
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

fn access_count(case_ref: &str, row: &PgRow) -> Result<AccessCount, StoreError> {
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

/// Runs `$attempt` (an expression over `tx`) in transactions of its own until
/// it does not come back [`StoreError::Busy`], at most [`ATTEMPTS`] times.
macro_rules! retrying {
    ($store:expr, $case_ref:expr, |$tx:ident| $attempt:expr) => {{
        let mut n = 1;
        loop {
            let mut $tx = Tx::begin(&$store.pool, &$store.committed).await?;
            let result = $attempt.await;
            match finish($tx, $case_ref, result).await {
                Err(StoreError::Busy(_)) if n < ATTEMPTS => n += 1,
                done => break done,
            }
        }
    }};
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn import_catalog(&self, rows: CatalogRows) -> Result<ImportSummary, StoreError> {
        let mut tx = Tx::begin(&self.pool, &self.committed).await?;
        let result = Self::try_import(&mut tx, rows).await;
        let summary = finish(tx, "", result).await?;
        if summary.added + summary.updated > 0 {
            // Fresh statistics, so look-ups use the catalog's indexes at once.
            if let Err(e) = sqlx::query("ANALYZE catalog").execute(&self.pool).await {
                tracing::debug!(error = %e, "ANALYZE after import failed");
            }
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
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(catalog_file).collect()
    }

    async fn resolve_among(&self, descriptor: &str, departments: &[String], limit: u32) -> Result<Vec<CatalogFile>, StoreError> {
        let rows = sqlx::query(
            "SELECT file_id, path, department, size, sha256, submitted_ns, extra FROM catalog \
             WHERE (file_id = $1 OR path = $1 OR base_name = $1) AND department = ANY($3) ORDER BY file_id LIMIT $2",
        )
        .bind(descriptor)
        .bind(limit as i64)
        .bind(departments)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(catalog_file).collect()
    }

    async fn search_catalog(&self, query: &CatalogQuery, after: Option<&SearchKey>, limit: u32) -> Result<Vec<FoundFile>, StoreError> {
        super::search::search_catalog(self, query, after, limit).await
    }

    async fn catalog_size(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM catalog")
            .fetch_one(&self.pool)
            .await? as u64)
    }

    async fn catalog_changed_at(&self) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar::<_, Option<String>>("SELECT MAX(imported_at) FROM catalog")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn create_case(&self, case: NewCase, event: NewEvent) -> Result<EventRecord, StoreError> {
        let case_ref = case.case_ref.clone();
        let mut tx = Tx::begin(&self.pool, &self.committed).await?;
        let result = Self::try_create_case(&mut tx, case, event).await;
        finish(tx, &case_ref, result).await
    }

    async fn create_request(&self, case: NewCase, event: NewEvent, limits: RequestLimits) -> Result<EventRecord, StoreError> {
        let case_ref = case.case_ref.clone();
        let mut tx = Tx::begin(&self.pool, &self.committed).await?;
        let result = async {
            // One registration per requester at a time, on every host.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(format!("workcopy request {}", case.requester))
                .execute(&mut *tx)
                .await?;
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
            Self::try_create_case(&mut tx, case, event).await
        }
        .await;
        finish(tx, &case_ref, result).await
    }

    async fn list_requests(&self, requester: &str, limit: u32) -> Result<Vec<CaseRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT * FROM cases WHERE requester = $1 AND self_service IS NOT NULL \
             ORDER BY created_at DESC, ref DESC LIMIT $2) AS recent ORDER BY created_at, ref",
        )
        .bind(requester)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(case_record).collect()
    }

    async fn case(&self, case_ref: &str) -> Result<Option<CaseRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM cases WHERE ref = $1")
            .bind(case_ref)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(case_record).transpose()
    }

    async fn case_files(&self, case_ref: &str) -> Result<Vec<CaseFile>, StoreError> {
        let rows = sqlx::query("SELECT * FROM case_files WHERE case_ref = $1 ORDER BY idx")
            .bind(case_ref)
            .fetch_all(&self.pool)
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
            "SELECT * FROM cases WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR department = $2) ORDER BY created_at, ref",
        )
        .bind(state.map(|s| s.as_str()))
        .bind(department)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(case_record).collect()
    }

    async fn transition(&self, case_ref: &str, from: CaseState, to: CaseState, event: NewEvent) -> Result<EventRecord, StoreError> {
        let rec = retrying!(self, case_ref, |tx| Self::try_transition(
            &mut tx,
            case_ref,
            from,
            to,
            None,
            event.clone()
        ))?;
        self.changes.send_modify(|n| *n += 1);
        Ok(rec)
    }

    async fn append_in(&self, case_ref: &str, states: &[CaseState], event: NewEvent) -> Result<EventRecord, StoreError> {
        retrying!(self, case_ref, |tx| Self::try_append_in(&mut tx, case_ref, states, event.clone()))
    }

    async fn events(&self, case_ref: &str) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM case_events WHERE case_ref = $1 ORDER BY seq")
            .bind(case_ref)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_record).collect()
    }

    async fn record_access(&self, access: &FileAccess, policy: &Coalescing) -> Result<Recorded, StoreError> {
        retrying!(self, &access.case_ref, |tx| Self::try_record_access(&mut tx, access, policy))
    }

    async fn fold_accesses(&self, case_ref: Option<&str>, older_than: Duration) -> Result<u64, StoreError> {
        let cutoff = crate::unix::now_secs().saturating_sub(older_than.as_secs() as i64);
        let cases: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT case_ref FROM access_counts WHERE pending > 0 AND window_start <= $1 AND ($2::text IS NULL OR case_ref = $2) \
             ORDER BY case_ref",
        )
        .bind(cutoff)
        .bind(case_ref)
        .fetch_all(&self.pool)
        .await?;
        let mut written = 0;
        for case_ref in cases {
            written += retrying!(self, &case_ref, |tx| async {
                let (_, count, head) = Self::head(&mut tx, &case_ref).await?;
                let (after, _) = Self::fold_case(&mut tx, &case_ref, count, head, Some(cutoff)).await?;
                Ok::<u64, StoreError>(after - count)
            })?;
        }
        Ok(written)
    }

    async fn opened_files(&self, case_ref: &str, staff: bool) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT file FROM access_counts WHERE case_ref = $1 AND event = $2 AND staff = $3 ORDER BY file")
                .bind(case_ref)
                .bind(EventKind::FileOpened.as_str())
                .bind(staff as i64)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn events_page(&self, case_ref: &str, after_seq: u64, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM case_events WHERE case_ref = $1 AND seq > $2 ORDER BY seq LIMIT $3")
            .bind(case_ref)
            .bind(after_seq.min(i64::MAX as u64) as i64)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_record).collect()
    }

    async fn stray_records(&self, case_ref: &str) -> Result<u64, StoreError> {
        // One statement: one snapshot of the log and its head.
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM case_events WHERE case_ref = $1 \
             AND (seq < 1 OR seq > COALESCE((SELECT event_count FROM cases WHERE ref = $1), 0))",
        )
        .bind(case_ref)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    async fn count_by_state(&self) -> Result<Vec<(CaseState, u64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM cases GROUP BY state")
            .fetch_all(&self.pool)
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
        let rec = retrying!(self, case_ref, |tx| Self::try_transition(
            &mut tx,
            case_ref,
            from,
            to,
            Some(host),
            event.clone()
        ))?;
        self.changes.send_modify(|n| *n += 1);
        Ok(rec)
    }

    async fn move_case(&self, case_ref: &str, states: &[CaseState], host: &str, event: NewEvent) -> Result<EventRecord, StoreError> {
        let rec = retrying!(self, case_ref, |tx| Self::try_move(&mut tx, case_ref, states, host, event.clone()))?;
        self.changes.send_modify(|n| *n += 1);
        Ok(rec)
    }

    async fn unsealed_cases(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(&unsealed_sql()).fetch_all(&self.pool).await?)
    }

    async fn report_serving(&self, s: &Serving) -> Result<(), StoreError> {
        sqlx::query(SERVING_UPSERT)
            .bind(&s.case_ref)
            .bind(&s.host)
            .bind(s.published as i64)
            .bind(s.done.min(i64::MAX as u64) as i64)
            .bind(s.total.min(i64::MAX as u64) as i64)
            .bind(s.updated_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn serving(&self, case_ref: &str) -> Result<Option<Serving>, StoreError> {
        let row = sqlx::query("SELECT * FROM serving WHERE case_ref = $1")
            .bind(case_ref)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(serving_record).transpose()
    }

    async fn heartbeat(&self, b: &HostBeat) -> Result<(), StoreError> {
        sqlx::query(HEARTBEAT_UPSERT)
            .bind(&b.name)
            .bind(&b.version)
            .bind(&b.mode)
            .bind(&b.read_path)
            .bind(&b.directory_sha256)
            .bind(&b.started_at)
            .bind(b.at)
            .bind(b.every_secs)
            .bind(b.cases_served.min(i64::MAX as u64) as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM hosts ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(host_record).collect()
    }

    async fn retire_host(&self, name: &str, reason: &str) -> Result<bool, StoreError> {
        let mut tx = Tx::begin(&self.pool, &self.committed).await?;
        let result = async {
            let found = sqlx::query(RETIRE)
                .bind(name)
                .bind(audit::now_rfc3339())
                .bind(reason)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            sqlx::query("SELECT pg_notify($1, '')").bind(CHANNEL).execute(&mut *tx).await?;
            Ok(found)
        }
        .await;
        let found = finish(tx, "", result).await?;
        self.changes.send_modify(|n| *n += 1);
        Ok(found)
    }

    fn case_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn state_summary(&self) -> Result<Vec<StateSummary>, StoreError> {
        let rows = sqlx::query_as(super::STATE_SUMMARY).fetch_all(&self.pool).await?;
        Ok(super::state_summaries(rows))
    }

    async fn feed_page(&self, after_seq: u64, limit: u32) -> Result<Vec<FeedRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM case_events WHERE feed_seq > $1 ORDER BY feed_seq LIMIT $2")
            .bind(after_seq.min(i64::MAX as u64) as i64)
            .bind(limit as i64)
            .fetch_all(&self.pool)
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
        feed_head(&self.pool).await
    }

    fn committed(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }
}

/// The channel a host notifies when it committed records: the payload is
/// the last feed number the transaction took.
const FEED_CHANNEL: &str = "workcopy_feed";
/// How often a host reads the feed head anyway, should a notification have
/// been missed.
const FEED_RECONCILE: Duration = Duration::from_secs(30);

/// The last feed number given.
async fn feed_head(pool: &PgPool) -> Result<u64, StoreError> {
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM feed_head WHERE id = 1").fetch_one(pool).await?;
    Ok(seq.max(0) as u64)
}

/// Moves a feed prompt forward to `seq` (never back).
fn advance(committed: &watch::Sender<u64>, seq: u64) {
    committed.send_if_modified(|head| {
        let moved = seq > *head;
        *head = (*head).max(seq);
        moved
    });
}

/// Moves `committed` forward on every notification of records committed on
/// any host, and to the feed head read again after the listening connection
/// was (re)made and every [`FEED_RECONCILE`] (a notification sent while the
/// connection was down is lost). Ends once the store is gone.
async fn listen_feed(pool: PgPool, committed: std::sync::Weak<watch::Sender<u64>>) {
    let mut delay = Duration::from_millis(200);
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(FEED_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listening.await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for the feed yet");
                if committed.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(200);
        let mut reread = true;
        loop {
            let Some(prompt) = committed.upgrade() else { return };
            if reread {
                if let Ok(head) = feed_head(&pool).await {
                    advance(&prompt, head);
                }
            }
            drop(prompt);
            match tokio::time::timeout(FEED_RECONCILE, listener.try_recv()).await {
                Ok(Ok(Some(n))) => {
                    let Some(prompt) = committed.upgrade() else { return };
                    if let Ok(seq) = n.payload().parse() {
                        advance(&prompt, seq);
                    }
                    reread = false;
                }
                // The connection was lost (the next call makes it again), or
                // nothing came for a while: read the head again.
                Ok(Ok(None)) | Err(_) => reread = true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "listening for the feed failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(delay).await;
    }
}

#[async_trait::async_trait]
impl super::search::SearchOnce for PgStore {
    async fn search_once(&self, sql: &str, args: Vec<super::search::Arg>) -> Result<Vec<FoundFile>, StoreError> {
        let mut query = sqlx::query(sql);
        for a in args {
            query = match a {
                super::search::Arg::Text(t) => query.bind(t),
                super::search::Arg::Int(n) => query.bind(n),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
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

impl super::sqlite::HostRow for PgRow {
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

/// The channel every host listens on: a case's state or serving host changed.
const CHANNEL: &str = "workcopy_cases";

/// Tells the other hosts, when `tx` commits, that the case changed.
async fn notify_change(tx: &mut Tx, case_ref: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(case_ref)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Moves `changes` forward on every notification from another host, and
/// after the listening connection was lost (notifications sent meanwhile
/// are gone: whoever watches looks again). Reconnects by itself; ends once
/// the store is gone.
async fn listen(pool: PgPool, changes: std::sync::Weak<watch::Sender<u64>>) {
    let bump = |changes: &std::sync::Weak<watch::Sender<u64>>| match changes.upgrade() {
        Some(c) => {
            c.send_modify(|n| *n += 1);
            true
        }
        None => false,
    };
    let mut delay = Duration::from_millis(200);
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listening.await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "cannot listen for changes yet");
                if changes.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(200);
        if !bump(&changes) {
            return;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(5), listener.try_recv()).await {
                // A notification; or the connection was lost (the next call
                // makes it again) and what was sent meanwhile is gone.
                Ok(Ok(_)) => {
                    if !bump(&changes) {
                        return;
                    }
                }
                // Quiet: only look whether the store is still there.
                Err(_) if changes.strong_count() == 0 => return,
                Err(_) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "listening for changes failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A database of its own on the test server; dropped with the server.
    async fn open() -> anyhow::Result<((), Arc<dyn Store>)> {
        let url = crate::db::pg_test_server::database().map_err(anyhow::Error::msg)?;
        Ok(((), Arc::new(PgStore::open(&url, None).await?)))
    }

    crate::db::conformance::conformance_tests!(open);

    /// A large import builds the indexes again: they work after it, and a
    /// path two files would share is still refused, naming the line.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_import_rebuilds_the_indexes() -> anyhow::Result<()> {
        use crate::db::conformance::{catalog, file};
        let (_guard, store) = open().await?;
        let n = REBUILD_INDEXES_AT as usize + 10;
        let files: Vec<CatalogFile> = (0..n)
            .map(|i| file(&format!("F{i:07}"), &format!("run{}/s{i}.fq", i % 97), i as u64))
            .collect::<anyhow::Result<_>>()?;
        let summary = store.import_catalog(catalog(&files)).await?;
        anyhow::ensure!(summary.added == n as u64 && summary.catalog_files == n as u64, "{summary:?}");
        let by_path = store.resolve("run5/s5.fq", 10).await?;
        anyhow::ensure!(by_path.len() == 1 && by_path[0].file_id.as_str() == "F0000005", "{by_path:?}");
        anyhow::ensure!(store.resolve("s7.fq", 10).await?.len() == 1, "base name");
        anyhow::ensure!(store.resolve("F0000009", 10).await?.len() == 1, "file_id");
        // Another large import whose last row takes the path of a file already there.
        let mut more: Vec<CatalogFile> = (n..2 * n)
            .map(|i| file(&format!("F{i:07}"), &format!("new{}/s{i}.fq", i % 97), i as u64))
            .collect::<anyhow::Result<_>>()?;
        more.push(file("G1", "run5/s5.fq", 1)?);
        let refused = store.import_catalog(catalog(&more)).await;
        let lines = match &refused {
            Err(StoreError::Catalog(crate::domain::catalog::CatalogError::Rows { rows, .. })) => {
                rows.iter().map(|(l, _)| *l).collect::<Vec<_>>()
            }
            other => anyhow::bail!("expected the clash refused: {other:?}"),
        };
        anyhow::ensure!(lines == [n + 2], "{lines:?}");
        anyhow::ensure!(store.catalog_size().await? == n as u64, "a refused import changed the catalog");
        anyhow::ensure!(store.resolve("run5/s5.fq", 10).await?.len() == 1, "indexes after the rollback");
        Ok(())
    }

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let mut buf = Vec::new();
        copy_text(&mut buf, "a\\b\tc\nd\re {\"x\":1}");
        assert_eq!(String::from_utf8_lossy(&buf), "a\\\\b\\tc\\nd\\re {\"x\":1}");
    }
}
