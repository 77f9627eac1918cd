//! `workcopy catalog import` and `workcopy catalog show`.

use super::render::{print_json, print_table};
use super::{Cli, Daemon, Failure, call, reply};
use crate::control::proto::Request;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

pub(super) fn import(cli: &Cli, file: &Path) -> Result<(), Failure> {
    let f = std::fs::File::open(file).map_err(|e| Failure::refused(format!("cannot open {}: {e}", file.display())))?;
    let mut daemon = Daemon::connect(cli)?;
    let started = Instant::now();
    let s = daemon.call_with_fds(&Request::CatalogImport, &[f.as_raw_fd()], reply::imported)?;
    println!(
        "imported {} rows in {:.1}s: {} added, {} updated, {} unchanged; the catalog holds {} files",
        s.rows,
        started.elapsed().as_secs_f64(),
        s.added,
        s.updated,
        s.unchanged,
        s.catalog_files
    );
    Ok(())
}

pub(super) fn show(cli: &Cli, descriptor: &str, json: bool) -> Result<(), Failure> {
    let files = call(
        cli,
        &Request::CatalogShow {
            descriptor: descriptor.to_string(),
        },
        reply::files,
    )?;
    if json {
        return print_json(&files);
    }
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                f.file_id.to_string(),
                f.department.to_string(),
                f.size.to_string(),
                f.submitted_at(),
                f.path.to_string(),
                f.sha256.clone(),
            ]
        })
        .collect();
    print_table(&["FILE_ID", "DEPARTMENT", "SIZE", "SUBMITTED", "PATH", "SHA256"], &rows);
    if files.len() > 1 {
        println!(
            "{} files match {descriptor:?}: a request must name one of them by file_id or path",
            files.len()
        );
    }
    Ok(())
}
