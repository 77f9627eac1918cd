//! The `workcopy` command line. Every command but `serve` (and `audit verify
//! --file`, `completions` and `man`) talks to the daemon over the control
//! socket. The clap definitions are in `args`, each command family has a
//! module of its own, and `render` writes everything the user reads.

mod args;
mod audit;
mod case;
mod catalog;
mod config;
mod docs;
mod events;
mod hosts;
mod metrics;
mod render;
mod request;
mod status;

pub use args::Cli;

use crate::config::Config;
use crate::control::client::{Client, ClientError};
use crate::control::proto::{Refusal, Reply, Request};
use args::{AuditCmd, CatalogCmd, Command, ConfigCmd, HostCmd};
use clap::Parser;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::ExitCode;

/// Why a command failed.
enum Failure {
    /// Said on standard error; the command exits with `code`.
    Failed { code: u8, message: String },
    /// Standard output's reader has gone (`| head`, `| grep -q`): nobody is
    /// left to tell, and the command ends the way coreutils do, by SIGPIPE.
    ReaderGone,
}

impl Failure {
    fn refused(m: impl Into<String>) -> Failure {
        Failure::Failed {
            code: 1,
            message: m.into(),
        }
    }

    /// The config or the directory is wrong (`serve` at start, `config check`).
    fn config(f: impl Into<Failure>) -> Failure {
        match f.into() {
            Failure::Failed { message, .. } => Failure::Failed {
                code: crate::daemon::EX_CONFIG,
                message,
            },
            other => other,
        }
    }

    /// A write to standard output failed.
    fn output(e: std::io::Error) -> Failure {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::ReaderGone
        } else {
            Failure::refused(format!("cannot write the output: {e}"))
        }
    }
}

impl From<String> for Failure {
    fn from(m: String) -> Failure {
        Failure::refused(m)
    }
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Failure {
        Failure::refused(r.message)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let code = if matches!(e, ClientError::Connect { .. }) { 3 } else { 1 };
        Failure::Failed {
            code,
            message: e.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::refused(format!("{e:#}"))
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Failed { code, message }) => {
            render::failure(&message);
            ExitCode::from(code)
        }
        Err(Failure::ReaderGone) => end_by_sigpipe(),
    }
}

/// Ends the process as a write to a closed pipe ends coreutils: killed by
/// SIGPIPE (the Rust runtime ignores it so that writes fail with EPIPE; only
/// the command line chooses to die of it, the daemon never does).
fn end_by_sigpipe() -> ExitCode {
    use nix::sys::signal::{SigHandler, Signal, raise, signal};
    // SAFETY: installs the default disposition; no handler of ours runs.
    if unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.is_ok() {
        let _ = raise(Signal::SIGPIPE);
    }
    // Still alive: SIGPIPE is blocked. Exit with the status a shell shows for it.
    ExitCode::from(128 + Signal::SIGPIPE as u8)
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    Config::load(&Config::locate(cli.config.as_deref())).map_err(|e| Failure::refused(e.to_string()))
}

fn socket_path(cli: &Cli) -> Result<PathBuf, Failure> {
    match &cli.socket {
        Some(s) => Ok(s.clone()),
        None => Ok(load_config(cli)?.socket),
    }
}

/// A connection to the daemon whose replies come back typed.
struct Daemon(Client);

impl Daemon {
    fn connect(cli: &Cli) -> Result<Daemon, Failure> {
        Ok(Daemon(Client::connect(&socket_path(cli)?)?))
    }

    /// Sends `req` and takes the reply it expects out with `extract` (one of [`reply`]'s functions).
    fn call<T>(&mut self, req: &Request, extract: fn(Reply) -> Option<T>) -> Result<T, Failure> {
        self.call_with_fds(req, &[], extract)
    }

    /// [`Daemon::call`] with file descriptors passed beside the request.
    fn call_with_fds<T>(&mut self, req: &Request, fds: &[RawFd], extract: fn(Reply) -> Option<T>) -> Result<T, Failure> {
        let reply = self.0.call_with_fds(req, fds)??;
        extract(reply).ok_or_else(|| Failure::refused("the daemon sent an unexpected reply (are the CLI and daemon the same version?)"))
    }
}

/// One request on a connection of its own.
fn call<T>(cli: &Cli, req: &Request, extract: fn(Reply) -> Option<T>) -> Result<T, Failure> {
    Daemon::connect(cli)?.call(req, extract)
}

/// What each request expects back: `None` for any other reply.
mod reply {
    use crate::audit::EventRecord;
    use crate::control::proto::{AuditReport, CaseView, Reply, StatusReply};
    use crate::domain::case::CaseRecord;
    use crate::domain::catalog::{CatalogFile, ImportSummary};

    /// Requests whose reply is not shown: any reply means done.
    pub(super) fn done(_: Reply) -> Option<()> {
        Some(())
    }

    pub(super) fn status(r: Reply) -> Option<StatusReply> {
        match r {
            Reply::Status(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn imported(r: Reply) -> Option<ImportSummary> {
        match r {
            Reply::Imported(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn files(r: Reply) -> Option<Vec<CatalogFile>> {
        match r {
            Reply::Files { files } => Some(files),
            _ => None,
        }
    }

    pub(super) fn case(r: Reply) -> Option<Box<CaseView>> {
        match r {
            Reply::Case(v) => Some(v),
            _ => None,
        }
    }

    pub(super) fn cases(r: Reply) -> Option<Vec<CaseRecord>> {
        match r {
            Reply::Cases { cases } => Some(cases),
            _ => None,
        }
    }

    /// A page of records, and the `--since` of the next page when more follow.
    pub(super) fn log(r: Reply) -> Option<(Vec<EventRecord>, Option<u64>)> {
        match r {
            Reply::Log { records, next } => Some((records, next)),
            _ => None,
        }
    }

    pub(super) fn audit(r: Reply) -> Option<AuditReport> {
        match r {
            Reply::Audit(a) => Some(a),
            _ => None,
        }
    }

    /// `catalog search`: the files, and whether more matched.
    pub(super) fn found(r: Reply) -> Option<(Vec<crate::domain::search::SearchHit>, bool)> {
        match r {
            Reply::Found { files, more } => Some((files, more)),
            _ => None,
        }
    }

    pub(super) fn hosts(r: Reply) -> Option<Vec<crate::control::proto::HostView>> {
        match r {
            Reply::Hosts { hosts } => Some(hosts),
            _ => None,
        }
    }

    pub(super) fn retired(r: Reply) -> Option<String> {
        match r {
            Reply::Retired { host } => Some(host),
            _ => None,
        }
    }

    pub(super) fn reloaded(r: Reply) -> Option<usize> {
        match r {
            Reply::Reloaded { departments } => Some(departments),
            _ => None,
        }
    }

    pub(super) fn metrics(r: Reply) -> Option<Box<crate::control::proto::MetricsReply>> {
        match r {
            Reply::Metrics(m) => Some(m),
            _ => None,
        }
    }

    /// A frame of the feed, and whether more frames follow.
    pub(super) fn events(r: Reply) -> Option<(Vec<crate::db::FeedRecord>, bool)> {
        match r {
            Reply::Events { records, more } => Some((records, more)),
            _ => None,
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Serve => {
            let cfg = load_config(&cli).map_err(Failure::config)?;
            crate::daemon::run_serve(cfg, cli.verbose).map_err(|e| match e {
                crate::daemon::ServeError::Config(e) => Failure::config(format!("{e:#}")),
                crate::daemon::ServeError::Failed(e) => Failure::from(e),
            })
        }
        Command::Status(j) => status::run(&cli, j),
        Command::Catalog(CatalogCmd::Import { file }) => catalog::import(&cli, file),
        Command::Catalog(CatalogCmd::Show { descriptor, json }) => catalog::show(&cli, descriptor, *json),
        Command::Catalog(CatalogCmd::Search {
            pattern,
            sample,
            since,
            json,
        }) => catalog::search(&cli, pattern.clone(), sample.clone(), since.clone(), *json),
        Command::Case(cmd) => case::run(&cli, cmd),
        Command::Request(cmd) => request::run(&cli, cmd),
        Command::Completions { shell } => docs::completions(*shell),
        Command::Man { dir } => docs::man(dir),
        Command::Audit(AuditCmd::Verify { file: Some(path), json }) => audit::verify_file(path, *json),
        Command::Audit(AuditCmd::Verify { file: None, json }) => audit::verify(&cli, *json),
        Command::Events { since, follow, json } => events::run(&cli, *since, *follow, *json),
        Command::Metrics { output } => metrics::run(&cli, output.as_deref()),
        Command::Reload => config::reload(&cli),
        Command::Config(ConfigCmd::Check { directory }) => config::check(&cli, directory.as_deref()),
        Command::Hosts(j) => hosts::list(&cli, j.json),
        Command::Host(HostCmd::Retire { host, reason }) => hosts::retire(&cli, host, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn a_reader_that_went_away_is_no_error_message() {
        assert!(matches!(
            Failure::output(io::Error::from(io::ErrorKind::BrokenPipe)),
            Failure::ReaderGone
        ));
        assert!(matches!(
            Failure::output(io::Error::from_raw_os_error(libc::ENOSPC)),
            Failure::Failed { code: 1, .. }
        ));
    }
}
