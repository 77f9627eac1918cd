//! Access records: what the case log says of the mount's opens and reads.
//!
//! Every access is durable before the open it belongs to succeeds, but not
//! every access gets its own record: of the accesses of one file by one
//! account (one *key*: case, event, file, uid, staff), the first
//! [`Coalescing::plain_per_window`] of each [`Coalescing::window`] are
//! recorded one by one, as they always were; further ones are counted, and
//! the count becomes one *counted* record when the window is over (and always
//! before the case's next state change). An account that opens a file
//! thousands of times a second therefore adds a few records a minute to the
//! log, not thousands a second, and the log still accounts for every open.

use crate::audit::{Actor, EventKind, NewEvent};
use serde_json::json;
use std::time::Duration;

/// How accesses of one key are recorded: one by one up to `plain_per_window`
/// per `window`, counted beyond that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalescing {
    pub window: Duration,
    pub plain_per_window: u32,
}

/// The daemon's policy: three records per file and account a minute (a pull,
/// its check and a retry each keep their own record), counted beyond that.
pub const COALESCING: Coalescing = Coalescing {
    window: Duration::from_secs(60),
    plain_per_window: 3,
};

/// What kind of access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    /// The file was opened.
    Opened,
    /// A user-space open was released, having read `bytes_read` of `size` bytes.
    Read { bytes_read: u64, size: u64 },
}

/// One access of a case file in the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAccess {
    pub case_ref: String,
    pub actor: Actor,
    /// The file's name in the mount.
    pub file: String,
    pub file_id: String,
    pub pid: u32,
    /// Whether the caller is someone other than the case's transfer account.
    pub staff: bool,
    pub kind: AccessKind,
}

impl FileAccess {
    pub fn event(&self) -> EventKind {
        match self.kind {
            AccessKind::Opened => EventKind::FileOpened,
            AccessKind::Read { .. } => EventKind::FileRead,
        }
    }

    /// The file's size as the access saw it (0 for an open).
    pub fn size(&self) -> u64 {
        match self.kind {
            AccessKind::Opened => 0,
            AccessKind::Read { size, .. } => size,
        }
    }

    /// Bytes read, and whether the whole file was (0 and false for an open).
    pub fn read(&self) -> (u64, bool) {
        match self.kind {
            AccessKind::Opened => (0, false),
            AccessKind::Read { bytes_read, size } => (bytes_read, bytes_read >= size),
        }
    }

    /// The record of this access on its own.
    pub fn record(&self) -> NewEvent {
        let details = match self.kind {
            AccessKind::Opened => json!({"file": self.file, "file_id": self.file_id, "pid": self.pid, "staff": self.staff}),
            AccessKind::Read { bytes_read, size } => json!({
                "file": self.file, "file_id": self.file_id, "pid": self.pid,
                "bytes_read": bytes_read, "size": size, "complete": bytes_read >= size,
            }),
        };
        NewEvent::new(&self.actor, self.event(), details)
    }
}

/// Accesses of one key counted since its last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessCount {
    /// [`EventKind::FileOpened`] or [`EventKind::FileRead`].
    pub event: EventKind,
    pub actor: Actor,
    pub file: String,
    pub file_id: String,
    pub staff: bool,
    /// The file's size (reads only).
    pub size: u64,
    pub count: u64,
    /// Bytes read by the counted reads together.
    pub bytes_read: u64,
    /// How many of the counted reads read the whole file.
    pub complete: u64,
    /// RFC 3339 times of the first and the last counted access.
    pub first_at: String,
    pub last_at: String,
    pub last_pid: u32,
}

impl AccessCount {
    /// The counted record: `opens` (or `releases`, with bytes read and how
    /// many read the whole file) between `first_at` and `last_at`.
    pub fn record(&self) -> NewEvent {
        let details = if self.event == EventKind::FileRead {
            json!({
                "file": self.file, "file_id": self.file_id, "staff": self.staff, "size": self.size,
                "releases": self.count, "bytes_read": self.bytes_read, "complete_releases": self.complete,
                "first_at": self.first_at, "last_at": self.last_at, "last_pid": self.last_pid,
            })
        } else {
            json!({
                "file": self.file, "file_id": self.file_id, "staff": self.staff,
                "opens": self.count,
                "first_at": self.first_at, "last_at": self.last_at, "last_pid": self.last_pid,
            })
        };
        NewEvent::new(&self.actor, self.event, details)
    }
}

/// How many accesses an access record stands for, from its details: `opens`
/// or `releases` for a counted record, else one.
pub fn accesses_in(details: &serde_json::Value) -> u64 {
    details
        .get("opens")
        .or_else(|| details.get("releases"))
        .and_then(|n| n.as_u64())
        .unwrap_or(1)
}

/// How one more access of a key is recorded, given the key's window so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A record of its own, in the current window.
    Record,
    /// A new window: the pending count (if any) is folded first, then the
    /// access gets a record of its own.
    NewWindow,
    /// Counted, not recorded on its own.
    Count,
}

/// Decides how an access at `now` (unix seconds) is recorded, for a key whose
/// window began at `window_start` and has had `window_records` records.
pub fn step(policy: &Coalescing, now: i64, window_start: i64, window_records: u32) -> Step {
    if now.saturating_sub(window_start) >= policy.window.as_secs() as i64 {
        Step::NewWindow
    } else if window_records < policy.plain_per_window {
        Step::Record
    } else {
        Step::Count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(kind: AccessKind) -> FileAccess {
        FileAccess {
            case_ref: "C-1".into(),
            actor: Actor {
                name: "a1".into(),
                uid: 2001,
            },
            file: "x.fq".into(),
            file_id: "F1".into(),
            pid: 7,
            staff: false,
            kind,
        }
    }

    #[test]
    fn single_records_keep_their_form() {
        let o = access(AccessKind::Opened).record();
        assert_eq!(o.event, "file_opened");
        assert_eq!(o.details, json!({"file": "x.fq", "file_id": "F1", "pid": 7, "staff": false}));
        let r = access(AccessKind::Read { bytes_read: 5, size: 5 }).record();
        assert_eq!(r.event, "file_read");
        assert_eq!(r.details["complete"], true);
        assert_eq!(accesses_in(&o.details), 1);
    }

    #[test]
    fn a_counted_record_says_how_many() {
        let c = AccessCount {
            event: EventKind::FileOpened,
            actor: Actor {
                name: "a1".into(),
                uid: 2001,
            },
            file: "x.fq".into(),
            file_id: "F1".into(),
            staff: false,
            size: 0,
            count: 1997,
            bytes_read: 0,
            complete: 0,
            first_at: "t0".into(),
            last_at: "t1".into(),
            last_pid: 9,
        };
        let e = c.record();
        assert_eq!(e.event, "file_opened");
        assert_eq!(e.details["opens"], 1997);
        assert_eq!(e.details["staff"], false);
        assert_eq!(accesses_in(&e.details), 1997);
        let r = AccessCount {
            event: EventKind::FileRead,
            count: 4,
            ..c
        }
        .record();
        assert_eq!(accesses_in(&r.details), 4);
    }

    #[test]
    fn windows_allow_a_few_records_then_count() {
        let p = Coalescing {
            window: Duration::from_secs(60),
            plain_per_window: 3,
        };
        assert_eq!(step(&p, 100, 100, 1), Step::Record);
        assert_eq!(step(&p, 159, 100, 2), Step::Record);
        assert_eq!(step(&p, 159, 100, 3), Step::Count);
        assert_eq!(step(&p, 160, 100, 3), Step::NewWindow);
        // A clock that went back never opens a window early.
        assert_eq!(step(&p, 50, 100, 3), Step::Count);
    }
}
