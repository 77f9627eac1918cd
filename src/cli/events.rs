//! `workcopy events`: the feed of every case-log record, as the daemon
//! streams it, one line per record; with `--follow` until interrupted.

use super::render::{self, print};
use super::{Cli, Daemon, Failure, reply};
use crate::control::proto::Request;

pub(super) fn run(cli: &Cli, since: u64, follow: bool, json: bool) -> Result<(), Failure> {
    let Daemon(mut client) = Daemon::connect(cli)?;
    client.send(&Request::Events { since, follow })?;
    loop {
        let frame = client.recv()??;
        let (records, more) = reply::events(frame)
            .ok_or_else(|| Failure::refused("the daemon sent an unexpected reply (are the CLI and daemon the same version?)"))?;
        // Each frame is written out (and flushed) as it comes, so a follower
        // sees a record as soon as the daemon sends it.
        print(|o| {
            for r in &records {
                if json {
                    render::feed_json_line(o, r)?;
                } else {
                    render::feed_line(o, r)?;
                }
            }
            Ok(())
        })?;
        if !more {
            return Ok(());
        }
    }
}
