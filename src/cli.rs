//! The `workcopy` command line: clap definitions, and human and `--json`
//! output. Every command but `serve` (and `audit verify --file`) talks to the
//! daemon over the control socket.

use crate::config::Config;
use crate::control::client::{Client, ClientError};
use crate::control::proto::{CaseView, Refusal, Reply, Request};
use crate::db::CaseRecord;
use crate::domain::case::CaseState;
use crate::domain::verify::RequestForm;
use clap::{Args, Parser, Subcommand};
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const EXAMPLES: &str = "\
A case from request form to close (staff):
  workcopy catalog show HG00096_R1.fastq.gz               # look a file up
  workcopy case open NGC-2026-0042 --requester alice@regionh.dk \\
      --department RH-KGA --submitter RH-KGA HG00096_R1.fastq.gz HG00096_R2.fastq.gz
  workcopy case approve NGC-2026-0042                     # stage, verify, export
  workcopy case show NGC-2026-0042                        # state, files, pulls
  workcopy case confirm NGC-2026-0042 --sha256sums received.sha256
  workcopy case close NGC-2026-0042

Exit status: 0 on success, 1 when the daemon refused or a check failed,
2 on a usage error, 3 when the daemon cannot be reached.";

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
    /// Mount, mode, read path and cases per state (staff)
    Status(JsonFlag),
    /// The GDB catalog (staff)
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Register, approve, confirm and close cases
    #[command(subcommand)]
    Case(CaseCmd),
    /// Check the case logs' hash chains
    #[command(subcommand)]
    Audit(AuditCmd),
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
    Approve {
        case_ref: String,
        /// Return as soon as staging has started
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
        /// Only cases in this state (open, approved, blocked, exported, received, closed, rejected, expired)
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
    /// A case's log (staff)
    Log {
        case_ref: String,
        #[arg(long)]
        json: bool,
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

/// Why a command failed, with its exit status.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn refused(m: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: m.into(),
        }
    }
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Failure {
        Failure::refused(r.message)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        let code = if matches!(e, ClientError::Connect { .. }) { 3 } else { 1 };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::refused(format!("{e:#}"))
    }
}

pub fn init_logging(verbose: u8, default: &str) {
    let filter = std::env::var("WORKCOPY_LOG").ok().unwrap_or_else(|| match verbose {
        0 => default.to_string(),
        1 => "info".into(),
        _ => "debug".into(),
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let one_line = f.message.lines().next().unwrap_or("").to_string();
            let rest: Vec<&str> = f.message.lines().skip(1).collect();
            eprintln!("workcopy: {one_line}");
            for l in rest {
                eprintln!("{l}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, Failure> {
    Config::load(&Config::locate(cli.config.as_deref())).map_err(|e| Failure::refused(e.to_string()))
}

fn socket_path(cli: &Cli) -> Result<PathBuf, Failure> {
    match &cli.socket {
        Some(s) => Ok(s.clone()),
        None => Ok(load_config(cli)?.socket),
    }
}

fn call(cli: &Cli, req: &Request) -> Result<Reply, Failure> {
    let mut c = Client::connect(&socket_path(cli)?)?;
    Ok(c.call(req)??)
}

fn read_input(path: &Path) -> Result<String, Failure> {
    let mut s = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::refused(format!("cannot read stdin: {e}")))?;
    } else {
        s = std::fs::read_to_string(path).map_err(|e| Failure::refused(format!("cannot read {}: {e}", path.display())))?;
    }
    Ok(s)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let s = serde_json::to_string_pretty(v).map_err(|e| Failure::refused(e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Serve => {
            init_logging(cli.verbose, "info");
            let cfg = load_config(&cli)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::refused(format!("cannot start the runtime: {e}")))?;
            let result = rt.block_on(crate::daemon::serve(cfg));
            // Staging or hashing still running must not hold up the stop.
            rt.shutdown_timeout(Duration::from_secs(5));
            result?;
            Ok(())
        }
        Command::Status(j) => {
            let Reply::Status(s) = call(&cli, &Request::Status)? else {
                return Err(unexpected());
            };
            if j.json {
                return print_json(&s);
            }
            println!("workcopy {}", s.version);
            println!(
                "mount       {} ({})",
                s.mount_point,
                if s.mounted { "mounted" } else { "not mounted" }
            );
            println!("mode        {}", s.mode);
            println!("read path   {}", s.read_path);
            println!("catalog     {} files", s.catalog_files);
            println!("directory   {} departments", s.directory_departments);
            let counted = if s.read_path.contains("passthrough") {
                " (reads the kernel passes through are not counted)"
            } else {
                ""
            };
            println!("served      {} bytes{counted}", s.bytes_served);
            println!("pulls       {} case file(s) open now", s.pulls_in_progress);
            println!(
                "cases       {}",
                s.cases.iter().map(|(st, n)| format!("{st} {n}")).collect::<Vec<_>>().join(", ")
            );
            Ok(())
        }
        Command::Catalog(CatalogCmd::Import { file }) => {
            let f = std::fs::File::open(file).map_err(|e| Failure::refused(format!("cannot open {}: {e}", file.display())))?;
            let mut c = Client::connect(&socket_path(&cli)?)?;
            let started = Instant::now();
            let reply = c.call_with_fds(&Request::CatalogImport, &[f.as_raw_fd()])??;
            let Reply::Imported(s) = reply else { return Err(unexpected()) };
            println!(
                "imported {} rows in {:.1}s: {} added, {} updated, {} unchanged; the catalog holds {} files",
                s.rows,
                started.elapsed().as_secs_f64(),
                s.added,
                s.updated,
                s.unchanged,
                s.catalog_files
            );
            Ok(())
        }
        Command::Catalog(CatalogCmd::Show { descriptor, json }) => {
            let Reply::Files { files } = call(
                &cli,
                &Request::CatalogShow {
                    descriptor: descriptor.clone(),
                },
            )?
            else {
                return Err(unexpected());
            };
            if *json {
                return print_json(&files);
            }
            let rows: Vec<Vec<String>> = files
                .iter()
                .map(|f| {
                    vec![
                        f.file_id.to_string(),
                        f.department.to_string(),
                        f.size.to_string(),
                        f.submitted_at(),
                        f.path.to_string(),
                        f.sha256.clone(),
                    ]
                })
                .collect();
            print_table(&["FILE_ID", "DEPARTMENT", "SIZE", "SUBMITTED", "PATH", "SHA256"], &rows);
            if files.len() > 1 {
                println!(
                    "{} files match {descriptor:?}: a request must name one of them by file_id or path",
                    files.len()
                );
            }
            Ok(())
        }
        Command::Case(cmd) => case(&cli, cmd),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "workcopy", &mut out);
            // A closed pipe (`| head`) is not an error worth a message.
            let _ = std::io::stdout().write_all(&out);
            Ok(())
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(dir).map_err(|e| Failure::refused(format!("cannot create {}: {e}", dir.display())))?;
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::generate_to(cmd, dir).map_err(|e| Failure::refused(format!("cannot write the manual pages: {e}")))?;
            println!("manual pages written to {}", dir.display());
            Ok(())
        }
        Command::Audit(AuditCmd::Verify { file: Some(path), json }) => {
            let text = std::fs::read_to_string(path).map_err(|e| Failure::refused(format!("cannot read {}: {e}", path.display())))?;
            match crate::audit::verify_sealed(&text) {
                Ok((case_ref, n)) => {
                    if *json {
                        print_json(&serde_json::json!({"ok": true, "case": case_ref, "records": n}))
                    } else {
                        println!("ok: sealed log of case {case_ref}, {n} records, chain intact");
                        Ok(())
                    }
                }
                Err(e) => Err(Failure::refused(format!("{}: {e}", path.display()))),
            }
        }
        Command::Audit(AuditCmd::Verify { file: None, json }) => {
            let Reply::Audit(a) = call(&cli, &Request::AuditVerify)? else {
                return Err(unexpected());
            };
            if *json {
                print_json(&a)?;
            } else if a.failures.is_empty() {
                println!(
                    "ok: {} case logs, {} records, {} sealed files; every chain intact",
                    a.cases, a.records, a.sealed_files
                );
            }
            if a.failures.is_empty() {
                Ok(())
            } else {
                Err(Failure::refused(format!(
                    "{} case log(s) failed verification:\n  {}",
                    a.failures.len(),
                    a.failures.join("\n  ")
                )))
            }
        }
    }
}

fn unexpected() -> Failure {
    Failure::refused("the daemon sent an unexpected reply (are the CLI and daemon the same version?)")
}

fn case(cli: &Cli, cmd: &CaseCmd) -> Result<(), Failure> {
    match cmd {
        CaseCmd::Open {
            case_ref,
            requester,
            department,
            submitter,
            files_from,
            descriptors,
            json,
        } => {
            let mut all = descriptors.clone();
            if let Some(p) = files_from {
                for line in read_input(p)?.lines() {
                    let l = line.trim();
                    if !l.is_empty() && !l.starts_with('#') {
                        all.push(l.to_string());
                    }
                }
            }
            let form = RequestForm {
                requester: requester.clone(),
                department: department.clone(),
                submitter: submitter.clone(),
                descriptors: all,
            };
            let Reply::Case(v) = call(
                cli,
                &Request::CaseOpen {
                    case_ref: case_ref.clone(),
                    form,
                },
            )?
            else {
                return Err(unexpected());
            };
            if *json {
                print_json(&v)?;
            } else {
                print_report(&v);
            }
            if v.case.verified {
                Ok(())
            } else {
                Err(Failure::refused(format!(
                    "case {} registered but failed verification; it cannot be approved",
                    v.case.case_ref
                )))
            }
        }
        CaseCmd::Approve { case_ref, no_wait } => {
            let Reply::Case(v) = call(
                cli,
                &Request::CaseApprove {
                    case_ref: case_ref.clone(),
                },
            )?
            else {
                return Err(unexpected());
            };
            if *no_wait {
                println!("case {} approved; staging started", v.case.case_ref);
                return Ok(());
            }
            wait_for_export(cli, case_ref)
        }
        CaseCmd::Reject { case_ref, reason } => {
            call(
                cli,
                &Request::CaseReject {
                    case_ref: case_ref.clone(),
                    reason: reason.clone(),
                },
            )?;
            println!("case {case_ref} rejected; its log is sealed");
            Ok(())
        }
        CaseCmd::Confirm { case_ref, sha256sums } => {
            let sums = read_input(sha256sums)?;
            call(
                cli,
                &Request::CaseConfirm {
                    case_ref: case_ref.clone(),
                    sha256sums: sums,
                },
            )?;
            println!("case {case_ref}: receipt confirmed, every file matched");
            Ok(())
        }
        CaseCmd::Close { case_ref, force, reason } => {
            call(
                cli,
                &Request::CaseClose {
                    case_ref: case_ref.clone(),
                    force: *force,
                    reason: reason.clone(),
                },
            )?;
            println!("case {case_ref} closed: removed from the mount, staging deleted, log sealed");
            Ok(())
        }
        CaseCmd::List { state, json } => {
            let Reply::Cases { cases } = call(cli, &Request::CaseList { state: *state })? else {
                return Err(unexpected());
            };
            if *json {
                return print_json(&cases);
            }
            let rows: Vec<Vec<String>> = cases
                .iter()
                .map(|c| {
                    vec![
                        c.case_ref.clone(),
                        c.state.to_string(),
                        c.department.clone().unwrap_or_else(|| "-".into()),
                        c.requester.clone(),
                        c.created_at.clone(),
                    ]
                })
                .collect();
            print_table(&["REF", "STATE", "DEPARTMENT", "REQUESTER", "OPENED"], &rows);
            Ok(())
        }
        CaseCmd::Show { case_ref, json } => {
            let Reply::Case(v) = call(
                cli,
                &Request::CaseShow {
                    case_ref: case_ref.clone(),
                },
            )?
            else {
                return Err(unexpected());
            };
            if *json {
                return print_json(&v);
            }
            print_case(&v);
            Ok(())
        }
        CaseCmd::Log { case_ref, json } => {
            let Reply::Log { records } = call(
                cli,
                &Request::CaseLog {
                    case_ref: case_ref.clone(),
                },
            )?
            else {
                return Err(unexpected());
            };
            if *json {
                return print_json(&records);
            }
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|r| {
                    vec![
                        r.seq.to_string(),
                        r.at.clone(),
                        format!("{} ({})", r.actor, r.uid),
                        r.event.clone(),
                        r.details.to_string(),
                    ]
                })
                .collect();
            print_table(&["#", "TIME", "ACTOR", "EVENT", "DETAILS"], &rows);
            Ok(())
        }
    }
}

fn wait_for_export(cli: &Cli, case_ref: &str) -> Result<(), Failure> {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    // An approved case with no staging job running is stuck (the daemon
    // could not record the end of staging); say so instead of waiting forever.
    let mut idle_since: Option<Instant> = None;
    let mut c = Client::connect(&socket_path(cli)?)?;
    loop {
        let Reply::Case(v) = c.call(&Request::CaseShow {
            case_ref: case_ref.to_string(),
        })??
        else {
            return Err(unexpected());
        };
        // The state and the mount are read one after the other: done only when both say so.
        let readable = v.case.state == CaseState::Exported && v.visible;
        match v.case.state {
            CaseState::Approved | CaseState::Exported if !readable => {
                if v.case.state == CaseState::Approved && v.staging.is_none() {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(30) {
                        return Err(Failure::refused(format!(
                            "case {case_ref} is approved but not being staged; see `workcopy case log {case_ref}` and the daemon's log (a restart of the daemon restarts staging)"
                        )));
                    }
                } else {
                    idle_since = None;
                }
                if let (true, Some((done, total))) = (tty, v.staging) {
                    eprint!("\r{}", progress_line(done, total, started.elapsed()));
                    let _ = std::io::stderr().flush();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            CaseState::Exported => {
                if tty {
                    eprintln!();
                }
                println!("case {case_ref} exported: {} file(s) readable in the mount", v.files.len());
                return Ok(());
            }
            CaseState::Blocked => {
                if tty {
                    eprintln!();
                }
                return Err(Failure::refused(format!(
                    "case {case_ref} blocked: {}",
                    v.blocked_reason.unwrap_or_else(|| "a file did not match the catalog".into())
                )));
            }
            s => return Err(Failure::refused(format!("case {case_ref} is {s}"))),
        }
    }
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn progress_line(done: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let eta = if rate > 0.0 && total > done {
        format!("{:.0}s", (total - done) as f64 / rate)
    } else {
        "-".into()
    };
    let pct = if total > 0 { done as f64 * 100.0 / total as f64 } else { 100.0 };
    format!(
        "staging {pct:5.1}%  {} of {}  {}/s  ETA {eta}   ",
        human(done as f64),
        human(total as f64),
        human(rate)
    )
}

fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(c);
            if i + 1 < n {
                s.push_str(&" ".repeat(w[i].saturating_sub(c.chars().count()) + 2));
            }
        }
        println!("{s}");
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

fn print_report(v: &CaseView) {
    let c = &v.case;
    println!(
        "case {} ({}), requester {}, department {}",
        c.case_ref,
        c.state,
        c.requester,
        c.department.as_deref().unwrap_or("-")
    );
    for p in &c.report.problems {
        println!("REFUSED   request: {p}");
    }
    for l in &c.report.lines {
        println!("{}", l.describe());
    }
    println!(
        "{}",
        if c.verified {
            "verified: every file may be delivered; approve with `workcopy case approve`"
        } else {
            "NOT verified"
        }
    );
}

fn print_case(v: &CaseView) {
    let c: &CaseRecord = &v.case;
    println!("case        {}", c.case_ref);
    println!("state       {}", c.state);
    println!("requester   {}", c.requester);
    println!("department  {}", c.department.as_deref().unwrap_or("-"));
    if let Some(s) = &c.submitter {
        println!("submitter   {s}");
    }
    println!("opened      {}", c.created_at);
    println!("verified    {}", if c.verified { "yes" } else { "no" });
    if let Some((done, total)) = v.staging {
        println!("staging     {} of {}", human(done as f64), human(total as f64));
    }
    if let Some(r) = &v.blocked_reason {
        println!("blocked     {r}");
    }
    println!("log         {} records", c.event_count);
    if !v.files.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = v
            .files
            .iter()
            .map(|f| {
                vec![
                    f.export_name.clone(),
                    f.file.file_id.to_string(),
                    f.file.size.to_string(),
                    f.file.sha256.clone(),
                ]
            })
            .collect();
        print_table(&["NAME", "FILE_ID", "SIZE", "SHA256"], &rows);
    }
    if !c.report.lines.is_empty() || !c.report.problems.is_empty() {
        println!("\nverification report:");
        for p in &c.report.problems {
            println!("REFUSED   request: {p}");
        }
        for l in &c.report.lines {
            println!("{}", l.describe());
        }
    }
}
