"""Peak memory of ``s2swclip serve`` under large uploads: the server's RSS rise, health, answers.

Starts ``s2swclip serve`` (tiny random backbone) in a child process, waits for it, resets the
child's peak-RSS counter (``/proc/PID/clear_refs``), then sends ``--requests`` concurrent
requests of ``--files`` PNGs of ``--side`` x ``--side`` pixels each (a flat colour: a few KB on
the wire, ``side^2 * 4`` bytes once decoded) while polling ``/v1/health``. Prints the peak RSS
rise (VmHWM after minus VmRSS before), the decoded size of everything sent for comparison, and
whether every file got an answer. Linux only.

    .venv/bin/python benchmarks/serve_memory.py                      # the issue's case: 2 x 16 x 6000^2
    .venv/bin/python benchmarks/serve_memory.py --side 3000 --files 8
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time


def _png(side: int, seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (seed * 37 % 256, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(side: int = 6000, files: int = 16, requests: int = 2, inflight_mpx: float = 64.0,
            image_size: int = 112, timeout: float = 600.0) -> dict:
    """Run the scenario and return the measurements (see the module docstring)."""
    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "s2swclip.cli", "serve", "--backbone", "S2SW-Tiny-24L", "--weights", "none",
           "--image-size", str(image_size), "--port", str(port), "--max-inflight-mpx", str(inflight_mpx),
           "--max-upload-mb", "200", "--queue-size", str(max(64, files * requests))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start: " + (proc.stderr.read() if proc.stderr else ""))
            time.sleep(0.2)
        bodies = [[("files", (f"r{r}_{i}.png", _png(side, r * files + i), "image/png")) for i in range(files)]
                  for r in range(requests)]
        wire = sum(len(f[1][1]) for b in bodies for f in b)
        before = _status(proc.pid)["VmRSS"]
        with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        answers: list = [None] * requests
        health: list[int] = []
        done = threading.Event()

        def send(r: int) -> None:
            answers[r] = httpx.post(url + "/v1/predict?overlay=false", files=bodies[r], timeout=timeout)

        def poll() -> None:
            while not done.is_set():
                try:
                    health.append(httpx.get(url + "/v1/health", timeout=10).status_code)
                except httpx.HTTPError:
                    health.append(0)
                time.sleep(0.5)

        t0 = time.time()
        poller = threading.Thread(target=poll)
        poller.start()
        senders = [threading.Thread(target=send, args=(r,)) for r in range(requests)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        done.set()
        poller.join()
        seconds = time.time() - t0
        peak = _status(proc.pid)["VmHWM"]
        rows = [row for a in answers for row in a.json()["results"]]
        return {
            "side": side, "files": files, "requests": requests, "inflight_mpx": inflight_mpx,
            "bytes_on_the_wire": wire, "decoded_bytes_sent": requests * files * side * side * 4,
            "rss_before": before, "peak_rss_rise": peak - before, "seconds": round(seconds, 1),
            "statuses": [a.status_code for a in answers], "answered": len(rows),
            "scored": sum(1 for r in rows if r.get("ok")), "health": sorted(set(health)),
        }
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """End the server process: SIGTERM, then SIGKILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=6000)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--inflight-mpx", type=float, default=64.0)
    args = ap.parse_args()
    m = measure(args.side, args.files, args.requests, args.inflight_mpx)
    gib = 1024 ** 3
    print(json.dumps(m, indent=2))
    print(f"peak RSS rise {m['peak_rss_rise'] / gib:.3f} GiB for {m['requests']} x {m['files']} images of "
          f"{m['side']}^2 ({m['decoded_bytes_sent'] / gib:.2f} GiB decoded, {m['bytes_on_the_wire'] / 1e3:.0f} kB "
          f"on the wire): ratio to decoded {m['peak_rss_rise'] / m['decoded_bytes_sent']:.3f}; "
          f"{m['scored']}/{m['answered']} scored, health {m['health']}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
