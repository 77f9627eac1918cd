"""The measurements behind BENCHMARKS.md; run through scripts/bench."""

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

XFER_UID = 64101
STAFF_GID = 64100
MiB = 1 << 20
# How long a round waits for the machine to be idle (none with --quick, which measures nothing).
QUIET_WAIT = 60


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def as_xfer(cmd):
    return ["setpriv", f"--reuid={XFER_UID}", f"--regid={XFER_UID}", "--clear-groups", *cmd]


def write_random(path, size):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open("/dev/urandom", "rb") as src, open(path, "wb") as dst:
        left = size
        while left:
            chunk = src.read(min(left, 16 * MiB))
            dst.write(chunk)
            left -= len(chunk)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


class Daemon:
    """One workcopy daemon over a shared GDB, with its own state and mount."""

    def __init__(self, bin_, base, gdb, name, mode, passthrough, extra=""):
        self.bin = bin_
        self.dir = os.path.join(base, name)
        self.mnt = os.path.join(self.dir, "mnt")
        self.sock = os.path.join(self.dir, "control.sock")
        os.makedirs(self.mnt)
        os.chmod(self.dir, 0o755)
        self.config = os.path.join(self.dir, "workcopy.toml")
        with open(self.config, "w") as f:
            f.write(
                f'gdb_root = "{gdb}"\nstate_dir = "{self.dir}/state"\nmount_point = "{self.mnt}"\n'
                f'socket = "{self.sock}"\ndirectory = "{base}/directory.toml"\nstaff_group = {STAFF_GID}\n'
                f'mode = "{mode}"\npassthrough = {"true" if passthrough else "false"}\nmax_files_per_case = 20\n{extra}'
            )
        self.log = open(os.path.join(self.dir, "daemon.log"), "w")
        self.proc = subprocess.Popen([self.bin, "--config", self.config, "serve"], stderr=self.log, stdout=self.log)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.sock)
                s.close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"daemon {name} did not start; see {self.dir}/daemon.log")

    def cli(self, *args, capture=False):
        return run([self.bin, "--config", self.config, *args], capture_output=capture, text=True)

    def status(self):
        return json.loads(self.cli("status", "--json", capture=True).stdout)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def read_file(path, bs=MiB, drop_cache=False):
    fd = os.open(path, os.O_RDONLY)
    if drop_cache:
        # Drops this file's pages only (the mount's, not the backing file's),
        # so every byte goes through the daemon while the backing stays warm.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    buf = bytearray(bs)
    view = memoryview(buf)
    try:
        while os.readv(fd, [view]) > 0:
            pass
    finally:
        os.close(fd)


def settle():
    """Lets writeback of an earlier run finish, so no run pays for another's."""
    os.sync()
    time.sleep(0.5)


class CpuWatch:
    """CPU time the rest of the machine used while one timed step ran: all
    CPU time, less this script's, its children's and the daemon's."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, daemon_pid):
        self.pid = daemon_pid
        self.start = self._foreign()

    @staticmethod
    def busy():
        """CPU seconds all processes used since boot."""
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v) - v[3] - v[4]) / CpuWatch.TICK

    def _daemon(self):
        with open(f"/proc/{self.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / self.TICK

    def _foreign(self):
        t = os.times()
        return self.busy() - self._daemon() - (t.user + t.system + t.children_user + t.children_system)

    def foreign_cores(self, seconds):
        return (self._foreign() - self.start) / seconds


def disk_bytes():
    """Bytes read and written by all whole disks since boot."""
    total = 0
    with open("/proc/diskstats") as f:
        for line in f:
            v = line.split()
            if os.path.exists(f"/sys/block/{v[2]}/device"):
                total += (int(v[5]) + int(v[9])) * 512
    return total


def wait_quiet(limit):
    """Waits until the whole machine used under 0.15 cores and its disks
    moved under 20 MB/s for 2 s, for at most `limit` seconds."""
    deadline = time.time() + min(limit, QUIET_WAIT)
    while time.time() < deadline:
        cpu, disk = CpuWatch.busy(), disk_bytes()
        time.sleep(2)
        if (CpuWatch.busy() - cpu) / 2 < 0.15 and (disk_bytes() - disk) / 2 < 20e6:
            return True
    return False


def write_catalog_and_directory(base, rows):
    """`base`/catalog.tsv of `rows` (file_id, path, size, sha256), all of
    department BENCH, and `base`/directory.toml naming it."""
    with open(os.path.join(base, "catalog.tsv"), "w") as f:
        f.write("file_id\tpath\tdepartment\tsize\tsha256\tsubmitted_at\n")
        for fid, rel, size, digest in rows:
            f.write(f"{fid}\t{rel}\tBENCH\t{size}\t{digest}\t2025-03-01T10:00:00Z\n")
    with open(os.path.join(base, "directory.toml"), "w") as f:
        f.write(f'[[group]]\nid = "g"\n[[department]]\nid = "BENCH"\nname = "Bench"\ngroup = "g"\ntransfer_account = {XFER_UID}\n'
                '[[user]]\nid = "bench@example"\ndepartment = "BENCH"\n')


def immutable(path, on):
    """Direct mode serves only files that cannot change: the GDB is made immutable while measured."""
    run(["chattr", "-R", "+i" if on else "-i", path], stderr=subprocess.DEVNULL)


def alternate(runs, variants):
    """Runs each variant once per round, round after round (each round once
    the machine is idle, or after a minute); returns medians."""
    times = {name: [] for name in variants}
    for _ in range(runs):
        wait_quiet(60)
        for name, fn in variants.items():
            settle()
            times[name].append(timed(fn))
    return {name: statistics.median(v) for name, v in times.items()}, times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes: checks the script, measures nothing")
    ap.add_argument("--compare-bin", help="another workcopy binary (say, the previous release) run as one more "
                    "variant of the staged and verify sections, in the same run")
    ap.add_argument("--only", default="read,rsync,staged,verify,listable,list1000",
                    help="comma-separated sections to run (default: all of read,rsync,staged,verify,listable,list1000)")
    args = ap.parse_args()
    big = (64 if args.quick else 2048) * MiB
    case_file = (4 if args.quick else 128) * MiB
    verify_file = (4 if args.quick else 256) * MiB
    only = set(args.only.split(","))
    runs = 2 if args.quick else args.runs
    if args.quick:
        global QUIET_WAIT
        QUIET_WAIT = 0

    base = tempfile.mkdtemp(prefix="workcopy-bench.", dir=os.environ.get("TMPDIR", "/var/tmp"))
    os.chmod(base, 0o755)
    shm = tempfile.mkdtemp(prefix="workcopy-bench.", dir="/dev/shm")
    os.chown(shm, XFER_UID, XFER_UID)
    daemons = []
    results = {}
    gdb = os.path.join(base, "gdb")
    try:
        print(f"generating {big // MiB if 'read' in only else 0} MiB + 20 x {case_file // MiB} MiB + 20 x 1 MiB + 1000 small files in {gdb}", flush=True)
        rows = []
        def add(fid, rel, size, tiny=False):
            p = os.path.join(gdb, rel)
            if tiny:
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "wb") as f:
                    f.write(rel.encode())
            else:
                write_random(p, size)
            rows.append((fid, rel, os.path.getsize(p), sha256(p)))
        if "read" in only:
            add("BIG", "big/sample.fastq", big)
        for i in range(20):
            add(f"C{i:02d}", f"case/S{i:02d}_R1.fastq.gz", case_file)
        for i in range(20):
            add(f"M{i:02d}", f"small/S{i:02d}.fastq.gz", MiB)
        for i in range(1000):
            add(f"T{i:04d}", f"tiny/T{i:04d}.fastq", 0, tiny=True)
        if "verify" in only:
            print(f"generating 20 x {verify_file // MiB} MiB for the verification section", flush=True)
            for i in range(20):
                add(f"V{i:02d}", f"verify/S{i:02d}_R1.fastq.gz", verify_file)
        write_catalog_and_directory(base, rows)

        immutable(gdb, True)
        direct_pt = Daemon(args.bin, base, gdb, "direct-passthrough", "direct", True)
        daemons.append(direct_pt)
        direct_us = Daemon(args.bin, base, gdb, "direct-userspace", "direct", False)
        daemons.append(direct_us)
        staged = Daemon(args.bin, base, gdb, "staged", "staged", True)
        daemons.append(staged)
        # The same, verifying one file after the other.
        staged1 = Daemon(args.bin, base, gdb, "staged-1-worker", "staged", True, "verify_workers = 1\n")
        daemons.append(staged1)
        compare = {}
        if args.compare_bin:
            for mode in ("staged", "direct"):
                compare[mode] = Daemon(args.compare_bin, base, gdb, f"compare-{mode}", mode, True)
                daemons.append(compare[mode])
        workers = {}
        if "verify" in only:
            for n in (1, 2, 4):
                workers[n] = Daemon(args.bin, base, gdb, f"direct-{n}-workers", "direct", True, f"verify_workers = {n}\n")
                daemons.append(workers[n])
            if compare:
                workers["compare"] = compare["direct"]
        for d in daemons:
            d.cli("catalog", "import", os.path.join(base, "catalog.tsv"), capture=True)
        print("read paths:", direct_pt.status()["read_path"], "|", direct_us.status()["read_path"], flush=True)

        case_files = [f"C{i:02d}" for i in range(20)]
        if "read" in only:
            # 1. Sequential read of the big file.
            for d in (direct_pt, direct_us):
                d.cli("case", "open", "BIG", "--requester", "bench@example", "BIG", capture=True)
                d.cli("case", "approve", "BIG", capture=True)
            direct = os.path.join(gdb, "big/sample.fastq")
            read_file(direct)
            med, _ = alternate(runs, {
                "direct": lambda: read_file(direct),
                "passthrough": lambda: read_file(os.path.join(direct_pt.mnt, "BIG/sample.fastq")),
                "userspace": lambda: read_file(os.path.join(direct_us.mnt, "BIG/sample.fastq"), drop_cache=True),
            })
            gbps = lambda s: big / s / 1e9
            results["read"] = {k: {"seconds": v, "GB/s": gbps(v), "ratio": med["direct"] / v} for k, v in med.items()}

        if "rsync" in only:
            # 2. rsync -a of a 20-file case as the transfer uid.
            case_files = [f"C{i:02d}" for i in range(20)]
            for d in (direct_pt, direct_us):
                d.cli("case", "open", "CASE20", "--requester", "bench@example", *case_files, capture=True)
                d.cli("case", "approve", "CASE20", capture=True)
            src_direct = os.path.join(gdb, "case") + "/"
            def drop_mount_cache(case_dir):
                for name in os.listdir(case_dir):
                    fd = os.open(os.path.join(case_dir, name), os.O_RDONLY)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    os.close(fd)
            def rsync_from(src, drop=False):
                def go():
                    if drop:
                        drop_mount_cache(src)
                    dest = os.path.join(shm, "dest")
                    run(as_xfer(["rsync", "-a", src, dest + "/"]))
                    shutil.rmtree(dest)
                return go
            med, _ = alternate(max(3, runs - 2), {
                "direct": rsync_from(src_direct),
                "passthrough": rsync_from(os.path.join(direct_pt.mnt, "CASE20") + "/"),
                "userspace": rsync_from(os.path.join(direct_us.mnt, "CASE20") + "/", drop=True),
            })
            total = 20 * case_file
            results["rsync"] = {k: {"seconds": v, "GB/s": total / v / 1e9, "ratio": med["direct"] / v} for k, v in med.items()}

        if "staged" in only:
            # 3. Staged approval of that case against cp -r + openssl dgst -sha256.
            copy_dir = os.path.join(base, "cp-baseline")
            n = [0]
            def approve_on(d):
                def go():
                    n[0] += 1
                    ref = f"STAGE{n[0]}"
                    d.cli("case", "open", ref, "--requester", "bench@example", *case_files, capture=True)
                    d.cli("case", "approve", ref, capture=True)
                    d.cli("case", "close", ref, "--force", "--reason", "benchmark", capture=True)
                return go
            def cp_hash():
                shutil.rmtree(copy_dir, ignore_errors=True)
                run(["cp", "-r", os.path.join(gdb, "case"), copy_dir])
                run(["sh", "-c", f"openssl dgst -sha256 {copy_dir}/* > /dev/null"])
                shutil.rmtree(copy_dir)
            def cp_hash_sync():
                # The same, with the copies on disk before it is done, as approval's fsync requires.
                shutil.rmtree(copy_dir, ignore_errors=True)
                run(["cp", "-r", os.path.join(gdb, "case"), copy_dir])
                run(["sh", "-c", f"openssl dgst -sha256 {copy_dir}/* > /dev/null && sync {copy_dir}/*"])
                shutil.rmtree(copy_dir)
            med, all_runs = alternate(max(3, runs - 2), {
                "cp+openssl": cp_hash, "cp+openssl+sync": cp_hash_sync,
                "approve": approve_on(staged), "approve_1_worker": approve_on(staged1),
                **({"approve_compare_bin": approve_on(compare["staged"])} if compare else {}),
            })
            results["staged_approval"] = {
                k: {"seconds": v, "ratio": med["cp+openssl"] / v, "ratio_to_durable": med["cp+openssl+sync"] / v, "runs": all_runs[k]}
                for k, v in med.items()
            }

        if "verify" in only:
            # 4. Direct-mode approval of a 20-file case (page cache warm): the
            # pool of workers against one file at a time (verify_workers = 1),
            # and against more workers than this machine has cores. Scaling
            # needs the cores: each round waits (up to a minute) for the
            # machine to be idle, and a round in which other processes took
            # more than a fifth of a core is measured again (at most 4 x runs rounds).
            verify_ids = [f"V{i:02d}" for i in range(20)]
            for i in range(20):
                read_file(os.path.join(gdb, f"verify/S{i:02d}_R1.fastq.gz"), bs=4 * MiB)
            times = {n: [] for n in workers}
            k = 0
            rounds = noisy = 0
            while min(len(v) for v in times.values()) < runs and rounds < 4 * runs + 1:
                rounds += 1
                wait_quiet(60)
                this_round = {}
                foreign = 0.0
                for n, d in workers.items():
                    k += 1
                    ref = f"VER{k}"
                    d.cli("case", "open", ref, "--requester", "bench@example", *verify_ids, capture=True)
                    settle()
                    watch = CpuWatch(d.proc.pid)
                    t = timed(lambda: d.cli("case", "approve", ref, capture=True))
                    foreign = max(foreign, watch.foreign_cores(t))
                    d.cli("case", "close", ref, "--force", "--reason", "benchmark", capture=True)
                    this_round[n] = t
                if rounds == 1:
                    continue  # the first round warms up
                if foreign > 0.2 and not args.quick:
                    noisy += 1
                    print(f"round {rounds}: other processes used {foreign:.2f} cores; measured again", flush=True)
                    continue
                for n, t in this_round.items():
                    times[n].append(t)
            if min(len(v) for v in times.values()) == 0:
                raise SystemExit("the machine was never quiet enough to measure the verification pool")
            total = 20 * verify_file
            med = {n: statistics.median(v) for n, v in times.items()}
            results["direct_approval"] = {
                (f"{n}_workers" if n != "compare" else "compare_bin"): {
                    "seconds": med[n], "GB/s": total / med[n] / 1e9, "speedup": med[1] / med[n], "runs": times[n]}
                for n in workers
            }
            results["direct_approval"]["noisy_rounds_dropped"] = noisy

        if "listable" in only:
            # 5. Time from `approve --no-wait` to a 20 x 1 MiB case being listable (direct mode).
            small = [f"M{i:02d}" for i in range(20)]
            lat = []
            for i in range(max(5, runs)):
                ref = f"SMALL{i}"
                direct_pt.cli("case", "open", ref, "--requester", "bench@example", *small, capture=True)
                path = os.path.join(direct_pt.mnt, ref)
                t = time.perf_counter()
                direct_pt.cli("case", "approve", ref, "--no-wait", capture=True)
                while True:
                    try:
                        if len(os.listdir(path)) == 21:
                            break
                    except OSError:
                        pass
                    time.sleep(0.001)
                lat.append(time.perf_counter() - t)
                direct_pt.cli("case", "close", ref, "--force", "--reason", "benchmark", capture=True)
            results["approve_to_listable_ms"] = {"median": statistics.median(lat) * 1e3, "max": max(lat) * 1e3, "runs": len(lat)}

        if "list1000" in only:
            # 6. 1,000 exported cases listed.
            for i in range(1000):
                direct_us.cli("case", "open", f"L{i:04d}", "--requester", "bench@example", f"T{i:04d}", capture=True)
                direct_us.cli("case", "approve", f"L{i:04d}", "--no-wait", capture=True)
            deadline = time.time() + 300
            while direct_us.status()["cases"] and time.time() < deadline:
                counts = dict(direct_us.status()["cases"])
                if counts.get("approved", 0) == 0:
                    break
                time.sleep(0.5)
            listing = []
            for _ in range(max(7, runs)):
                t = time.perf_counter()
                names = os.listdir(direct_us.mnt)
                listing.append(time.perf_counter() - t)
            results["list_1000_cases_ms"] = {"median": statistics.median(listing) * 1e3, "entries": len(names)}

        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        results["machine"] = {"cpu": cpu, "cores": os.cpu_count(), "kernel": os.uname().release, "runs": runs, "quick": args.quick}
        print(json.dumps(results, indent=2))
        print()
        r = results
        if "read" in r:
            print(f"sequential read of {big // MiB} MiB: passthrough {r['read']['passthrough']['ratio']:.2f}, user space {r['read']['userspace']['ratio']:.2f} "
                  f"of direct ({r['read']['direct']['GB/s']:.2f} GB/s)")
        if "rsync" in r:
            print(f"rsync -a of 20 x {case_file // MiB} MiB as the transfer uid: passthrough {r['rsync']['passthrough']['ratio']:.2f}, user space {r['rsync']['userspace']['ratio']:.2f} of direct")
        if "staged_approval" in r:
            sa = r["staged_approval"]
            print(f"staged approval vs cp -r + openssl dgst: {sa['approve']['ratio']:.2f}, vs the same with the copies synced: {sa['approve']['ratio_to_durable']:.2f} (>1 is faster); "
                  f"approve {sa['approve']['seconds']:.2f}s, baselines {sa['cp+openssl']['seconds']:.2f}s / {sa['cp+openssl+sync']['seconds']:.2f}s; "
                  f"with verify_workers = 1: {sa['approve_1_worker']['ratio']:.2f} ({sa['approve_1_worker']['seconds']:.2f}s)"
                  + (f"; --compare-bin: {sa['approve_compare_bin']['ratio']:.2f} ({sa['approve_compare_bin']['seconds']:.2f}s)" if "approve_compare_bin" in sa else ""))
        if "direct_approval" in r:
            da = r["direct_approval"]
            print(f"direct-mode approval of 20 x {verify_file // MiB} MiB (page cache warm), speedup over verify_workers = 1 ({da['1_workers']['seconds']:.2f}s): "
                  + ", ".join(f"{k.replace('_', ' ')} {v['speedup']:.2f} ({v['seconds']:.2f}s, {v['GB/s']:.2f} GB/s)" for k, v in da.items() if isinstance(v, dict))
                  + f"; {da['noisy_rounds_dropped']} noisy round(s) measured again")
        if "approve_to_listable_ms" in r:
            print(f"approve --no-wait to listable (20 x 1 MiB, direct): median {r['approve_to_listable_ms']['median']:.1f} ms, max {r['approve_to_listable_ms']['max']:.1f} ms")
        if "list_1000_cases_ms" in r:
            print(f"listing 1,000 exported cases: median {r['list_1000_cases_ms']['median']:.2f} ms ({r['list_1000_cases_ms']['entries']} entries)")
    finally:
        for d in daemons:
            try:
                d.stop()
            except Exception as e:  # noqa: BLE001 - cleanup continues
                print(f"stopping a daemon: {e}", file=sys.stderr)
        shutil.rmtree(shm, ignore_errors=True)
        if os.path.isdir(gdb):
            immutable(gdb, False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
