//! The daemon's side of the control socket: one task per connection, the
//! caller identified from the socket's peer credentials. A bad frame or
//! message gets an error reply and closes that connection only.

use super::frame::{FrameError, MAX_FDS, encode, recv_with_fds};
use super::proto::{MAX_REQUEST, Refusal, RefusalKind, Reply, Request, Response};
use crate::domain::case::Role;
use crate::service::{Caller, Service};
use crate::sync::Cancel;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

/// How long a connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(120);
/// How long a reply may take to be written: a client that does not read
/// gives its connection up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a feed follower with nothing new looks at the feed anyway,
/// should a prompt of the store's have been missed.
const FEED_RECHECK: Duration = Duration::from_secs(60);

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

/// Non-staff connections served at once, in all.
const MAX_CONNECTIONS: usize = 256;
/// Non-staff connections served at once for one uid, so no account can take
/// the socket from the others (the ssh gate needs one per pull).
const MAX_CONNECTIONS_PER_UID: usize = 16;

/// Who holds how many of the non-staff connection slots.
#[derive(Debug, Default)]
pub struct ConnectionLimits {
    per_uid: std::sync::Mutex<std::collections::HashMap<u32, usize>>,
    total: std::sync::atomic::AtomicUsize,
}

/// One slot of [`ConnectionLimits`], given back when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    uid: u32,
}

impl ConnectionLimits {
    /// A slot for `uid`, or `None` when it or everyone together holds the most allowed.
    pub fn acquire(self: &Arc<Self>, uid: u32, per_uid: usize, total: usize) -> Option<Slot> {
        use std::sync::atomic::Ordering;
        let mut map = crate::sync::lock(&self.per_uid);
        let held = map.get(&uid).copied().unwrap_or(0);
        if held >= per_uid || self.total.load(Ordering::Relaxed) >= total {
            return None;
        }
        map.insert(uid, held + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Slot { limits: self.clone(), uid })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = crate::sync::lock(&self.limits.per_uid);
        if let Some(n) = map.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.uid);
            }
        }
        self.limits.total.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub async fn run(listener: UnixListener, svc: Arc<Service>) {
    let limits = Arc::new(ConnectionLimits::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(cred) = stream.peer_cred() else {
                    discard_stream(stream);
                    continue;
                };
                // Staff are never locked out by others' connections; everyone
                // else has a share of their own and of the slots in all.
                let staff = svc.role(&caller_of(&stream, &cred)) == Role::Staff;
                let slot = if staff {
                    None
                } else {
                    match limits.acquire(cred.uid(), MAX_CONNECTIONS_PER_UID, MAX_CONNECTIONS) {
                        Some(s) => Some(s),
                        None => {
                            warn!(uid = cred.uid(), "too many connections from this uid; closing a new one");
                            svc.counters.connection_refused();
                            discard_stream(stream);
                            continue;
                        }
                    }
                };
                let svc = svc.clone();
                tokio::spawn(async move {
                    connection(stream, svc).await;
                    drop(slot);
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

/// Closes what a peer may control — its connection (with any descriptors
/// still queued on it) and the descriptors it passed — on a thread of its
/// own: closing a descriptor can block (a socket set to linger, a FUSE file
/// whose server does not answer), and the async workers must never wait on
/// a peer's whim.
fn discard<T: Send + 'static>(item: T) {
    type Item = Box<dyn Send>;
    static CLOSER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Item>>> = std::sync::OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Item>();
        std::thread::Builder::new()
            .name("workcopy-closer".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
    match closer {
        Some(tx) => {
            if let Err(e) = tx.send(Box::new(item)) {
                drop(e.0);
            }
        }
        None => drop(item),
    }
}

fn discard_stream(stream: UnixStream) {
    match stream.into_std() {
        Ok(s) => discard(s),
        Err(e) => debug!(error = %e, "cannot detach a connection from the runtime"),
    }
}

async fn connection(mut stream: UnixStream, svc: Arc<Service>) {
    let mut received = Vec::new();
    converse(&mut stream, &svc, &mut received).await;
    discard(received);
    discard_stream(stream);
}

/// Serves one connection's requests. Descriptors the peer passed are left in
/// `received` (for [`discard`]) unless a staff request takes them.
async fn converse(stream: &mut UnixStream, svc: &Arc<Service>, received: &mut Vec<OwnedFd>) {
    let Ok(cred) = stream.peer_cred() else {
        return;
    };
    let caller = caller_of(stream, &cred);
    // Anyone who is neither staff nor a transfer account gets one answer and
    // nothing else: no request is read, no memory is spent on it.
    if svc.role(&caller) == Role::Nobody {
        let _ = reply(stream, &Err(refused(svc, svc.refuse_nobody(&caller)))).await;
        return;
    }
    loop {
        discard(std::mem::take(received));
        let frame = match tokio::time::timeout(IDLE, read_frame(stream, MAX_REQUEST, received)).await {
            Err(_) | Ok(Err(FrameError::Closed)) => return,
            Ok(Err(FrameError::TooLarge(n, max))) => {
                let refusal = Refusal::new(RefusalKind::Invalid, format!("request of {n} bytes exceeds the limit of {max}"));
                let _ = reply(stream, &Err(refused(svc, refusal))).await;
                return;
            }
            Ok(Err(FrameError::TooManyFds)) => {
                warn!(uid = caller.uid, "request with too many file descriptors refused");
                let refusal = Refusal::new(RefusalKind::Invalid, FrameError::TooManyFds.to_string());
                let _ = reply(stream, &Err(refused(svc, refusal))).await;
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
                let refusal = Refusal::new(RefusalKind::Invalid, format!("malformed request: {e}"));
                let _ = reply(stream, &Err(refused(svc, refusal))).await;
                return;
            }
        };
        if let Request::Events { since, follow } = request {
            match stream_events(stream, svc, &caller, since, follow).await {
                Ok(()) => continue,
                Err(e) => {
                    debug!(uid = caller.uid, error = %e, "feed reader gone");
                    return;
                }
            }
        }
        // The request runs to its end (a half-done state change is worse than
        // a wasted one), but long work stops when the client hangs up.
        let cancel = Cancel::default();
        // Only a staff catalog import takes a descriptor (a file it reads on a
        // blocking thread); everyone else's go to `discard`.
        let fds = if matches!(request, Request::CatalogImport) && svc.role(&caller) == Role::Staff {
            std::mem::take(received)
        } else {
            Vec::new()
        };
        let handling = svc.handle(&caller, request, fds, &cancel);
        tokio::pin!(handling);
        let mut watching = true;
        let response = loop {
            tokio::select! {
                r = &mut handling => break r,
                _ = peer_gone(stream), if watching => {
                    info!(uid = caller.uid, "client hung up; stopping its request's long work");
                    cancel.cancel();
                    watching = false;
                }
            }
        };
        if reply(stream, &response).await.is_err() {
            return;
        }
    }
}

/// A refusal the server itself sends, counted for `metrics` like the service's.
fn refused(svc: &Service, refusal: Refusal) -> Refusal {
    svc.counters.refused(refusal.kind);
    refusal
}

/// Streams the feed after `since` as [`Reply::Events`] frames. Without
/// `follow` it ends with the frame that reaches the head read at the start
/// (`more: false`), and the connection takes the next request; with
/// `follow` it goes on as records commit, until the client hangs up (`Err`).
///
/// Bounded: one frame at a time is read from the store and written, so a
/// client that reads slowly holds the stream back, and one that stops
/// reading loses its connection after [`WRITE_TIMEOUT`]. While there is
/// nothing to send, no write is pending and the follower may wait for ever.
async fn stream_events(stream: &mut UnixStream, svc: &Arc<Service>, caller: &Caller, since: u64, follow: bool) -> std::io::Result<()> {
    // Marked seen before each read of the feed, so no commit falls between
    // an empty page and the wait.
    let mut prompt = svc.store().committed();
    prompt.borrow_and_update();
    let end = match svc.open_feed(caller, since, follow).await {
        Ok(head) => head,
        Err(refusal) => return reply(stream, &Err(refusal)).await,
    };
    let mut after = since;
    loop {
        prompt.borrow_and_update();
        let records = match svc.feed_frame(after).await {
            Ok(r) => r,
            Err(refusal) => return reply(stream, &Err(refusal)).await,
        };
        if let Some(last) = records.last() {
            after = last.feed_seq;
        }
        let caught_up = records.is_empty();
        let done = !follow && (caught_up || after >= end);
        if !caught_up || done {
            reply(stream, &Ok(Reply::Events { records, more: !done })).await?;
        }
        if done {
            return Ok(());
        }
        if !caught_up {
            continue;
        }
        tokio::select! {
            changed = prompt.changed() => {
                if changed.is_err() {
                    return Err(std::io::Error::other("the store closed"));
                }
            }
            _ = peer_gone(stream) => return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
            _ = tokio::time::sleep(FEED_RECHECK) => {}
        }
    }
}

/// Returns when the peer has closed its end (its request is still being
/// answered). A client that sends more meanwhile is not watched further.
async fn peer_gone(stream: &UnixStream) {
    loop {
        if stream.readable().await.is_err() {
            return;
        }
        let mut b = [0u8; 1];
        let peeked = stream.try_io(Interest::READABLE, || {
            // SAFETY: reads at most one byte into `b`, which outlives the call.
            let n = unsafe { libc::recv(stream.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match peeked {
            Ok(0) => return,
            Ok(_) => std::future::pending::<()>().await,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
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
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&encode(&body))).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client does not read its reply",
        )),
    }
}

async fn read_exact(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<(), FrameError> {
    let mut off = 0;
    while off < buf.len() {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || recv_with_fds(stream.as_raw_fd(), &mut buf[off..], fds)) {
            Ok(r) if r.truncated || fds.len() > MAX_FDS => {
                // The descriptors stay in `fds` for the caller to discard.
                return Err(FrameError::TooManyFds);
            }
            Ok(r) if r.bytes == 0 => return Err(FrameError::Closed),
            Ok(r) => off += r.bytes,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_cannot_take_every_slot() {
        let limits = Arc::new(ConnectionLimits::default());
        let mine: Vec<Slot> = (0..3).filter_map(|_| limits.acquire(1001, 3, 5)).collect();
        assert_eq!(mine.len(), 3);
        assert!(limits.acquire(1001, 3, 5).is_none(), "a fourth for the same uid");
        let other: Vec<Slot> = (0..3).filter_map(|_| limits.acquire(1002, 3, 5)).collect();
        assert_eq!(other.len(), 2, "the total bounds everyone together");
        drop(mine);
        let again = limits.acquire(1001, 3, 5);
        assert!(again.is_some(), "slots come back when dropped");
        assert_eq!(crate::sync::lock(&limits.per_uid).get(&1001).copied(), Some(1));
        drop((again, other));
        assert!(crate::sync::lock(&limits.per_uid).is_empty());
    }
}
