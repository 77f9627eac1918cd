//! The rules of the service, free of storage, sockets and FUSE.

pub mod access;
pub mod authz;
pub mod case;
pub mod catalog;
pub mod directory;
pub mod hosts;
pub mod search;
pub mod verify;
