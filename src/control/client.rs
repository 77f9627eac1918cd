//! The CLI's side of the control socket (blocking; one request, one reply).

use super::frame::{FrameError, recv_blocking, send_blocking};
use super::proto::{MAX_REPLY, MAX_REQUEST, Request, Response};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the workcopy daemon at {path}: {source} (is `workcopy serve` running?)")]
    Connect { path: String, source: std::io::Error },
    #[error("talking to the daemon: {0}")]
    Frame(#[from] FrameError),
    #[error("the daemon's reply is malformed: {0}")]
    Decode(String),
    #[error("the request is {0} bytes, more than the limit of {1} bytes; send fewer or shorter descriptors")]
    TooLarge(usize, usize),
}

pub struct Client {
    sock: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let sock = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Client { sock })
    }

    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.call_with_fds(req, &[])
    }

    pub fn call_with_fds(&mut self, req: &Request, fds: &[RawFd]) -> Result<Response, ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        if body.len() > MAX_REQUEST {
            return Err(ClientError::TooLarge(body.len(), MAX_REQUEST));
        }
        if let Err(e) = send_blocking(&mut self.sock, &body, fds) {
            // The daemon may have refused the request and closed: its reply says why.
            return match recv_blocking(&mut self.sock, MAX_REPLY) {
                Ok(reply) => serde_json::from_slice(&reply).map_err(|e| ClientError::Decode(e.to_string())),
                Err(_) => Err(e.into()),
            };
        }
        self.recv()
    }

    /// Sends a request whose reply is a stream of frames (`events`); read
    /// them with [`recv`](Client::recv).
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        if body.len() > MAX_REQUEST {
            return Err(ClientError::TooLarge(body.len(), MAX_REQUEST));
        }
        if let Err(e) = send_blocking(&mut self.sock, &body, &[]) {
            // The daemon may have refused the connection and closed: its
            // reply, which `recv` reads next, says why.
            if !matches!(e, FrameError::Io(ref io) if io.kind() == std::io::ErrorKind::BrokenPipe) {
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Reads the next reply frame.
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        let reply = recv_blocking(&mut self.sock, MAX_REPLY)?;
        serde_json::from_slice(&reply).map_err(|e| ClientError::Decode(e.to_string()))
    }
}
