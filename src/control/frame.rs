//! Length-prefixed frames over a Unix stream socket, with optional file
//! descriptors (SCM_RIGHTS) riding along with a frame's first byte.

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes is larger than the limit of {1}")]
    TooLarge(usize, usize),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Writes a frame on a blocking socket, passing `fds` with it.
pub fn send_blocking(sock: &mut std::os::unix::net::UnixStream, body: &[u8], fds: &[RawFd]) -> Result<(), FrameError> {
    let frame = encode(body);
    if fds.is_empty() {
        sock.write_all(&frame)?;
        return Ok(());
    }
    let cmsg = [ControlMessage::ScmRights(fds)];
    let sent = sendmsg::<()>(sock.as_raw_fd(), &[IoSlice::new(&frame)], &cmsg, MsgFlags::empty(), None).map_err(std::io::Error::from)?;
    sock.write_all(&frame[sent..])?;
    Ok(())
}

/// Reads a frame on a blocking socket.
pub fn recv_blocking(sock: &mut std::os::unix::net::UnixStream, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    match sock.read_exact(&mut len) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        r => r?,
    }
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(FrameError::TooLarge(n, max));
    }
    let mut body = vec![0u8; n];
    sock.read_exact(&mut body)?;
    Ok(body)
}

/// One `recvmsg` on a non-blocking socket: bytes read (0 at end of stream)
/// and any descriptors that came with them.
pub fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC).map_err(std::io::Error::from)?;
    let n = msg.bytes;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(list) = c {
            for raw in list {
                // SAFETY: the kernel just installed this descriptor in our table for us; we own it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limit() {
        let (mut a, mut b) = match std::os::unix::net::UnixStream::pair() {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert!(send_blocking(&mut a, b"hello", &[]).is_ok());
        assert_eq!(recv_blocking(&mut b, 16).ok(), Some(b"hello".to_vec()));
        assert!(send_blocking(&mut a, &[7u8; 32], &[]).is_ok());
        assert!(matches!(recv_blocking(&mut b, 16), Err(FrameError::TooLarge(32, 16))));
        drop(a);
        let mut rest = Vec::new();
        let _ = b.read_to_end(&mut rest);
        assert!(matches!(recv_blocking(&mut b, 16), Err(FrameError::Closed)));
    }
}
