//! Length-prefixed frames over a Unix stream socket, with optional file
//! descriptors (SCM_RIGHTS) riding along with a frame's first byte.

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes is larger than the limit of {1}")]
    TooLarge(usize, usize),
    #[error("a request may carry at most {MAX_FDS} file descriptor(s)")]
    TooManyFds,
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

/// Descriptors one frame may carry at most; a frame with more is refused.
pub const MAX_FDS: usize = 1;

/// What one `recvmsg` brought.
#[derive(Debug)]
pub struct Received {
    /// Bytes read (0 at end of stream).
    pub bytes: usize,
    /// The control data did not fit: descriptors may have been dropped by the kernel.
    pub truncated: bool,
}

/// One `recvmsg` on a non-blocking socket. Every descriptor the kernel
/// installed for us is taken into `fds` (so it is closed when dropped), also
/// when the control data was truncated; the caller decides what to refuse.
pub fn recv_with_fds(fd: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> std::io::Result<Received> {
    // Room for the kernel's whole SCM_RIGHTS list (SCM_MAX_FD = 253), so a
    // frame carrying many descriptors is not truncated and every one of them
    // reaches `fds` to be closed. u64 elements keep the buffer aligned for cmsghdr.
    const SPACE: usize = 253 * std::mem::size_of::<RawFd>() + 64;
    let mut space = [0u64; SPACE / 8 + 1];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&space) as _;
    // SAFETY: `msg` points at valid buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: walking the control buffer the kernel filled, with the libc
    // macros that bound every header by msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - (data as usize - c as usize);
                for k in 0..len / std::mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(k));
                    // The kernel just installed this descriptor in our table for us; we own it.
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received {
        bytes: n as usize,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
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

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
    }

    #[test]
    fn every_passed_descriptor_is_taken_and_closed() {
        let (a, b) = match std::os::unix::net::UnixStream::pair() {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        let files: Vec<std::fs::File> = (0..12).filter_map(|_| std::fs::File::open("/dev/null").ok()).collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let before = open_fds();
        for _ in 0..50 {
            let cmsg = [ControlMessage::ScmRights(&raw)];
            let sent = sendmsg::<()>(a.as_raw_fd(), &[IoSlice::new(b"x")], &cmsg, MsgFlags::empty(), None);
            assert_eq!(sent.ok(), Some(1));
            let mut fds = Vec::new();
            let mut buf = [0u8; 8];
            let got = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds);
            assert!(
                matches!(
                    got,
                    Ok(Received {
                        bytes: 1,
                        truncated: false
                    })
                ),
                "{got:?}"
            );
            assert_eq!(fds.len(), 12);
        }
        // Every received descriptor was dropped with `fds`: none leaked.
        assert_eq!(open_fds(), before);
    }
}
