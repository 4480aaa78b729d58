"""``s2swclip serve`` against slow clients: stalled uploads (memory) and stalled headers (connections).

Starts ``s2swclip serve`` (tiny random backbone) in a child process, then, one after the other:

* ``--uploads`` clients each send all but the last kilobyte of a ``--upload-mb`` MB upload and stall:
  the server's peak RSS rise (``/proc/PID`` VmHWM after minus VmRSS before) and how many were
  answered 503 (the body budget, ``--max-inflight-mb``) before the server dropped them;
* ``--slow`` connections send part of a request head and nothing more: how long an authorised
  ``/v1/health`` takes meanwhile, how many of them the server holds right after it, and how long
  until it has closed them all (the header deadline, ``--header-timeout``).

Linux only (``/proc``). Every socket is on 127.0.0.1.

    .venv/bin/python benchmarks/serve_slow_clients.py                       # 100 x 19.5 MB, 250 slow heads
    .venv/bin/python benchmarks/serve_slow_clients.py --max-inflight-mb 100000   # (no real body budget)
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time

from serve_memory import _free_port, _status, stop  # the serve process's memory, a loopback port, its end

TOKEN = "bench-token"


def _stalled_uploads(port: int, n: int, mb: float, settle_s: float) -> int:
    """``n`` uploads of ``mb`` MB, each 1 kB short; returns how many were answered 503."""
    payload = b"\0" * int(mb * 1e6)
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(payload) + 1100}\r\n\r\n"
            f"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n").encode()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(n)]

    def send(s):
        try:
            s.sendall(head)
            s.sendall(payload)
        except OSError:
            pass  # answered 503 and closed while sending

    threads = [threading.Thread(target=send, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    time.sleep(settle_s)
    busy = 0
    for s in socks:
        s.setblocking(False)
        try:
            busy += s.recv(64).startswith(b"HTTP/1.1 503")
        except OSError:
            pass
        s.close()
    for t in threads:
        t.join(30)
    return busy


def _open(socks) -> int:
    """How many of ``socks`` the server has neither answered nor closed (a stalled head gets
    nothing else: a readable socket is one the server has let go)."""
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        return len(socks) - len(sel.select(0))


def _slow_heads(port: int, n: int, deadline_s: float) -> dict:
    import httpx

    url = f"http://127.0.0.1:{port}/v1/health"
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(s)
    t0 = time.monotonic()
    status = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60).status_code
    health_s = time.monotonic() - t0
    time.sleep(0.5)
    held = _open(socks)
    t1 = time.monotonic()
    while _open(socks) and time.monotonic() - t1 < deadline_s + 30:
        time.sleep(0.1)
    all_closed_s = time.monotonic() - t1
    left = _open(socks)
    for s in socks:
        s.close()
    return {"health_status": status, "health_s": round(health_s, 3), "held_after_health": held,
            "left_open": left, "all_closed_within_s": round(all_closed_s, 1)}


def measure(uploads: int, upload_mb: float, slow: int, inflight_mb: float, header_timeout: float) -> dict:
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "s2swclip.cli", "serve", "--backbone", "S2SW-Tiny-24L", "--weights", "none",
           "--image-size", "56", "--port", str(port), "--max-inflight-mb", str(inflight_mb),
           "--header-timeout", str(header_timeout), "--upload-timeout", "60"]
    env = dict(os.environ, S2SWCLIP_TOKEN=TOKEN)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}/v1/health"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)
        before = _status(proc.pid)["VmRSS"]
        with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        busy = _stalled_uploads(port, uploads, upload_mb, settle_s=10.0)
        rise = _status(proc.pid)["VmHWM"] - before
        heads = _slow_heads(port, slow, header_timeout)
        return {"uploads": uploads, "upload_mb": upload_mb, "max_inflight_mb": inflight_mb,
                "uploads_sent_mb": round(uploads * upload_mb), "peak_rss_rise_mb": round(rise / 1e6),
                "uploads_answered_503": busy, "slow_heads": slow, "header_timeout_s": header_timeout, **heads}
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=100)
    ap.add_argument("--upload-mb", type=float, default=19.5)
    ap.add_argument("--slow", type=int, default=250)
    ap.add_argument("--max-inflight-mb", type=float, default=200.0)
    ap.add_argument("--header-timeout", type=float, default=5.0)
    args = ap.parse_args()
    print(json.dumps(measure(args.uploads, args.upload_mb, args.slow, args.max_inflight_mb, args.header_timeout),
                     indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
