//! The export filesystem: the cases the daemon has published, as the mount
//! shows them. `table` is what the daemon publishes, `inodes` numbers it,
//! `fs` decides every request without a kernel, `fuse` translates, `mount`
//! attaches it to `mount_point`.

pub mod fs;
pub mod fuse;
pub mod inodes;
pub mod mount;
pub mod table;

/// How the mount serves file bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadPath {
    /// The kernel reads the backing files itself (FUSE passthrough).
    Passthrough,
    /// Every byte through the daemon: this kernel offers no passthrough.
    UserSpaceNoKernelSupport,
    /// Every byte through the daemon: `passthrough = false` in the config.
    UserSpaceByConfig,
}
