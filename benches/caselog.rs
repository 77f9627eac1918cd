//! A case log of 1,000,000 records — what a transfer account's flood of
//! opens left before repeated opens were counted — read the way the daemon
//! reads it, in bounded memory.
//!
//! `cargo bench --bench caselog [-- --records N --runs N]`
//!
//! Builds the log directly through the store (`SqliteStore::append_many`,
//! 10,000 records a transaction) into a fresh SQLite database: a case opened,
//! approved, exported, then `file_opened` records, then closed (its log not
//! sealed yet). Then, `--runs` times, each with the process's peak RSS
//! (`VmHWM`, reset before each step through `/proc/self/clear_refs`):
//!
//! * the chain checked page by page as `audit verify` does (`events_page`
//!   of 1,000 records + `ChainVerifier`), with the time per page;
//! * the sealed form written page by page (tmp file, fsync, rename), as the
//!   seal does, and verified line by line (`verify_sealed_from`).
//!
//! `WORKCOPY_BENCH_RECORDS` sets the record count too; `--records` wins.
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a quick
//! smoke test: 2,000 records, one run.
//!
//! With `--write-state DIR` it only builds the database as
//! `DIR/workcopy.db` and a directory naming its department as
//! `DIR/directory.toml`, and exits: `scripts/bench-caselog` starts the release
//! daemon on it (which seals the log at start) and measures the daemon's peak
//! RSS during `audit verify` and while `case log` pages through the log.

use anyhow::{Context, Result, bail, ensure};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;
use workcopy::audit::{ChainVerifier, NewEvent, jsonl_line, verify_sealed_from};
use workcopy::db::sqlite::SqliteStore;
use workcopy::db::{NewCase, Store};
use workcopy::domain::case::CaseState;
use workcopy::domain::verify::Report;

/// The case the benchmark builds.
const CASE: &str = "NGC-BENCH-0001";
const DEPARTMENT: &str = "RH-KGA";
const TRANSFER_UID: u32 = 20001;
/// Records per transaction while building, and per page while reading.
const BATCH: usize = 10_000;
const PAGE: u32 = 1000;

struct Opts {
    bench: bool,
    records: u64,
    runs: usize,
    write_state: Option<PathBuf>,
}

fn parse_args() -> Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let mut o = Opts {
        bench,
        records: if bench { 1_000_000 } else { 2_000 },
        runs: if bench { 3 } else { 1 },
        write_state: None,
    };
    if let Ok(v) = std::env::var("WORKCOPY_BENCH_RECORDS") {
        o.records = number(&v).context("WORKCOPY_BENCH_RECORDS")?;
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |flag: &str| -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().cloned().with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "--records" => o.records = number(&value(flag)?).context("--records")?,
            "--runs" => o.runs = number(&value(flag)?).context("--runs")? as usize,
            "--write-state" => o.write_state = Some(value(flag)?.into()),
            // `--bench` and whatever else cargo or a filter passes.
            _ => {}
        }
    }
    if o.records < 10 || o.runs == 0 {
        bail!("--records must be at least 10, --runs at least 1");
    }
    Ok(o)
}

fn number(s: &str) -> Result<u64> {
    s.replace(['_', ','], "")
        .parse()
        .with_context(|| format!("{s:?} is not a whole number"))
}

fn event(name: &str, actor: &str, uid: u32, details: serde_json::Value) -> NewEvent {
    NewEvent {
        actor: actor.into(),
        uid,
        event: name.into(),
        details,
    }
}

/// Builds the case's log of `records` records into a fresh database at `db`.
async fn build(db: &Path, records: u64) -> Result<SqliteStore> {
    let store = SqliteStore::open(&format!("sqlite://{}", db.display())).await?;
    let case = NewCase {
        case_ref: CASE.into(),
        requester: "alice@rh.example".into(),
        department: Some(DEPARTMENT.into()),
        submitter: Some(DEPARTMENT.into()),
        report: Report {
            department: None,
            problems: Vec::new(),
            lines: Vec::new(),
        },
        files: Vec::new(),
        opened_uid: 1500,
        self_service: None,
    };
    let staff = |name: &str| event(name, "ngc-staff", 1500, serde_json::json!({}));
    store.create_case(case, staff("opened")).await?;
    store
        .transition(CASE, CaseState::Open, CaseState::Approved, staff("approved"))
        .await?;
    store
        .transition(CASE, CaseState::Approved, CaseState::Exported, staff("exported"))
        .await?;
    // Opens of 20 files by the transfer account, as a flood left them.
    let opens = records - 4;
    let mut done = 0;
    while done < opens {
        let n = (opens - done).min(BATCH as u64);
        let batch = (done..done + n)
            .map(|i| {
                let f = i % 20;
                event(
                    "file_opened",
                    "rh-kga-transfer",
                    TRANSFER_UID,
                    serde_json::json!({
                        "file": format!("HG{:05}_S{f}_L001_R1_001.fastq.gz", 96 + f),
                        "file_id": format!("GDB{:09}", 123_000 + f),
                        "pid": 40_000 + i % 20_000,
                        "staff": false,
                    }),
                )
            })
            .collect();
        store.append_many(CASE, batch).await?;
        done += n;
    }
    store
        .transition(CASE, CaseState::Exported, CaseState::Closed, staff("closed"))
        .await?;
    Ok(store)
}

/// Resets the process's peak RSS to its current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

struct Run {
    verify_secs: f64,
    page_ms: Vec<f64>,
    verify_peak: f64,
    seal_secs: f64,
    sealed_verify_secs: f64,
    seal_peak: f64,
}

/// The chain checked page by page, then the sealed form written and verified.
async fn read_once(store: &SqliteStore, dir: &Path, records: u64) -> Result<Run> {
    reset_peak();
    let t = Instant::now();
    let case = store.case(CASE).await?.context("the case is gone")?;
    let mut v = ChainVerifier::new(CASE);
    let mut after = 0;
    let mut page_ms = Vec::new();
    loop {
        let tp = Instant::now();
        let page = store.events_page(CASE, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            v.push(r)?;
        }
        page_ms.push(tp.elapsed().as_secs_f64() * 1e3);
    }
    v.finish(Some((case.event_count, &case.head_hash)))?;
    ensure!(store.stray_records(CASE).await? == 0, "stray records");
    ensure!(v.records() == records, "{} records checked", v.records());
    let verify_secs = t.elapsed().as_secs_f64();
    let verify_peak = status_mib("VmHWM:");

    // The sealed form, page by page, as the seal writes it (without the seal record).
    reset_peak();
    let t = Instant::now();
    let (tmp, path) = (dir.join(".sealed.jsonl.tmp"), dir.join("sealed.jsonl"));
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let mut after = 0;
    loop {
        let page = store.events_page(CASE, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            out.write_all(jsonl_line(r).as_bytes())?;
        }
    }
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    let seal_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    // Not sealed, so the check ends in "without its seal" having checked every line.
    let checked = verify_sealed_from(BufReader::with_capacity(1 << 20, std::fs::File::open(&path)?));
    match checked {
        Err(e) if e.reason.contains("without its seal") && e.seq == records => {}
        other => bail!("the written log did not verify to its end: {other:?}"),
    }
    let sealed_verify_secs = t.elapsed().as_secs_f64();
    let seal_peak = status_mib("VmHWM:");
    std::fs::remove_file(&path)?;
    Ok(Run {
        verify_secs,
        page_ms,
        verify_peak,
        seal_secs,
        sealed_verify_secs,
        seal_peak,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn list(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
}

fn file_mib(p: &Path) -> f64 {
    std::fs::metadata(p).map(|m| m.len() as f64 / (1 << 20) as f64).unwrap_or(0.0)
}

fn directory_toml() -> String {
    format!(
        "[[group]]\nid = \"region-h-genetics\"\n\n[[department]]\nid = \"{DEPARTMENT}\"\nname = \"Klinisk Genetisk Afdeling\"\n\
         group = \"region-h-genetics\"\ntransfer_account = {TRANSFER_UID}\n"
    )
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;

    if let Some(dir) = &o.write_state {
        std::fs::create_dir_all(dir)?;
        let db = dir.join("workcopy.db");
        ensure!(!db.exists(), "{} exists already", db.display());
        let t = Instant::now();
        let store = rt.block_on(build(&db, o.records))?;
        rt.block_on(async { drop(store) });
        std::fs::write(dir.join("directory.toml"), directory_toml())?;
        eprintln!(
            "wrote {} ({} records of case {CASE}, {:.0} MiB) in {:.1} s",
            db.display(),
            o.records,
            file_mib(&db),
            t.elapsed().as_secs_f64()
        );
        return Ok(());
    }

    let tmp = tempfile::Builder::new().prefix("workcopy-bench-").tempdir()?;
    let db = tmp.path().join("bench.db");
    let t = Instant::now();
    let store = rt.block_on(build(&db, o.records))?;
    let build_secs = t.elapsed().as_secs_f64();
    let (db_mib, wal_mib) = (file_mib(&db), file_mib(&tmp.path().join("bench.db-wal")));
    let mut runs = Vec::new();
    for r in 0..o.runs {
        let run = rt.block_on(read_once(&store, tmp.path(), o.records))?;
        eprintln!(
            "  run {}: chain check {:.2} s (peak RSS {:.1} MiB), sealed form written {:.2} s and verified {:.2} s (peak RSS {:.1} MiB)",
            r + 1,
            run.verify_secs,
            run.verify_peak,
            run.seal_secs,
            run.sealed_verify_secs,
            run.seal_peak
        );
        runs.push(run);
    }
    rt.block_on(async { drop(store) });

    let col = |f: fn(&Run) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
    let pages: Vec<f64> = runs.iter().flat_map(|r| r.page_ms.iter().copied()).collect();
    let mut sorted = pages.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted
        .get(((sorted.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN);
    println!();
    println!(
        "workcopy case log benchmark{}",
        if o.bench {
            ""
        } else {
            " (smoke test: run with `cargo bench` to measure)"
        }
    );
    println!(
        "log        {} records of one case, built in {build_secs:.1} s; database {db_mib:.0} MiB, its -wal file {wal_mib:.0} MiB",
        o.records
    );
    println!("in process, median of {} run(s)           median   runs", o.runs);
    for (label, v, unit) in [
        ("chain check, pages of 1,000", col(|r| r.verify_secs), "s"),
        ("  peak RSS during it", col(|r| r.verify_peak), "MiB"),
        ("sealed form written (fsync)", col(|r| r.seal_secs), "s"),
        ("sealed form verified by line", col(|r| r.sealed_verify_secs), "s"),
        ("  peak RSS during both", col(|r| r.seal_peak), "MiB"),
    ] {
        println!("  {label:<34}{:>8.2} {unit:<4}{}", median(&v), list(&v));
    }
    println!(
        "  one page (events_page 1,000 + chain check): median {:.2} ms, p99 {p99:.2} ms over {} pages",
        median(&pages),
        pages.len()
    );
    Ok(())
}
