//! `workcopy case …`: open, approve (and wait for the export), reject,
//! confirm, close, list, show and log.

use super::args::CaseCmd;
use super::render::{self, print};
use super::{Cli, Daemon, Failure, call, reply};
use crate::control::proto::Request;
use crate::domain::case::CaseState;
use crate::domain::verify::RequestForm;
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::{Duration, Instant};

pub(super) fn run(cli: &Cli, cmd: &CaseCmd) -> Result<(), Failure> {
    match cmd {
        CaseCmd::Open {
            case_ref,
            requester,
            department,
            submitter,
            files_from,
            descriptors,
            json,
        } => {
            let all = descriptors_with(descriptors, files_from.as_deref())?;
            let form = RequestForm {
                requester: requester.clone(),
                department: department.clone(),
                submitter: submitter.clone(),
                descriptors: all,
            };
            let v = call(
                cli,
                &Request::CaseOpen {
                    case_ref: case_ref.clone(),
                    form,
                },
                reply::case,
            )?;
            if *json {
                print(|o| render::json(o, &v))?;
            } else {
                print(|o| render::report(o, &v))?;
            }
            if v.case.verified {
                Ok(())
            } else {
                Err(Failure::refused(format!(
                    "case {} registered but failed verification; it cannot be approved",
                    v.case.case_ref
                )))
            }
        }
        CaseCmd::Approve { case_ref, no_wait, host } => {
            let v = call(
                cli,
                &Request::CaseApprove {
                    case_ref: case_ref.clone(),
                    host: host.clone(),
                },
                reply::case,
            )?;
            if *no_wait {
                return print(|o| render::staging_started(o, &v.case.case_ref));
            }
            wait_for_export(cli, case_ref)
        }
        CaseCmd::Move { case_ref, to, no_wait } => {
            let v = call(
                cli,
                &Request::CaseMove {
                    case_ref: case_ref.clone(),
                    to: to.clone(),
                },
                reply::case,
            )?;
            if *no_wait || v.case.state != CaseState::Exported {
                return print(|o| render::moved(o, &v.case.case_ref, to));
            }
            wait_for_export(cli, case_ref)
        }
        CaseCmd::Reject { case_ref, reason } => {
            call(
                cli,
                &Request::CaseReject {
                    case_ref: case_ref.clone(),
                    reason: reason.clone(),
                },
                reply::done,
            )?;
            print(|o| render::rejected(o, case_ref))
        }
        CaseCmd::Confirm { case_ref, sha256sums } => {
            let sums = read_input(sha256sums)?;
            call(
                cli,
                &Request::CaseConfirm {
                    case_ref: case_ref.clone(),
                    sha256sums: sums,
                },
                reply::done,
            )?;
            print(|o| render::confirmed(o, case_ref))
        }
        CaseCmd::Close { case_ref, force, reason } => {
            call(
                cli,
                &Request::CaseClose {
                    case_ref: case_ref.clone(),
                    force: *force,
                    reason: reason.clone(),
                },
                reply::done,
            )?;
            print(|o| render::closed(o, case_ref))
        }
        CaseCmd::List { state, json } => {
            let cases = call(cli, &Request::CaseList { state: *state }, reply::cases)?;
            if *json {
                print(|o| render::json(o, &cases))
            } else {
                print(|o| render::cases(o, &cases))
            }
        }
        CaseCmd::Show { case_ref, json } => {
            let v = call(
                cli,
                &Request::CaseShow {
                    case_ref: case_ref.clone(),
                },
                reply::case,
            )?;
            if *json {
                print(|o| render::json(o, &v))
            } else {
                print(|o| render::case(o, &v))
            }
        }
        CaseCmd::Log {
            case_ref,
            since,
            limit,
            json,
        } => {
            let (records, next) = call(
                cli,
                &Request::CaseLog {
                    case_ref: case_ref.clone(),
                    since: *since,
                    limit: *limit,
                },
                reply::log,
            )?;
            if *json {
                print(|o| render::json(o, &records))?;
            } else {
                print(|o| render::log(o, &records))?;
            }
            if let Some(next) = next {
                render::log_next_page(case_ref, next, *limit, *json);
            }
            Ok(())
        }
    }
}

/// The descriptors given as arguments, then those of `--files-from` (one a
/// line; empty lines and `#` comments skipped).
pub(super) fn descriptors_with(args: &[String], files_from: Option<&Path>) -> Result<Vec<String>, Failure> {
    let mut all = args.to_vec();
    if let Some(p) = files_from {
        for line in read_input(p)?.lines() {
            let l = line.trim();
            if !l.is_empty() && !l.starts_with('#') {
                all.push(l.to_string());
            }
        }
    }
    Ok(all)
}

/// A file's text, or standard input's for `-`.
fn read_input(path: &Path) -> Result<String, Failure> {
    let mut s = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::refused(format!("cannot read stdin: {e}")))?;
    } else {
        s = std::fs::read_to_string(path).map_err(|e| Failure::refused(format!("cannot read {}: {e}", path.display())))?;
    }
    Ok(s)
}

/// Follows an approved case until its files are readable in the mount, with
/// a progress line on a terminal.
fn wait_for_export(cli: &Cli, case_ref: &str) -> Result<(), Failure> {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    // An approved case with no staging job running is stuck (the daemon
    // could not record the end of staging); say so instead of waiting forever.
    let mut idle_since: Option<Instant> = None;
    let mut daemon = Daemon::connect(cli)?;
    loop {
        let v = daemon.call(
            &Request::CaseShow {
                case_ref: case_ref.to_string(),
            },
            reply::case,
        )?;
        // The state and the mount are read one after the other: done only when both say so.
        let readable = v.case.state == CaseState::Exported && v.visible;
        match v.case.state {
            CaseState::Approved | CaseState::Exported if !readable => {
                if v.case.state == CaseState::Approved && v.staging.is_none() {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(30) {
                        return Err(Failure::refused(format!(
                            "case {case_ref} is approved but not being staged; see `workcopy case log {case_ref}` and the daemon's log (a restart of the daemon restarts staging)"
                        )));
                    }
                } else {
                    idle_since = None;
                }
                if let (true, Some((done, total))) = (tty, v.staging) {
                    render::progress(done, total, started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            CaseState::Exported => {
                if tty {
                    render::progress_end();
                }
                return print(|o| render::exported(o, case_ref, v.files.len()));
            }
            CaseState::Blocked => {
                if tty {
                    render::progress_end();
                }
                return Err(Failure::refused(format!(
                    "case {case_ref} blocked: {}",
                    v.blocked_reason.unwrap_or_else(|| "a file did not match the catalog".into())
                )));
            }
            s => return Err(Failure::refused(format!("case {case_ref} is {s}"))),
        }
    }
}
