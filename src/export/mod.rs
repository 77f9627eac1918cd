//! The export filesystem: the cases the daemon has published, as the mount
//! shows them. `table` is what the daemon publishes, `inodes` numbers it,
//! `fs` decides every request without a kernel, `fuse` translates, `mount`
//! attaches it to `mount_point`.

pub mod fs;
pub mod fuse;
pub mod inodes;
pub mod mount;
pub mod table;
