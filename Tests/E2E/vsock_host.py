#!/usr/bin/env python3
"""Host side of the vsock e2e test: hybrid-vsock client and server over vdevd's Unix sockets.

  vsock_host.py connect UDS PORT FILE [--retry S]   CONNECT <port> through UDS, send FILE, half-close,
                                                    print the first line the guest sends back
  vsock_host.py serve PATH OUT                      accept one connection on PATH, save it to OUT, print sha256
  vsock_host.py flow UDS PORT FILE [--retry S]      CONNECT <port>, send FILE while reading what the guest
                                                    sends back until EOF; print "OK <port> <sha256> <bytes>"
"""
import hashlib, os, socket, sys, threading, time


def open_connect(uds, port, retry):
    """CONNECT <port> through uds until the guest listens; returns the socket and vdevd's OK line."""
    deadline = time.time() + retry
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(uds)
        s.sendall(f"CONNECT {port}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            b = s.recv(1)
            if not b:
                break
            line += b
        if line.startswith(b"OK "):
            break
        s.close()  # guest not listening yet: vdevd closed us without OK
        if time.time() > deadline:
            sys.exit(f"no OK from the guest on port {port} after {retry}s")
        time.sleep(0.3)
    return s, line


def connect(uds, port, path, retry):
    s, line = open_connect(uds, port, retry)
    with open(path, "rb") as f:
        s.sendall(f.read())
    s.shutdown(socket.SHUT_WR)   # half-close: the guest reads EOF, and can still answer
    back = b""
    while len(back) < 4096:
        b = s.recv(4096)
        if not b:
            break
        back += b
    print(line.decode().strip(), back.decode(errors="replace").split("\n")[0])


def serve(path, out):
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    c, _ = srv.accept()
    h = hashlib.sha256()
    with open(out, "wb") as f:
        while True:
            b = c.recv(65536)
            if not b:
                break
            f.write(b)
            h.update(b)
    c.sendall(b"thanks\n")  # the guest half-closed; it still reads this
    c.close()
    print(h.hexdigest(), flush=True)


def flow(uds, port, path, retry):
    """Both directions at once on one host-initiated connection."""
    s, line = open_connect(uds, port, retry)

    def send():
        with open(path, "rb") as f:
            s.sendall(f.read())
        s.shutdown(socket.SHUT_WR)

    t = threading.Thread(target=send)
    t.start()
    h, n = hashlib.sha256(), 0
    while True:
        b = s.recv(65536)
        if not b:
            break
        h.update(b)
        n += len(b)
    t.join()
    print(line.decode().strip().split()[0], port, h.hexdigest(), n, flush=True)


if __name__ == "__main__":
    if sys.argv[1] in ("connect", "flow"):
        retry = float(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[5] == "--retry" else 60
        (connect if sys.argv[1] == "connect" else flow)(sys.argv[2], int(sys.argv[3]), sys.argv[4], retry)
    else:
        serve(sys.argv[2], sys.argv[3])
