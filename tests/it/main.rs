//! workcopy's integration tests, as one test binary so the shared harness
//! (`common`) compiles once. Each module drives the real binary: the case
//! register over the control socket (`register`), the export mount through
//! the kernel (`mount`), the regional pull over OpenSSH (`regional`), the
//! service as systemd runs it (`systemd`) and the shipped unit under the real
//! systemd booted as PID 1 in private namespaces (`systemd_boot`); hostile
//! local accounts (`abuse`); a full disk, an unwritable database and damaged
//! staged copies (`faults`); requesters asking for their own group's files
//! (`selfservice`); the CLI's output against checked-in snapshots
//! (`snapshot`) and into a closed pipe (`cli_pipe`); the event feed (`feed`)
//! and the support-system script that follows it (`notify`); the metrics and
//! the alert rules, through Prometheus' `promtool` (`metrics`).
//!
//! Run one family with a filter, e.g. `cargo test --test it register::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod abuse;
mod cli_pipe;
mod common;
mod faults;
mod feed;
mod hosts;
mod metrics;
mod mount;
mod notify;
#[path = "../../src/db/pg_test_server.rs"]
mod pg;
mod regional;
mod register;
mod selfservice;
mod snapshot;
mod systemd;
mod systemd_boot;
