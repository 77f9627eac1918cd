//! `workcopy status`.

use super::args::JsonFlag;
use super::render::{self, print};
use super::{Cli, Failure, call, reply};
use crate::control::proto::Request;

pub(super) fn run(cli: &Cli, j: &JsonFlag) -> Result<(), Failure> {
    let s = call(cli, &Request::Status, reply::status)?;
    if j.json {
        print(|o| render::status_json(o, &s))
    } else {
        print(|o| render::status(o, &s))
    }
}
