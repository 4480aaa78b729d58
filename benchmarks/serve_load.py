"""Bounded load test of ``s2swclip serve`` on loopback.

N concurrent clients (threads, one keep-alive HTTP connection each) share a fixed number of
``POST /v1/predict`` requests. Prints throughput, latency percentiles and the count of answers
per status, and checks that every request got an answer: scored (200) or a clear 503 (queue
full, with a message). Anything else -- another status, a connection error, a timeout, a 200
whose results do not match the upload -- counts as lost and fails the run (exit status 1).

By default it starts its own server in a subprocess (tiny random-weight backbone)::

    .venv/bin/python benchmarks/serve_load.py --clients 8 --requests 200

or measures a running one: ``--url http://127.0.0.1:8000``. Without the model's overlay PNGs:
``--no-overlay``. Clients do not retry a 503 (``--retry-503`` makes them, after Retry-After).
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
from dataclasses import dataclass, field

import numpy as np


def make_image(seed: int = 0, w: int = 320, h: int = 240) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Outcome:
    status: int | None  # None: no answer (connection error, timeout)
    latency_s: float
    problem: str | None = None


@dataclass
class LoadResult:
    clients: int
    requests: int
    images_per_request: int
    wall_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    server: dict | None = None

    def summary(self) -> dict:
        lat = np.array([o.latency_s for o in self.outcomes]) * 1000.0
        ok = np.array([o.latency_s for o in self.outcomes if o.status == 200]) * 1000.0
        n200 = sum(o.status == 200 for o in self.outcomes)
        n503 = sum(o.status == 503 for o in self.outcomes)
        lost = [o for o in self.outcomes if o.problem is not None]
        pct = lambda a, q: round(float(np.percentile(a, q)), 1) if len(a) else None
        out = {
            "clients": self.clients, "requests": self.requests, "images_per_request": self.images_per_request,
            "answered": len(self.outcomes) - len(lost), "status_200": n200, "status_503": n503,
            "other_or_lost": len(lost) + (self.requests - len(self.outcomes)),
            "wall_s": round(self.wall_s, 3),
            "throughput_req_s": round(len(self.outcomes) / self.wall_s, 2) if self.wall_s else None,
            "throughput_scored_img_s": round(n200 * self.images_per_request / self.wall_s, 2) if self.wall_s else None,
            "latency_ms_all": {"p50": pct(lat, 50), "p95": pct(lat, 95), "max": pct(lat, 100)},
            "latency_ms_200": {"p50": pct(ok, 50), "p95": pct(ok, 95), "max": pct(ok, 100)},
            "problems": sorted({o.problem for o in lost})[:5],
        }
        if self.server:
            batches = self.server.get("batches") or 0
            out["server"] = {"batches": batches, "images_scored": self.server.get("images_scored"),
                             "mean_batch": round(self.server["images_scored"] / batches, 2) if batches else None,
                             "rejected_queue_full": self.server.get("rejected_queue_full")}
        return out


def run_load(url: str, *, clients: int = 8, requests: int = 64, images_per_request: int = 1,
             overlay: bool = True, retry_503: bool = False, timeout_s: float = 120.0,
             image: bytes | None = None) -> LoadResult:
    """Send ``requests`` predict requests from ``clients`` threads; return every outcome."""
    import httpx

    image = image or make_image()
    files = [("files", (f"img{i}.png", image, "image/png")) for i in range(images_per_request)]
    target = url.rstrip("/") + "/v1/predict" + ("" if overlay else "?overlay=false")
    tickets = iter(range(requests))
    lock = threading.Lock()
    outcomes: list[Outcome] = []

    def check(r) -> str | None:
        try:
            body = r.json()
        except ValueError:
            return f"HTTP {r.status_code} without a JSON body"
        if r.status_code == 200:
            if body.get("n_scored") != images_per_request or len(body.get("results", [])) != images_per_request:
                return "200 but not every image scored"
            if overlay and not all(x.get("overlay_png") for x in body["results"]):
                return "200 without overlays"
            return None
        if r.status_code == 503:
            return None if body.get("detail") else "503 without a message"
        return f"HTTP {r.status_code}: {str(body.get('detail'))[:80]}"

    def client() -> None:
        with httpx.Client(timeout=timeout_s) as http:
            while True:
                with lock:
                    ticket = next(tickets, None)
                if ticket is None:
                    return
                t0 = time.perf_counter()
                while True:
                    try:
                        r = http.post(target, files=files)
                    except httpx.HTTPError as exc:
                        o = Outcome(None, time.perf_counter() - t0, f"no answer: {type(exc).__name__}")
                        break
                    if r.status_code == 503 and retry_503:
                        time.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    o = Outcome(r.status_code, time.perf_counter() - t0, check(r))
                    break
                with lock:
                    outcomes.append(o)

    threads = [threading.Thread(target=client, name=f"load-client-{i}") for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    server = None
    try:
        server = httpx.get(url.rstrip("/") + "/v1/health", timeout=10).json()
    except Exception:  # noqa: BLE001 - statistics are optional
        pass
    return LoadResult(clients, requests, images_per_request, wall, outcomes, server)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server_process(extra: list[str], port: int) -> subprocess.Popen:
    """``s2swclip serve`` in a subprocess on loopback; returns once /v1/health answers."""
    import httpx

    cmd = [sys.executable, "-m", "s2swclip.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []

    def drain():  # keep the pipe from filling up; keep the tail for error messages
        for line in proc.stderr:
            log.append(line)
            del log[:-50]

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            time.sleep(0.2)
            raise RuntimeError(f"server exited with {proc.returncode}: {''.join(log)[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not come up within 180 s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="measure this running server instead of starting one")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=200, help="total requests (fixed count)")
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--no-overlay", action="store_true", help="ask for scores only")
    p.add_argument("--retry-503", action="store_true")
    p.add_argument("--json", help="also write the summary here")
    g = p.add_argument_group("server started by this script")
    g.add_argument("--backbone", default="S2SW-Tiny-24L")
    g.add_argument("--weights", default="none")
    g.add_argument("--prompts")
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--device", default="cpu")
    g.add_argument("--max-batch", type=int, default=8)
    g.add_argument("--batch-wait-ms", type=float, default=10.0)
    g.add_argument("--queue-size", type=int, default=64)
    args = p.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        port = _free_port()
        extra = ["--backbone", args.backbone, "--weights", args.weights, "--image-size", str(args.image_size),
                 "--device", args.device, "--max-batch", str(args.max_batch),
                 "--batch-wait-ms", str(args.batch_wait_ms), "--queue-size", str(args.queue_size)]
        if args.prompts:
            extra += ["--prompts", args.prompts]
        t = time.time()
        proc = start_server_process(extra, port)
        url = f"http://127.0.0.1:{port}"
        print(f"server: {' '.join(extra)} on {url} (up in {time.time() - t:.1f} s)", file=sys.stderr)
    try:
        run_load(url, clients=args.clients, requests=min(args.requests, 2 * args.clients),
                 images_per_request=args.images_per_request, overlay=not args.no_overlay)  # warm-up
        res = run_load(url, clients=args.clients, requests=args.requests,
                       images_per_request=args.images_per_request, overlay=not args.no_overlay,
                       retry_503=args.retry_503)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    s = res.summary()
    model = f"{args.backbone} @ {args.image_size}px" if args.url is None else url
    print(f"load test: {s['clients']} clients x {s['requests']} requests "
          f"({s['images_per_request']} image(s) each, overlays {'off' if args.no_overlay else 'on'}), {model}, "
          f"{os.cpu_count()} CPU(s)")
    print(f"  wall {s['wall_s']:.2f} s   throughput {s['throughput_req_s']} req/s, "
          f"{s['throughput_scored_img_s']} scored images/s")
    la, lo = s["latency_ms_all"], s["latency_ms_200"]
    print(f"  latency all answers: p50 {la['p50']} ms  p95 {la['p95']} ms  max {la['max']} ms")
    print(f"  latency 200 answers: p50 {lo['p50']} ms  p95 {lo['p95']} ms  max {lo['max']} ms")
    print(f"  answers: 200={s['status_200']}  503={s['status_503']}  other/lost={s['other_or_lost']}")
    if "server" in s:
        sv = s["server"]
        print(f"  server: {sv['batches']} batches, mean batch {sv['mean_batch']} images "
              f"(includes the warm-up), {sv['rejected_queue_full']} images refused (queue full)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(s, f, indent=2)
    ok = s["other_or_lost"] == 0 and s["answered"] == s["requests"]
    if not ok:
        print(f"FAILED: {s['other_or_lost']} request(s) lost or answered otherwise: {s['problems']}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
