//! The [`Store`] contract as tests every backend must pass. Each check takes
//! a fresh, empty store; [`conformance_tests!`] turns the whole list into one
//! `#[tokio::test]` per check for a backend's opener:
//!
//! ```ignore
//! async fn open() -> anyhow::Result<(Guard, Arc<dyn Store>)> { … }
//! crate::db::conformance::conformance_tests!(open);
//! ```
//!
//! A new check is an `async fn(Arc<dyn Store>) -> anyhow::Result<()>` here,
//! named in the macro's list.

use super::{CatalogRows, FeedRecord, NewCase, Recorded, Store, StoreError};
use crate::audit::{self, Actor, EventKind, EventRecord, GENESIS, NewEvent};
use crate::domain::access::{AccessKind, Coalescing, FileAccess, accesses_in};
use crate::domain::case::CaseState;
use crate::domain::catalog::{CatalogFile, CatalogRow};
use crate::domain::directory::SelfService;
use crate::domain::search::{CatalogQuery, Glob, SearchKey};
use crate::domain::verify::{CaseFile, Outcome, Report, ReportLine};
use crate::names::{CatalogPath, DirId, FileId};
use anyhow::{Context, bail, ensure};
use std::collections::BTreeSet;
use std::sync::Arc;

/// One `#[tokio::test]` per check, each on a store from `$open`, an async fn
/// returning `anyhow::Result<(guard, Arc<dyn Store>)>` whose guard keeps the
/// store's database alive for the test.
macro_rules! conformance_tests {
    ($open:path) => {
        $crate::db::conformance::conformance_tests!(@each $open;
            import_adds_updates_and_keeps,
            import_refuses_a_path_shared_by_two_files,
            a_first_import_refuses_a_path_twice,
            an_import_whose_rows_end_badly_changes_nothing,
            import_refuses_changing_a_file_a_live_case_holds,
            resolve_matches_file_id_path_and_base_name,
            catalog_size_counts_files,
            create_case_registers_and_refuses_a_taken_ref,
            list_cases_filters_by_state_and_department,
            transition_is_compare_and_set_on_the_state,
            append_in_only_in_the_given_states,
            events_come_in_sequence_order,
            events_page_reads_the_log_in_pages,
            stray_records_are_counted,
            record_access_records_a_few_then_counts,
            a_transition_folds_counted_accesses_first,
            a_new_window_folds_the_last_one,
            concurrent_accesses_are_all_accounted_for,
            count_by_state_covers_every_state,
            concurrent_appends_to_one_case_form_one_chain,
            concurrent_transitions_from_one_state_have_one_winner,
            create_request_counts_the_requesters_live_requests,
            concurrent_requests_never_pass_the_limit_together,
            list_requests_lists_a_requesters_own_requests,
            resolve_among_looks_in_the_named_departments_only,
            import_keeps_the_sample_id_column,
            search_catalog_matches_its_definition_page_by_page,
            the_serving_host_is_set_at_approval_and_by_a_move,
            serving_reports_replace_the_last,
            heartbeats_register_hosts_and_retirement_sticks,
            concurrent_moves_of_one_case_are_serialised,
            unsealed_cases_are_the_ended_ones_without_a_seal,
            state_summary_counts_and_dates_each_state,
            the_feed_numbers_every_record_in_commit_order,
            feed_pages_resume_after_any_number,
            concurrent_writers_number_the_feed_without_gaps,
            committed_moves_after_each_commit_that_wrote_records
        );
    };
    (@each $open:path; $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() -> anyhow::Result<()> {
                let (_guard, store) = $open().await?;
                $crate::db::conformance::$check(store).await
            }
        )*
    };
}
pub(crate) use conformance_tests;

const DEPT: &str = "RH-KGA";
const OTHER_DEPT: &str = "HGH-GEN";

pub(crate) fn file(id: &str, path: &str, size: u64) -> anyhow::Result<CatalogFile> {
    Ok(CatalogFile {
        file_id: FileId::parse(id)?,
        path: CatalogPath::parse(path)?,
        department: DirId::parse(DEPT)?,
        size,
        sha256: "a".repeat(64),
        submitted_ns: 1_700_000_000_000_000_000,
        extra: String::new(),
    })
}

pub(crate) fn rows(files: &[CatalogFile]) -> Vec<CatalogRow> {
    files
        .iter()
        .enumerate()
        .map(|(i, f)| CatalogRow {
            line: i + 2,
            file: f.clone(),
            sample_id: None,
        })
        .collect()
}

/// `files` as one import's rows.
pub(crate) fn catalog(files: &[CatalogFile]) -> CatalogRows {
    rows(files).into()
}

fn new_case(case_ref: &str, department: &str, files: &[CatalogFile]) -> anyhow::Result<NewCase> {
    let files: Vec<CaseFile> = files
        .iter()
        .map(|f| CaseFile {
            descriptor: f.file_id.to_string(),
            export_name: f.path.base_name().to_string(),
            file: f.clone(),
        })
        .collect();
    let lines = files
        .iter()
        .enumerate()
        .map(|(i, f)| ReportLine {
            line: i + 1,
            descriptor: f.descriptor.clone(),
            outcome: Outcome::Resolved {
                file_id: f.file.file_id.clone(),
                path: f.file.path.to_string(),
                export_name: f.export_name.clone(),
            },
        })
        .collect();
    Ok(NewCase {
        case_ref: case_ref.to_string(),
        requester: "alice".into(),
        department: Some(department.to_string()),
        submitter: None,
        report: Report {
            department: Some(DirId::parse(department)?),
            problems: Vec::new(),
            lines,
        },
        files,
        opened_uid: 1000,
        self_service: None,
    })
}

fn event(name: &str, n: u64) -> NewEvent {
    NewEvent {
        actor: "alice".into(),
        uid: 1000,
        event: name.into(),
        details: serde_json::json!({ "n": n }),
    }
}

/// Opens a case holding no files.
async fn open_case(store: &Arc<dyn Store>, case_ref: &str, department: &str) -> anyhow::Result<EventRecord> {
    Ok(store.create_case(new_case(case_ref, department, &[])?, event("opened", 0)).await?)
}

fn ids(files: &[CatalogFile]) -> Vec<String> {
    files.iter().map(|f| f.file_id.to_string()).collect()
}

fn refs(cases: &[super::CaseRecord]) -> Vec<&str> {
    cases.iter().map(|c| c.case_ref.as_str()).collect()
}

fn expect_conflict<T: std::fmt::Debug>(
    r: Result<T, StoreError>,
    case_ref: &str,
    expected: CaseState,
    actual: CaseState,
) -> anyhow::Result<()> {
    match r {
        Err(StoreError::Conflict {
            case_ref: c,
            expected: e,
            actual: a,
        }) if c == case_ref && e == expected && a == actual => Ok(()),
        other => bail!("expected Conflict({case_ref}: {actual}, not {expected}), got {other:?}"),
    }
}

/// The head and records of a case, checked against each other and the chain rules.
async fn verified_log(store: &Arc<dyn Store>, case_ref: &str) -> anyhow::Result<Vec<EventRecord>> {
    let case = store.case(case_ref).await?.context("no such case")?;
    let records = store.events(case_ref).await?;
    let (count, head) = (case.event_count, case.head_hash);
    ensure!(count == records.len() as u64, "head says {count} records, {} stored", records.len());
    audit::verify_chain(case_ref, &records, Some((count, &head)))?;
    ensure!(store.stray_records(case_ref).await? == 0, "records beside the chain");
    Ok(records)
}

/// Opens a case and takes it to `exported`, where the mount shows it.
async fn exported_case(store: &Arc<dyn Store>, case_ref: &str) -> anyhow::Result<()> {
    open_case(store, case_ref, DEPT).await?;
    store
        .transition(case_ref, CaseState::Open, CaseState::Approved, event("approved", 1))
        .await?;
    store
        .transition(case_ref, CaseState::Approved, CaseState::Exported, event("exported", 2))
        .await?;
    Ok(())
}

fn access(case_ref: &str, file: &str, uid: u32, kind: AccessKind) -> FileAccess {
    FileAccess {
        case_ref: case_ref.to_string(),
        actor: Actor {
            name: format!("u{uid}"),
            uid,
        },
        file: file.to_string(),
        file_id: format!("ID-{file}"),
        pid: 4000 + uid,
        staff: uid != 2001,
        kind,
    }
}

/// Two records a window, a window longer than any test.
const COUNT_AFTER_TWO: Coalescing = Coalescing {
    window: std::time::Duration::from_secs(3600),
    plain_per_window: 2,
};

/// The accesses the log's records of `event` on `file` stand for.
fn accesses(records: &[EventRecord], event: EventKind, file: &str) -> u64 {
    records
        .iter()
        .filter(|r| r.event == event.as_str() && r.details["file"] == file)
        .map(|r| accesses_in(&r.details))
        .sum()
}

pub async fn import_adds_updates_and_keeps(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let first = vec![file("F1", "a/x.fq", 10)?, file("F2", "b/x.fq", 20)?];
    let s = store.import_catalog(catalog(&first)).await?;
    ensure!(
        (s.rows, s.added, s.updated, s.unchanged, s.catalog_files) == (2, 2, 0, 0, 2),
        "first import: {s:?}"
    );
    let s = store.import_catalog(catalog(&first)).await?;
    ensure!(
        (s.rows, s.added, s.updated, s.unchanged, s.catalog_files) == (2, 0, 0, 2, 2),
        "same import again: {s:?}"
    );

    let mut second = first.clone();
    second[0].size = 11;
    second[1].extra = r#"{"run":"7"}"#.into();
    second.push(file("F3", "c/y.fq", 30)?);
    let s = store.import_catalog(catalog(&second)).await?;
    ensure!(
        (s.rows, s.added, s.updated, s.unchanged, s.catalog_files) == (3, 1, 2, 0, 3),
        "changed import: {s:?}"
    );
    ensure!(store.resolve("F1", 10).await? == vec![second[0].clone()], "F1 was not updated");
    ensure!(
        store.resolve("F2", 10).await? == vec![second[1].clone()],
        "F2's extra was not updated"
    );

    // Files missing from an import stay.
    let s = store.import_catalog(catalog(&second[..1])).await?;
    ensure!((s.rows, s.unchanged, s.catalog_files) == (1, 1, 3), "partial import: {s:?}");
    Ok(())
}

/// The first import into an empty catalog, which the PostgreSQL store loads
/// directly, refuses two files on one path as any later import does.
pub async fn a_first_import_refuses_a_path_twice(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let twins = store
        .import_catalog(catalog(&[
            file("F1", "a/x.fq", 1)?,
            file("F2", "b/y.fq", 2)?,
            file("F3", "a/x.fq", 3)?,
        ]))
        .await;
    let lines: Vec<usize> = match &twins {
        Err(StoreError::Catalog(crate::domain::catalog::CatalogError::Rows { rows, .. })) => rows.iter().map(|(l, _)| *l).collect(),
        other => anyhow::bail!("one path for two files in a first import: {other:?}"),
    };
    ensure!(lines == [4], "{lines:?}");
    ensure!(store.catalog_size().await? == 0, "a refused first import added files");
    let s = store
        .import_catalog(catalog(&[file("F1", "a/x.fq", 1)?, file("F2", "b/y.fq", 2)?]))
        .await?;
    ensure!((s.rows, s.added, s.catalog_files) == (2, 2, 2), "{s:?}");
    ensure!(store.resolve("a/x.fq", 10).await?.len() == 1, "resolved after a first import");
    Ok(())
}

/// Rows already written when the parser finds a bad row (or stops) are
/// rolled back, into an empty catalog and into one with files, and the store
/// takes the next import.
pub async fn an_import_whose_rows_end_badly_changes_nothing(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let ends_badly = |files: Vec<CatalogFile>, bad_end: bool| {
        let (tx, rows) = CatalogRows::channel();
        std::thread::spawn(move || {
            let rows = files
                .into_iter()
                .enumerate()
                .map(|(i, file)| CatalogRow {
                    line: i + 2,
                    file,
                    sample_id: None,
                })
                .collect();
            tx.send_blocking(rows);
            if bad_end {
                tx.end_blocking(Err(crate::domain::catalog::CatalogError::Rows {
                    rows: vec![(9, "bad".into())],
                    total: 1,
                }));
            }
            // Otherwise the sender is dropped before the end.
        });
        rows
    };
    let first = vec![file("F1", "a/x.fq", 1)?, file("F2", "b/y.fq", 2)?];
    for bad_end in [true, false] {
        let r = store.import_catalog(ends_badly(first.clone(), bad_end)).await;
        ensure!(matches!(r, Err(StoreError::Catalog(_))), "into an empty catalog: {r:?}");
        ensure!(store.catalog_size().await? == 0, "a refused first import added files");
    }
    store.import_catalog(catalog(&first)).await?;
    let mut changed = first.clone();
    changed[0].size = 5;
    changed.push(file("F3", "c/z.fq", 3)?);
    for bad_end in [true, false] {
        let r = store.import_catalog(ends_badly(changed.clone(), bad_end)).await;
        ensure!(matches!(r, Err(StoreError::Catalog(_))), "into a catalog with files: {r:?}");
        ensure!(store.catalog_size().await? == 2, "a refused import added files");
        ensure!(
            store.resolve("F1", 10).await? == vec![first[0].clone()],
            "a refused import changed F1"
        );
    }
    let s = store.import_catalog(catalog(&changed)).await?;
    ensure!((s.added, s.updated, s.catalog_files) == (1, 1, 3), "{s:?}");
    Ok(())
}

pub async fn import_refuses_a_path_shared_by_two_files(store: Arc<dyn Store>) -> anyhow::Result<()> {
    store
        .import_catalog(catalog(&[file("F1", "a/x.fq", 1)?, file("F2", "b/x.fq", 2)?]))
        .await?;

    // A new file on F1's path: refused whole, F3 is not added either.
    let clash = store
        .import_catalog(catalog(&[file("F3", "c/y.fq", 3)?, file("F4", "a/x.fq", 4)?]))
        .await;
    ensure!(
        matches!(clash, Err(StoreError::Catalog(_))),
        "a path given to a second file: {clash:?}"
    );
    ensure!(store.catalog_size().await? == 2, "a refused import added files");
    ensure!(store.resolve("F3", 10).await?.is_empty(), "a refused import added F3");

    // Two new files with one path in the same import.
    let twins = store
        .import_catalog(catalog(&[file("F5", "d/z.fq", 5)?, file("F6", "d/z.fq", 6)?]))
        .await;
    ensure!(
        matches!(twins, Err(StoreError::Catalog(_))),
        "one path for two new files: {twins:?}"
    );
    ensure!(store.catalog_size().await? == 2, "a refused import added files");

    // Moving F1 and giving its old path to a new file in the same import is fine.
    let s = store
        .import_catalog(catalog(&[file("F1", "a/z.fq", 1)?, file("F4", "a/x.fq", 4)?]))
        .await?;
    ensure!((s.added, s.updated, s.catalog_files) == (1, 1, 3), "move and reuse: {s:?}");
    ensure!(ids(&store.resolve("a/x.fq", 10).await?) == ["F4"], "a/x.fq is not F4's");
    Ok(())
}

pub async fn import_refuses_changing_a_file_a_live_case_holds(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let f1 = file("F1", "a/x.fq", 10)?;
    store.import_catalog(catalog(std::slice::from_ref(&f1))).await?;
    store
        .create_case(new_case("C-1", DEPT, std::slice::from_ref(&f1))?, event("opened", 0))
        .await?;

    let mut resized = f1.clone();
    resized.size = 11;
    let r = store.import_catalog(catalog(&[file("F2", "b/y.fq", 1)?, resized.clone()])).await;
    ensure!(matches!(r, Err(StoreError::Catalog(_))), "changed a held file: {r:?}");
    ensure!(store.resolve("F1", 10).await? == vec![f1.clone()], "a refused import changed F1");
    ensure!(store.catalog_size().await? == 1, "a refused import added F2");

    // What the case does not depend on may change.
    let mut annotated = f1.clone();
    annotated.extra = r#"{"note":"x"}"#.into();
    let s = store.import_catalog(catalog(std::slice::from_ref(&annotated))).await?;
    ensure!(s.updated == 1, "extra of a held file: {s:?}");

    // Once the case has ended, the file may change.
    store
        .transition("C-1", CaseState::Open, CaseState::Rejected, event("rejected", 1))
        .await?;
    let s = store.import_catalog(catalog(std::slice::from_ref(&resized))).await?;
    ensure!(s.updated == 1, "a file of an ended case: {s:?}");
    ensure!(store.resolve("F1", 10).await?[0].size == 11, "F1 was not resized");
    Ok(())
}

pub async fn resolve_matches_file_id_path_and_base_name(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let files = [file("F2", "b/x.fq", 2)?, file("F1", "a/x.fq", 1)?, file("F3", "b/y.fq", 3)?];
    store.import_catalog(catalog(&files)).await?;
    ensure!(store.resolve("F1", 10).await? == vec![files[1].clone()], "by file_id");
    ensure!(ids(&store.resolve("b/y.fq", 10).await?) == ["F3"], "by path");
    ensure!(
        ids(&store.resolve("x.fq", 10).await?) == ["F1", "F2"],
        "by base name, in file_id order"
    );
    ensure!(ids(&store.resolve("x.fq", 1).await?) == ["F1"], "limit");
    ensure!(store.resolve("b", 10).await?.is_empty(), "a directory is no descriptor");
    ensure!(store.resolve("F9", 10).await?.is_empty(), "unknown");
    Ok(())
}

pub async fn catalog_size_counts_files(store: Arc<dyn Store>) -> anyhow::Result<()> {
    ensure!(store.catalog_size().await? == 0, "a new store has files");
    ensure!(store.catalog_changed_at().await?.is_none(), "an empty catalog was never changed");
    store
        .import_catalog(catalog(&[file("F1", "a/x.fq", 1)?, file("F2", "a/y.fq", 2)?]))
        .await?;
    let first = store.catalog_changed_at().await?;
    ensure!(
        first
            .as_deref()
            .is_some_and(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_ok()),
        "an import records when it changed the catalog: {first:?}"
    );
    store
        .import_catalog(catalog(&[file("F2", "a/y.fq", 3)?, file("F3", "a/z.fq", 3)?]))
        .await?;
    ensure!(store.catalog_size().await? == 3, "three files imported");
    let second = store.catalog_changed_at().await?;
    ensure!(second >= first, "the later import's time: {second:?} after {first:?}");
    Ok(())
}

pub async fn create_case_registers_and_refuses_a_taken_ref(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let files = [file("F2", "b/x.fq", 2)?, file("F1", "a/x.fq", 1)?];
    store.import_catalog(catalog(&files)).await?;
    let case = new_case("C-1", DEPT, &files)?;
    let rec = store.create_case(case.clone(), event("opened", 0)).await?;
    ensure!(
        rec.seq == 1 && rec.prev_hash == GENESIS && rec.case_ref == "C-1",
        "first record: {rec:?}"
    );
    ensure!(
        rec.event == "opened" && rec.actor == "alice" && rec.uid == 1000,
        "first record: {rec:?}"
    );

    let stored = store.case("C-1").await?.context("C-1 was not stored")?;
    ensure!(stored.state == CaseState::Open, "state {}", stored.state);
    ensure!(
        (stored.event_count, stored.head_hash.as_str()) == (1, rec.hash.as_str()),
        "head: {stored:?}"
    );
    ensure!(stored.requester == "alice" && stored.department.as_deref() == Some(DEPT) && stored.submitter.is_none());
    ensure!(stored.verified && stored.report == case.report, "report: {stored:?}");
    ensure!(store.case_files("C-1").await? == case.files, "files, in registration order");
    ensure!(store.events("C-1").await? == vec![rec.clone()], "log");

    // A taken reference is refused and nothing of the second case is written.
    let again = store
        .create_case(new_case("C-1", OTHER_DEPT, &files[..1])?, event("opened-again", 0))
        .await;
    ensure!(
        matches!(&again, Err(StoreError::Exists(r)) if r == "C-1"),
        "taken reference: {again:?}"
    );
    ensure!(store.case("C-1").await? == Some(stored), "the refused case changed C-1");
    ensure!(store.case_files("C-1").await? == case.files, "the refused case changed C-1's files");
    ensure!(store.events("C-1").await? == vec![rec], "the refused case wrote a record");

    // The store goes on.
    open_case(&store, "C-2", DEPT).await?;
    ensure!(store.case("C-3").await?.is_none(), "unknown case");
    ensure!(store.case_files("C-3").await?.is_empty(), "files of an unknown case");
    Ok(())
}

pub async fn list_cases_filters_by_state_and_department(store: Arc<dyn Store>) -> anyhow::Result<()> {
    open_case(&store, "C-A", DEPT).await?;
    open_case(&store, "C-B", OTHER_DEPT).await?;
    open_case(&store, "C-C", DEPT).await?;
    store
        .transition("C-C", CaseState::Open, CaseState::Approved, event("approved", 1))
        .await?;

    ensure!(refs(&store.list_cases(None, None).await?) == ["C-A", "C-B", "C-C"], "all");
    ensure!(
        refs(&store.list_cases(Some(CaseState::Open), None).await?) == ["C-A", "C-B"],
        "open"
    );
    ensure!(refs(&store.list_cases(None, Some(DEPT)).await?) == ["C-A", "C-C"], "department");
    ensure!(
        refs(&store.list_cases(Some(CaseState::Approved), Some(DEPT)).await?) == ["C-C"],
        "both"
    );
    ensure!(
        store.list_cases(Some(CaseState::Approved), Some(OTHER_DEPT)).await?.is_empty(),
        "none"
    );
    ensure!(store.list_cases(Some(CaseState::Closed), None).await?.is_empty(), "no closed case");
    let listed = store.list_cases(Some(CaseState::Approved), None).await?;
    ensure!(
        Some(&listed[0]) == store.case("C-C").await?.as_ref(),
        "a listed case is the stored case"
    );
    Ok(())
}

pub async fn transition_is_compare_and_set_on_the_state(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let first = open_case(&store, "C-1", DEPT).await?;
    let rec = store
        .transition("C-1", CaseState::Open, CaseState::Approved, event("approved", 1))
        .await?;
    ensure!(
        rec.seq == 2 && rec.prev_hash == first.hash && rec.event == "approved",
        "record: {rec:?}"
    );
    let case = store.case("C-1").await?.context("C-1 is gone")?;
    ensure!(case.state == CaseState::Approved, "state {}", case.state);
    ensure!(
        (case.event_count, case.head_hash.as_str()) == (2, rec.hash.as_str()),
        "head: {case:?}"
    );

    // From a state the case is no longer in: refused, nothing written.
    let stale = store
        .transition("C-1", CaseState::Open, CaseState::Rejected, event("rejected", 2))
        .await;
    expect_conflict(stale, "C-1", CaseState::Open, CaseState::Approved)?;
    ensure!(store.case("C-1").await? == Some(case), "a refused transition changed the case");
    ensure!(store.events("C-1").await?.len() == 2, "a refused transition wrote a record");

    let missing = store
        .transition("C-9", CaseState::Open, CaseState::Approved, event("approved", 1))
        .await;
    ensure!(
        matches!(&missing, Err(StoreError::NoCase(r)) if r == "C-9"),
        "unknown case: {missing:?}"
    );

    // The store goes on after refusals.
    store
        .transition("C-1", CaseState::Approved, CaseState::Exported, event("exported", 3))
        .await?;
    verified_log(&store, "C-1").await?;
    Ok(())
}

pub async fn append_in_only_in_the_given_states(store: Arc<dyn Store>) -> anyhow::Result<()> {
    open_case(&store, "C-1", DEPT).await?;
    let rec = store
        .append_in("C-1", &[CaseState::Approved, CaseState::Open], event("noted", 1))
        .await?;
    ensure!(rec.seq == 2 && rec.event == "noted", "record: {rec:?}");
    let case = store.case("C-1").await?.context("C-1 is gone")?;
    ensure!(
        case.state == CaseState::Open && case.event_count == 2 && case.head_hash == rec.hash,
        "an append changed the state: {case:?}"
    );

    store
        .transition("C-1", CaseState::Open, CaseState::Closed, event("closed", 2))
        .await?;
    let late = store
        .append_in("C-1", &[CaseState::Open, CaseState::Approved], event("file_read", 3))
        .await;
    expect_conflict(late, "C-1", CaseState::Open, CaseState::Closed)?;
    ensure!(store.events("C-1").await?.len() == 3, "an append out of state wrote a record");

    let missing = store.append_in("C-9", &[CaseState::Open], event("noted", 1)).await;
    ensure!(
        matches!(&missing, Err(StoreError::NoCase(r)) if r == "C-9"),
        "unknown case: {missing:?}"
    );

    store.append_in("C-1", &[CaseState::Closed], event(audit::SEALED, 4)).await?;
    verified_log(&store, "C-1").await?;
    Ok(())
}

pub async fn events_come_in_sequence_order(store: Arc<dyn Store>) -> anyhow::Result<()> {
    // Two cases written in turn, so their records interleave in storage.
    open_case(&store, "C-1", DEPT).await?;
    open_case(&store, "C-2", DEPT).await?;
    let mut written = [Vec::new(), Vec::new()];
    for n in 1..=20 {
        for (i, case_ref) in ["C-1", "C-2"].into_iter().enumerate() {
            written[i].push(store.append_in(case_ref, &[CaseState::Open], event("noted", n)).await?);
        }
    }
    for (i, case_ref) in ["C-1", "C-2"].into_iter().enumerate() {
        let records = store.events(case_ref).await?;
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        ensure!(seqs == (1..=21).collect::<Vec<u64>>(), "{case_ref}: sequence {seqs:?}");
        ensure!(
            records[1..] == written[i][..],
            "{case_ref}: stored records differ from those returned"
        );
        audit::verify_chain(case_ref, &records, None)?;
    }
    ensure!(store.events("C-9").await?.is_empty(), "records of an unknown case");
    Ok(())
}

pub async fn events_page_reads_the_log_in_pages(store: Arc<dyn Store>) -> anyhow::Result<()> {
    // Two cases written in turn, so their records interleave in storage.
    open_case(&store, "C-1", DEPT).await?;
    open_case(&store, "C-2", DEPT).await?;
    for n in 1..=25 {
        for case_ref in ["C-1", "C-2"] {
            store.append_in(case_ref, &[CaseState::Open], event("noted", n)).await?;
        }
    }
    let all = store.events("C-1").await?;
    ensure!(all.len() == 26, "{} records", all.len());
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.events_page("C-1", after, 10).await?;
        ensure!(page.len() <= 10, "a page of {} records", page.len());
        let Some(last) = page.last() else { break };
        after = last.seq;
        paged.extend(page);
    }
    ensure!(paged == all, "the pages do not form the log");
    let seqs = |p: &[EventRecord]| p.iter().map(|r| r.seq).collect::<Vec<u64>>();
    ensure!(
        seqs(&store.events_page("C-1", 20, 10).await?) == (21..=26).collect::<Vec<u64>>(),
        "last page"
    );
    ensure!(seqs(&store.events_page("C-1", 25, 1).await?) == [26], "the last record alone");
    ensure!(store.events_page("C-1", 26, 10).await?.is_empty(), "past the end");
    ensure!(store.events_page("C-1", u64::MAX, 10).await?.is_empty(), "far past the end");
    ensure!(store.events_page("C-9", 0, 10).await?.is_empty(), "records of an unknown case");
    ensure!(
        store.events_page("C-2", 0, 100).await? == store.events("C-2").await?,
        "another case's pages"
    );
    verified_log(&store, "C-1").await?;
    Ok(())
}

pub async fn stray_records_are_counted(store: Arc<dyn Store>) -> anyhow::Result<()> {
    open_case(&store, "C-1", DEPT).await?;
    store.append_in("C-1", &[CaseState::Open], event("noted", 1)).await?;
    ensure!(store.stray_records("C-1").await? == 0, "an intact log has stray records");
    ensure!(store.stray_records("C-9").await? == 0, "an unknown case has stray records");
    Ok(())
}

pub async fn record_access_records_a_few_then_counts(store: Arc<dyn Store>) -> anyhow::Result<()> {
    exported_case(&store, "C-1").await?;
    let open = access("C-1", "a.fq", 2001, AccessKind::Opened);
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(store.record_access(&open, &COUNT_AFTER_TWO).await?);
    }
    ensure!(
        matches!(&outcomes[..], [Recorded::Record(a), Recorded::Record(b), Recorded::Counted, Recorded::Counted, Recorded::Counted]
            if a.seq == 4 && b.seq == 5 && a.event == "file_opened" && a.details == open.record().details),
        "outcomes: {outcomes:?}"
    );
    // Another file, and the same file by staff, are keys of their own.
    let staff_open = access("C-1", "a.fq", 1500, AccessKind::Opened);
    ensure!(
        matches!(store.record_access(&staff_open, &COUNT_AFTER_TWO).await?, Recorded::Record(_)),
        "a staff open"
    );
    ensure!(store.opened_files("C-1", false).await? == ["a.fq"], "opened by the department");
    ensure!(store.opened_files("C-1", true).await? == ["a.fq"], "opened by staff");
    ensure!(store.opened_files("C-9", false).await?.is_empty(), "opened in an unknown case");
    let read = access("C-1", "b.fq", 2001, AccessKind::Read { bytes_read: 10, size: 10 });
    let short = access("C-1", "b.fq", 2001, AccessKind::Read { bytes_read: 4, size: 10 });
    for a in [&read, &read, &read, &short] {
        store.record_access(a, &COUNT_AFTER_TWO).await?;
    }
    ensure!(store.opened_files("C-1", false).await? == ["a.fq"], "a read is not an open");
    let before = store.events("C-1").await?;
    ensure!(before.len() == 3 + 2 + 1 + 2, "records: {before:?}");

    // Not yet over: nothing to fold. Then all of it, as one record per key.
    ensure!(store.fold_accesses(None, COUNT_AFTER_TWO.window).await? == 0, "folded early");
    ensure!(store.fold_accesses(Some("C-1"), std::time::Duration::ZERO).await? == 2, "fold");
    let log = verified_log(&store, "C-1").await?;
    ensure!(log.len() == before.len() + 2, "records after the fold: {}", log.len());
    ensure!(accesses(&log, EventKind::FileOpened, "a.fq") == 6, "opens: {log:?}");
    ensure!(accesses(&log, EventKind::FileRead, "b.fq") == 4, "reads: {log:?}");
    let counted_open = &log[log.len() - 2..]
        .iter()
        .find(|r| r.event == "file_opened")
        .context("no counted open")?;
    ensure!(
        counted_open.details["opens"] == 3 && counted_open.uid == 2001 && counted_open.details["staff"] == false,
        "{counted_open:?}"
    );
    let counted_read = log[log.len() - 2..]
        .iter()
        .find(|r| r.event == "file_read")
        .context("no counted read")?;
    ensure!(
        counted_read.event == "file_read"
            && counted_read.details["releases"] == 2
            && counted_read.details["bytes_read"] == 14
            && counted_read.details["complete_releases"] == 1,
        "{counted_read:?}"
    );
    ensure!(store.fold_accesses(None, std::time::Duration::ZERO).await? == 0, "folded twice");
    Ok(())
}

pub async fn a_transition_folds_counted_accesses_first(store: Arc<dyn Store>) -> anyhow::Result<()> {
    exported_case(&store, "C-1").await?;
    let open = access("C-1", "a.fq", 2001, AccessKind::Opened);
    for _ in 0..7 {
        store.record_access(&open, &COUNT_AFTER_TWO).await?;
    }
    let received = store
        .transition("C-1", CaseState::Exported, CaseState::Received, event("received", 3))
        .await?;
    let log = verified_log(&store, "C-1").await?;
    ensure!(log.last() == Some(&received), "the transition is not the last record");
    ensure!(
        log[log.len() - 2].details["opens"] == 5,
        "no counted record before the transition: {log:?}"
    );
    ensure!(accesses(&log, EventKind::FileOpened, "a.fq") == 7, "opens: {log:?}");

    // Still visible when received; once closed, an access is refused and writes nothing.
    store.record_access(&open, &COUNT_AFTER_TWO).await?;
    store
        .transition("C-1", CaseState::Received, CaseState::Closed, event("closed", 4))
        .await?;
    let late = store.record_access(&open, &COUNT_AFTER_TWO).await;
    expect_conflict(late, "C-1", CaseState::Exported, CaseState::Closed)?;
    let log = verified_log(&store, "C-1").await?;
    ensure!(accesses(&log, EventKind::FileOpened, "a.fq") == 8, "opens: {log:?}");
    ensure!(store.fold_accesses(None, std::time::Duration::ZERO).await? == 0, "left counted");
    let sealed = store.append_in("C-1", &[CaseState::Closed], event(audit::SEALED, 5)).await?;
    ensure!(verified_log(&store, "C-1").await?.last() == Some(&sealed), "the seal is not last");

    let open_case_access = access("C-2", "a.fq", 2001, AccessKind::Opened);
    open_case(&store, "C-2", DEPT).await?;
    let early = store.record_access(&open_case_access, &COUNT_AFTER_TWO).await;
    expect_conflict(early, "C-2", CaseState::Exported, CaseState::Open)?;
    ensure!(store.events("C-2").await?.len() == 1, "an access before the export wrote a record");
    let missing = store
        .record_access(&access("C-9", "a.fq", 2001, AccessKind::Opened), &COUNT_AFTER_TWO)
        .await;
    ensure!(
        matches!(&missing, Err(StoreError::NoCase(r)) if r == "C-9"),
        "unknown case: {missing:?}"
    );
    Ok(())
}

pub async fn a_new_window_folds_the_last_one(store: Arc<dyn Store>) -> anyhow::Result<()> {
    exported_case(&store, "C-1").await?;
    let open = access("C-1", "a.fq", 2001, AccessKind::Opened);
    for _ in 0..4 {
        store.record_access(&open, &COUNT_AFTER_TWO).await?;
    }
    // A window of zero is always over: the count is folded, then the access recorded.
    let over = Coalescing {
        window: std::time::Duration::ZERO,
        plain_per_window: 2,
    };
    let Recorded::Record(rec) = store.record_access(&open, &over).await? else {
        bail!("an access in a new window was only counted");
    };
    let log = verified_log(&store, "C-1").await?;
    ensure!(log.last() == Some(&rec) && rec.details == open.record().details, "{log:?}");
    ensure!(log[log.len() - 2].details["opens"] == 2, "the last window's count: {log:?}");
    ensure!(accesses(&log, EventKind::FileOpened, "a.fq") == 5, "opens: {log:?}");
    Ok(())
}

/// Accesses from many tasks at once are each recorded or counted, once.
pub async fn concurrent_accesses_are_all_accounted_for(store: Arc<dyn Store>) -> anyhow::Result<()> {
    const TASKS: u32 = 8;
    const EACH: u64 = 40;
    exported_case(&store, "C-1").await?;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Two accounts on one file, each from several tasks.
            let a = access("C-1", "a.fq", 2001 + task % 2, AccessKind::Opened);
            for _ in 0..EACH {
                store.record_access(&a, &COUNT_AFTER_TWO).await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    store
        .transition("C-1", CaseState::Exported, CaseState::Received, event("received", 3))
        .await?;
    let log = verified_log(&store, "C-1").await?;
    ensure!(
        accesses(&log, EventKind::FileOpened, "a.fq") == TASKS as u64 * EACH,
        "opens: {}",
        accesses(&log, EventKind::FileOpened, "a.fq")
    );
    ensure!(log.len() == 3 + 2 * 3 + 1, "{} records", log.len());
    Ok(())
}

pub async fn count_by_state_covers_every_state(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let zero: Vec<(CaseState, u64)> = CaseState::ALL.iter().map(|s| (*s, 0)).collect();
    ensure!(store.count_by_state().await? == zero, "a new store has cases");
    for case_ref in ["C-1", "C-2", "C-3", "C-4"] {
        open_case(&store, case_ref, DEPT).await?;
    }
    store
        .transition("C-1", CaseState::Open, CaseState::Approved, event("approved", 1))
        .await?;
    store
        .transition("C-2", CaseState::Open, CaseState::Rejected, event("rejected", 1))
        .await?;
    store
        .transition("C-3", CaseState::Open, CaseState::Cancelled, event("cancelled", 1))
        .await?;
    let want: Vec<(CaseState, u64)> = CaseState::ALL
        .iter()
        .map(|s| {
            let n = match s {
                CaseState::Open | CaseState::Approved | CaseState::Rejected | CaseState::Cancelled => 1,
                _ => 0,
            };
            (*s, n)
        })
        .collect();
    ensure!(store.count_by_state().await? == want, "counts");
    Ok(())
}

/// Appends from many tasks at once still form one chain without gaps.
pub async fn concurrent_appends_to_one_case_form_one_chain(store: Arc<dyn Store>) -> anyhow::Result<()> {
    const TASKS: u64 = 8;
    const EACH: u64 = 50;
    open_case(&store, "C-1", DEPT).await?;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..EACH {
                let ev = NewEvent {
                    details: serde_json::json!({ "task": task, "i": i }),
                    ..event("file_read", 0)
                };
                written.push(store.append_in("C-1", &[CaseState::Open], ev).await?);
            }
            Ok::<_, StoreError>(written)
        }));
    }
    let mut returned = Vec::new();
    for t in tasks {
        returned.extend(t.await??);
    }

    let records = verified_log(&store, "C-1").await?;
    let n = 1 + TASKS * EACH;
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    ensure!(
        seqs == (1..=n).collect::<Vec<u64>>(),
        "sequence has gaps or repeats: {} records",
        records.len()
    );
    let appended: BTreeSet<String> = records
        .iter()
        .filter(|r| r.event == "file_read")
        .map(|r| r.details.to_string())
        .collect();
    ensure!(
        appended.len() as u64 == TASKS * EACH,
        "{} distinct appended records",
        appended.len()
    );
    returned.sort_by_key(|r| r.seq);
    ensure!(returned[..] == records[1..], "the records returned are not the records stored");
    Ok(())
}

/// Of transitions racing from one state, exactly one happens.
pub async fn concurrent_transitions_from_one_state_have_one_winner(store: Arc<dyn Store>) -> anyhow::Result<()> {
    const RACERS: usize = 4;
    let targets = [CaseState::Approved, CaseState::Rejected, CaseState::Blocked, CaseState::Expired];
    for round in 0..10 {
        let case_ref = format!("C-{round}");
        open_case(&store, &case_ref, DEPT).await?;
        let start = Arc::new(tokio::sync::Barrier::new(RACERS));
        let mut racers = Vec::new();
        for to in targets.into_iter().take(RACERS) {
            let (store, start, case_ref) = (store.clone(), start.clone(), case_ref.clone());
            racers.push(tokio::spawn(async move {
                start.wait().await;
                (to, store.transition(&case_ref, CaseState::Open, to, event(to.as_str(), 1)).await)
            }));
        }
        let mut outcomes = Vec::new();
        for r in racers {
            outcomes.push(r.await?);
        }
        let winners: Vec<CaseState> = outcomes.iter().filter(|(_, r)| r.is_ok()).map(|(to, _)| *to).collect();
        let [winner] = winners[..] else {
            bail!("round {round}: winners {winners:?}");
        };
        for (to, r) in outcomes {
            if to != winner {
                expect_conflict(r, &case_ref, CaseState::Open, winner)?;
            }
        }
        let case = store.case(&case_ref).await?.context("case is gone")?;
        ensure!(case.state == winner && case.event_count == 2, "round {round}: {case:?}");
        verified_log(&store, &case_ref).await?;
    }
    Ok(())
}

/// At most `open` live requests per person, and plenty a day.
fn at_most(open: u64) -> super::RequestLimits {
    super::RequestLimits { open, per_day: 1000 }
}

/// A self-service request of `requester`'s, holding no files.
fn request(case_ref: &str, requester: &str, uid: u32) -> anyhow::Result<NewCase> {
    let mut case = new_case(case_ref, DEPT, &[])?;
    case.requester = requester.to_string();
    case.opened_uid = uid;
    case.self_service = Some(SelfService::Review);
    Ok(case)
}

pub async fn create_request_counts_the_requesters_live_requests(store: Arc<dyn Store>) -> anyhow::Result<()> {
    store
        .create_request(request("R-1", "alice", 5001)?, event("opened", 0), at_most(2))
        .await?;
    store
        .create_request(request("R-2", "alice", 5001)?, event("opened", 0), at_most(2))
        .await?;
    let stored = store.case("R-1").await?.context("R-1 was not stored")?;
    ensure!(
        stored.self_service == Some(SelfService::Review) && stored.opened_uid == Some(5001),
        "a request is stored as one: {stored:?}"
    );
    // The third is refused, and nothing of it is written.
    let third = store
        .create_request(request("R-3", "alice", 5001)?, event("opened", 0), at_most(2))
        .await;
    ensure!(
        matches!(&third, Err(StoreError::TooManyRequests { requester, open: 2 }) if requester == "alice"),
        "over the limit: {third:?}"
    );
    ensure!(store.case("R-3").await?.is_none(), "a refused request was stored");
    // A case staff registered for alice does not count; another person's requests neither.
    let mut staffs = request("C-1", "alice", 0)?;
    staffs.self_service = None;
    store.create_case(staffs, event("opened", 0)).await?;
    ensure!(store.case("C-1").await?.and_then(|c| c.self_service).is_none(), "staff's case");
    store
        .create_request(request("R-9", "bob", 5002)?, event("opened", 0), at_most(2))
        .await?;
    ensure!(
        matches!(
            store
                .create_request(request("R-3", "alice", 5001)?, event("opened", 0), at_most(2))
                .await,
            Err(StoreError::TooManyRequests { .. })
        ),
        "still two"
    );
    // Ended requests do not count: cancelled, rejected, closed, expired.
    store
        .transition("R-1", CaseState::Open, CaseState::Cancelled, event("cancelled", 1))
        .await?;
    store
        .create_request(request("R-3", "alice", 5001)?, event("opened", 0), at_most(2))
        .await?;
    // A taken reference is still refused as such.
    let taken = store
        .create_request(request("R-9", "carol", 5003)?, event("opened", 0), at_most(2))
        .await;
    ensure!(matches!(&taken, Err(StoreError::Exists(r)) if r == "R-9"), "taken: {taken:?}");
    // Requests of the last 24 hours count for the daily limit, whatever became of them.
    let daily = super::RequestLimits { open: 10, per_day: 3 };
    let today = store
        .create_request(request("R-4", "alice", 5001)?, event("opened", 0), daily)
        .await;
    ensure!(
        matches!(&today, Err(StoreError::RequestsToday { requester, made: 3 }) if requester == "alice"),
        "alice made R-1, R-2 and R-3 today: {today:?}"
    );
    ensure!(store.case("R-4").await?.is_none(), "a refused request was stored");
    store
        .create_request(request("R-5", "bob", 5002)?, event("opened", 0), daily)
        .await?;
    Ok(())
}

/// Many requests of one person at once: never more than the limit registered.
pub async fn concurrent_requests_never_pass_the_limit_together(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for i in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create_request(request(&format!("R-{i}"), "alice", 5001)?, event("opened", 0), at_most(3))
                .await
                .map_err(anyhow::Error::from)
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await? {
            Ok(_) => won += 1,
            Err(e) => ensure!(
                matches!(e.downcast_ref::<StoreError>(), Some(StoreError::TooManyRequests { .. })),
                "{e}"
            ),
        }
    }
    ensure!(won == 3, "{won} requests registered, the limit is 3");
    ensure!(store.list_requests("alice", 100).await?.len() == 3, "stored");
    Ok(())
}

pub async fn list_requests_lists_a_requesters_own_requests(store: Arc<dyn Store>) -> anyhow::Result<()> {
    store
        .create_request(request("R-B", "alice", 5001)?, event("opened", 0), at_most(5))
        .await?;
    store
        .create_request(request("R-X", "bob", 5002)?, event("opened", 0), at_most(5))
        .await?;
    let mut staffs = request("C-1", "alice", 0)?;
    staffs.self_service = None;
    store.create_case(staffs, event("opened", 0)).await?;
    // Registration times are compared as text: a second apart, they order as they were made.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    store
        .create_request(request("R-A", "alice", 5001)?, event("opened", 0), at_most(5))
        .await?;
    store
        .transition("R-B", CaseState::Open, CaseState::Cancelled, event("cancelled", 1))
        .await?;
    ensure!(
        refs(&store.list_requests("alice", 100).await?) == ["R-B", "R-A"],
        "oldest first, ended ones too"
    );
    ensure!(refs(&store.list_requests("bob", 100).await?) == ["R-X"], "bob's");
    ensure!(store.list_requests("carol", 100).await?.is_empty(), "none");
    ensure!(refs(&store.list_requests("alice", 1).await?) == ["R-A"], "the most recent");
    ensure!(
        store.list_requests("alice", 100).await?[1] == store.case("R-A").await?.context("R-A")?,
        "a listed request is the stored case"
    );
    Ok(())
}

fn file_of(id: &str, path: &str, department: &str, submitted_s: i64) -> anyhow::Result<CatalogFile> {
    let mut f = file(id, path, 1)?;
    f.department = DirId::parse(department)?;
    f.submitted_ns = submitted_s * 1_000_000_000;
    Ok(f)
}

pub async fn resolve_among_looks_in_the_named_departments_only(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let files = [
        file_of("F1", "a/x.fq", DEPT, 0)?,
        file_of("F2", "b/x.fq", OTHER_DEPT, 0)?,
        file_of("F3", "c/x.fq", "AUH-KGA", 0)?,
    ];
    store.import_catalog(catalog(&files)).await?;
    let among = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    ensure!(
        ids(&store.resolve_among("x.fq", &among(&[DEPT, OTHER_DEPT]), 10).await?) == ["F1", "F2"],
        "base name"
    );
    ensure!(
        ids(&store.resolve_among("x.fq", &among(&["AUH-KGA"]), 10).await?) == ["F3"],
        "the other department"
    );
    ensure!(
        store.resolve_among("F3", &among(&[DEPT]), 10).await?.is_empty(),
        "file_id of another department"
    );
    ensure!(
        ids(&store.resolve_among("b/x.fq", &among(&[OTHER_DEPT]), 10).await?) == ["F2"],
        "path"
    );
    ensure!(store.resolve_among("x.fq", &[], 10).await?.is_empty(), "no departments");
    ensure!(
        ids(&store.resolve_among("x.fq", &among(&[DEPT, OTHER_DEPT, "AUH-KGA"]), 2).await?) == ["F1", "F2"],
        "limit"
    );
    Ok(())
}

pub async fn import_keeps_the_sample_id_column(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let f = file("F1", "a/x.fq", 1)?;
    let mut row = rows(std::slice::from_ref(&f));
    row[0].sample_id = Some("S-1".into());
    store.import_catalog(row.clone().into()).await?;
    let by_sample = |s: &str| CatalogQuery {
        sample_id: Some(s.to_string()),
        ..CatalogQuery::default()
    };
    let found = store.search_catalog(&by_sample("S-1"), None, 10).await?;
    ensure!(
        found.len() == 1 && found[0].file == f && found[0].sample_id.as_deref() == Some("S-1"),
        "{found:?}"
    );
    // A new sample_id comes with the next import (its extra columns change with it).
    row[0].sample_id = Some("S-2".into());
    row[0].file.extra = r#"{"sample_id":"S-2"}"#.into();
    store.import_catalog(row.into()).await?;
    ensure!(
        store.search_catalog(&by_sample("S-1"), None, 10).await?.is_empty(),
        "the old sample"
    );
    ensure!(
        store.search_catalog(&by_sample("S-2"), None, 10).await?.len() == 1,
        "the new sample"
    );
    Ok(())
}

/// Every kind of search on a small catalog, read a page of 3 at a time,
/// against the definition: each condition holds, in order, nothing left out.
pub async fn search_catalog_matches_its_definition_page_by_page(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let depts = [DEPT, OTHER_DEPT, "AUH-KGA"];
    let names = ["a.fq", "A.fq", "ab.fq", "b_a.fq", "ba%.fq", "x.spring", "a.fq"];
    let mut files = Vec::new();
    let mut samples = Vec::new();
    for i in 0..30usize {
        let name = names[i % names.len()];
        // The first seven in directories of their own (two share a base name), the rest renamed.
        let path = if i < names.len() {
            format!("run{i}/{name}")
        } else {
            format!("run{}/{i}-{name}", i % 3)
        };
        files.push(file_of(&format!("F{i:02}"), &path, depts[i * 7 % 3], 100 + (i as i64 * 37) % 50)?);
        samples.push((i % 4 != 3).then(|| format!("S{}", i % 5)));
    }
    let mut all = rows(&files);
    for (r, s) in all.iter_mut().zip(&samples) {
        r.sample_id = s.clone();
    }
    store.import_catalog(all.into()).await?;
    let globs = [
        None,
        Some("a*"),
        Some("*a.fq"),
        Some("?a*"),
        Some("b\\_*"),
        Some("ba%*"),
        Some("run1/*"),
        Some("*/1*"),
    ];
    let department_sets: [Option<Vec<String>>; 4] = [
        None,
        Some(vec![DEPT.into()]),
        Some(vec![DEPT.into(), "AUH-KGA".into()]),
        Some(vec![]),
    ];
    for departments in &department_sets {
        for pattern in globs {
            for sample in [None, Some("S1")] {
                for since in [None, Some(120i64 * 1_000_000_000)] {
                    let glob = pattern.map(Glob::parse).transpose().map_err(anyhow::Error::msg)?;
                    let q = CatalogQuery {
                        departments: departments.clone(),
                        name: glob.as_ref().map(Glob::filter),
                        sample_id: sample.map(String::from),
                        since_ns: since,
                    };
                    let order = q.order();
                    let mut want: Vec<(SearchKey, String)> = files
                        .iter()
                        .zip(&samples)
                        .filter(|(f, s)| {
                            departments.as_ref().is_none_or(|d| d.iter().any(|d| d == f.department.as_str()))
                                && glob.as_ref().is_none_or(|g| g.matches(g.subject(f)))
                                && sample.is_none_or(|x| s.as_deref() == Some(x))
                                && since.is_none_or(|t| f.submitted_ns >= t)
                        })
                        .map(|(f, _)| (SearchKey::of(order, f), f.file_id.to_string()))
                        .collect();
                    want.sort();
                    let want: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
                    let mut got = Vec::new();
                    let mut after = None;
                    loop {
                        let page = store.search_catalog(&q, after.as_ref(), 3).await?;
                        ensure!(page.len() <= 3, "a page of {} for a limit of 3", page.len());
                        for f in &page {
                            let i = files.iter().position(|x| x.file_id == f.file.file_id).context("an unknown file")?;
                            ensure!(f.file == files[i] && f.sample_id == samples[i], "{} as stored", f.file.file_id);
                        }
                        got.extend(page.iter().map(|f| f.file.file_id.to_string()));
                        after = page.last().map(|f| SearchKey::of(order, &f.file));
                        if page.len() < 3 {
                            break;
                        }
                    }
                    ensure!(
                        got == want,
                        "departments {departments:?}, pattern {pattern:?}, sample {sample:?}, since {since:?}: got {got:?}, want {want:?}"
                    );
                }
            }
        }
    }
    Ok(())
}

pub async fn the_serving_host_is_set_at_approval_and_by_a_move(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let mut changes = store.case_changes();
    open_case(&store, "C-1", DEPT).await?;
    ensure!(store.case("C-1").await?.context("C-1")?.host.is_none(), "an open case has no host");
    store
        .transition_to_host("C-1", CaseState::Open, CaseState::Approved, "host-a", event("approved", 1))
        .await?;
    ensure!(changes.has_changed()?, "an approval is a change");
    changes.borrow_and_update();
    let case = store.case("C-1").await?.context("C-1")?;
    ensure!(
        case.host.as_deref() == Some("host-a") && case.state == CaseState::Approved,
        "{case:?}"
    );
    // A plain transition keeps the host.
    store
        .transition("C-1", CaseState::Approved, CaseState::Exported, event("exported", 2))
        .await?;
    ensure!(
        store.case("C-1").await?.context("C-1")?.host.as_deref() == Some("host-a"),
        "host kept"
    );
    let rec = store
        .move_case("C-1", &[CaseState::Exported, CaseState::Received], "host-b", event("moved", 3))
        .await?;
    ensure!(rec.seq == 4 && changes.has_changed()?, "a move is a record and a change");
    ensure!(store.case("C-1").await?.context("C-1")?.host.as_deref() == Some("host-b"), "moved");
    // Out of the given states: refused, nothing changed.
    let refused = store.move_case("C-1", &[CaseState::Approved], "host-c", event("moved", 4)).await;
    expect_conflict(refused, "C-1", CaseState::Approved, CaseState::Exported)?;
    ensure!(
        store.case("C-1").await?.context("C-1")?.host.as_deref() == Some("host-b"),
        "a refused move moved"
    );
    verified_log(&store, "C-1").await?;
    Ok(())
}

pub async fn serving_reports_replace_the_last(store: Arc<dyn Store>) -> anyhow::Result<()> {
    use crate::domain::hosts::Serving;
    open_case(&store, "C-1", DEPT).await?;
    ensure!(store.serving("C-1").await?.is_none(), "no report yet");
    let mut s = Serving {
        case_ref: "C-1".into(),
        host: "host-a".into(),
        published: false,
        done: 10,
        total: 100,
        updated_at: 5,
    };
    store.report_serving(&s).await?;
    ensure!(store.serving("C-1").await?.as_ref() == Some(&s), "first report");
    s.published = true;
    s.done = 100;
    s.host = "host-b".into();
    store.report_serving(&s).await?;
    ensure!(store.serving("C-1").await?.as_ref() == Some(&s), "second report replaces the first");
    Ok(())
}

pub async fn heartbeats_register_hosts_and_retirement_sticks(store: Arc<dyn Store>) -> anyhow::Result<()> {
    use crate::domain::hosts::HostBeat;
    let beat = |name: &str, at: i64| HostBeat {
        name: name.into(),
        version: "0.1.0".into(),
        mode: "direct".into(),
        read_path: "passthrough".into(),
        directory_sha256: "d".repeat(64),
        started_at: "2026-12-03T12:00:00Z".into(),
        at,
        every_secs: 10,
        cases_served: 2,
    };
    ensure!(store.hosts().await?.is_empty(), "no hosts yet");
    store.heartbeat(&beat("host-b", 100)).await?;
    store.heartbeat(&beat("host-a", 100)).await?;
    store.heartbeat(&beat("host-a", 110)).await?;
    let hosts = store.hosts().await?;
    ensure!(
        hosts.len() == 2 && hosts[0].beat == beat("host-a", 110) && hosts[1].beat.name == "host-b",
        "{hosts:?}"
    );
    ensure!(
        !store.retire_host("host-z", "never was").await?,
        "an unknown host cannot be retired"
    );
    ensure!(store.retire_host("host-b", "hardware gone").await?, "retire");
    ensure!(store.retire_host("host-b", "again").await?, "retire again");
    store.heartbeat(&beat("host-b", 120)).await?;
    let b = store
        .hosts()
        .await?
        .into_iter()
        .find(|h| h.beat.name == "host-b")
        .context("host-b")?;
    ensure!(
        b.retired_at.is_some() && b.retired_reason.as_deref() == Some("hardware gone") && b.beat.at == 120,
        "a heartbeat keeps the first retirement: {b:?}"
    );
    Ok(())
}

pub async fn concurrent_moves_of_one_case_are_serialised(store: Arc<dyn Store>) -> anyhow::Result<()> {
    exported_case(&store, "C-1").await?;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .move_case("C-1", &[CaseState::Exported], &format!("host-{i}"), event("moved", i))
                .await
        }));
    }
    let mut last = (0, String::new());
    for t in tasks {
        let rec = t.await??;
        if rec.seq > last.0 {
            last = (rec.seq, rec.details["n"].to_string());
        }
    }
    let case = store.case("C-1").await?.context("C-1")?;
    ensure!(
        case.host.as_deref() == Some(format!("host-{}", last.1).as_str()),
        "the last move wins: {case:?} {last:?}"
    );
    ensure!(verified_log(&store, "C-1").await?.len() == 11, "one record per move");
    Ok(())
}

pub async fn unsealed_cases_are_the_ended_ones_without_a_seal(store: Arc<dyn Store>) -> anyhow::Result<()> {
    exported_case(&store, "C-1").await?;
    open_case(&store, "C-2", DEPT).await?;
    open_case(&store, "C-3", DEPT).await?;
    ensure!(store.unsealed_cases().await?.is_empty(), "nothing ended yet");
    store
        .transition("C-1", CaseState::Exported, CaseState::Closed, event("closed", 3))
        .await?;
    store
        .transition("C-2", CaseState::Open, CaseState::Rejected, event("rejected", 1))
        .await?;
    ensure!(store.unsealed_cases().await? == ["C-1", "C-2"], "both ended unsealed");
    store
        .append_in("C-1", &CaseState::TERMINAL, event(EventKind::Sealed.as_str(), 4))
        .await?;
    ensure!(store.unsealed_cases().await? == ["C-2"], "C-1 is sealed");
    Ok(())
}

pub async fn state_summary_counts_and_dates_each_state(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let empty = store.state_summary().await?;
    ensure!(
        empty.iter().map(|s| s.state).collect::<Vec<_>>() == CaseState::ALL
            && empty.iter().all(|s| s.cases == 0 && s.oldest_since.is_none()),
        "a new store: {empty:?}"
    );
    let before = crate::unix::now_secs();
    for case_ref in ["C-1", "C-2", "C-3"] {
        open_case(&store, case_ref, DEPT).await?;
    }
    store
        .transition("C-1", CaseState::Open, CaseState::Blocked, event("blocked", 1))
        .await?;
    let after = crate::unix::now_secs();
    let summary = store.state_summary().await?;
    let counts = store.count_by_state().await?;
    ensure!(
        summary.iter().map(|s| (s.state, s.cases)).collect::<Vec<_>>() == counts,
        "the summary's counts differ from count_by_state: {summary:?}"
    );
    for s in &summary {
        match s.state {
            CaseState::Open | CaseState::Blocked => ensure!(
                s.oldest_since.is_some_and(|t| (before..=after).contains(&t)),
                "{}: since {:?}, not within {before}..={after}",
                s.state,
                s.oldest_since
            ),
            _ => ensure!(s.oldest_since.is_none(), "{}: since {:?} with no case", s.state, s.oldest_since),
        }
    }
    Ok(())
}

/// The whole feed, read in pages of `limit`.
async fn whole_feed(store: &Arc<dyn Store>, limit: u32) -> anyhow::Result<Vec<FeedRecord>> {
    let mut all: Vec<FeedRecord> = Vec::new();
    loop {
        let page = store.feed_page(all.last().map_or(0, |r| r.feed_seq), limit).await?;
        ensure!(page.len() <= limit as usize, "a page of {} records", page.len());
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

/// The feed numbers `1..=n` without gaps, and every record as its case log holds it.
async fn check_feed(store: &Arc<dyn Store>, feed: &[FeedRecord]) -> anyhow::Result<()> {
    let numbers: Vec<u64> = feed.iter().map(|r| r.feed_seq).collect();
    ensure!(
        numbers == (1..=feed.len() as u64).collect::<Vec<u64>>(),
        "feed numbers have gaps or repeats: {numbers:?}"
    );
    ensure!(store.feed_head().await? == feed.len() as u64, "the head is not the last number");
    let mut cases: Vec<&str> = feed.iter().map(|r| r.record.case_ref.as_str()).collect();
    cases.sort_unstable();
    cases.dedup();
    let mut total = 0;
    for case_ref in cases {
        let log = store.events(case_ref).await?;
        let fed: Vec<&EventRecord> = feed.iter().map(|r| &r.record).filter(|r| r.case_ref == case_ref).collect();
        // A case's records reach the feed in the order of its log.
        ensure!(
            fed == log.iter().collect::<Vec<_>>(),
            "{case_ref}: the feed's records are not its log, in order"
        );
        total += log.len();
    }
    ensure!(total == feed.len(), "the feed holds {} records, the logs {total}", feed.len());
    Ok(())
}

pub async fn the_feed_numbers_every_record_in_commit_order(store: Arc<dyn Store>) -> anyhow::Result<()> {
    ensure!(store.feed_head().await? == 0, "a new store's feed head");
    ensure!(store.feed_page(0, 10).await?.is_empty(), "a new store's feed");
    // Records as the writes returned them, in the order they were made;
    // refused writes in between must leave no gap.
    let mut written = vec![open_case(&store, "C-1", DEPT).await?];
    written.push(open_case(&store, "C-2", OTHER_DEPT).await?);
    ensure!(open_case(&store, "C-1", DEPT).await.is_err(), "a taken reference");
    written.push(
        store
            .transition("C-2", CaseState::Open, CaseState::Approved, event("approved", 1))
            .await?,
    );
    let stale = store
        .transition("C-2", CaseState::Open, CaseState::Rejected, event("rejected", 1))
        .await;
    expect_conflict(stale, "C-2", CaseState::Open, CaseState::Approved)?;
    written.push(store.append_in("C-1", &[CaseState::Open], event("noted", 2)).await?);
    let late = store.append_in("C-2", &[CaseState::Open], event("noted", 2)).await;
    expect_conflict(late, "C-2", CaseState::Open, CaseState::Approved)?;
    written.push(
        store
            .transition("C-2", CaseState::Approved, CaseState::Exported, event("exported", 3))
            .await?,
    );
    // A counted access writes no record; the transition that folds it writes two.
    let open = access("C-2", "a.fq", 2001, AccessKind::Opened);
    for _ in 0..3 {
        if let Recorded::Record(r) = store.record_access(&open, &COUNT_AFTER_TWO).await? {
            written.push(r);
        }
    }
    let received = store
        .transition("C-2", CaseState::Exported, CaseState::Received, event("received", 4))
        .await?;
    let counted = store.events_page("C-2", received.seq - 2, 1).await?;
    written.extend(counted);
    written.push(received);

    let feed = whole_feed(&store, 1000).await?;
    check_feed(&store, &feed).await?;
    ensure!(
        feed.iter().map(|r| &r.record).collect::<Vec<_>>() == written.iter().collect::<Vec<_>>(),
        "the feed is not the records in the order they were written"
    );
    Ok(())
}

pub async fn feed_pages_resume_after_any_number(store: Arc<dyn Store>) -> anyhow::Result<()> {
    for n in 0..7 {
        let case_ref = format!("C-{}", n % 3);
        if n < 3 {
            open_case(&store, &case_ref, DEPT).await?;
        } else {
            store.append_in(&case_ref, &[CaseState::Open], event("noted", n)).await?;
        }
    }
    let all = whole_feed(&store, 1000).await?;
    ensure!(all.len() == 7, "{} records", all.len());
    ensure!(whole_feed(&store, 3).await? == all, "pages of 3 differ from the whole");
    ensure!(whole_feed(&store, 1).await? == all, "pages of 1 differ from the whole");
    for after in 0..=7u64 {
        let rest = store.feed_page(after, 1000).await?;
        ensure!(rest[..] == all[after as usize..], "after {after}: not the rest of the feed");
    }
    ensure!(store.feed_page(7, 10).await?.is_empty(), "past the head");
    ensure!(store.feed_page(u64::MAX, 10).await?.is_empty(), "far past the head");
    // Records written later continue the numbers.
    let next = store.append_in("C-1", &[CaseState::Open], event("noted", 8)).await?;
    let page = store.feed_page(7, 10).await?;
    ensure!(
        matches!(&page[..], [r] if r.feed_seq == 8 && r.record == next),
        "after more writes: {page:?}"
    );
    Ok(())
}

/// Writers on several cases at once (appends, transitions, accesses): the
/// feed is `1..=n` without gaps, each case's records in its log's order.
pub async fn concurrent_writers_number_the_feed_without_gaps(store: Arc<dyn Store>) -> anyhow::Result<()> {
    const TASKS: u64 = 8;
    const EACH: u64 = 30;
    for case_ref in ["C-0", "C-1", "C-2"] {
        exported_case(&store, case_ref).await?;
    }
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let case_ref = format!("C-{}", (task + i) % 3);
                if i % 5 == 4 {
                    let a = access(&case_ref, "a.fq", 2001, AccessKind::Opened);
                    store.record_access(&a, &COUNT_AFTER_TWO).await?;
                } else {
                    let ev = NewEvent {
                        details: serde_json::json!({ "task": task, "i": i }),
                        ..event("file_read", 0)
                    };
                    store.append_in(&case_ref, &CaseState::VISIBLE, ev).await?;
                }
            }
            Ok::<_, StoreError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    for case_ref in ["C-0", "C-1", "C-2"] {
        store
            .transition(case_ref, CaseState::Exported, CaseState::Received, event("received", 9))
            .await?;
        verified_log(&store, case_ref).await?;
    }
    let feed = whole_feed(&store, 100).await?;
    check_feed(&store, &feed).await?;
    Ok(())
}

pub async fn committed_moves_after_each_commit_that_wrote_records(store: Arc<dyn Store>) -> anyhow::Result<()> {
    use std::time::Duration;
    let wait = Duration::from_secs(10);
    open_case(&store, "C-1", DEPT).await?;
    let mut rx = store.committed();
    // A value read out of the watch: its guard must not be held across an await.
    let start = *rx.borrow_and_update();
    ensure!(start == store.feed_head().await?, "it starts at the head");

    store.append_in("C-1", &[CaseState::Open], event("noted", 1)).await?;
    tokio::time::timeout(wait, rx.changed())
        .await
        .context("no prompt after an append")??;
    ensure!(*rx.borrow_and_update() >= 2, "the prompt is behind the head");

    // A refused write and a counted access write no record: no prompt.
    let refused = store.append_in("C-1", &[CaseState::Closed], event("noted", 2)).await;
    expect_conflict(refused, "C-1", CaseState::Closed, CaseState::Open)?;
    ensure!(!rx.has_changed()?, "a refused write moved the prompt");

    // Several commits while nobody looks: one prompt, at the last head or beyond.
    for n in 3..6 {
        store.append_in("C-1", &[CaseState::Open], event("noted", n)).await?;
    }
    tokio::time::timeout(wait, rx.changed())
        .await
        .context("no prompt after three appends")??;
    let seen = *rx.borrow_and_update();
    ensure!(seen >= store.feed_head().await?, "the prompt is behind the head");
    ensure!(store.feed_head().await? == 5, "the head after five records");

    // Every follower gets its own prompt.
    let mut other = store.committed();
    other.borrow_and_update();
    store.append_in("C-1", &[CaseState::Open], event("noted", 6)).await?;
    tokio::time::timeout(wait, other.changed())
        .await
        .context("a second follower had no prompt")??;
    tokio::time::timeout(wait, rx.changed())
        .await
        .context("the first follower had no prompt")??;
    Ok(())
}
