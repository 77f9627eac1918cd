//! `workcopy audit verify`: every case log through the daemon, or one sealed
//! log file on its own.

use super::render::{self, print};
use super::{Cli, Failure, call, reply};
use crate::control::proto::Request;
use std::path::Path;

/// Checks one sealed case log file, line by line; needs no daemon.
pub(super) fn verify_file(path: &Path, json: bool) -> Result<(), Failure> {
    let file = std::fs::File::open(path).map_err(|e| Failure::refused(format!("cannot read {}: {e}", path.display())))?;
    match crate::audit::verify_sealed_from(std::io::BufReader::with_capacity(1 << 20, file)) {
        Ok(crate::audit::SealedLog { case_ref, records: n, .. }) => {
            if json {
                print(|o| render::json(o, &serde_json::json!({"ok": true, "case": case_ref, "records": n})))
            } else {
                print(|o| render::sealed_log_intact(o, &case_ref, n))
            }
        }
        Err(e) => Err(Failure::refused(format!("{}: {e}", path.display()))),
    }
}

pub(super) fn verify(cli: &Cli, json: bool) -> Result<(), Failure> {
    let a = call(cli, &Request::AuditVerify, reply::audit)?;
    if json {
        print(|o| render::json(o, &a))?;
    } else if a.failures.is_empty() {
        print(|o| render::audit_intact(o, &a))?;
    }
    if a.failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::refused(format!(
            "{} case log(s) failed verification:\n  {}",
            a.failures.len(),
            a.failures.join("\n  ")
        )))
    }
}
