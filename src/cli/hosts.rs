//! `workcopy hosts` and `workcopy host retire`.

use super::render::{self, json, print};
use super::{Cli, Failure, call, reply};
use crate::control::proto::Request;
use std::io::Write as _;

pub(super) fn list(cli: &Cli, as_json: bool) -> Result<(), Failure> {
    let hosts = call(cli, &Request::Hosts, reply::hosts)?;
    if as_json {
        print(|o| json(o, &hosts))
    } else {
        print(|o| render::hosts(o, &hosts))
    }
}

pub(super) fn retire(cli: &Cli, host: &str, reason: &str) -> Result<(), Failure> {
    let req = Request::HostRetire {
        host: host.to_string(),
        reason: reason.to_string(),
    };
    let host = call(cli, &req, reply::retired)?;
    print(|o| {
        writeln!(
            o,
            "host {host} retired; move its live cases with `workcopy case move REF --to HOST`"
        )
    })
}
