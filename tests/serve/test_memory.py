"""The service's memory is the operator's budget, not the clients' choice (Linux only).

A scaled-down run of ``benchmarks/serve_memory.py`` (the full case, 2 x 16 images of 6000^2, is
the benchmark's): two concurrent requests of large flat PNGs, a small decoding budget; the
server's peak RSS rise must stay a small fraction of what the uploads decode to, every file is
scored and ``/v1/health`` answers 200 throughout.
"""

import importlib.util
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "serve_memory.py")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _measure():
    spec = importlib.util.spec_from_file_location("serve_memory", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.measure


def test_two_requests_of_large_images_stay_within_the_budget():
    measure = _measure()
    small = measure(side=100, files=8, requests=2, inflight_mpx=12.0, image_size=112)
    large = measure(side=3000, files=8, requests=2, inflight_mpx=12.0, image_size=112)
    for m in (small, large):
        assert m["statuses"] == [200, 200] and m["answered"] == 16 and m["scored"] == 16
        assert m["health"] == [200]
    # 2 x 8 x 9 Mpx decode to 576 MB (Pillow keeps RGB in 4 bytes a pixel). With 12 Mpx in flight
    # at most one 9 Mpx image is held at a time (36 MB plus a conversion copy); the same run with
    # small images gives the fixed cost of serving (batches, threads), which large images must
    # not raise by more than a quarter of what they decode to.
    assert large["decoded_bytes_sent"] == 576_000_000
    extra = large["peak_rss_rise"] - small["peak_rss_rise"]
    assert extra < 0.25 * large["decoded_bytes_sent"], (small, large)
