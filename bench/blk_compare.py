#!/usr/bin/env python3
"""Runs vdevd and qemu-storage-daemon on the same work, one after the other in one run, drives both with
vdev-bench using identical parameters, and prints a table with the ratios.

  bench/blk_compare.py                       every case of the standard matrix (see CASES)
  bench/blk_compare.py --case randread-qd32  one case
  bench/blk_compare.py --markdown FILE       also write the table (with the command) to FILE

Images live in /dev/shm (or --dir). Backends are pinned to CPU 1 and vdev-bench to CPU 0 (taskset), so each
side gets one core of the two. Build first: swift build -c release (the script does it).
"""
import argparse, json, os, shutil, signal, subprocess, sys, tempfile, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(REPO, ".build", "release")

# name: (rw, iodepth, queues per export, exports)
CASES = {
    "randread-qd1": ("randread", 1, 1, 1),
    "randread-qd32": ("randread", 32, 1, 1),
    "randwrite-qd1": ("randwrite", 1, 1, 1),
    "randwrite-qd32": ("randwrite", 32, 1, 1),
    "randread-qd32-2q": ("randread", 32, 2, 1),
    "randread-qd32-16exp": ("randread", 32, 1, 16),
    "randread-qd32-64exp": ("randread", 32, 1, 64),
}


def wait_sockets(paths, proc, log):
    for _ in range(200):
        if all(os.path.exists(p) for p in paths):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    sys.exit(f"backend did not create its sockets; log:\n{open(log).read()}")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


VDEVD_KEYS = ""
IMAGE_DIR = "/dev/shm"
BACKEND_CPU, LOADGEN_CPU = "1", "0"  # one core each of the machine's two


def start_backend(kind, work, images, queues=1, vdevd_keys="", vdevd_args=(), qsd_driver="file", direct=False):
    """Starts vdevd or qemu-storage-daemon pinned to BACKEND_CPU, one export per image, and waits for the
    sockets. vdevd gets only id, path and socket plus `vdevd_keys` (e.g. ",direct=on"); qsd gets `qsd_driver`
    (file or host_device) on io_uring, with cache.direct=on when `direct`. Returns (process, sockets, log)."""
    socks = [os.path.join(work, f"{kind}{i}.sock") for i in range(len(images))]
    log = os.path.join(work, f"{kind}.log")
    if kind == "vdevd":
        cmd = ["taskset", "-c", BACKEND_CPU, os.path.join(REL, "vdevd"), *vdevd_args]
        for i, (img, s) in enumerate(zip(images, socks)):
            cmd += ["--export", f"vhost-user-blk,id=d{i},path={img},socket={s}{vdevd_keys}"]
    else:
        cache = ",cache.direct=on" if direct else ""
        cmd = ["taskset", "-c", BACKEND_CPU, "qemu-storage-daemon"]
        for i, (img, s) in enumerate(zip(images, socks)):
            cmd += ["--blockdev", f"driver={qsd_driver},node-name=d{i},filename={img},aio=io_uring{cache}",
                    "--export", f"type=vhost-user-blk,id=e{i},node-name=d{i},addr.type=unix,addr.path={s},"
                                f"writable=on,num-queues={queues}"]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        wait_sockets(socks, proc, log)
    except BaseException:  # includes Ctrl-C: the caller never gets the process to stop
        stop(proc)
        raise
    return proc, socks, log


def start_compare_backend(kind, work, images, queues, poll_us, engine):
    """This script's vdevd settings: one poller, the given engine and queues, --vdevd-keys appended."""
    args = ["--pollers", "1", "--log-level", "warning"] + (["--poll-us", str(poll_us)] if poll_us is not None else [])
    return start_backend(kind, work, images, queues, vdevd_keys=f",num-queues={queues},engine={engine}{VDEVD_KEYS}",
                         vdevd_args=args)


def stop(proc):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench(socks, rw, iodepth, queues, seconds, label, bs="4k", size_mib=None, backend=None, extra=()):
    """Runs vdev-bench pinned to LOADGEN_CPU against `socks`; returns its JSON result line as a dict. Fails
    (rather than waits) if the `backend` process exits during the run."""
    threads = 1 if len(socks) > 1 else queues
    # Many exports share the one-export working set (64 MiB in all), so the comparison measures the
    # daemon's per-queue cost, not the CPU caches' reach over 64 images.
    if size_mib is None:
        size_mib = max(1, 64 // len(socks))
    cmd = ["taskset", "-c", LOADGEN_CPU, os.path.join(REL, "vdev-bench"), "--rw", rw, "--bs", bs,
           "--iodepth", str(iodepth), "--queues", str(queues), "--threads", str(threads), "--seconds", str(seconds),
           "--label", label, "--size-mib", str(size_mib), *extra]
    for s in socks:
        cmd += ["--socket", s]
    with tempfile.TemporaryFile("w+") as out:
        b = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            # vdev-bench waits for every request it posted: if the backend dies, stop it rather than wait
            deadline = time.time() + seconds + 120
            while b.poll() is None:
                if backend is not None and backend.poll() is not None:
                    sys.exit(f"{label}: the backend exited (status {backend.returncode}) during the run")
                if time.time() > deadline:
                    sys.exit(f"{label}: vdev-bench did not finish")
                time.sleep(0.05)
        finally:
            if b.poll() is None:
                b.kill()
                b.wait()
        out.seek(0)
        text = out.read()
    if b.returncode != 0:
        sys.exit(f"vdev-bench failed ({label}):\n{text}")
    return json.loads([l for l in text.splitlines() if l.startswith("{")][-1])


def build():
    """Release build of vdevd and vdev-bench (the caller holds the machine's build lock, if it has one)."""
    swift = shutil.which("swift") or "/opt/swift/usr/bin/swift"
    for product in ("vdevd", "vdev-bench"):
        subprocess.run([swift, "build", "-c", "release", "--product", product], cwd=REPO, check=True)


def run_case(name, seconds, poll_us, engine):
    rw, iodepth, queues, exports = CASES[name]
    work = tempfile.mkdtemp(prefix="vdevd-bench-", dir=IMAGE_DIR)
    try:
        images = []
        for i in range(exports):
            img = os.path.join(work, f"img{i}")
            with open(img, "wb") as f:
                f.truncate(64 << 20)
            subprocess.run(["dd", "if=/dev/urandom", f"of={img}", "bs=1M", "count=64", "conv=notrunc", "status=none"], check=True)
            images.append(img)
        res = {}
        for kind in ("vdevd", "qsd"):
            proc, socks, _ = start_compare_backend(kind, work, images, queues, poll_us, engine)
            try:
                res[kind] = bench(socks, rw, iodepth, queues, seconds, f"{kind}-{name}")
            finally:
                stop(proc)
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def idle_case(seconds, poll_us, exports=64):
    """64 exports with their rings set up and no I/O: CPU used by each backend over `seconds`."""
    work = tempfile.mkdtemp(prefix="vdevd-idle-", dir="/dev/shm")
    try:
        images = []
        for i in range(exports):
            img = os.path.join(work, f"img{i}")
            with open(img, "wb") as f:
                f.truncate(16 << 20)
            images.append(img)
        res = {}
        for kind in ("vdevd", "qsd"):
            proc, socks, _ = start_compare_backend(kind, work, images, 1, poll_us, "io_uring")
            try:
                cmd = [os.path.join(REL, "vdev-bench"), "--idle", str(seconds + 4), "--label", "idle"]
                for s in socks:
                    cmd += ["--socket", s]
                b = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                b.stdout.readline()  # rings are set up
                time.sleep(1)
                t0, c0 = time.time(), cpu_ticks(proc.pid)
                time.sleep(seconds)
                t1, c1 = time.time(), cpu_ticks(proc.pid)
                b.wait()
                hz = os.sysconf("SC_CLK_TCK")
                res[kind] = 100.0 * (c1 - c0) / hz / (t1 - t0)
            finally:
                stop(proc)
        return res
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", choices=list(CASES) + ["idle-64exp"])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--poll-us", type=int, default=None, help="vdevd --poll-us (default: vdevd's default)")
    ap.add_argument("--engine", default="io_uring")
    ap.add_argument("--vdevd-keys", default="", help="extra export keys for vdevd, e.g. ,inline-io=off")
    ap.add_argument("--dir", default="/dev/shm", help="where the images live (default /dev/shm; a disk file system "
                    "shows io_uring against the page cache)")
    ap.add_argument("--markdown")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    global VDEVD_KEYS
    VDEVD_KEYS = a.vdevd_keys
    global IMAGE_DIR
    IMAGE_DIR = a.dir
    if not a.no_build:
        build()
    cases = a.case or list(CASES) + ["idle-64exp"]
    rows = []
    hdr = "| case | vdevd IOPS | qsd IOPS | IOPS ratio | vdevd mean/p99 us | qsd mean/p99 us | mean ratio | p99 ratio |"
    sep = "|---|---|---|---|---|---|---|---|"
    print(hdr)
    print(sep)
    for c in cases:
        if c == "idle-64exp":
            r = idle_case(10, a.poll_us)
            row = f"| idle-64exp (CPU % of one core, 10 s) | {r['vdevd']:.2f}% | {r['qsd']:.2f}% | | | | | |"
        else:
            r = run_case(c, a.seconds, a.poll_us, a.engine)
            v, q = r["vdevd"], r["qsd"]
            row = (f"| {c} | {v['iops']:.0f} | {q['iops']:.0f} | {v['iops'] / max(q['iops'], 1):.2f}x | "
                   f"{v['lat_mean_us']:.1f} / {v['lat_p99_us']:.1f} | {q['lat_mean_us']:.1f} / {q['lat_p99_us']:.1f} | "
                   f"{v['lat_mean_us'] / max(q['lat_mean_us'], 0.001):.2f}x | {v['lat_p99_us'] / max(q['lat_p99_us'], 0.001):.2f}x |")
        print(row, flush=True)
        rows.append(row)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(f"Command: `bench/blk_compare.py {' '.join(sys.argv[1:])}`\n\n{hdr}\n{sep}\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
