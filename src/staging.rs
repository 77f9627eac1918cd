//! Bringing a case's files to the point where they may be served: each GDB
//! file is opened read-only strictly beneath `gdb_root` (no symlinks, no
//! `..`), and its bytes must match the catalog's size and sha256. In staged
//! mode the bytes are copied into the staging area while they are hashed,
//! fsynced, and only then published under their final name.

use crate::audit::hex;
use crate::gdb::{self, BeneathError, Changeable, FileIdentity};
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const CHUNK: usize = 1 << 20;

/// How far a staging job got (the bytes of all its files together, however
/// many are read at once), and whether it should stop.
#[derive(Debug, Default)]
pub struct Progress {
    pub done: AtomicU64,
    /// Set when the case was closed: the job stops and its outcome is dropped.
    pub cancel: std::sync::atomic::AtomicBool,
    /// Set when another file of the job failed: the files still being read
    /// stop, and the job's outcome is that file's failure.
    pub halt: std::sync::atomic::AtomicBool,
}

impl Progress {
    /// True once the files being read should stop.
    pub fn stopped(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.halt.load(Ordering::Relaxed)
    }

    fn advance(&self, n: usize, rel: &str) -> Result<(), StageError> {
        self.done.fetch_add(n as u64, Ordering::Relaxed);
        if self.stopped() {
            return Err(StageError::Cancelled(rel.to_string()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}: staging stopped (the case was closed)")]
    Cancelled(String),
    #[error("{path}: cannot open beneath gdb_root: {reason}")]
    Open { path: String, reason: BeneathError },
    #[error(
        "direct mode serves only files that cannot change under a reader: GDB file {path} {reason}; {}",
        gdb::DIRECT_MODE_REMEDY
    )]
    Changeable { path: String, reason: Changeable },
    #[error("{path}: is {actual} bytes, the catalog says {expected}")]
    Size { path: String, expected: u64, actual: u64 },
    #[error("{path}: sha256 is {actual}, the catalog says {expected}")]
    Checksum { path: String, expected: String, actual: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// What one file must be.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    pub rel: &'a str,
    pub size: u64,
    pub sha256: &'a str,
}

fn check(e: &Expect<'_>, actual_size: u64, hasher: Sha256) -> Result<(), StageError> {
    if actual_size != e.size {
        return Err(StageError::Size {
            path: e.rel.to_string(),
            expected: e.size,
            actual: actual_size,
        });
    }
    let actual = hex(&hasher.finalize());
    if actual != e.sha256 {
        return Err(StageError::Checksum {
            path: e.rel.to_string(),
            expected: e.sha256.to_string(),
            actual,
        });
    }
    Ok(())
}

fn open_beneath(root: impl AsFd, rel: &str) -> Result<File, StageError> {
    gdb::open_beneath(root, rel).map_err(|reason| StageError::Open {
        path: rel.to_string(),
        reason,
    })
}

fn io(path: &str) -> impl Fn(std::io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        path: path.to_string(),
        source,
    }
}

/// Direct mode: hashes the GDB file in place. Only a file that cannot
/// change under a reader ([`gdb::unchangeable`]) is served from the GDB, so
/// any other is refused before it is read; each open in the export checks
/// it again.
pub fn verify_in_place(root: impl AsFd, e: &Expect<'_>, progress: &Progress) -> Result<FileIdentity, StageError> {
    let mut f = open_beneath(root, e.rel)?;
    gdb::unchangeable(&f).map_err(|reason| StageError::Changeable {
        path: e.rel.to_string(),
        reason,
    })?;
    let before = FileIdentity::of(&f.metadata().map_err(io(e.rel))?);
    let size = before.size;
    if size != e.size {
        return Err(StageError::Size {
            path: e.rel.to_string(),
            expected: e.size,
            actual: size,
        });
    }
    hash_unchanged(&mut f, before, e, progress)
}

/// Hashes `f` to its end and checks it against `e`; the file's identity
/// must still be `before` afterwards (nothing changed it while it was read).
fn hash_unchanged(f: &mut File, before: FileIdentity, e: &Expect<'_>, progress: &Progress) -> Result<FileIdentity, StageError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io(e.rel))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
        progress.advance(n, e.rel)?;
    }
    check(e, total, h)?;
    let after = FileIdentity::of(&f.metadata().map_err(io(e.rel))?);
    if after != before {
        return Err(StageError::Io {
            path: e.rel.to_string(),
            source: std::io::Error::other("the file changed while it was being verified"),
        });
    }
    Ok(after)
}

/// Staged mode, after a start: hashes a staged copy again. Its bytes must
/// still be the catalog's (a disk or a hand may have changed them while the
/// daemon was down); returns its identity, which each open then checks.
pub fn verify_copy(path: &Path, e: &Expect<'_>, progress: &Progress) -> Result<FileIdentity, StageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io(e.rel))?;
    let meta = f.metadata().map_err(io(e.rel))?;
    if !meta.is_file() {
        return Err(StageError::Io {
            path: e.rel.to_string(),
            source: std::io::Error::other("the staged copy is not a regular file"),
        });
    }
    let before = FileIdentity::of(&meta);
    if before.size != e.size {
        return Err(StageError::Size {
            path: e.rel.to_string(),
            expected: e.size,
            actual: before.size,
        });
    }
    hash_unchanged(&mut f, before, e, progress)
}

/// A verified copy under its temporary name, not yet durable or visible.
/// Dropped without [`commit`](StagedCopy::commit) (another file of the
/// case failed), its temporary file is deleted.
pub struct StagedCopy {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    rel: String,
    committed: bool,
}

impl StagedCopy {
    /// Makes the copy durable and gives it its final name. The caller syncs
    /// the directory once all copies of a case are committed ([`sync_dir`]).
    pub fn commit(mut self) -> Result<FileIdentity, StageError> {
        self.file.sync_all().map_err(io(&self.rel))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(io(&self.rel))?;
        self.committed = true;
        Ok(FileIdentity::of(&self.file.metadata().map_err(io(&self.rel))?))
    }
}

impl Drop for StagedCopy {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Staged mode: copies the GDB file to a temporary name beside `dest` while
/// hashing it. The copy is kept only when it matched; it is not yet synced
/// (a case's copies are synced together before the case is published).
pub fn stage_copy_unsynced(root: impl AsFd, e: &Expect<'_>, dest: &Path, progress: &Progress) -> Result<StagedCopy, StageError> {
    let mut src = open_beneath(root, e.rel)?;
    let tmp = temp_name(dest);
    let result = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode_0600()
            .open(&tmp)
            .map_err(io(e.rel))?;
        let _ = nix::fcntl::fallocate(&out, nix::fcntl::FallocateFlags::empty(), 0, e.size as i64);
        let (total, h) = copy_hashing(&mut src, &mut out, e, progress)?;
        check(e, total, h)?;
        Ok(out)
    })();
    match result {
        Ok(file) => Ok(StagedCopy {
            file,
            tmp,
            dest: dest.to_path_buf(),
            rel: e.rel.to_string(),
            committed: false,
        }),
        Err(err) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err)
        }
    }
}

/// Staged mode for one file: copy while hashing, fsync, rename, sync the directory.
pub fn stage_copy(root: impl AsFd, e: &Expect<'_>, dest: &Path, progress: &Progress) -> Result<FileIdentity, StageError> {
    let id = stage_copy_unsynced(root, e, dest, progress)?.commit()?;
    sync_dir(dest.parent().unwrap_or(Path::new("."))).map_err(io(e.rel))?;
    Ok(id)
}

/// The alignment O_DIRECT needs for buffers, file offsets and lengths.
const ALIGN: usize = 4096;

/// A CHUNK-sized buffer aligned for O_DIRECT, and how much of it is filled.
struct Block {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Block {
    fn new() -> Block {
        let mem = vec![0u8; CHUNK + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN).min(ALIGN);
        Block { mem, start, len: 0 }
    }
    fn space(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + CHUNK]
    }
    fn data(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }
}

/// Turns O_DIRECT on or off for a descriptor; false when the filesystem refuses it.
fn set_direct(f: &File, on: bool) -> bool {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let Ok(bits) = fcntl(f, FcntlArg::F_GETFL) else { return false };
    let mut flags = OFlag::from_bits_truncate(bits);
    flags.set(OFlag::O_DIRECT, on);
    fcntl(f, FcntlArg::F_SETFL(flags)).is_ok()
}

/// Reads and hashes on this thread while another writes, so hashing and
/// writing overlap; buffers go round between the two. The copy is written
/// with O_DIRECT where the filesystem allows: the bytes go from the buffer
/// that was hashed straight to the disk, without a second copy through the
/// page cache (and the fsync before publishing then has nothing left to write).
fn copy_hashing(src: &mut File, out: &mut File, e: &Expect<'_>, progress: &Progress) -> Result<(u64, Sha256), StageError> {
    use std::sync::mpsc::sync_channel;
    const DEPTH: usize = 4;
    let (full_tx, full_rx) = sync_channel::<Block>(DEPTH);
    let (empty_tx, empty_rx) = sync_channel::<Block>(DEPTH);
    for _ in 0..DEPTH {
        let _ = empty_tx.send(Block::new());
    }
    let mut direct = set_direct(out, true);
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || -> std::io::Result<()> {
            for block in full_rx {
                // Only whole aligned blocks go direct; the file's tail is written through the cache.
                if direct && block.len % ALIGN != 0 {
                    set_direct(out, false);
                    direct = false;
                }
                match out.write_all(block.data()) {
                    Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                        // The filesystem took O_DIRECT but not this write: go through the cache.
                        direct = false;
                        set_direct(out, false);
                        out.write_all(block.data())?;
                    }
                    r => r?,
                }
                // The reader may have stopped early; a closed channel is fine.
                let _ = empty_tx.send(block);
            }
            Ok(())
        });
        let mut h = Sha256::new();
        let mut total = 0u64;
        let read_result = (|| {
            loop {
                let Ok(mut block) = empty_rx.recv() else {
                    // The writer stopped: its error is reported below.
                    return Ok(());
                };
                // Fill the block completely (a short read mid-file would
                // misalign every direct write after it).
                let mut n = 0;
                while n < CHUNK {
                    match src.read(&mut block.space()[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(err) => return Err(io(e.rel)(err)),
                    }
                }
                if n == 0 {
                    return Ok(());
                }
                block.len = n;
                h.update(block.data());
                total += n as u64;
                progress.advance(n, e.rel)?;
                if total > e.size {
                    return Err(StageError::Size {
                        path: e.rel.to_string(),
                        expected: e.size,
                        actual: total,
                    });
                }
                if full_tx.send(block).is_err() {
                    return Ok(());
                }
            }
        })();
        drop(full_tx);
        let write_result = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the writer thread panicked")));
        read_result?;
        write_result.map_err(io(e.rel))?;
        Ok((total, h))
    })
}

fn temp_name(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".partial.{name}"))
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(Mode::S_IRUSR.bits() | Mode::S_IWUSR.bits())
    }
}

/// Where a case's staged files live.
pub fn case_dir(staging: &Path, case_ref: &str) -> PathBuf {
    staging.join(case_ref)
}

/// Names of staged files on disk are indexed, not the export names, so no
/// name from the catalog ever becomes a path component here.
pub fn staged_file(staging: &Path, case_ref: &str, index: usize) -> PathBuf {
    case_dir(staging, case_ref).join(format!("{index:03}.data"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gdb::test_support::{Immutable, privileged};
    use std::os::unix::fs::symlink;

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    #[test]
    fn copies_verifies_and_refuses_escapes() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("gdb");
        std::fs::create_dir_all(root.join("runs"))?;
        std::fs::write(root.join("runs/a.fq"), b"@r1\nACGT\n+\n!!!!\n")?;
        std::fs::write(tmp.path().join("secret"), b"outside")?;
        symlink(tmp.path().join("secret"), root.join("runs/link.fq"))?;
        symlink("../gdb/runs", root.join("dirlink"))?;
        let rootfd = gdb::open_root(&root)?;
        let data = std::fs::read(root.join("runs/a.fq"))?;
        let good = Expect {
            rel: "runs/a.fq",
            size: data.len() as u64,
            sha256: &sha(&data),
        };
        let p = Progress::default();
        // Direct mode refuses a file that can change under a reader, before reading it.
        let refused = verify_in_place(&rootfd, &good, &p).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            refused.starts_with(
                "direct mode serves only files that cannot change under a reader: \
                 GDB file runs/a.fq is on a writable filesystem"
            ) && refused.ends_with("; use mode = \"staged\", or make the file immutable (chattr +i) or its filesystem read-only"),
            "{refused}"
        );
        assert_eq!(p.done.load(Ordering::Relaxed), 0);
        if privileged() {
            let _immutable = Immutable::set(&root.join("runs/a.fq"));
            verify_in_place(&rootfd, &good, &p)?;
            assert_eq!(p.done.load(Ordering::Relaxed), data.len() as u64);
            let short = Expect {
                rel: "runs/a.fq",
                size: 3,
                sha256: good.sha256,
            };
            assert!(matches!(verify_in_place(&rootfd, &short, &p), Err(StageError::Size { .. })));
            let other = sha(b"other");
            let bad = Expect {
                sha256: &other,
                ..good.clone()
            };
            assert!(matches!(verify_in_place(&rootfd, &bad, &p), Err(StageError::Checksum { .. })));
        } else {
            eprintln!("not root: verification in place of an immutable file is not tried");
        }
        let dest = tmp.path().join("out.data");
        stage_copy(&rootfd, &good, &dest, &p)?;
        assert_eq!(std::fs::read(&dest)?, data);

        let bad_sum = sha(b"other");
        let bad = Expect {
            rel: "runs/a.fq",
            size: data.len() as u64,
            sha256: &bad_sum,
        };
        let dest2 = tmp.path().join("bad.data");
        assert!(matches!(stage_copy(&rootfd, &bad, &dest2, &p), Err(StageError::Checksum { .. })));
        assert!(!dest2.exists() && !tmp.path().join(".partial.bad.data").exists());

        for rel in ["../secret", "runs/link.fq", "dirlink/a.fq", "/etc/passwd", "runs"] {
            let e = Expect {
                rel,
                size: 7,
                sha256: &bad_sum,
            };
            assert!(matches!(verify_in_place(&rootfd, &e, &p), Err(StageError::Open { .. })), "{rel}");
        }
        let link = Expect {
            rel: "runs/link.fq",
            size: 7,
            sha256: &bad_sum,
        };
        assert_eq!(
            verify_in_place(&rootfd, &link, &p).err().map(|e| e.to_string()).as_deref(),
            Some("runs/link.fq: cannot open beneath gdb_root: the path goes through a symbolic link")
        );
        // Whole blocks written direct, then a tail that is not block-aligned.
        let big: Vec<u8> = (0..(2 * CHUNK + 3 * ALIGN + 17)).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(root.join("runs/big.fq"), &big)?;
        let big_sum = sha(&big);
        let e = Expect {
            rel: "runs/big.fq",
            size: big.len() as u64,
            sha256: &big_sum,
        };
        let dest4 = tmp.path().join("big.data");
        stage_copy(&rootfd, &e, &dest4, &p)?;
        assert!(std::fs::read(&dest4)? == big, "the staged copy differs");

        // A copy dropped before its commit (another file of the case failed) leaves nothing.
        let dest5 = tmp.path().join("dropped.data");
        let copy = stage_copy_unsynced(&rootfd, &e, &dest5, &p)?;
        assert!(tmp.path().join(".partial.dropped.data").exists());
        drop(copy);
        assert!(!dest5.exists() && !tmp.path().join(".partial.dropped.data").exists());

        // Another file failed: the copies still running stop, as after a close.
        let halted = Progress::default();
        halted.halt.store(true, Ordering::Relaxed);
        assert!(matches!(stage_copy(&rootfd, &e, &dest5, &halted), Err(StageError::Cancelled(_))));
        assert!(!dest5.exists() && !tmp.path().join(".partial.dropped.data").exists());

        p.cancel.store(true, Ordering::Relaxed);
        let dest3 = tmp.path().join("cancelled.data");
        assert!(matches!(stage_copy(&rootfd, &good, &dest3, &p), Err(StageError::Cancelled(_))));
        assert!(!dest3.exists() && !tmp.path().join(".partial.cancelled.data").exists());
        Ok(())
    }
    /// A staged copy is served again after a start only with the catalog's
    /// bytes: a flipped byte, a shorter file or a link in its place is refused.
    #[test]
    fn a_staged_copy_is_verified_again_byte_for_byte() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("gdb");
        std::fs::create_dir_all(&root)?;
        let data: Vec<u8> = (0..(CHUNK + 4099)).map(|i| (i * 31 + i / 977) as u8).collect();
        std::fs::write(root.join("a.fq"), &data)?;
        let rootfd = gdb::open_root(&root)?;
        let sum = sha(&data);
        let e = Expect {
            rel: "a.fq",
            size: data.len() as u64,
            sha256: &sum,
        };
        let p = Progress::default();
        let dest = tmp.path().join("000.data");
        let staged = stage_copy(&rootfd, &e, &dest, &p)?;
        assert_eq!(verify_copy(&dest, &e, &p)?, staged);

        let mut flipped = data.clone();
        flipped[CHUNK + 7] ^= 0x01;
        std::fs::write(&dest, &flipped)?;
        assert!(matches!(verify_copy(&dest, &e, &p), Err(StageError::Checksum { .. })));
        std::fs::write(&dest, &data[..data.len() - 1])?;
        assert!(matches!(verify_copy(&dest, &e, &p), Err(StageError::Size { .. })));
        std::fs::remove_file(&dest)?;
        symlink(root.join("a.fq"), &dest)?;
        assert!(matches!(verify_copy(&dest, &e, &p), Err(StageError::Io { .. })));
        std::fs::remove_file(&dest)?;
        assert!(matches!(verify_copy(&dest, &e, &p), Err(StageError::Io { .. })));
        Ok(())
    }
}
