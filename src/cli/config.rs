//! `workcopy reload` (through the daemon) and `workcopy config check` (on
//! its own): the directory read again, and the config and directory checked
//! before a start or a reload.

use super::render::{self, print};
use super::{Cli, Failure, call, load_config, reply};
use crate::control::proto::Request;
use std::path::Path;

pub(super) fn reload(cli: &Cli) -> Result<(), Failure> {
    let departments = call(cli, &Request::Reload, reply::reloaded)?;
    print(|o| render::reloaded(o, departments))
}

/// What `serve` checks at start, without starting: exit 78 when it would.
pub(super) fn check(cli: &Cli, directory: Option<&Path>) -> Result<(), Failure> {
    let cfg = load_config(cli).map_err(Failure::config)?;
    let directory = directory.unwrap_or(&cfg.directory);
    let setup = crate::daemon::check_setup(&cfg, directory).map_err(|e| Failure::config(format!("{e:#}")))?;
    print(|o| render::config_good(o, &cfg.source, directory, setup.directory.departments.len()))
}
