//! `workcopy catalog import`, `workcopy catalog show` and `workcopy catalog search`.

use super::render::{self, print};
use super::{Cli, Daemon, Failure, call, reply};
use crate::control::proto::Request;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

/// Passes the open catalog file to the daemon, which reads it itself.
pub(super) fn import(cli: &Cli, file: &Path) -> Result<(), Failure> {
    let f = std::fs::File::open(file).map_err(|e| Failure::refused(format!("cannot open {}: {e}", file.display())))?;
    let mut daemon = Daemon::connect(cli)?;
    let started = Instant::now();
    let s = daemon.call_with_fds(&Request::CatalogImport, &[f.as_raw_fd()], reply::imported)?;
    print(|o| render::imported(o, &s, started.elapsed()))
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
        print(|o| render::json(o, &files))
    } else {
        print(|o| render::catalog_files(o, &files, descriptor))
    }
}

pub(super) fn search(cli: &Cli, pattern: Option<String>, sample: Option<String>, since: Option<String>, json: bool) -> Result<(), Failure> {
    let (files, more) = call(cli, &Request::CatalogSearch { pattern, sample, since }, reply::found)?;
    if json {
        print(|o| render::search_json(o, &files, more))
    } else {
        print(|o| render::search_hits(o, &files))?;
        if more {
            render::more_matched(files.len());
        }
        Ok(())
    }
}
