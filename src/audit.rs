//! The tamper-evident case log: one sha256 hash chain per case.
//!
//! Each record's hash covers the case reference, its sequence number, time,
//! actor, event, details and the previous record's hash, each length-prefixed
//! so no two different records encode alike. The database also keeps each
//! case's head (record count and last hash) in the same transaction, so a
//! deleted last record is caught too. A sealed log ends with a `sealed`
//! record and is written out as JSON lines that verify on their own.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
pub const SEALED: &str = EventKind::Sealed.as_str();
const DOMAIN: &[u8] = b"workcopy-caselog-v1";

/// One record of a case log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub case_ref: String,
    pub seq: u64,
    /// RFC 3339, UTC.
    pub at: String,
    /// The unix user name of whoever caused the event (`workcopy` for the daemon itself).
    pub actor: String,
    pub uid: u32,
    pub event: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// What a case-log record says happened. Stored (and hashed) as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The case was registered with its verification report.
    Opened,
    Approved,
    Exported,
    Blocked,
    Rejected,
    /// Receipt was confirmed.
    Received,
    Closed,
    Expired,
    /// The requester withdrew a self-service request.
    Cancelled,
    /// A file of the case was opened in the mount.
    FileOpened,
    /// A user-space open was released: how much of the file it read.
    FileRead,
    /// A receipt did not match.
    ReceiptRefused,
    /// An exported case was kept out of the mount.
    Hidden,
    /// The last record of a finished case.
    Sealed,
    /// Another host serves the case from now on (`case move`).
    Moved,
}

impl EventKind {
    pub const ALL: [EventKind; 15] = [
        EventKind::Opened,
        EventKind::Approved,
        EventKind::Exported,
        EventKind::Blocked,
        EventKind::Rejected,
        EventKind::Received,
        EventKind::Closed,
        EventKind::Expired,
        EventKind::Cancelled,
        EventKind::FileOpened,
        EventKind::FileRead,
        EventKind::ReceiptRefused,
        EventKind::Hidden,
        EventKind::Sealed,
        EventKind::Moved,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Approved => "approved",
            EventKind::Exported => "exported",
            EventKind::Blocked => "blocked",
            EventKind::Rejected => "rejected",
            EventKind::Received => "received",
            EventKind::Closed => "closed",
            EventKind::Expired => "expired",
            EventKind::Cancelled => "cancelled",
            EventKind::FileOpened => "file_opened",
            EventKind::FileRead => "file_read",
            EventKind::ReceiptRefused => "receipt_refused",
            EventKind::Hidden => "hidden",
            EventKind::Sealed => "sealed",
            EventKind::Moved => "moved",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EventRecord {
    /// The record's kind; `None` for a name this version does not know.
    pub fn kind(&self) -> Option<EventKind> {
        EventKind::parse(&self.event)
    }
}

/// What a new record says, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub actor: String,
    pub uid: u32,
    pub event: String,
    pub details: serde_json::Value,
}

impl NewEvent {
    pub fn new(actor: &Actor, event: EventKind, details: serde_json::Value) -> NewEvent {
        NewEvent {
            actor: actor.name.clone(),
            uid: actor.uid,
            event: event.as_str().to_string(),
            details,
        }
    }
}

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub name: String,
    pub uid: u32,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            name: "workcopy".into(),
            uid: nix::unistd::geteuid().as_raw(),
        }
    }
}

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn feed(h: &mut Sha256, field: &[u8]) {
    h.update((field.len() as u64).to_le_bytes());
    h.update(field);
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// The hash of a record from its fields (its own `hash` field is ignored).
pub fn record_hash(r: &EventRecord) -> String {
    let mut h = Sha256::new();
    feed(&mut h, DOMAIN);
    feed(&mut h, r.case_ref.as_bytes());
    feed(&mut h, &r.seq.to_le_bytes());
    feed(&mut h, r.at.as_bytes());
    feed(&mut h, r.actor.as_bytes());
    feed(&mut h, &r.uid.to_le_bytes());
    feed(&mut h, r.event.as_bytes());
    feed(&mut h, r.details.to_string().as_bytes());
    feed(&mut h, r.prev_hash.as_bytes());
    hex(&h.finalize())
}

/// Builds the next record of a chain whose head is (`count`, `head_hash`).
pub fn chain(case_ref: &str, count: u64, head_hash: &str, e: NewEvent) -> EventRecord {
    let mut r = EventRecord {
        case_ref: case_ref.to_string(),
        seq: count + 1,
        at: now_rfc3339(),
        actor: e.actor,
        uid: e.uid,
        event: e.event,
        details: e.details,
        prev_hash: head_hash.to_string(),
        hash: String::new(),
    };
    r.hash = record_hash(&r);
    r
}

/// The first bad record of a chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("case {case_ref}: record {seq}: {reason}")]
pub struct ChainError {
    pub case_ref: String,
    pub seq: u64,
    pub reason: String,
}

/// Checks a case's records one at a time, in sequence order, so a log of any
/// length is checked in constant memory: feed it every record with
/// [`push`](Self::push), then [`finish`](Self::finish) with the head.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    case_ref: String,
    records: u64,
    prev: String,
    sealed: bool,
}

impl ChainVerifier {
    pub fn new(case_ref: &str) -> ChainVerifier {
        ChainVerifier {
            case_ref: case_ref.to_string(),
            records: 0,
            prev: GENESIS.to_string(),
            sealed: false,
        }
    }

    /// Records checked so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The hash of the last record checked ([`GENESIS`] before the first).
    pub fn last_hash(&self) -> &str {
        &self.prev
    }

    /// Whether the last record checked is the seal.
    pub fn sealed(&self) -> bool {
        self.sealed
    }

    fn fail(&self, seq: u64, reason: String) -> ChainError {
        ChainError {
            case_ref: self.case_ref.clone(),
            seq,
            reason,
        }
    }

    /// Checks the next record.
    pub fn push(&mut self, r: &EventRecord) -> Result<(), ChainError> {
        if self.sealed {
            return Err(self.fail(self.records, "records follow the seal".into()));
        }
        let want = self.records + 1;
        if r.seq != want {
            return Err(self.fail(
                want,
                format!(
                    "found record number {} where {want} belongs (a record was removed, inserted or moved)",
                    r.seq
                ),
            ));
        }
        if r.case_ref != self.case_ref {
            return Err(self.fail(want, format!("belongs to case {:?}", r.case_ref)));
        }
        if r.prev_hash != self.prev {
            return Err(self.fail(
                want,
                "does not follow the record before it (a record was removed, inserted or moved)".into(),
            ));
        }
        if record_hash(r) != r.hash {
            return Err(self.fail(want, "its contents do not match its hash (the record was edited)".into()));
        }
        self.sealed = r.event == SEALED;
        self.prev.clone_from(&r.hash);
        self.records = want;
        Ok(())
    }

    /// Checks the records seen against `head`, the anchor kept beside them
    /// (record count and last hash), when there is one.
    pub fn finish(&self, head: Option<(u64, &str)>) -> Result<(), ChainError> {
        let Some((count, hash)) = head else { return Ok(()) };
        let n = self.records;
        if n != count {
            return Err(self.fail(
                n.min(count) + 1,
                format!("the case has {count} record(s) on record but {n} were found (records were removed or added)"),
            ));
        }
        if hash != self.prev {
            return Err(self.fail(n, "the last record is not the one on record for the case".into()));
        }
        Ok(())
    }
}

/// Checks a case's records in order; `head` is the anchor kept beside them
/// (record count and last hash), when there is one.
pub fn verify_chain(case_ref: &str, records: &[EventRecord], head: Option<(u64, &str)>) -> Result<(), ChainError> {
    let mut v = ChainVerifier::new(case_ref);
    for r in records {
        v.push(r)?;
    }
    v.finish(head)
}

/// The longest line a sealed log may have (one record).
pub const MAX_SEALED_LINE: usize = 64 << 20;

/// What a sealed log that verified holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedLog {
    pub case_ref: String,
    pub records: u64,
    /// The hash of its last record, the seal.
    pub head: String,
}

/// Verifies a sealed log written by `case close` (JSON lines), reading it
/// line by line: memory stays the same whatever its length.
pub fn verify_sealed_from(mut input: impl std::io::BufRead) -> Result<SealedLog, ChainError> {
    use std::io::{BufRead, Read};
    let mut verifier: Option<ChainVerifier> = None;
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        number += 1;
        let case_ref = || verifier.as_ref().map(|v| v.case_ref.clone()).unwrap_or_default();
        let bad = |reason: String| ChainError {
            case_ref: case_ref(),
            seq: number,
            reason,
        };
        let n = (&mut input)
            .take(MAX_SEALED_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| bad(format!("line {number} cannot be read: {e}")))?;
        if n == 0 {
            break;
        }
        if line.len() > MAX_SEALED_LINE {
            return Err(bad(format!("line {number} is longer than {MAX_SEALED_LINE} bytes")));
        }
        let text = std::str::from_utf8(&line).map_err(|e| bad(format!("line {number} is not a case log record: {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        let r: EventRecord = serde_json::from_str(text).map_err(|e| bad(format!("line {number} is not a case log record: {e}")))?;
        verifier.get_or_insert_with(|| ChainVerifier::new(&r.case_ref)).push(&r)?;
    }
    let Some(v) = verifier else {
        return Err(ChainError {
            case_ref: String::new(),
            seq: 0,
            reason: "the file holds no records".into(),
        });
    };
    if !v.sealed {
        return Err(v.fail(
            v.records,
            "the log ends without its seal (records were removed from the end)".into(),
        ));
    }
    Ok(SealedLog {
        records: v.records,
        head: v.prev,
        case_ref: v.case_ref,
    })
}

/// Verifies a sealed log held in memory. Returns the case reference and the
/// number of records.
pub fn verify_sealed(text: &str) -> Result<(String, usize), ChainError> {
    verify_sealed_from(text.as_bytes()).map(|s| (s.case_ref, s.records as usize))
}

/// One record in the sealed form: its JSON and a newline.
pub fn jsonl_line(r: &EventRecord) -> String {
    let mut line = serde_json::to_string(r).unwrap_or_default();
    line.push('\n');
    line
}

/// The sealed form: one JSON record per line.
pub fn to_jsonl(records: &[EventRecord]) -> String {
    records.iter().map(jsonl_line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn build(n: usize, sealed: bool) -> Vec<EventRecord> {
        let mut v: Vec<EventRecord> = Vec::new();
        for i in 0..n {
            let (count, head) = v.last().map(|r| (r.seq, r.hash.clone())).unwrap_or((0, GENESIS.into()));
            let event = if sealed && i + 1 == n { SEALED } else { "note" };
            v.push(chain(
                "REF-1",
                count,
                &head,
                NewEvent {
                    actor: "alice".into(),
                    uid: 1000,
                    event: event.into(),
                    details: json!({"i": i, "text": format!("event {i}")}),
                },
            ));
        }
        v
    }

    fn head(v: &[EventRecord]) -> (u64, String) {
        v.last().map(|r| (r.seq, r.hash.clone())).unwrap_or((0, GENESIS.into()))
    }

    #[test]
    fn intact_chain_verifies() {
        let v = build(5, false);
        let (n, h) = head(&v);
        assert_eq!(verify_chain("REF-1", &v, Some((n, &h))), Ok(()));
        let sealed = build(4, true);
        assert_eq!(verify_sealed(&to_jsonl(&sealed)), Ok(("REF-1".into(), 4)));
    }

    #[test]
    fn dropping_the_last_record_is_caught_by_the_head() {
        let v = build(5, false);
        let (n, h) = head(&v);
        assert!(verify_chain("REF-1", &v[..4], None).is_ok());
        assert!(verify_chain("REF-1", &v[..4], Some((n, &h))).is_err());
    }

    #[test]
    fn sealed_log_without_seal_fails() {
        let v = build(4, true);
        let e = verify_sealed(&to_jsonl(&v[..3]));
        assert!(matches!(e, Err(ref e) if e.reason.contains("seal")), "{e:?}");
        assert!(verify_sealed("").is_err());
        assert!(verify_sealed("{not json\n").is_err());
    }

    #[test]
    fn a_sealed_log_is_read_line_by_line() {
        let v = build(4, true);
        let text = to_jsonl(&v);
        let s = verify_sealed_from(std::io::BufReader::with_capacity(16, text.as_bytes()));
        assert_eq!(
            s,
            Ok(SealedLog {
                case_ref: "REF-1".into(),
                records: 4,
                head: v[3].hash.clone()
            })
        );
        // Blank lines are skipped; a line that is not UTF-8 is refused by its number.
        let mut bad = format!("\n{text}\n").into_bytes();
        bad.extend(b"\xff\n");
        let e = verify_sealed_from(&bad[..]);
        assert!(
            matches!(&e, Err(e) if e.reason.starts_with("line 7 is not a case log record")),
            "{e:?}"
        );
    }

    #[test]
    fn records_after_the_seal_are_caught_where_the_seal_is() {
        let mut v = build(3, true);
        let (count, head) = head(&v);
        v.extend(build(4, false).into_iter().skip(3));
        let e = verify_chain("REF-1", &v, Some((count, &head)));
        assert!(matches!(&e, Err(e) if e.seq == 3 && e.reason == "records follow the seal"), "{e:?}");
    }

    #[derive(Debug, Clone)]
    enum Tamper {
        EditDetails(usize),
        EditActor(usize),
        EditTime(usize),
        Delete(usize),
        Insert(usize),
        Swap(usize, usize),
        Duplicate(usize),
    }

    fn tamper() -> impl Strategy<Value = Tamper> {
        prop_oneof![
            (0usize..64).prop_map(Tamper::EditDetails),
            (0usize..64).prop_map(Tamper::EditActor),
            (0usize..64).prop_map(Tamper::EditTime),
            (0usize..64).prop_map(Tamper::Delete),
            (0usize..64).prop_map(Tamper::Insert),
            (0usize..64, 0usize..64).prop_map(|(a, b)| Tamper::Swap(a, b)),
            (0usize..64).prop_map(Tamper::Duplicate),
        ]
    }

    proptest! {
        #[test]
        fn any_tampering_is_detected(n in 1usize..12, t in tamper()) {
            let orig = build(n, true);
            let (count, h) = head(&orig);
            let mut v = orig.clone();
            match t {
                Tamper::EditDetails(i) => { let i = i % n; v[i].details = json!({"i": 999}); }
                Tamper::EditActor(i) => { let i = i % n; v[i].actor.push('x'); }
                Tamper::EditTime(i) => { let i = i % n; v[i].at = "2000-01-01T00:00:00Z".into(); }
                Tamper::Delete(i) => { v.remove(i % n); }
                Tamper::Insert(i) => {
                    let i = i % (n + 1);
                    let mut forged = orig[i.min(n - 1)].clone();
                    forged.event = "forged".into();
                    forged.hash = record_hash(&forged);
                    v.insert(i, forged);
                }
                Tamper::Swap(a, b) => { let (a, b) = (a % n, b % n); prop_assume!(a != b); v.swap(a, b); }
                Tamper::Duplicate(i) => { let i = i % n; let r = v[i].clone(); v.insert(i, r); }
            }
            prop_assert!(verify_chain("REF-1", &v, Some((count, &h))).is_err());
            prop_assert!(verify_sealed(&to_jsonl(&v)).is_err());
        }
    }
}
