//! The catalog at national scale: an import of 1,000,000 rows, descriptor
//! resolution and `catalog search` against that catalog.
//!
//! `cargo bench --bench catalog [-- --rows N --runs N --lookups N] [--postgres]`
//!
//! `--postgres` measures the PostgreSQL store instead of SQLite: a throw-away
//! server from `scripts/pg-test-server` (root: it runs as the `postgres`
//! user), a fresh database per run.
//!
//! Generates a realistic catalog TSV (deterministic: the same rows every run),
//! then measures in one process: the parser alone (`parse_catalog`), the
//! import as `catalog import` runs it (`workcopy::service::import_catalog`:
//! parsed while the store writes, into a fresh database; the median of
//! `--runs` runs), an idempotent re-import of the same rows,
//! `Store::resolve` latency per kind of descriptor, and the latency of
//! typical searches (`workcopy::service::find_files`, what `catalog search`
//! runs) as staff and as requesters of a large and of a small user group.
//! `WORKCOPY_BENCH_ROWS` sets the row count too; `--rows` wins.
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it is a quick
//! smoke test: 2,000 rows, one run, 200 look-ups per kind.
//!
//! With `--write-tsv PATH`, `--write-directory PATH` or
//! `--write-descriptors PATH` it only writes those files (the catalog, a
//! directory naming its departments, and `--lookups` descriptors per kind as
//! `kind<TAB>descriptor<TAB>expected matches`) and exits: `scripts/bench-catalog`
//! uses them to measure the same catalog through the daemon and the CLI.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};
use workcopy::db::{ImportSummary, Store};
use workcopy::domain::catalog::parse_catalog;
use workcopy::domain::directory::Directory;
use workcopy::domain::search::{CatalogQuery, Glob};

/// Departments: id, name, group, transfer account uid, weight (share of the files).
const DEPARTMENTS: [(&str, &str, &str, u32, u64); 8] = [
    (
        "RH-KGA",
        "Klinisk Genetisk Afdeling, Rigshospitalet",
        "region-h-genetics",
        20001,
        28,
    ),
    ("HGH-GEN", "Genetik, Herlev", "region-h-genetics", 20002, 8),
    ("AUH-KGA", "Klinisk Genetisk Afdeling, AUH", "region-m-genetics", 20003, 22),
    ("VEJ-KGA", "Klinisk Genetik, Vejle", "region-s-genetics", 20004, 12),
    ("OUH-KGA", "Klinisk Genetisk Afdeling, OUH", "region-s-genetics", 20005, 14),
    ("AAUH-KGA", "Klinisk Genetik, Aalborg", "region-nj-genetics", 20006, 8),
    (
        "SUH-GEN",
        "Genetik, Sjaellands Universitetshospital",
        "region-sj-genetics",
        20007,
        6,
    ),
    ("NGC-RES", "Nationalt Genom Center, forskning", "ngc", 20008, 2),
];

/// Files per sequencing run directory.
const FILES_PER_RUN: u64 = 400;
/// 2019-01-01T00:00:00Z: the first submission.
const EPOCH: i64 = 1_546_300_800;
/// Seven years of submissions.
const SPAN_SECS: i64 = 7 * 365 * 86_400;

struct Opts {
    bench: bool,
    rows: u64,
    runs: usize,
    lookups: usize,
    write_tsv: Option<PathBuf>,
    write_directory: Option<PathBuf>,
    write_descriptors: Option<PathBuf>,
    postgres: bool,
}

fn parse_args() -> Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    let mut o = Opts {
        bench,
        rows: if bench { 1_000_000 } else { 2_000 },
        runs: if bench { 3 } else { 1 },
        lookups: if bench { 2_000 } else { 200 },
        write_tsv: None,
        write_directory: None,
        write_descriptors: None,
        postgres: args.iter().any(|a| a == "--postgres"),
    };
    if bench {
        if let Ok(v) = std::env::var("WORKCOPY_BENCH_ROWS") {
            o.rows = number(&v).context("WORKCOPY_BENCH_ROWS")?;
        }
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |flag: &str| -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().cloned().with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "--rows" => o.rows = number(&value(flag)?).context("--rows")?,
            "--runs" => o.runs = number(&value(flag)?).context("--runs")? as usize,
            "--lookups" => o.lookups = number(&value(flag)?).context("--lookups")? as usize,
            "--write-tsv" => o.write_tsv = Some(value(flag)?.into()),
            "--write-directory" => o.write_directory = Some(value(flag)?.into()),
            "--write-descriptors" => o.write_descriptors = Some(value(flag)?.into()),
            // `--bench` and whatever else cargo or a filter passes.
            _ => {}
        }
    }
    if o.rows < 2 || o.runs == 0 || o.lookups == 0 {
        bail!("--rows must be at least 2, --runs and --lookups at least 1");
    }
    Ok(o)
}

fn number(s: &str) -> Result<u64> {
    s.replace(['_', ','], "")
        .parse()
        .with_context(|| format!("{s:?} is not a whole number"))
}

// ---------------------------------------------------------------------------
// The generated catalog

fn mix(mut z: u64) -> u64 {
    // splitmix64
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small deterministic generator for picking look-ups.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0 ^ 0x5eed) % n
    }
}

struct Catalog {
    rows: u64,
}

impl Catalog {
    /// About 1% of the files are a re-run of another file's sample: they sit in
    /// a `rerun/` folder under their own run and share that file's base name.
    fn raw_rerun(&self, i: u64) -> bool {
        mix(i ^ 0xa11ce) % 100 == 0
    }
    fn partner(&self, i: u64) -> u64 {
        (i + self.rows / 2) % self.rows
    }
    fn partner_inverse(&self, j: u64) -> u64 {
        (j + self.rows - self.rows / 2) % self.rows
    }
    /// Whether file `i` takes its partner's base name (the partner keeps its own).
    fn is_rerun(&self, i: u64) -> bool {
        self.raw_rerun(i) && !self.raw_rerun(self.partner(i))
    }
    /// Whether file `i`'s base name is shared with a re-run.
    fn is_rerun_source(&self, i: u64) -> bool {
        self.is_rerun(self.partner_inverse(i))
    }

    fn file_id(i: u64) -> String {
        format!("GDB{i:09}")
    }
    fn own_base_name(i: u64) -> String {
        format!("S{:07}_L{:03}_R{}_001.fastq.gz", i / 2, 1 + (mix(i / 2) % 4), 1 + i % 2)
    }
    fn base_name(&self, i: u64) -> String {
        if self.is_rerun(i) {
            Self::own_base_name(self.partner(i))
        } else {
            Self::own_base_name(i)
        }
    }
    fn submitted_secs(&self, i: u64) -> i64 {
        EPOCH + (i as i128 * SPAN_SECS as i128 / self.rows as i128) as i64 + (mix(i ^ 7) % 3600) as i64
    }
    fn path(&self, i: u64) -> String {
        let secs = self.submitted_secs(i);
        let year = OffsetDateTime::from_unix_timestamp(secs).map(|t| t.year()).unwrap_or(2019);
        let run = i / FILES_PER_RUN;
        if self.is_rerun(i) {
            format!("runs/{year}/R{run:04}/rerun/{}", self.base_name(i))
        } else {
            format!("runs/{year}/R{run:04}/{}", self.base_name(i))
        }
    }
    fn department(i: u64) -> &'static str {
        let total: u64 = DEPARTMENTS.iter().map(|d| d.4).sum();
        let mut pick = mix(i ^ 0xdead) % total;
        for d in DEPARTMENTS {
            if pick < d.4 {
                return d.0;
            }
            pick -= d.4;
        }
        DEPARTMENTS[0].0
    }

    /// Writes the TSV; returns the number of base names shared by two files.
    fn write_tsv(&self, path: &Path) -> Result<u64> {
        let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        writeln!(w, "file_id\tpath\tdepartment\tsize\tsha256\tsubmitted_at\tsample_id")?;
        let cet = UtcOffset::from_hms(1, 0, 0)?;
        let mut shared = 0;
        let mut sha_hex = String::with_capacity(64);
        for i in 0..self.rows {
            if self.is_rerun(i) {
                shared += 1;
            }
            let h = mix(i);
            let size = 50_000_000 + h % 30_000_000_000;
            let digest = Sha256::digest(i.to_le_bytes());
            sha_hex.clear();
            for b in digest {
                let _ = write!(sha_hex, "{b:02x}");
            }
            let t = OffsetDateTime::from_unix_timestamp(self.submitted_secs(i))?;
            // Most timestamps in UTC, some with the Danish winter offset.
            let t = if h % 5 == 0 { t.to_offset(cet) } else { t };
            let submitted = t.format(&Rfc3339)?;
            writeln!(
                w,
                "{}\t{}\t{}\t{size}\t{sha_hex}\t{submitted}\tS{:07}",
                Self::file_id(i),
                self.path(i),
                Self::department(i),
                i / 2
            )?;
        }
        w.flush()?;
        Ok(shared)
    }
}

fn directory_toml() -> String {
    let mut s = String::new();
    let mut groups: Vec<&str> = DEPARTMENTS.iter().map(|d| d.2).collect();
    groups.dedup();
    for g in groups {
        let _ = writeln!(s, "[[group]]\nid = \"{g}\"\n");
    }
    for (id, name, group, uid, _) in DEPARTMENTS {
        let _ = writeln!(
            s,
            "[[department]]\nid = \"{id}\"\nname = \"{name}\"\ngroup = \"{group}\"\ntransfer_account = {uid}\n"
        );
    }
    s.push_str("[[user]]\nid = \"alice@regionh.dk\"\ndepartment = \"RH-KGA\"\n");
    s
}

// ---------------------------------------------------------------------------
// Descriptors to look up

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    FileId,
    Path,
    BaseName,
    SharedBaseName,
    Miss,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::FileId, Kind::Path, Kind::BaseName, Kind::SharedBaseName, Kind::Miss];
    fn label(self) -> &'static str {
        match self {
            Kind::FileId => "file_id",
            Kind::Path => "path",
            Kind::BaseName => "base name",
            Kind::SharedBaseName => "base name, 2 files",
            Kind::Miss => "miss",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Kind::FileId => "file_id",
            Kind::Path => "path",
            Kind::BaseName => "base_name",
            Kind::SharedBaseName => "shared_base_name",
            Kind::Miss => "miss",
        }
    }
}

/// `count` descriptors of `kind` with the number of files each must match.
fn descriptors(cat: &Catalog, kind: Kind, count: usize, rng: &mut Rng) -> Vec<(String, usize)> {
    let mut out = Vec::with_capacity(count);
    let mut tries = 0u64;
    while out.len() < count {
        tries += 1;
        let i = rng.below(cat.rows);
        let d = match kind {
            Kind::FileId => Some((Catalog::file_id(i), 1)),
            Kind::Path => Some((cat.path(i), 1)),
            Kind::BaseName => (!cat.is_rerun(i) && !cat.is_rerun_source(i)).then(|| (cat.base_name(i), 1)),
            Kind::SharedBaseName => cat.is_rerun(i).then(|| (cat.base_name(i), 2)),
            Kind::Miss => Some(match i % 3 {
                0 => (Catalog::file_id(cat.rows + i), 0),
                1 => (format!("S9{:06}_L001_R1_001.fastq.gz", i % 1_000_000), 0),
                _ => (format!("runs/2031/R{:04}/{}", i / FILES_PER_RUN, Catalog::own_base_name(i)), 0),
            }),
        };
        if let Some(d) = d {
            out.push(d);
        }
        if tries > 1_000 * count as u64 + 1_000_000 {
            break; // a catalog too small to have shared base names
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Searches

/// Who searches: staff (every file), and requesters of a large user group
/// (36 % of the files) and of a small one (2 %).
const WHO: [(&str, Option<&[&str]>); 3] = [
    ("staff", None),
    ("requester, 36 % group", Some(&["HGH-GEN", "RH-KGA"])),
    ("requester, 2 % group", Some(&["NGC-RES"])),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Search {
    Sample,
    Prefix,
    Run,
    Since,
    Many,
    All,
    NoMatch,
}

impl Search {
    const ALL: [Search; 7] = [
        Search::Sample,
        Search::Prefix,
        Search::Run,
        Search::Since,
        Search::Many,
        Search::All,
        Search::NoMatch,
    ];

    fn label(self) -> &'static str {
        match self {
            Search::Sample => "--sample S0123456 (2 files)",
            Search::Prefix => "'S012345*' (20 files)",
            Search::Run => "'runs/2024/R0123/*' (a run: 400 files)",
            Search::Since => "--since 30 days ago (200 of ~12,000)",
            Search::Many => "'*_R1_*' (200 of half the catalog)",
            Search::All => "no pattern (the first 200)",
            Search::NoMatch => "'*_L009_*' (nothing matches: every row read)",
        }
    }

    fn query(self, cat: &Catalog, departments: Option<&[&str]>, rng: &mut Rng) -> Result<(Option<Glob>, CatalogQuery)> {
        let i = rng.below(cat.rows);
        let mut q = CatalogQuery {
            departments: departments.map(|d| d.iter().map(|s| s.to_string()).collect()),
            ..CatalogQuery::default()
        };
        let pattern = match self {
            Search::Sample => {
                q.sample_id = Some(format!("S{:07}", i / 2));
                None
            }
            Search::Prefix => Some(format!("S{:06}*", i / 20)),
            Search::Run => {
                let path = cat.path(i);
                Some(format!("{}*", &path[..path.rfind('/').unwrap_or(0) + 1]))
            }
            Search::Since => {
                q.since_ns = Some((EPOCH + SPAN_SECS - 30 * 86_400) * 1_000_000_000);
                None
            }
            Search::Many => Some("*_R1_*".into()),
            Search::All => None,
            Search::NoMatch => Some("*_L009_*".into()),
        };
        let glob = pattern.as_deref().map(Glob::parse).transpose().map_err(anyhow::Error::msg)?;
        q.name = glob.as_ref().map(Glob::filter);
        Ok((glob, q))
    }
}

// ---------------------------------------------------------------------------
// Measuring

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 { s[m] } else { (s[m - 1] + s[m]) / 2.0 }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (k, c) in s.chars().enumerate() {
        if k > 0 && (s.len() - k) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(rows: u64, secs: f64) -> String {
    format!("{} rows/s", thousands((rows as f64 / secs).round() as u64))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn file_mib(p: &Path) -> f64 {
    std::fs::metadata(p).map(|m| m.len() as f64 / (1 << 20) as f64).unwrap_or(0.0)
}

fn parse_file(path: &Path, dir: &Directory) -> Result<Vec<workcopy::domain::catalog::CatalogRow>> {
    // As the daemon reads it: a 1 MiB buffered reader over the file.
    let file = std::fs::File::open(path)?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    Ok(parse_catalog(&mut reader, &|d| dir.departments.contains_key(d))?)
}

struct ImportRun {
    /// The parser alone, every row kept in memory.
    parse: f64,
    /// The import as `catalog import` runs it: parsed while stored.
    import: f64,
    summary: ImportSummary,
}

fn import_once(rt: &tokio::runtime::Runtime, store: &Arc<dyn Store>, tsv: &Path, dir: &Directory) -> Result<ImportRun> {
    let t0 = Instant::now();
    let rows = parse_file(tsv, dir)?;
    let parse = t0.elapsed().as_secs_f64();
    drop(rows);
    let file = std::fs::File::open(tsv)?;
    let departments = dir.departments.clone();
    let t1 = Instant::now();
    let summary = rt.block_on(workcopy::service::import_catalog(store.as_ref(), file, move |d| {
        departments.contains_key(d)
    }))?;
    let import = t1.elapsed().as_secs_f64();
    Ok(ImportRun { parse, import, summary })
}

/// Where each run's fresh database comes from.
enum Backend {
    Sqlite,
    /// A throw-away server (its URL to the `postgres` database, its directory).
    Postgres {
        url: String,
        dir: PathBuf,
    },
}

impl Backend {
    fn start(postgres: bool, tmp: &Path) -> Result<Backend> {
        if !postgres {
            return Ok(Backend::Sqlite);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tmp.join("pg");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-test-server");
        let out = std::process::Command::new(&script)
            .arg(&dir)
            .arg(port.to_string())
            .arg(std::process::id().to_string())
            .output()?;
        if !out.status.success() {
            bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
        }
        Ok(Backend::Postgres {
            url: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            dir,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres { .. } => "PostgreSQL",
        }
    }

    /// A fresh store in `dir` (SQLite) or a new database (PostgreSQL).
    async fn open(&self, dir: &Path, run: usize) -> Result<Arc<dyn Store>> {
        let url = match self {
            Backend::Sqlite => format!("sqlite://{}", dir.join("bench.db").display()),
            Backend::Postgres { url, .. } => {
                let name = format!("bench_{run}");
                let out = std::process::Command::new("psql")
                    .args([
                        "-X",
                        "-q",
                        url,
                        "-c",
                        &format!("DROP DATABASE IF EXISTS {name}"),
                        "-c",
                        &format!("CREATE DATABASE {name}"),
                    ])
                    .output()?;
                if !out.status.success() {
                    bail!("CREATE DATABASE {name}: {}", String::from_utf8_lossy(&out.stderr));
                }
                format!("{}/{name}", url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url))
            }
        };
        workcopy::db::open(&url, None).await.with_context(|| format!("cannot open {url}"))
    }

    /// PostgreSQL: the URL of run `run`'s database.
    fn url(&self, run: usize) -> Option<String> {
        let Backend::Postgres { url, .. } = self else {
            return None;
        };
        Some(format!("{}/bench_{run}", url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url)))
    }

    /// PostgreSQL: the server's own floor for the same work, as a baseline —
    /// the imported rows, dumped with `COPY TO`, loaded by psql's `\copy`
    /// into a bare table of the catalog's columns, and the catalog's five
    /// indexes built on it, in one transaction. Returns the seconds.
    fn copy_floor(&self, run: usize, tmp: &Path) -> Result<Option<f64>> {
        let Some(db) = self.url(run) else {
            return Ok(None);
        };
        let dump = tmp.join("catalog.copy");
        let psql = |args: &[&str]| -> Result<()> {
            let out = std::process::Command::new("psql").args(["-X", "-q", &db]).args(args).output()?;
            if !out.status.success() {
                bail!("psql {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        };
        psql(&["-c", &format!("\\copy catalog TO '{}'", dump.display())])?;
        let t = Instant::now();
        psql(&[
            "-1",
            "-c",
            "CREATE TABLE floor (LIKE catalog)",
            "-c",
            &format!("\\copy floor FROM '{}'", dump.display()),
            "-c",
            "ALTER TABLE floor ADD PRIMARY KEY (file_id)",
            "-c",
            "CREATE INDEX ON floor (path, department)",
            "-c",
            "CREATE INDEX ON floor (base_name, department)",
            "-c",
            "CREATE INDEX ON floor (sample_id)",
            "-c",
            "CREATE INDEX ON floor (submitted_ns, department)",
        ])?;
        let secs = t.elapsed().as_secs_f64();
        psql(&["-c", "DROP TABLE floor"])?;
        std::fs::remove_file(&dump)?;
        Ok(Some(secs))
    }

    /// PostgreSQL: what the server and the kernel do by themselves after a
    /// large import — vacuum the catalog, write the dirty pages out, to the
    /// files and on to the disk — done now, so that a second round of
    /// look-ups sees the steady state. Returns the seconds.
    fn settle(&self, run: usize) -> Result<Option<f64>> {
        let Some(db) = self.url(run) else {
            return Ok(None);
        };
        let t = Instant::now();
        let out = std::process::Command::new("psql")
            .args(["-X", "-q", &db, "-c", "VACUUM catalog", "-c", "CHECKPOINT"])
            .output()?;
        if !out.status.success() {
            bail!("VACUUM, CHECKPOINT: {}", String::from_utf8_lossy(&out.stderr));
        }
        if !std::process::Command::new("sync").status()?.success() {
            bail!("sync failed");
        }
        Ok(Some(t.elapsed().as_secs_f64()))
    }

    fn stop(&self) {
        if let Backend::Postgres { dir, .. } = self {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pg-test-server");
            let _ = std::process::Command::new(script).arg("stop").arg(dir).status();
        }
    }
}

/// Per kind of descriptor: the look-ups' times, and (PostgreSQL) the times of
/// the bare round trip each was paired with.
type Latencies = Vec<(Kind, Vec<Duration>, Vec<Duration>)>;

/// Each look-up is followed by the baseline: `SELECT $1::text` with the same
/// descriptor, on a connection of its own to the same server — the client,
/// loopback and scheduling cost that any query pays on this machine. Timed
/// in pairs, the two see the same noise.
fn resolution(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn Store>,
    baseline: Option<&sqlx::PgPool>,
    cat: &Catalog,
    lookups: usize,
) -> Result<Latencies> {
    let mut rng = Rng(7);
    let mut latencies = Vec::new();
    for kind in Kind::ALL {
        let ds = descriptors(cat, kind, lookups, &mut rng);
        if ds.is_empty() {
            continue;
        }
        let warm = descriptors(cat, kind, 50, &mut rng);
        let times = rt.block_on(async {
            for (d, _) in &warm {
                store.resolve(d, 10).await?;
            }
            let mut times = Vec::with_capacity(ds.len());
            let mut bare = Vec::with_capacity(ds.len());
            for (d, want) in &ds {
                let t = Instant::now();
                let got = store.resolve(d, 10).await?;
                times.push(t.elapsed());
                if got.len() != *want {
                    bail!("resolve({d:?}) found {} file(s), expected {want}", got.len());
                }
                if let Some(pool) = baseline {
                    let t = Instant::now();
                    let _: String = sqlx::query_scalar("SELECT $1::text").bind(d).fetch_one(pool).await?;
                    bare.push(t.elapsed());
                }
            }
            Ok((times, bare))
        })?;
        latencies.push((kind, times.0, times.1));
    }
    Ok(latencies)
}

fn print_latencies(latencies: Latencies) {
    let baseline = latencies.iter().any(|(_, _, bare)| !bare.is_empty());
    if baseline {
        println!(
            "  {:<26}{:>10}{:>10}{:>10}   {:>22}",
            "descriptor", "median", "p99", "max", "SELECT $1: median, p99"
        );
    } else {
        println!("  {:<26}{:>10}{:>10}{:>10}", "descriptor", "median", "p99", "max");
    }
    for (kind, mut times, mut bare) in latencies {
        times.sort();
        bare.sort();
        let med = us(percentile(&times, 0.5));
        let p99 = us(percentile(&times, 0.99));
        let max = us(times.last().copied().unwrap_or_default());
        if baseline {
            let (bmed, bp99) = (us(percentile(&bare, 0.5)), us(percentile(&bare, 0.99)));
            println!(
                "  {:<26}{med:>10.1}{p99:>10.1}{max:>10.1}   {bmed:>10.1}{bp99:>10.1}   ({:.2}×, {:.2}×)",
                kind.label(),
                med / bmed,
                p99 / bp99
            );
        } else {
            println!("  {:<26}{med:>10.1}{p99:>10.1}{max:>10.1}", kind.label());
        }
    }
}

fn main() -> Result<()> {
    let o = parse_args()?;
    let cat = Catalog { rows: o.rows };

    if o.write_tsv.is_some() || o.write_directory.is_some() || o.write_descriptors.is_some() {
        if let Some(p) = &o.write_tsv {
            let shared = cat.write_tsv(p)?;
            eprintln!(
                "wrote {} ({} rows, {:.1} MiB, {} base names shared by 2 files)",
                p.display(),
                thousands(o.rows),
                file_mib(p),
                thousands(shared)
            );
        }
        if let Some(p) = &o.write_directory {
            std::fs::write(p, directory_toml()).with_context(|| format!("cannot write {}", p.display()))?;
        }
        if let Some(p) = &o.write_descriptors {
            let mut rng = Rng(42);
            let mut text = String::new();
            for kind in Kind::ALL {
                for (d, n) in descriptors(&cat, kind, o.lookups, &mut rng) {
                    let _ = writeln!(text, "{}\t{d}\t{n}", kind.tag());
                }
            }
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
        }
        return Ok(());
    }

    let started = Instant::now();
    let load = loadavg();
    let tmp = tempfile::Builder::new().prefix("workcopy-bench-").tempdir()?;
    let tsv = tmp.path().join("catalog.tsv");
    let t = Instant::now();
    let shared = cat.write_tsv(&tsv)?;
    let gen_secs = t.elapsed().as_secs_f64();
    let tsv_mib = file_mib(&tsv);
    let dir = Directory::parse(&directory_toml(), "bench directory", &|n| {
        Err(workcopy::unix::LookupError::NoUser(n.to_string()))
    })?;

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let backend = Backend::start(o.postgres, tmp.path())?;

    // (a), (b): parse + import into a fresh database, `runs` times.
    let mut runs = Vec::new();
    let mut last: Option<(Arc<dyn Store>, PathBuf)> = None;
    for r in 0..o.runs {
        if let Some((store, db_dir)) = last.take() {
            rt.block_on(async { drop(store) });
            std::fs::remove_dir_all(&db_dir)?;
        }
        let db_dir = tmp.path().join(format!("run{r}"));
        std::fs::create_dir_all(&db_dir)?;
        let store = rt.block_on(backend.open(&db_dir, r))?;
        let run = import_once(&rt, &store, &tsv, &dir)?;
        if run.summary.added != o.rows || run.summary.catalog_files != o.rows {
            bail!("import {r} added {} of {} rows: {:?}", run.summary.added, o.rows, run.summary);
        }
        eprintln!("  import run {}: parse alone {:.2} s, import {:.2} s", r + 1, run.parse, run.import);
        runs.push(run);
        last = Some((store, db_dir));
    }
    let Some((store, db_dir)) = last else { bail!("no import run") };
    let (db_mib, wal_mib) = (file_mib(&db_dir.join("bench.db")), file_mib(&db_dir.join("bench.db-wal")));

    // (c): the same rows again: nothing changes.
    let again = import_once(&rt, &store, &tsv, &dir)?;
    let s = &again.summary;
    if s.added != 0 || s.updated != 0 || s.unchanged != o.rows {
        bail!("the re-import changed the catalog: {s:?}");
    }
    eprintln!("  re-import: parse alone {:.2} s, import {:.2} s", again.parse, again.import);

    // (d): resolution latency per descriptor kind, right after the import
    // and (PostgreSQL) once the server has vacuumed and checkpointed.
    let baseline = match backend.url(o.runs - 1) {
        Some(url) => Some(rt.block_on(sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&url))?),
        None => None,
    };
    let latencies = resolution(&rt, &store, baseline.as_ref(), &cat, o.lookups)?;
    let floor = backend.copy_floor(o.runs - 1, tmp.path())?;
    let settled = match backend.settle(o.runs - 1)? {
        Some(secs) => Some((secs, resolution(&rt, &store, baseline.as_ref(), &cat, o.lookups)?)),
        None => None,
    };

    // (e): search latency, as staff and as requesters of two user groups.
    let searches = o.lookups.min(200);
    let mut search_latencies = Vec::new();
    for (who, departments) in WHO {
        for search in Search::ALL {
            let mut rng = Rng(11);
            let n = if search == Search::NoMatch {
                searches.div_ceil(10)
            } else {
                searches
            };
            let times = rt.block_on(async {
                let mut times = Vec::with_capacity(n);
                let mut found = 0;
                for k in 0..n + 5 {
                    let (glob, query) = search.query(&cat, departments, &mut rng)?;
                    let t = Instant::now();
                    let (files, _more) = workcopy::service::find_files(store.as_ref(), &query, glob.as_ref()).await?;
                    // The first few warm the cache.
                    if k >= 5 {
                        times.push(t.elapsed());
                        found += files.len();
                    }
                }
                if search != Search::NoMatch && found == 0 {
                    bail!("{} as {who} found nothing in {n} searches", search.label());
                }
                if search == Search::NoMatch && found != 0 {
                    bail!("{} as {who} found {found} files", search.label());
                }
                Ok((times, found as f64 / n as f64))
            })?;
            search_latencies.push((who, search, times));
        }
    }
    rt.block_on(async { drop(store) });
    backend.stop();

    // Report.
    let parse: Vec<f64> = runs.iter().map(|r| r.parse).collect();
    let total: Vec<f64> = runs.iter().map(|r| r.import).collect();
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
    let n = o.rows;
    println!();
    println!(
        "workcopy catalog benchmark{}",
        if o.bench {
            ""
        } else {
            " (smoke test: run with `cargo bench` to measure)"
        }
    );
    println!(
        "machine    {} CPUs, {}; load average at start {load}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model()
    );
    println!(
        "catalog    {} rows, {:.1} MiB TSV (generated in {gen_secs:.1} s), {} base names shared by 2 files",
        thousands(n),
        tsv_mib,
        thousands(shared)
    );
    println!("import into a fresh {} database, median of {} run(s):", backend.name(), o.runs);
    println!("  {:<30}{:>18}{:>10}   runs (s)", "step", "rate", "seconds");
    for (label, v) in [("parse alone (parse_catalog)", &parse), ("import (parsed while stored)", &total)] {
        let m = median(v);
        println!("  {label:<30}{:>18}{m:>10.2}   {}", rate(n, m), list(v));
    }
    println!(
        "  {:<30}{:>18}{:>10.2}   (parse alone {:.2})",
        "re-import, nothing changes",
        rate(n, again.import),
        again.import,
        again.parse
    );
    if let Some(secs) = floor {
        println!(
            "  {:<30}{:>18}{secs:>10.2}   the import takes {:.2} times as long",
            "baseline: psql \\copy + indexes",
            rate(n, secs),
            median(&total) / secs
        );
    }
    if let Backend::Sqlite = backend {
        println!("  on disk after the import: database {db_mib:.1} MiB, its -wal file {wal_mib:.1} MiB");
    }
    println!(
        "resolution, Store::resolve(descriptor, 10), {} look-ups each, right after the import (µs):",
        thousands(o.lookups as u64)
    );
    print_latencies(latencies);
    if let Some((secs, latencies)) = settled {
        println!("the same once the server has vacuumed the catalog and checkpointed, and after sync ({secs:.1} s):");
        print_latencies(latencies);
    }
    println!(
        "search, workcopy::service::find_files (what `catalog search` runs), {} searches each (ms):",
        thousands(searches as u64)
    );
    println!(
        "  {:<22}{:<44}{:>9}{:>9}{:>9}{:>8}",
        "as", "search", "median", "p99", "max", "files"
    );
    for (who, search, (mut times, files)) in search_latencies {
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {who:<22}{:<44}{:>9.2}{:>9.2}{:>9.2}{files:>8.0}",
            search.label(),
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(times.last().copied().unwrap_or_default()),
        );
    }
    if let Some(rss) = peak_rss_mib() {
        println!(
            "peak RSS   {rss:.0} MiB; whole benchmark {:.0} s; load average at the end {}",
            started.elapsed().as_secs_f64(),
            loadavg()
        );
    }
    Ok(())
}
