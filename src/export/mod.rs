//! The export filesystem: the cases the daemon has published, as the mount shows them.

pub mod table;
