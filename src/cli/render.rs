//! Human output: tables, the verification report, the case view, the staging
//! progress line and byte sizes; JSON output.

use super::Failure;
use crate::control::proto::CaseView;
use crate::db::CaseRecord;
use std::time::Duration;

pub(super) fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Failure::refused(e.to_string()))?;
    println!("{s}");
    Ok(())
}

pub(super) fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub(super) fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let eta = if rate > 0.0 && total > done {
        format!("{:.0}s", (total - done) as f64 / rate)
    } else {
        "-".into()
    };
    let pct = if total > 0 { done as f64 * 100.0 / total as f64 } else { 100.0 };
    format!(
        "staging {pct:5.1}%  {} of {}  {}/s  ETA {eta}   ",
        human(done as f64),
        human(total as f64),
        human(rate)
    )
}

pub(super) fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(c);
            if i + 1 < n {
                s.push_str(&" ".repeat(w[i].saturating_sub(c.chars().count()) + 2));
            }
        }
        println!("{s}");
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub(super) fn print_report(v: &CaseView) {
    let c = &v.case;
    println!(
        "case {} ({}), requester {}, department {}",
        c.case_ref,
        c.state,
        c.requester,
        c.department.as_deref().unwrap_or("-")
    );
    for p in &c.report.problems {
        println!("REFUSED   request: {p}");
    }
    for l in &c.report.lines {
        println!("{}", l.describe());
    }
    println!(
        "{}",
        if c.verified {
            "verified: every file may be delivered; approve with `workcopy case approve`"
        } else {
            "NOT verified"
        }
    );
}

pub(super) fn print_case(v: &CaseView) {
    let c: &CaseRecord = &v.case;
    println!("case        {}", c.case_ref);
    println!("state       {}", c.state);
    println!("requester   {}", c.requester);
    println!("department  {}", c.department.as_deref().unwrap_or("-"));
    if let Some(s) = &c.submitter {
        println!("submitter   {s}");
    }
    println!("opened      {}", c.created_at);
    println!("verified    {}", if c.verified { "yes" } else { "no" });
    if let Some((done, total)) = v.staging {
        println!("staging     {} of {}", human(done as f64), human(total as f64));
    }
    if let Some(r) = &v.blocked_reason {
        println!("blocked     {r}");
    }
    println!("log         {} records", c.event_count);
    if !v.files.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = v
            .files
            .iter()
            .map(|f| {
                vec![
                    f.export_name.clone(),
                    f.file.file_id.to_string(),
                    f.file.size.to_string(),
                    f.file.sha256.clone(),
                ]
            })
            .collect();
        print_table(&["NAME", "FILE_ID", "SIZE", "SHA256"], &rows);
    }
    if !c.report.lines.is_empty() || !c.report.problems.is_empty() {
        println!("\nverification report:");
        for p in &c.report.problems {
            println!("REFUSED   request: {p}");
        }
        for l in &c.report.lines {
            println!("{}", l.describe());
        }
    }
}
