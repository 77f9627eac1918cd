//! The command line writing into a pipe whose reader has gone
//! (`workcopy case list | grep -q X`, `workcopy completions bash | head -c1`):
//! it ends the way coreutils do, killed by SIGPIPE, with nothing on standard
//! error: no failure message and no panic.
//!
//! Needs neither root nor FUSE: `case list` talks to a stand-in daemon that
//! answers one request on a socket in a temporary directory.

use crate::common::BIN;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use workcopy::control::frame::encode;
use workcopy::control::proto::{Reply, Request, Response};

/// Runs workcopy with standard output a pipe whose reading end is already
/// closed, and asserts it died of SIGPIPE without a word on standard error.
fn assert_ends_quietly_into_a_closed_pipe(args: &[&str]) {
    let (reader, writer) = match nix::unistd::pipe() {
        Ok(p) => p,
        Err(e) => panic!("pipe: {e}"),
    };
    drop(reader);
    let child = Command::new(BIN)
        .args(args)
        .env_remove("WORKCOPY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn();
    let out = match child.and_then(|c| c.wait_with_output()) {
        Ok(o) => o,
        Err(e) => panic!("cannot run {BIN}: {e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "workcopy {args:?} into a closed pipe: {}, stderr: {stderr}",
        out.status
    );
    assert_eq!(stderr, "", "workcopy {args:?} into a closed pipe wrote to stderr");
}

/// A stand-in daemon: answers the first request on `socket` with `reply`,
/// after checking it is `expected`.
fn answer_once(socket: &Path, expected: Request, reply: Reply) {
    let listener = match UnixListener::bind(socket) {
        Ok(l) => l,
        Err(e) => panic!("bind {}: {e}", socket.display()),
    };
    // Not joined: should the CLI never connect, the assertion on its exit fails first.
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else { return };
        let mut len = [0u8; 4];
        let mut body = Vec::new();
        if conn.read_exact(&mut len).is_ok() {
            body.resize(u32::from_be_bytes(len) as usize, 0);
            let _ = conn.read_exact(&mut body);
        }
        let request: Option<Request> = serde_json::from_slice(&body).ok();
        let response: Response = if request.as_ref() == Some(&expected) {
            Ok(reply)
        } else {
            Err(workcopy::control::proto::Refusal::new(
                workcopy::control::proto::RefusalKind::Internal,
                format!("the stand-in daemon expected {expected:?}, got {request:?}"),
            ))
        };
        let _ = conn.write_all(&encode(&serde_json::to_vec(&response).unwrap_or_default()));
    });
}

#[test]
fn case_list_into_a_closed_pipe() {
    for json in [false, true] {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        let socket = dir.path().join("control.sock");
        answer_once(&socket, Request::CaseList { state: None }, Reply::Cases { cases: Vec::new() });
        let socket = socket.to_string_lossy().into_owned();
        let mut args = vec!["--socket", &socket, "case", "list"];
        if json {
            args.push("--json");
        }
        assert_ends_quietly_into_a_closed_pipe(&args);
    }
}

#[test]
fn completions_and_man_into_a_closed_pipe() {
    assert_ends_quietly_into_a_closed_pipe(&["completions", "bash"]);
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    };
    let man = dir.path().join("man1");
    assert_ends_quietly_into_a_closed_pipe(&["man", &man.to_string_lossy()]);
    assert!(man.join("workcopy.1").is_file(), "the manual pages were written before the message");
}
