#!/usr/bin/env python3
"""vhost-user-net packet rate: vdevd's switch against DPDK's own vhost-user backend, same load, one run.

  bench/net_compare.py                        64- and 1518-byte frames, 5 rounds each, alternating backends
  bench/net_compare.py --sizes 64 --rounds 3 --seconds 6 --markdown FILE

Load (CPU 0): one dpdk-testpmd with two net_virtio_user ports (vhost-user frontends, no VM) in
--forward-mode=mac, each port sending to the other's MAC: 16 bursts of 32 frames per port are injected
(start tx_first 16) and then circulate port 0 -> backend -> port 1 -> testpmd -> backend -> port 0. The rate is
both ports' Rx-pps, read every second (show port stats all). (Two testpmd processes, one txonly and one
rxonly as the issue describes, were tried first: on this 2-core machine they share CPU 0, the receiver
gets scheduler slices of milliseconds and both backends mostly drop for lack of rx buffers, so that measured
the receiver, not the backends.) Backend (CPU 1):
  vdevd      --switch id=sw, two vhost-user-net exports on it, one poller pinned to CPU 1 (release build)
  reference  dpdk-testpmd with two net_vhost ports in --forward-mode=io, pinned to CPU 1
The rate of a round is the median of the per-second totals after a warm-up; each backend's
figure is the median over rounds (this machine's core placement changes mid-run, so backends alternate).
Traffic never leaves the Unix sockets. Packages: dpdk-dev librte-net-vhost23 librte-net-virtio23
librte-mempool-ring23; testpmd runs with --no-huge --no-pci.
"""
import argparse, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(REPO, ".build", "release")
TESTPMD = shutil.which("dpdk-testpmd") or "/usr/bin/dpdk-testpmd"
BACKEND_CPU, LOAD_CPU = "1", "0"
MAC_TX, MAC_RX = "02:00:00:00:00:01", "02:00:00:00:00:02"
# Another vdevd build to compare with (--alt-bin), as a third backend "alt".
ALT_BIN = None


def wait_for(cond, proc, log, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    sys.exit(f"{what} did not come up; log {log}:\n" + open(log, errors="replace").read()[-3000:])


def start_backend(kind, work):
    socks = [os.path.join(work, f"{kind}-a.sock"), os.path.join(work, f"{kind}-b.sock")]
    log = os.path.join(work, f"{kind}.log")
    if kind in ("vdevd", "alt"):
        binary = ALT_BIN if kind == "alt" else os.path.join(REL, "vdevd")
        cmd = ["taskset", "-c", BACKEND_CPU, binary, "--pollers", "1", "--cpus", BACKEND_CPU,
               "--switch", "id=sw",
               "--export", f"vhost-user-net,id=a,socket={socks[0]},switch=sw,queue-size=1024",
               "--export", f"vhost-user-net,id=b,socket={socks[1]},switch=sw,queue-size=1024"]
    else:
        cmd = ["stdbuf", "-oL", TESTPMD, f"--lcores=0@{BACKEND_CPU},1@{BACKEND_CPU}", "--no-huge", "-m", "512", "--no-pci",
               f"--file-prefix=ref{os.getpid()}",
               "--vdev", f"net_vhost0,iface={socks[0]}", "--vdev", f"net_vhost1,iface={socks[1]}",
               "--", "--forward-mode=io", "--nb-cores=1", "--total-num-mbufs=32768",
               "--rxd=1024", "--txd=1024"]
    p = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.PIPE)
    wait_for(lambda: all(os.path.exists(s) for s in socks), p, log, kind)
    if kind == "reference":
        wait_for(lambda: "start packet forwarding" in open(log, errors="replace").read(), p, log, kind)
    return p, socks, log


def loadgen(socks, size, work):
    """One testpmd on CPU 0 (interactive, driven through stdin) with a net_virtio_user port on each socket,
    in --forward-mode=mac: each port's frames go to the other's MAC."""
    log = os.path.join(work, "load.log")
    # Line-buffered, so every answer shows up in the log when it is printed.
    cmd = ["taskset", "-c", LOAD_CPU, "stdbuf", "-oL", TESTPMD, f"--lcores=0@{LOAD_CPU},1@{LOAD_CPU}", "--no-huge",
           "-m", "512", "--no-pci", f"--file-prefix=load{os.getpid()}",
           "--vdev", f"net_virtio_user0,path={socks[0]},mac={MAC_TX},queue_size=1024",
           "--vdev", f"net_virtio_user1,path={socks[1]},mac={MAC_RX},queue_size=1024",
           "--", "-i", "--forward-mode=mac", f"--eth-peer=0,{MAC_RX}", f"--eth-peer=1,{MAC_TX}",
           f"--txpkts={size}", "--nb-cores=1", "--total-num-mbufs=32768", "--rxd=1024", "--txd=1024"]
    p = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.PIPE, text=True)
    wait_for(lambda: "testpmd>" in open(log, errors="replace").read(), p, log, "load generator")
    return p, log


def stop(p, sig=signal.SIGINT, wait=10):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def command(p, text):
    p.stdin.write(text + "\n")
    p.stdin.flush()


def one_round(kind, size, seconds, warmup, work):
    backend, socks, blog = start_backend(kind, work)
    try:
        load, log = loadgen(socks, size, work)
        # 16 bursts of 32 frames per port circulate: port 0 -> backend -> port 1 -> back to port 0 ...
        command(load, "start tx_first 16")
        time.sleep(warmup)
        command(load, "show port stats all")
        marker = len(open(log, errors="replace").read())
        for _ in range(seconds):
            time.sleep(1)
            command(load, "show port stats all")
        time.sleep(0.5)
        command(load, "stop")
        command(load, "quit")
        try:
            load.wait(20)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()
    finally:
        stop(backend, signal.SIGINT if kind == "reference" else signal.SIGTERM)
    text = open(log, errors="replace").read()[marker:]
    pps = [int(x) for x in re.findall(r"Rx-pps:\s+(\d+)", text)]
    # Two ports per sample: a sample is what both received in that second.
    totals = [pps[i] + pps[i + 1] for i in range(0, len(pps) - 1, 2)]
    if not totals:
        sys.exit(f"no Rx-pps samples from the load generator ({kind}); log {log}")
    return statistics.median(totals) / 1e6, blog


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,1518")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--markdown")
    ap.add_argument("--backends", default="vdevd,reference", help="which backends run (profiling: vdevd alone)")
    ap.add_argument("--alt-bin", help="a second vdevd binary, run as backend 'alt' (before/after a change)")
    a = ap.parse_args()
    global ALT_BIN
    ALT_BIN = a.alt_bin
    if ALT_BIN and "alt" not in a.backends:
        a.backends += ",alt"
    if not a.no_build:
        subprocess.check_call(["swift", "build", "-c", "release", "--product", "vdevd"], cwd=REPO)
    work = tempfile.mkdtemp(prefix="vdevd-netbench-")
    rows = []
    try:
        for size in [int(s) for s in a.sizes.split(",")]:
            res = {"vdevd": [], "reference": [], "alt": []}
            for r in range(a.rounds):
                order = [k for k in ["vdevd", "reference", "alt"] if k in a.backends.split(",")]
                if r % 2 == 1:
                    order.reverse()
                for kind in order:
                    mpps, blog = one_round(kind, size, a.seconds, a.warmup, work)
                    res[kind].append(mpps)
                    print(f"size {size} round {r + 1} {kind:9s} {mpps:7.3f} Mpps", flush=True)
            v = statistics.median(res["vdevd"]) if res["vdevd"] else float("nan")
            ref = statistics.median(res["reference"]) if res["reference"] else float("nan")
            rows.append((size, v, ref, v / ref if ref == ref and ref else float("nan"), res))
    finally:
        if not os.environ.get("KEEP_WORK"):
            shutil.rmtree(work, ignore_errors=True)
        else:
            print("work dir kept:", work)
    lines = ["| frame bytes | vdevd Mpps | DPDK net_vhost Mpps | ratio |", "|---:|---:|---:|---:|"]
    for size, v, ref, ratio, res in rows:
        lines.append(f"| {size} | {v:.3f} | {ref:.3f} | {ratio:.2f}x |")
    print("\n".join(lines))
    for size, v, ref, ratio, res in rows:
        print(f"size {size}: vdevd rounds {['%.3f' % x for x in res['vdevd']]}, reference rounds {['%.3f' % x for x in res['reference']]}")
        if res["alt"]:
            alt = statistics.median(res["alt"])
            print(f"size {size}: alt {alt:.3f} Mpps (rounds {['%.3f' % x for x in res['alt']]}), vdevd/alt {v / alt:.2f}x")
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
            for size, v, ref, ratio, res in rows:
                f.write(f"\nsize {size}: vdevd rounds {', '.join('%.3f' % x for x in res['vdevd'])}; "
                        f"reference rounds {', '.join('%.3f' % x for x in res['reference'])}\n")


if __name__ == "__main__":
    main()
