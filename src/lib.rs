//! workcopy delivers verified working copies of genomic files from the
//! national genome database (GDB) to the clinical department that submitted
//! them, through a read-only FUSE export. See README.md and doc/.

pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod db;
pub mod domain;
pub mod export;
pub mod gdb;
pub mod journal;
pub mod names;
pub mod pool;
pub mod receipt;
pub mod service;
pub mod staging;
pub mod sync;
pub mod unix;
