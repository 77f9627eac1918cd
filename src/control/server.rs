//! The daemon's side of the control socket: one task per connection, the
//! caller identified from the socket's peer credentials. A bad frame or
//! message gets an error reply and closes that connection only.

use super::frame::{FrameError, encode, recv_with_fds};
use super::proto::{MAX_REQUEST, Refusal, RefusalKind, Request, Response};
use crate::domain::case::Role;
use crate::service::{Caller, Service};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

/// How long a connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(120);
/// At most this many descriptors are kept from one frame.
const MAX_FDS: usize = 1;

/// Binds the socket: removes a stale socket file, makes the parent
/// directory, and opens the file to everyone (authorization is by credentials).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use: is another workcopy daemon running?", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// At most this many connections are served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;

pub async fn run(listener: UnixListener, svc: Arc<Service>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Staff are never locked out by others' connections; everyone
                // else shares the slots.
                let staff = stream
                    .peer_cred()
                    .map(|c| svc.role(&caller_of(&stream, &c)) == Role::Staff)
                    .unwrap_or(false);
                let permit = if staff {
                    None
                } else {
                    match slots.clone().try_acquire_owned() {
                        Ok(p) => Some(p),
                        Err(_) => {
                            debug!("too many connections; closing a new one");
                            continue;
                        }
                    }
                };
                let svc = svc.clone();
                tokio::spawn(async move {
                    connection(stream, svc).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The peer's supplementary groups (SO_PEERGROUPS).
fn peer_groups(fd: RawFd) -> Vec<u32> {
    let mut groups = vec![0u32; 256];
    let mut len = (groups.len() * std::mem::size_of::<u32>()) as libc::socklen_t;
    // SAFETY: the buffer is valid for `len` bytes and the kernel writes at most that much.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Vec::new();
    }
    groups.truncate(len as usize / std::mem::size_of::<u32>());
    groups
}

fn caller_of(stream: &UnixStream, cred: &tokio::net::unix::UCred) -> Caller {
    Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().unwrap_or(0) as u32,
        groups: peer_groups(stream.as_raw_fd()),
    }
}

async fn connection(mut stream: UnixStream, svc: Arc<Service>) {
    let Ok(cred) = stream.peer_cred() else {
        return;
    };
    let caller = caller_of(&stream, &cred);
    // Anyone who is neither staff nor a transfer account gets one answer and
    // nothing else: no request is read, no memory is spent on it.
    if svc.role(&caller) == Role::Nobody {
        let _ = reply(&mut stream, &Err(svc.refuse_nobody(&caller))).await;
        return;
    }
    loop {
        let mut fds = Vec::new();
        let frame = match tokio::time::timeout(IDLE, read_frame(&stream, MAX_REQUEST, &mut fds)).await {
            Err(_) | Ok(Err(FrameError::Closed)) => return,
            Ok(Err(FrameError::TooLarge(n, max))) => {
                let _ = reply(
                    &mut stream,
                    &Err(Refusal::new(
                        RefusalKind::Invalid,
                        format!("request of {n} bytes exceeds the limit of {max}"),
                    )),
                )
                .await;
                return;
            }
            Ok(Err(FrameError::Io(e))) => {
                debug!(error = %e, "connection read failed");
                return;
            }
            Ok(Ok(f)) => f,
        };
        let request: Request = match std::str::from_utf8(&frame)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(t).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                warn!(uid = caller.uid, "malformed request");
                let _ = reply(
                    &mut stream,
                    &Err(Refusal::new(RefusalKind::Invalid, format!("malformed request: {e}"))),
                )
                .await;
                return;
            }
        };
        let response = svc.handle(&caller, request, fds).await;
        if reply(&mut stream, &response).await.is_err() {
            return;
        }
    }
}

async fn reply(stream: &mut UnixStream, response: &Response) -> std::io::Result<()> {
    let body = serde_json::to_vec(response).unwrap_or_else(|e| {
        serde_json::to_vec(&Response::Err(Refusal::new(
            RefusalKind::Internal,
            format!("cannot encode the reply: {e}"),
        )))
        .unwrap_or_default()
    });
    let body = if body.len() > super::proto::MAX_REPLY {
        serde_json::to_vec(&Response::Err(Refusal::new(
            RefusalKind::Internal,
            "the reply is too large; narrow the request",
        )))
        .unwrap_or_default()
    } else {
        body
    };
    stream.write_all(&encode(&body)).await
}

async fn read_exact(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<(), FrameError> {
    let mut off = 0;
    while off < buf.len() {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || recv_with_fds(stream.as_raw_fd(), &mut buf[off..], fds)) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => off += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        fds.truncate(MAX_FDS);
    }
    Ok(())
}

async fn read_frame(stream: &UnixStream, max: usize, fds: &mut Vec<OwnedFd>) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    read_exact(stream, &mut len, fds).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(FrameError::TooLarge(n, max));
    }
    let mut body = vec![0u8; n];
    read_exact(stream, &mut body, fds).await?;
    Ok(body)
}
