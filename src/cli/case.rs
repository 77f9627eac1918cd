//! `workcopy case …`: open, approve (and wait for the export), reject,
//! confirm, close, list, show and log.

use super::args::CaseCmd;
use super::render::{print_case, print_json, print_report, print_table, progress_line};
use super::{Cli, Daemon, Failure, call, reply};
use crate::control::proto::Request;
use crate::domain::case::CaseState;
use crate::domain::verify::RequestForm;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

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
            let mut all = descriptors.clone();
            if let Some(p) = files_from {
                for line in read_input(p)?.lines() {
                    let l = line.trim();
                    if !l.is_empty() && !l.starts_with('#') {
                        all.push(l.to_string());
                    }
                }
            }
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
                print_json(&v)?;
            } else {
                print_report(&v);
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
        CaseCmd::Approve { case_ref, no_wait } => {
            let v = call(
                cli,
                &Request::CaseApprove {
                    case_ref: case_ref.clone(),
                },
                reply::case,
            )?;
            if *no_wait {
                println!("case {} approved; staging started", v.case.case_ref);
                return Ok(());
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
            println!("case {case_ref} rejected; its log is sealed");
            Ok(())
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
            println!("case {case_ref}: receipt confirmed, every file matched");
            Ok(())
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
            println!("case {case_ref} closed: removed from the mount, staging deleted, log sealed");
            Ok(())
        }
        CaseCmd::List { state, json } => {
            let cases = call(cli, &Request::CaseList { state: *state }, reply::cases)?;
            if *json {
                return print_json(&cases);
            }
            let rows: Vec<Vec<String>> = cases
                .iter()
                .map(|c| {
                    vec![
                        c.case_ref.clone(),
                        c.state.to_string(),
                        c.department.clone().unwrap_or_else(|| "-".into()),
                        c.requester.clone(),
                        c.created_at.clone(),
                    ]
                })
                .collect();
            print_table(&["REF", "STATE", "DEPARTMENT", "REQUESTER", "OPENED"], &rows);
            Ok(())
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
                return print_json(&v);
            }
            print_case(&v);
            Ok(())
        }
        CaseCmd::Log { case_ref, json } => {
            let records = call(
                cli,
                &Request::CaseLog {
                    case_ref: case_ref.clone(),
                },
                reply::log,
            )?;
            if *json {
                return print_json(&records);
            }
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    vec![
                        r.seq.to_string(),
                        r.at.clone(),
                        format!("{} ({})", r.actor, r.uid),
                        r.event.clone(),
                        r.details.to_string(),
                    ]
                })
                .collect();
            print_table(&["#", "TIME", "ACTOR", "EVENT", "DETAILS"], &rows);
            Ok(())
        }
    }
}

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
                    eprint!("\r{}", progress_line(done, total, started.elapsed()));
                    let _ = std::io::stderr().flush();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            CaseState::Exported => {
                if tty {
                    eprintln!();
                }
                println!("case {case_ref} exported: {} file(s) readable in the mount", v.files.len());
                return Ok(());
            }
            CaseState::Blocked => {
                if tty {
                    eprintln!();
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
