"""A small, fast version of benchmarks/serve_load.py: 8 concurrent clients on loopback, nothing lost.

What depends on thread timing is made deterministic with events: the model's first call is held
until the situation under test exists (every client has a request waiting; the queue has refused
requests), then released. Throughput and latency are measured by the benchmark, not here.
"""

import importlib.util
import sys
import threading
import time
from pathlib import Path

import pytest

from s2swclip.inference.scorers import DetectorScorer
from s2swclip.serve.app import create_app

from .background import BackgroundServer

from .serve_helpers import FakeDetector

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"
CLIENTS, REQUESTS = 8, 24


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serve_load", _BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _wait_for(condition, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


class HeldScorer(DetectorScorer):
    """The real detector; its first batch is held until ``ready()`` holds (then never again);
    records each batch's size."""

    def __init__(self, detector, ready):
        super().__init__(detector)
        self.ready, self.sizes, self.released = ready, [], False

    def score(self, pixels):
        if not self.released:
            _wait_for(self.ready, "the held situation arose")
            self.released = True
        self.sizes.append(len(pixels))
        return super().score(pixels)


def test_eight_clients_all_scored_in_shared_batches(bench, tiny_detector):
    holder = {}
    scorer = HeldScorer(tiny_detector, lambda: holder["app"].state.batcher.pending == CLIENTS)
    app = holder["app"] = create_app(scorer, batch_wait_ms=10)  # max_batch 8
    with BackgroundServer(app) as url:
        res = bench.run_load(url, clients=CLIENTS, requests=REQUESTS, image=bench.make_image(0, 160, 120))
    s = res.summary()
    assert s["answered"] == REQUESTS and s["other_or_lost"] == 0, s
    assert s["status_200"] == REQUESTS
    assert s["server"]["images_scored"] == sum(scorer.sizes) == REQUESTS
    assert s["server"]["batches"] == len(scorer.sizes)
    # the first batch was held until every client had a request waiting: the first two batches
    # together scored all eight (the second took every waiting one at once), so concurrent
    # requests shared batches
    assert sum(scorer.sizes[:2]) >= CLIENTS, scorer.sizes
    assert len(scorer.sizes) <= REQUESTS - (CLIENTS - 2), scorer.sizes


def test_small_queue_answers_503_and_loses_nothing(bench):
    holder = {}
    det = FakeDetector(gated=True)

    def release_once_refused():  # the model holds its first batch until the queue has refused six
        _wait_for(lambda: "app" in holder and holder["app"].state.batcher.rejected >= 6, "six requests were refused")
        det.release()

    app = holder["app"] = create_app(det, queue_size=2, max_batch=2, batch_wait_ms=0)
    releaser = threading.Thread(target=release_once_refused, daemon=True)
    releaser.start()
    with BackgroundServer(app) as url:
        res = bench.run_load(url, clients=CLIENTS, requests=REQUESTS, image=bench.make_image(1, 32, 32))
    releaser.join(5)
    s = res.summary()
    assert s["answered"] == REQUESTS and s["other_or_lost"] == 0, s
    assert s["status_200"] + s["status_503"] == REQUESTS
    assert s["status_503"] >= 6 and s["status_200"] >= 1  # the held request(s) were answered after all
    assert s["server"]["images_scored"] == s["status_200"] == sum(det.batch_sizes)
    assert s["server"]["rejected_queue_full"] == s["status_503"]  # one image per request
