#!/usr/bin/env python3
"""The vhost-user-blk matrix of issue 9: vdevd against qemu-storage-daemon (qsd) on five backings, with raw
fio on the same backing as the device's limit.

  flock /tmp/vdevd-build.lock bench/blk_matrix.py --markdown FILE    every backing, every case
  bench/blk_matrix.py --backing loop --case randread-qd32 --rounds 1 --seconds 1   one cell, quickly

Backings: tmpfs (/dev/shm), an ext4 file in the page cache and the same with O_DIRECT (under --ext4-dir), a
loop device with direct I/O over a file there, and zram0 (skipped with a message where it is missing or in
use). Each backing is one image of --size-mib MiB filled with random data; the 64-export case opens that same
image 64 times (each export drives the whole image with its own random sequence).

Each round runs every case on vdevd, on qsd and on fio, rotating which goes first; the tables show the
median over the rounds. vdevd runs in its default configuration (only id, path and socket, plus direct=on
where the backing is used with O_DIRECT); qsd uses driver=file (host_device for a block device),
aio=io_uring, cache.direct=on with O_DIRECT. Backends and fio are pinned to CPU 1, vdev-bench to CPU 0.
Backend CPU per I/O is utime+stime of the whole backend process from /proc/PID/stat (io_uring worker threads
included) over the run, divided by the I/Os vdev-bench completed. fio runs one job with io_uring at the same
block size, depth (64 x 8 for the 64-export case), pattern, range and direct flag. Under each table, the
targets of issue 9 that a cell misses: IOPS and CPU per I/O against qsd everywhere; vdevd/fio >= 0.95x on
the device-bound backings (ext4 O_DIRECT, loop); on the others >= 2x qsd at QD32 and half its QD1 latency.

Needs root (losetup, zram). Cleans up (backends, loop device, zram reset, files) on errors, Ctrl-C and SIGTERM.
"""
import argparse, contextlib, datetime, json, os, re, resource, shlex, signal, statistics, subprocess, sys, tempfile, time

from blk_compare import BACKEND_CPU, bench, build, cpu_ticks, start_backend, stop

HZ = os.sysconf("SC_CLK_TCK")

# name: (rw as vdev-bench and fio name it, block size, iodepth per queue, exports)
CASES = {
    "randread-qd1": ("randread", "4k", 1, 1),
    "randread-qd32": ("randread", "4k", 32, 1),
    "randwrite-qd1": ("randwrite", "4k", 1, 1),
    "randwrite-qd32": ("randwrite", "4k", 32, 1),
    "seqread-128k-qd8": ("read", "128k", 8, 1),
    "randread-qd8-64exp": ("randread", "4k", 8, 64),
}


class Backing:
    """Where the image lives and how both backends and fio open it."""
    def __init__(self, name, title, path, direct, block_device, device_bound):
        self.name, self.title, self.path = name, title, path
        self.direct, self.block_device, self.device_bound = direct, block_device, device_bound


class Skip(Exception):
    pass


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout.strip()


def fill_random(path, size_mib, direct=False):
    """Writes random data over the first size_mib MiB, so reads return real data, and makes it durable."""
    flags = ["oflag=direct"] if direct else ["conv=fsync"]
    run(["dd", "if=/dev/urandom", f"of={path}", "bs=1M", f"count={size_mib}", "conv=notrunc", *flags, "status=none"])


def ext4_file(stack, ext4_dir, size_mib):
    os.makedirs(ext4_dir, exist_ok=True)
    fstype = run(["stat", "-f", "-c", "%T", ext4_dir])
    if not fstype.startswith("ext"):
        print(f"note: {ext4_dir} is on {fstype}, not ext4", flush=True)
    work = tempfile.mkdtemp(prefix="vdevd-matrix-", dir=ext4_dir)
    stack.callback(run, ["rm", "-rf", work])
    img = os.path.join(work, "img")
    fill_random(img, size_mib)
    return img


def setup_backing(name, stack, a):
    """Creates the backing; everything it creates is undone by `stack`. Raises Skip where it cannot exist."""
    if name == "tmpfs":
        work = tempfile.mkdtemp(prefix="vdevd-matrix-", dir="/dev/shm")
        stack.callback(run, ["rm", "-rf", work])
        img = os.path.join(work, "img")
        fill_random(img, a.size_mib)
        return Backing(name, "tmpfs (/dev/shm)", img, False, False, False)
    if name == "ext4-cache":
        img = ext4_file(stack, a.ext4_dir, a.size_mib)
        with open(img, "rb") as f:  # warm the page cache
            while f.read(1 << 20):
                pass
        return Backing(name, f"ext4 file in the page cache ({a.ext4_dir})", img, False, False, False)
    if name == "ext4-direct":
        img = ext4_file(stack, a.ext4_dir, a.size_mib)
        return Backing(name, f"ext4 file with O_DIRECT ({a.ext4_dir})", img, True, False, True)
    if name == "loop":
        img = ext4_file(stack, a.ext4_dir, a.size_mib)
        dev = run(["losetup", "--direct-io=on", "-f", "--show", img])
        stack.callback(run, ["losetup", "-d", dev])
        dio = open(f"/sys/block/{os.path.basename(dev)}/loop/dio").read().strip()
        if dio != "1":
            print(f"note: {dev} did not get direct I/O (loop/dio={dio})", flush=True)
        return Backing(name, f"loop device with direct I/O over an ext4 file ({dev})", dev, True, True, True)
    if name == "zram":
        sysdir = "/sys/block/zram0"
        if not os.path.isdir(sysdir):
            raise Skip("no /sys/block/zram0 (zram module not loaded)")
        if open(f"{sysdir}/disksize").read().strip() != "0":
            raise Skip("zram0 is already set up (disksize is not 0): left alone")
        stack.callback(reset_zram, sysdir)
        with open(f"{sysdir}/disksize", "w") as f:
            f.write("2G")
        fill_random("/dev/zram0", a.size_mib, direct=True)
        return Backing(name, "zram0 (2 GiB), O_DIRECT", "/dev/zram0", True, True, False)
    raise ValueError(name)


def reset_zram(sysdir):
    for _ in range(50):  # the device stays busy for a moment after its last user closed it
        try:
            with open(f"{sysdir}/reset", "w") as f:
                f.write("1")
            return
        except OSError:
            time.sleep(0.1)
    print(f"warning: could not reset {sysdir}; run: echo 1 > {sysdir}/reset", file=sys.stderr)


def run_backend(kind, backing, case, seconds, size_mib, label, vdevd_keys="", bench_args=()):
    """One backend on one cell; `vdevd_keys` are added to vdevd's export keys, `bench_args` to vdev-bench's."""
    rw, bs, iodepth, exports = CASES[case]
    work = tempfile.mkdtemp(prefix="vdevd-matrix-sock-")
    try:
        proc, socks, log = start_backend(kind, work, [backing.path] * exports,
                                         vdevd_keys=(",direct=on" if backing.direct else "") + vdevd_keys,
                                         qsd_driver="host_device" if backing.block_device else "file",
                                         direct=backing.direct)
        try:
            c0 = cpu_ticks(proc.pid)
            r = bench(socks, rw, iodepth, 1, seconds, label, bs=bs, size_mib=size_mib, backend=proc, extra=bench_args)
            c1 = cpu_ticks(proc.pid)
        finally:
            stop(proc)
        r["cpu_us_per_io"] = (c1 - c0) / HZ * 1e6 / max(r["ios"], 1)
        r["log"] = open(log).read()
        return r
    finally:
        subprocess.run(["rm", "-rf", work])


def run_fio(backing, case, seconds, size_mib):
    rw, bs, iodepth, exports = CASES[case]
    cmd = ["taskset", "-c", BACKEND_CPU, "fio", "--name=limit", f"--filename={backing.path}", "--ioengine=io_uring",
           f"--rw={rw}", f"--bs={bs}", f"--iodepth={iodepth * exports}", f"--direct={int(backing.direct)}",
           f"--size={size_mib}M", "--numjobs=1", "--time_based", f"--runtime={int(seconds * 1000)}ms",
           "--randrepeat=0", "--norandommap", "--lat_percentiles=1", "--output-format=json",
           "--invalidate=0"]  # fio would drop the file's page cache before it starts, for the backends too
    # fio's own usr/sys figures miss its io_uring worker threads: take the whole process from the kernel
    # instead (RUSAGE_CHILDREN counts fio once it is reaped, startup included; nothing else exits meanwhile).
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        sys.exit(f"fio failed ({backing.name} {case}):\n{out.stdout}\n{out.stderr}")
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    d = job["write" if "write" in rw else "read"]
    ios = d["total_ios"]
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"iops": d["iops"], "ios": ios, "lat_mean_us": d["lat_ns"]["mean"] / 1000,
            "lat_p99_us": d["lat_ns"].get("percentile", {}).get("99.000000", 0) / 1000,
            "cpu_us_per_io": cpu_s * 1e6 / max(ios, 1)}


def median(results, key):
    return statistics.median(r[key] for r in results)


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "-"


HEADER = ("| case | vdevd IOPS | qsd IOPS | fio IOPS | vdevd/qsd IOPS | vdevd/fio IOPS | vdevd mean / p99 us | "
          "qsd mean / p99 us | fio mean / p99 us | vdevd CPU us/IO | qsd CPU us/IO | vdevd/qsd CPU/IO | fio CPU us/IO |")
SEP = "|" + "---|" * 13


def medians(res):
    return ({k: median(res[kind], k) for k in ("iops", "lat_mean_us", "lat_p99_us", "cpu_us_per_io")}
            for kind in ("vdevd", "qsd", "fio"))


def missed_targets(backing, case, res):
    """Issue 9's targets that this cell misses, each as a short sentence."""
    v, q, f = medians(res)
    missed = []
    if v["iops"] < q["iops"]:
        missed.append(f"IOPS {v['iops'] / q['iops']:.2f}x qsd (target >= 1.0x)")
    if v["cpu_us_per_io"] > q["cpu_us_per_io"]:
        missed.append(f"CPU per I/O {v['cpu_us_per_io'] / q['cpu_us_per_io']:.2f}x qsd (target <= 1.0x)")
    if backing.device_bound:
        if v["iops"] < 0.95 * f["iops"]:
            missed.append(f"IOPS {v['iops'] / f['iops']:.2f}x fio (target >= 0.95x)")
    else:
        if "qd32" in case and v["iops"] < 2 * q["iops"]:
            missed.append(f"IOPS {v['iops'] / q['iops']:.2f}x qsd at QD32 (target >= 2x)")
        if "qd1" in case and v["lat_mean_us"] > 0.5 * q["lat_mean_us"]:
            missed.append(f"mean latency {v['lat_mean_us'] / q['lat_mean_us']:.2f}x qsd at QD1 (target <= 0.5x)")
    return [f"{case}: {m}" for m in missed]


def table_row(case, res):
    v, q, f = medians(res)
    return (f"| {case} | {v['iops']:.0f} | {q['iops']:.0f} | {f['iops']:.0f} | {ratio(v['iops'], q['iops'])} | "
            f"{ratio(v['iops'], f['iops'])} | {v['lat_mean_us']:.1f} / {v['lat_p99_us']:.1f} | "
            f"{q['lat_mean_us']:.1f} / {q['lat_p99_us']:.1f} | {f['lat_mean_us']:.1f} / {f['lat_p99_us']:.1f} | "
            f"{v['cpu_us_per_io']:.2f} | {q['cpu_us_per_io']:.2f} | {ratio(v['cpu_us_per_io'], q['cpu_us_per_io'])} | "
            f"{f['cpu_us_per_io']:.2f} |")


def vdevd_notes(results):
    """vdevd's own log lines worth showing (how it decided to serve the image)."""
    lines = set()
    for r in results:
        for line in r["log"].splitlines():
            # without the time stamp and the export's number, so 64 exports and 3 rounds say it once
            line = re.sub(r"export=d\d+", "export=dN", re.sub(r"^\S+T\S+ ", "", line.strip()))
            if "inline" in line or line.split(" ")[0] in ("warning", "error", "critical"):
                lines.add(line)
    return sorted(lines)


def run_backing(backing, cases, a):
    res = {c: {"vdevd": [], "qsd": [], "fio": []} for c in cases}
    order = ["vdevd", "qsd", "fio"]
    for rnd in range(a.rounds):
        for c in cases:
            for kind in order[rnd % 3:] + order[:rnd % 3]:
                label = f"{kind}-{backing.name}-{c}-r{rnd}"
                if kind == "fio":
                    r = run_fio(backing, c, a.seconds, a.size_mib)
                else:
                    r = run_backend(kind, backing, c, a.seconds, a.size_mib, label)
                res[c][kind].append(r)
                print(f"  round {rnd + 1} {c:20} {kind:5} {r['iops']:10.0f} IOPS  mean {r['lat_mean_us']:8.1f}us  "
                      f"p99 {r['lat_p99_us']:8.1f}us  CPU {r['cpu_us_per_io']:6.2f}us/IO", flush=True)
    return res


def interrupted(signum, frame):
    """Unwinds through the cleanup (stop the backend, detach the loop device, reset zram), once: a second
    Ctrl-C or SIGTERM must not cut the cleanup short."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    print(f"\n{signal.Signals(signum).name}: cleaning up", file=sys.stderr, flush=True)
    raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    backings = ["tmpfs", "ext4-cache", "ext4-direct", "loop", "zram"]
    ap.add_argument("--backing", action="append", choices=backings, help="repeatable (default: all)")
    ap.add_argument("--case", action="append", choices=list(CASES), help="repeatable (default: all)")
    ap.add_argument("--seconds", type=float, default=2, help="per cell and round (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds; the tables show medians (default 3)")
    ap.add_argument("--size-mib", type=int, default=256, help="image size and range every run covers (default 256)")
    ap.add_argument("--ext4-dir", default="/var/tmp", help="folder on ext4 for the file backings (default /var/tmp)")
    ap.add_argument("--markdown", help="also write the tables, with the command line, to this file")
    ap.add_argument("--json", help="also write every single result to this file")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupted)
    if not a.no_build:
        build()
    cases = a.case or list(CASES)
    command = "bench/blk_matrix.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    started = datetime.datetime.now(datetime.timezone.utc)
    md = [f"Command: `{command}` ({started:%Y-%m-%d %H:%M} UTC, {a.rounds} rounds of {a.seconds:g} s per cell, "
          f"medians; image {a.size_mib} MiB)", ""]
    everything = {}
    for name in a.backing or backings:
        with contextlib.ExitStack() as stack:
            try:
                backing = setup_backing(name, stack, a)
            except Skip as e:
                print(f"\n{name}: skipped: {e}", flush=True)
                md += [f"### {name}", "", f"Skipped: {e}", ""]
                continue
            print(f"\n{backing.title}", flush=True)
            os.sync()  # no writeback left over from setting up (or from the backing before) while measuring
            time.sleep(1)
            res = run_backing(backing, cases, a)
        everything[name] = res
        rows = [table_row(c, res[c]) for c in cases]
        notes = vdevd_notes(r for c in cases for r in res[c]["vdevd"])
        missed = [m for c in cases for m in missed_targets(backing, c, res[c])]
        kind = "device-bound: vdevd/fio is the target" if backing.device_bound else "CPU-bound"
        print("\n".join([HEADER, SEP] + rows + [f"vdevd log: {n}" for n in notes] +
                        [f"missed: {m}" for m in missed]), flush=True)
        md += [f"### {backing.title}: {kind}", "", HEADER, SEP] + rows + [""]
        md += [f"vdevd logged: `{n}`" for n in notes] + ([""] if notes else [])
        md += ["Targets of issue 9 missed" + (":" if missed else ": none."), ""]
        md += [f"- {m}" for m in missed] + ([""] if missed else [])
    elapsed = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    print(f"\nmatrix done in {elapsed / 60:.1f} min")
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("\n".join(md) + "\n")
    if a.json:
        for res in everything.values():
            for per_kind in res.values():
                for rs in per_kind.values():
                    for r in rs:
                        r.pop("log", None)
        with open(a.json, "w") as f:
            json.dump({"command": command, "results": everything}, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the cleanup has run by now
        sys.exit(130)
