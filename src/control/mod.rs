//! The control socket: protocol, server and client.

pub mod client;
pub mod frame;
pub mod proto;
pub mod server;
