"""Memory of ``s2swclip watch`` under a burst: N files present at start (the worst case: the
whole backlog is found at once), scored with overlays by a watcher process until it is idle.

Prints the watcher's peak RSS (``/proc/PID/status`` VmHWM, read while it runs) and its RSS at the
last reading before it exits (VmRSS), the time, and
checks the results: one line per file, none twice. Run it for two sizes to see that memory does
not grow with the backlog::

    .venv/bin/python benchmarks/watch_memory.py --n 1000 10000

Linux only (reads ``/proc``). Tiny random backbone at 112 px by default (the model's own memory
is then small, so what grows with the backlog would show).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve_memory import _status  # a process's VmRSS / VmHWM in bytes, from /proc
from watch_latency import make_images  # photo-like JPEGs


def measure(n: int, side: int, backbone: str, image_size: int, work: Path) -> dict:
    """Drop ``n`` JPEGs in a folder, run a watcher over it until idle; its peak RSS and results."""
    inp, out = work / f"in{n}", work / f"out{n}"
    make_images(inp, n, side)
    cmd = [sys.executable, "-m", "s2swclip.cli", "watch", str(inp), "--out", str(out), "--backbone", backbone,
           "--weights", "none", "--image-size", str(image_size), "--threshold", "0.5", "--settle-ms", "0",
           "--exit-when-idle", "2", "--quiet"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = last = 0
    while proc.poll() is None:
        try:
            status = _status(proc.pid)
        except OSError:  # it exited between the poll and the read
            break
        peak, last = max(peak, status["VmHWM"]), status["VmRSS"]
        time.sleep(0.2)
    proc.wait()
    seconds = time.perf_counter() - t
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"watch exited with {proc.returncode}: {err[-2000:]}")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    names = [r["name"] for r in rows]
    return {"files": n, "rows": len(rows), "distinct": len(set(names)),
            "errors": sum(r["error"] is not None for r in rows),
            "overlays": len(list((out / "overlays").iterdir())),
            "peak_rss_mib": round(peak / 2**20, 1),
            "last_rss_mib": round(last / 2**20, 1), "seconds": round(seconds, 1),
            "images_per_s": round(n / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000], help="backlog sizes")
    ap.add_argument("--side", type=int, default=640)
    ap.add_argument("--backbone", default="S2SW-Tiny-24L")
    ap.add_argument("--image-size", type=int, default=112)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            m = measure(n, args.side, args.backbone, args.image_size, Path(tmp))
            ok = m["rows"] == m["distinct"] == n
            print(json.dumps(m), "" if ok else "  <- NOT one result per file")


if __name__ == "__main__":
    main()
