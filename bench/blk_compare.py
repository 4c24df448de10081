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


def start_backend(kind, work, images, queues, poll_us, engine):
    socks = [os.path.join(work, f"{kind}{i}.sock") for i in range(len(images))]
    log = os.path.join(work, f"{kind}.log")
    if kind == "vdevd":
        cmd = ["taskset", "-c", "1", os.path.join(REL, "vdevd"), "--pollers", "1", "--log-level", "warning"]
        if poll_us is not None:
            cmd += ["--poll-us", str(poll_us)]
        for i, (img, s) in enumerate(zip(images, socks)):
            cmd += ["--export", f"vhost-user-blk,id=d{i},path={img},socket={s},num-queues={queues},engine={engine}{VDEVD_KEYS}"]
    else:
        cmd = ["taskset", "-c", "1", "qemu-storage-daemon"]
        for i, (img, s) in enumerate(zip(images, socks)):
            cmd += ["--blockdev", f"driver=file,node-name=d{i},filename={img},aio=io_uring",
                    "--export", f"type=vhost-user-blk,id=e{i},node-name=d{i},addr.type=unix,addr.path={s},"
                                f"writable=on,num-queues={queues}"]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    wait_sockets(socks, proc, log)
    return proc, socks


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench(socks, rw, iodepth, queues, seconds, label):
    threads = 1 if len(socks) > 1 else queues
    # Many exports share the one-export working set (64 MiB in all), so the comparison measures the
    # daemon's per-queue cost, not the CPU caches' reach over 64 images.
    size_mib = max(1, 64 // len(socks))
    cmd = ["taskset", "-c", "0", os.path.join(REL, "vdev-bench"), "--rw", rw, "--bs", "4k", "--iodepth", str(iodepth),
           "--queues", str(queues), "--threads", str(threads), "--seconds", str(seconds), "--label", label,
           "--size-mib", str(size_mib)]
    for s in socks:
        cmd += ["--socket", s]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        sys.exit(f"vdev-bench failed ({label}):\n{out.stdout}\n{out.stderr}")
    return json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][-1])


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
            proc, socks = start_backend(kind, work, images, queues, poll_us, engine)
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
            proc, socks = start_backend(kind, work, images, 1, poll_us, "io_uring")
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
        subprocess.run(["swift", "build", "-c", "release", "--product", "vdevd"], cwd=REPO, check=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "vdev-bench"], cwd=REPO, check=True)
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
