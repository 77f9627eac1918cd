//! Logging for the systemd journal. Under systemd, standard error is a stream
//! to journald (`$JOURNAL_STREAM` names it). Each line then starts with its
//! syslog priority as `<N>`, which journald takes as the entry's PRIORITY
//! (`SyslogLevelPrefix=yes`, its default) and strips; there is no timestamp
//! (the journal has one) and no colour. This needs nothing beyond what
//! journald already parses, and the whole line, with its fields (`case=REF`,
//! `error=…`), stays the message, as `journalctl -u workcopy` shows it.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether standard error is the journal stream systemd connected us to:
/// `$JOURNAL_STREAM` is its `device:inode`, checked against the descriptor
/// (a child whose standard error was redirected inherits the variable).
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => dev == st.st_dev.to_string() && ino == st.st_ino.to_string(),
        Err(_) => false,
    }
}

/// The syslog priority journald stores for a level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Prefixes every line of `text` with `<priority>`, so that a message that
/// spans lines keeps its priority on each journal entry.
pub fn with_priority(priority: u8, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.trim_end_matches('\n').split('\n') {
        out.push_str(&format!("<{priority}>{line}\n"));
    }
    out
}

/// A tracing event as journal lines: `<N>message field=value…`.
pub struct JournalFormat {
    inner: Format<format::Full, ()>,
}

impl Default for JournalFormat {
    fn default() -> JournalFormat {
        JournalFormat {
            inner: format::format()
                .without_time()
                .with_target(false)
                .with_level(false)
                .with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut line = String::new();
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_priority(priority(*event.metadata().level()), &line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_carries_the_priority() {
        assert_eq!(with_priority(3, "refused\n"), "<3>refused\n");
        assert_eq!(with_priority(4, "a\n  b\n"), "<4>a\n<4>  b\n");
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
    }
}
