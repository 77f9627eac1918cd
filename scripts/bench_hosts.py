"""Two hosts on one PostgreSQL register: how soon a case approved on one host
is listable on the other. Run through scripts/bench-hosts."""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import MiB, Daemon, immutable, run, sha256, write_catalog_and_directory, write_random  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def host(bin_, base, gdb, name, url):
    """A daemon with its own state, mount and socket, on the shared register."""
    return Daemon(bin_, base, gdb, name, "direct", True,
                  extra=f'database_url = "{url}"\nhost = "{name}"\nheartbeat = "1s"\n')


def listable(path, n, deadline):
    """Polls every 1 ms until `path` lists `n` entries; the time it did, or None."""
    while time.perf_counter() < deadline:
        try:
            if len(os.listdir(path)) == n:
                return time.perf_counter()
        except OSError:
            pass
        time.sleep(0.001)
    return None


def percentile(v, q):
    s = sorted(v)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--runs", type=int, default=100, help="approvals per variant (alternated)")
    args = ap.parse_args()

    base = tempfile.mkdtemp(prefix="workcopy-bench-hosts.", dir=os.environ.get("TMPDIR", "/var/tmp"))
    os.chmod(base, 0o755)
    pg_dir = os.path.join(base, "pg")
    hosts, files = [], []
    try:
        port = socket.socket()
        port.bind(("127.0.0.1", 0))
        free = port.getsockname()[1]
        port.close()
        url = run([os.path.join(HERE, "pg-test-server"), pg_dir, str(free), str(os.getpid())],
                  capture_output=True, text=True).stdout.strip()
        run(["psql", "-X", "-q", url, "-c", "CREATE DATABASE workcopy"], capture_output=True)
        url = url.rsplit("/", 1)[0] + "/workcopy"

        gdb = os.path.join(base, "gdb")
        rows = []
        for i in range(20):
            rel = f"small/S{i:02d}.fastq.gz"
            p = os.path.join(gdb, rel)
            write_random(p, MiB)
            files.append(p)
            rows.append((f"M{i:02d}", rel, MiB, sha256(p)))
        immutable(gdb, True)
        write_catalog_and_directory(base, rows)
        a = host(args.bin, base, gdb, "host-a", url)
        hosts.append(a)
        b = host(args.bin, base, gdb, "host-b", url)
        hosts.append(b)
        a.cli("catalog", "import", os.path.join(base, "catalog.tsv"), capture=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            up = [h["name"] for h in json.loads(a.cli("hosts", "--json", capture=True).stdout) if h["state"] == "up"]
            if up == ["host-a", "host-b"]:
                break
            time.sleep(0.2)
        small = [f"M{i:02d}" for i in range(20)]

        # Alternated: approved on host-a for host-b (the change crosses the
        # register), and approved on host-b for itself (the baseline: the
        # same verification and mount update, no other host involved).
        lat = {"remote": [], "local": []}
        for i in range(args.runs):
            for variant, (asked, serving) in (("remote", (a, b)), ("local", (b, b))):
                ref = f"{variant.upper()}{i}"
                asked.cli("case", "open", ref, "--requester", "bench@example", *small, capture=True)
                t = time.perf_counter()
                asked.cli("case", "approve", ref, "--host", "host-b", "--no-wait", capture=True)
                done = listable(os.path.join(serving.mnt, ref), 21, t + 30)
                if done is None:
                    raise SystemExit(f"{ref} not listable on host-b within 30 s")
                lat[variant].append(done - t)
                serving.cli("case", "close", ref, "--force", "--reason", "benchmark", capture=True)
        res = {}
        for k, v in lat.items():
            res[k] = {"median_ms": statistics.median(v) * 1e3, "p99_ms": percentile(v, 0.99) * 1e3,
                      "max_ms": max(v) * 1e3, "runs": len(v)}
        res["ratio_median_remote_to_local"] = res["remote"]["median_ms"] / res["local"]["median_ms"]
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        res["machine"] = {"cpu": cpu, "cores": os.cpu_count(), "load_at_end": os.getloadavg()}
        print(json.dumps(res, indent=2))
    finally:
        for h in hosts:
            try:
                h.stop()
            except Exception as e:  # keep cleaning up
                print(f"stopping a daemon: {e}", file=sys.stderr)
        if files:
            immutable(os.path.join(base, "gdb"), False)
        subprocess.run([os.path.join(HERE, "pg-test-server"), "stop", pg_dir])
        for h in hosts:
            subprocess.run(["umount", "-l", h.mnt], stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
