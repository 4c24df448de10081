#!/usr/bin/env python3
"""What io_uring fixed buffers give: vdevd with registered guest memory (fixed-buffers=auto, the default)
against vdevd without (fixed-buffers=off) and qemu-storage-daemon, on the O_DIRECT backings of the blk matrix.

  flock /tmp/vdevd-build.lock bench/blk_fixed.py --markdown FILE
  bench/blk_fixed.py --backing loop --case randread-qd32 --rounds 1 --seconds 1

Guest RAM is preallocated for every run (vdev-bench --prealloc-ram, as QEMU's prealloc=on or hugepages would
have it): vdevd registers only memory that already has pages, so without it both vdevd runs are the same.
Each round runs every case on the three backends, rotating which goes first; tables show medians. Pinning,
CPU accounting and cleanup as in blk_matrix.py (whose backings and cases this uses).
"""
import argparse, contextlib, datetime, os, shlex, signal, statistics, sys, time

from blk_compare import build
from blk_matrix import CASES, Skip, interrupted, run_backend, setup_backing

KINDS = {"fixed": ("vdevd", ""), "unfixed": ("vdevd", ",fixed-buffers=off"), "qsd": ("qsd", "")}
HEADER = ("| case | fixed IOPS | unfixed IOPS | qsd IOPS | fixed/unfixed IOPS | fixed/qsd IOPS | fixed CPU us/IO | "
          "unfixed CPU us/IO | qsd CPU us/IO | fixed/unfixed CPU/IO | fixed/qsd CPU/IO | fixed mean / p99 us | unfixed mean / p99 us |")


def med(rs, k):
    return statistics.median(r[k] for r in rs)


def row(case, res):
    f, u, q = (res[k] for k in KINDS)
    return (f"| {case} | {med(f, 'iops'):.0f} | {med(u, 'iops'):.0f} | {med(q, 'iops'):.0f} | "
            f"{med(f, 'iops') / med(u, 'iops'):.2f}x | {med(f, 'iops') / med(q, 'iops'):.2f}x | "
            f"{med(f, 'cpu_us_per_io'):.2f} | {med(u, 'cpu_us_per_io'):.2f} | {med(q, 'cpu_us_per_io'):.2f} | "
            f"{med(f, 'cpu_us_per_io') / med(u, 'cpu_us_per_io'):.2f}x | {med(f, 'cpu_us_per_io') / med(q, 'cpu_us_per_io'):.2f}x | "
            f"{med(f, 'lat_mean_us'):.1f} / {med(f, 'lat_p99_us'):.1f} | {med(u, 'lat_mean_us'):.1f} / {med(u, 'lat_p99_us'):.1f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backing", action="append", choices=["ext4-direct", "loop", "zram"])
    ap.add_argument("--case", action="append", choices=list(CASES))
    ap.add_argument("--seconds", type=float, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--ext4-dir", default="/var/tmp")
    ap.add_argument("--markdown")
    ap.add_argument("--no-build", action="store_true")
    a = ap.parse_args()
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupted)
    if not a.no_build:
        build()
    cases = a.case or ["randread-qd1", "randread-qd32", "randwrite-qd32", "seqread-128k-qd8"]
    command = "bench/blk_fixed.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    started = datetime.datetime.now(datetime.timezone.utc)
    md = [f"Command: `{command}` ({started:%Y-%m-%d %H:%M} UTC, {a.rounds} rounds of {a.seconds:g} s, medians)", ""]
    order = list(KINDS)
    for name in a.backing or ["ext4-direct", "loop", "zram"]:
        with contextlib.ExitStack() as stack:
            try:
                backing = setup_backing(name, stack, a)
            except Skip as e:
                print(f"\n{name}: skipped: {e}", flush=True)
                md += [f"### {name}", "", f"Skipped: {e}", ""]
                continue
            print(f"\n{backing.title}", flush=True)
            os.sync()
            time.sleep(1)
            res = {c: {k: [] for k in KINDS} for c in cases}
            for rnd in range(a.rounds):
                for c in cases:
                    for k in order[rnd % 3:] + order[:rnd % 3]:
                        backend, keys = KINDS[k]
                        r = run_backend(backend, backing, c, a.seconds, a.size_mib, f"{k}-{name}-{c}-r{rnd}",
                                        vdevd_keys=keys, bench_args=["--prealloc-ram"])
                        res[c][k].append(r)
                        print(f"  round {rnd + 1} {c:18} {k:8} {r['iops']:10.0f} IOPS  CPU {r['cpu_us_per_io']:6.2f}us/IO",
                              flush=True)
        rows = [row(c, res[c]) for c in cases]
        print("\n".join([HEADER] + rows), flush=True)
        md += [f"### {backing.title}", "", HEADER, "|" + "---|" * 13] + rows + [""]
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
