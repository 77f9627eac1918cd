//! `workcopy completions` and `workcopy man`: generated from the clap definitions.

use super::render::{self, print};
use super::{Cli, Failure};
use std::io::Write;
use std::path::Path;

pub(super) fn completions(shell: clap_complete::Shell) -> Result<(), Failure> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "workcopy", &mut out);
    print(|o| o.write_all(&out))
}

pub(super) fn man(dir: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(dir).map_err(|e| Failure::refused(format!("cannot create {}: {e}", dir.display())))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(cmd, dir).map_err(|e| Failure::refused(format!("cannot write the manual pages: {e}")))?;
    print(|o| render::man_pages_written(o, dir))
}
