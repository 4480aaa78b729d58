"""A small, fast version of benchmarks/serve_load.py: 8 concurrent clients on loopback, nothing lost."""

import importlib.util
import sys
import time
from pathlib import Path

import pytest

from s2swclip.serve.app import create_app

from .background import BackgroundServer

from .serve_helpers import FakeDetector

_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serve_load", _BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_eight_clients_all_scored(bench, tiny_detector):
    app = create_app(tiny_detector, batch_wait_ms=10)
    with BackgroundServer(app) as url:
        res = bench.run_load(url, clients=8, requests=24, image=bench.make_image(0, 160, 120))
    s = res.summary()
    assert s["answered"] == 24 and s["other_or_lost"] == 0, s
    assert s["status_200"] == 24
    assert s["server"]["images_scored"] == 24
    assert s["server"]["batches"] < 24  # concurrent requests shared batches
    assert s["latency_ms_200"]["p50"] > 0 and s["throughput_req_s"] > 0


class SlowDetector(FakeDetector):
    def predict(self, images):
        time.sleep(0.05)
        return super().predict(images)


def test_small_queue_answers_503_and_loses_nothing(bench):
    app = create_app(SlowDetector(), queue_size=2, max_batch=2, batch_wait_ms=0)
    with BackgroundServer(app) as url:
        res = bench.run_load(url, clients=8, requests=24, image=bench.make_image(1, 32, 32))
    s = res.summary()
    assert s["answered"] == 24 and s["other_or_lost"] == 0, s
    assert s["status_200"] + s["status_503"] == 24
    assert s["status_503"] > 0 and s["status_200"] > 0
    assert s["server"]["images_scored"] == s["status_200"]
