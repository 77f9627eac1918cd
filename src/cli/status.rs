//! `workcopy status`.

use super::args::JsonFlag;
use super::render::print_json;
use super::{Cli, Failure, call, reply};
use crate::control::proto::Request;

pub(super) fn run(cli: &Cli, j: &JsonFlag) -> Result<(), Failure> {
    let s = call(cli, &Request::Status, reply::status)?;
    if j.json {
        return print_json(&s);
    }
    println!("workcopy {}", s.version);
    println!(
        "mount       {} ({})",
        s.mount_point,
        if s.mounted { "mounted" } else { "not mounted" }
    );
    println!("mode        {}", s.mode);
    println!("read path   {}", s.read_path);
    println!("catalog     {} files", s.catalog_files);
    println!("directory   {} departments", s.directory_departments);
    let counted = if s.read_path.contains("passthrough") {
        " (reads the kernel passes through are not counted)"
    } else {
        ""
    };
    println!("served      {} bytes{counted}", s.bytes_served);
    println!("pulls       {} case file(s) open now", s.pulls_in_progress);
    println!(
        "cases       {}",
        s.cases.iter().map(|(st, n)| format!("{st} {n}")).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
