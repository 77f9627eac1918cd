//! `workcopy request …`: a requester's own requests (self-service): open,
//! list, show and cancel.

use super::args::RequestCmd;
use super::case::descriptors_with;
use super::render::{self, print};
use super::{Cli, Failure, call, reply};
use crate::control::proto::Request;

pub(super) fn run(cli: &Cli, cmd: &RequestCmd) -> Result<(), Failure> {
    match cmd {
        RequestCmd::Open {
            descriptors,
            case_ref,
            files_from,
            json,
        } => {
            let descriptors = descriptors_with(descriptors, files_from.as_deref())?;
            let v = call(
                cli,
                &Request::RequestOpen {
                    case_ref: case_ref.clone(),
                    descriptors,
                },
                reply::case,
            )?;
            if *json {
                print(|o| render::request_json(o, &v))?;
            } else {
                print(|o| render::request_report(o, &v))?;
            }
            if v.case.verified {
                Ok(())
            } else {
                Err(Failure::refused(format!(
                    "request {} registered but failed verification; it cannot be approved (cancel it with `workcopy request cancel {}`)",
                    v.case.case_ref, v.case.case_ref
                )))
            }
        }
        RequestCmd::List { json } => {
            let cases = call(cli, &Request::RequestList, reply::cases)?;
            if *json {
                print(|o| render::json(o, &cases))
            } else {
                print(|o| render::requests(o, &cases))
            }
        }
        RequestCmd::Show { case_ref, json } => {
            let v = call(
                cli,
                &Request::RequestShow {
                    case_ref: case_ref.clone(),
                },
                reply::case,
            )?;
            if *json {
                print(|o| render::request_json(o, &v))
            } else {
                print(|o| render::case(o, &v))
            }
        }
        RequestCmd::Cancel { case_ref, json } => {
            let v = call(
                cli,
                &Request::RequestCancel {
                    case_ref: case_ref.clone(),
                },
                reply::case,
            )?;
            if *json {
                print(|o| render::request_json(o, &v))
            } else {
                print(|o| render::cancelled(o, &v.case.case_ref))
            }
        }
    }
}
