//! The command line's clap definitions. Help texts, `after_help` and argument
//! names here are what `workcopy --help`, `workcopy man` and `workcopy
//! completions` print.

use crate::domain::case::CaseState;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const EXAMPLES: &str = "\
A case from request form to close (staff):
  workcopy catalog show HG00096_R1.fastq.gz               # look a file up
  workcopy case open NGC-2026-0042 --requester alice@regionh.dk \\
      --department RH-KGA --submitter RH-KGA HG00096_R1.fastq.gz HG00096_R2.fastq.gz
  workcopy case approve NGC-2026-0042                     # stage, verify, export
  workcopy case show NGC-2026-0042                        # state, files, pulls
  workcopy case confirm NGC-2026-0042 --sha256sums received.sha256
  workcopy case close NGC-2026-0042

A requester's own request (self-service, where the department allows it):
  workcopy catalog search 'HG00096*'                      # your user group's files
  workcopy request open HG00096_R1.fastq.gz HG00096_R2.fastq.gz
  workcopy request show SS-20261203-7K2Q9                 # follow it

Exit status: 0 on success, 1 when the daemon refused or a check failed,
2 on a usage error, 3 when the daemon cannot be reached, 78 when `serve`
or `config check` finds the config or the directory wrong.";

const EVENTS_HELP: &str = "\
Each record of every case log has a feed number: 1, 2, 3, … in the order the
records were committed, without gaps, kept across restarts. A script that
remembers the last number it handled resumes after it with --since, and with
--follow is told of new records as they commit. A line reads
  SEQ  TIME  REF #N  EVENT  ACTOR (UID)  DETAILS
where N is the record's number in the case's own log. With --json each line is
an object: seq, case_ref, case_seq, at, actor, uid, event, details, prev_hash, hash.
State changes are the events opened, approved, exported, blocked, rejected,
received, closed and expired; scripts/workcopy-notify-example acts on them.

Examples:
  workcopy events --since 1200                      # what happened after record 1200
  workcopy events --follow --json --since \"$(cat /var/lib/notify/last-seq)\"";

const METRICS_HELP: &str = "\
Cases per state and since when, case-log records, file opens, bytes served,
staging work, verification failures, refusals, the last audit, whether the
database answers; every sample carries the host. When no daemon answers, the
output is workcopy_up 0 and the exit status 3. The shipped
workcopy-metrics.timer writes them for node_exporter's textfile collector
every 15 s; doc/OPERATIONS.md lists every metric and example alert rules.

Examples:
  workcopy metrics
  workcopy metrics --output /var/lib/prometheus/node-exporter/workcopy.prom";

#[derive(Parser, Debug)]
#[command(name = "workcopy", version, about = "Deliver verified working copies of GDB files to the department that submitted them", after_help = EXAMPLES)]
pub struct Cli {
    /// Config file [default: $WORKCOPY_CONFIG, else /etc/workcopy/workcopy.toml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Control socket to use instead of the config's `socket`
    #[arg(long, global = true, value_name = "PATH", env = "WORKCOPY_SOCKET")]
    pub socket: Option<PathBuf>,
    /// More log output (-v info, -vv debug); WORKCOPY_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: mount the export, listen on the control socket
    Serve,
    /// Uptime, mount, mode, read path, catalog, cases per state, staging use (staff)
    Status(JsonFlag),
    /// The GDB catalog (staff; `catalog search` also requesters)
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Register, approve, confirm and close cases
    #[command(subcommand)]
    Case(CaseCmd),
    /// Your own requests for your user group's files (requesters; self-service)
    #[command(subcommand)]
    Request(RequestCmd),
    /// Check the case logs' hash chains
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Every case-log record of every case, in commit order, numbered (staff)
    #[command(after_help = EVENTS_HELP)]
    Events {
        /// Only records after this feed number (the last one a script saw)
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        since: u64,
        /// Go on printing records as they are committed, until interrupted
        #[arg(long)]
        follow: bool,
        /// One JSON object per line, with the feed number as `seq`
        #[arg(long)]
        json: bool,
    },
    /// The daemon's metrics as OpenMetrics text, for Prometheus (staff)
    #[command(after_help = METRICS_HELP)]
    Metrics {
        /// Write them into this file instead of standard output, atomically
        /// (a temporary file in the same directory, renamed over it)
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Make the daemon read the directory again (staff); fails with the reason when it is refused
    #[command(
        after_help = "A refused directory leaves the previous one in force. The unit's ExecReload=\nruns this, so `systemctl reload workcopy` fails when the directory is refused.\n\nExample:\n  workcopy config check && workcopy reload"
    )]
    Reload,
    /// Check the config and the directory without a daemon
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The transfer hosts sharing the register: heartbeat, version, mode, cases served (staff)
    #[command(
        after_help = "A host silent for three heartbeats is shown as down. `directory` says whether its\ndirectory file matches the other hosts' (the one most hosts that are up have).\n\nExample:\n  workcopy hosts --json"
    )]
    Hosts(JsonFlag),
    /// Manage a transfer host of a shared register (staff)
    #[command(subcommand)]
    Host(HostCmd),
    /// Print shell completions (bash, zsh, fish, elvish, powershell)
    #[command(after_help = "Example:\n  workcopy completions bash > /usr/share/bash-completion/completions/workcopy")]
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages (workcopy.1 and one per command) into a directory
    #[command(after_help = "Example:\n  workcopy man /usr/local/share/man/man1")]
    Man { dir: PathBuf },
}

#[derive(Args, Debug)]
pub struct JsonFlag {
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// Load or refresh the catalog from a TSV file; all or nothing
    #[command(
        after_help = "The first line names the columns (tab-separated, any order):\n  file_id path department size sha256 submitted_at\nExtra columns are kept. Files are added or updated by file_id, never removed.\nA file held by a live case cannot change its path, department, size, sha256\nor submitted_at. Any bad row is reported with its line number and nothing is imported.\n\nExample:\n  workcopy catalog import /srv/gdb/catalog.tsv"
    )]
    Import {
        /// The catalog TSV
        file: PathBuf,
    },
    /// Look up the files a descriptor (file_id, path or base name) matches
    Show {
        descriptor: String,
        #[arg(long)]
        json: bool,
    },
    /// Find files by name, sample or date; a requester finds their own user group's files only
    #[command(
        after_help = "PATTERN is a glob: `*` any run of characters, `?` one character, `\\` makes the\nnext one literal; case matters. A pattern with a `/` is matched against the\nfile's path in the GDB, any other against its base name. Quote it for the shell.\nResults are sorted by name (with --since: by submission time); at most 200 are\nshown, and a line on standard error says when more matched.\n\nExamples:\n  workcopy catalog search 'HG00096*'\n  workcopy catalog search --sample HG00096\n  workcopy catalog search '*.spring' --since 2026-01-01\n  workcopy catalog search 'runs/2026/R0042/*' --json"
    )]
    Search {
        /// A glob on the base name (or, with a `/`, on the path)
        pattern: Option<String>,
        /// Only files of this sample (the catalog's sample_id column)
        #[arg(long, value_name = "ID")]
        sample: Option<String>,
        /// Only files submitted on or after this date (2026-01-31) or time (RFC 3339)
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RequestCmd {
    /// Request files of your user group: verified as staff's `case open` verifies a form
    #[command(
        after_help = "You log in with your own account; workcopy knows you from the directory, and\nyour department's self_service policy decides what happens: with \"auto\" a\nrequest whose every file verified is approved at once and staged for your\ndepartment's transfer job to pull; with \"review\" it waits for workcopy staff.\nEach DESCRIPTOR is a file_id, a path in the GDB or a base name of one of your\nuser group's files (`workcopy catalog search` finds them), and must match\nexactly one. Without --ref a reference is generated (SS-<date>-<code>) and\nprinted. Exits non-zero when any file fails; such a request can never be\napproved: cancel it and request again.\n\nExamples:\n  workcopy request open HG00096_R1.fastq.gz HG00096_R2.fastq.gz\n  workcopy catalog search --sample HG00096 --json | jq -r '.files[].file_id' | workcopy request open --files-from -\n  workcopy request open --ref NGC-2026-0042 --files-from wanted.txt"
    )]
    Open {
        /// The requested files
        descriptors: Vec<String>,
        /// Your support ticket's reference, if you have one (else one is generated)
        #[arg(long = "ref", value_name = "REF")]
        case_ref: Option<String>,
        /// Read more descriptors from a file, one per line ('-' for stdin; '#' starts a comment)
        #[arg(long, value_name = "PATH|-")]
        files_from: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Your requests and their states
    List {
        #[arg(long)]
        json: bool,
    },
    /// One of your requests: state, files, verification report
    #[command(
        after_help = "`exported` means your department's transfer job can pull the files now;\n`received` that it confirmed them.\n\nExample:\n  workcopy request show SS-20261203-7K2Q9"
    )]
    Show {
        case_ref: String,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw one of your requests (until it is exported)
    #[command(after_help = "Example:\n  workcopy request cancel SS-20261203-7K2Q9")]
    Cancel {
        case_ref: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaseCmd {
    /// Register a request and verify it: one report line per file
    #[command(
        after_help = "Each DESCRIPTOR is a GDB file_id, a path in the GDB, or a file's base name,\nand must match exactly one catalog file. The requester's department must be\nin the same user group as the department that submitted each file.\nExits non-zero when any file fails; such a case can never be approved.\n\nExample:\n  workcopy case open NGC-2026-0042 --requester alice@regionh.dk --files-from request.txt"
    )]
    Open {
        /// The support system's reference number
        case_ref: String,
        /// The requesting user's id from the directory
        #[arg(long)]
        requester: String,
        /// The requester's department as stated on the form
        #[arg(long)]
        department: Option<String>,
        /// The submitting department as stated on the form
        #[arg(long)]
        submitter: Option<String>,
        /// Read more descriptors from a file, one per line ('-' for stdin; '#' starts a comment)
        #[arg(long, value_name = "PATH|-")]
        files_from: Option<PathBuf>,
        /// The requested files
        descriptors: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stage and verify every file, then export the case; waits until it is readable
    #[command(
        after_help = "On a shared register one host serves the case: --host, else the department's first\nlisted host, else the host this command talks to. That host stages and verifies\nthe files and shows the case in its mount.\n\nExample:\n  workcopy case approve NGC-2026-0042 --host transfer-2"
    )]
    Approve {
        case_ref: String,
        /// Return as soon as staging has started
        #[arg(long)]
        no_wait: bool,
        /// The host to serve the case (shared register)
        #[arg(long, value_name = "HOST")]
        host: Option<String>,
    },
    /// Serve an approved or exported case from another host (shared register)
    #[command(
        after_help = "The new host verifies the files again and shows the case in its mount; the old\nhost withdraws it and deletes its staging (now, or when it comes back). Waits\nuntil the case is readable on the new host.\n\nExample:\n  workcopy case move NGC-2026-0042 --to transfer-2"
    )]
    Move {
        case_ref: String,
        /// The host to serve it from now on
        #[arg(long, value_name = "HOST")]
        to: String,
        /// Return once the move is recorded
        #[arg(long)]
        no_wait: bool,
    },
    /// Refuse a request
    Reject {
        case_ref: String,
        #[arg(long)]
        reason: String,
    },
    /// Confirm receipt with the receiving side's `sha256sum` output
    Confirm {
        /// The case (or $WORKCOPY_CASE_REF, which, unlike an argument, other users cannot see in `ps`)
        #[arg(env = "WORKCOPY_CASE_REF")]
        case_ref: String,
        /// sha256sum output for every file of the case ('-' for stdin)
        #[arg(long, value_name = "PATH|-")]
        sha256sums: PathBuf,
    },
    /// Close a case: leaves the mount, staging deleted, log sealed
    Close {
        case_ref: String,
        /// Close a case whose receipt was not confirmed
        #[arg(long, requires = "reason")]
        force: bool,
        #[arg(long)]
        reason: Option<String>,
    },
    /// List cases (a transfer account sees its own department's)
    List {
        /// Only cases in this state (open, approved, blocked, exported, received, closed, rejected, expired, cancelled)
        #[arg(long, value_parser = parse_state)]
        state: Option<CaseState>,
        #[arg(long)]
        json: bool,
    },
    /// A case's state, files and verification report
    Show {
        case_ref: String,
        #[arg(long)]
        json: bool,
    },
    /// A case's log (staff), a page at a time
    #[command(
        after_help = "Prints up to --limit records after record --since, and on standard error how to get\nthe next page when more follow.\n\nExample:\n  workcopy case log NGC-2026-0042 --since 1000 --limit 500"
    )]
    Log {
        case_ref: String,
        /// Only records after this record number
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// At most this many records [default: 1000]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=crate::control::proto::LOG_PAGE_MAX as i64))]
        limit: Option<u32>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// Declare a host gone for good: its cases may then be moved or closed without it
    #[command(
        after_help = "Closing a case of a retired host seals its log on the host that closes it, and the\nseal records the retirement (the retired host's staging could not be deleted).\nMove its live cases first: `workcopy case move REF --to HOST`.\n\nExample:\n  workcopy host retire transfer-1 --reason \"disk controller failed, host scrapped\""
    )]
    Retire {
        host: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Check the config (--config) and the directory it names, as `serve` does at start
    #[command(
        after_help = "Exits 0 when both are good, 78 with the reason when not; talks to no daemon.\n\nExample:\n  workcopy config check --directory /etc/workcopy/directory.toml.new"
    )]
    Check {
        /// Check this directory file instead of the one the config names
        #[arg(long, value_name = "PATH")]
        directory: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Walk every case log's hash chain, or check one sealed log file on its own
    Verify {
        /// A sealed case log (<state_dir>/caselogs/<REF>.jsonl); needs no daemon
        #[arg(long, value_name = "SEALED_LOG")]
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn parse_state(s: &str) -> Result<CaseState, String> {
    CaseState::parse(s).ok_or_else(|| {
        format!(
            "unknown state {s:?}; one of {}",
            CaseState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )
    })
}
