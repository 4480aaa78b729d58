"""Several batches scored at once (``model_streams``): the same records, in input order, and
really concurrent; failures and early stops behave as with one stream."""

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from s2swclip.inference.pipeline import InferencePipeline, default_model_streams
from s2swclip.inference.scorers import MAX_CPU_STREAMS, DetectorScorer


class SlowScorer:
    """Score = mean of the input, map = the input's first channel; each call sleeps (no GIL)
    and records how many calls overlapped."""

    image_size = 16
    map_scale = 1.0

    def __init__(self, delay=0.02, fail_on_call=None):
        self.delay, self.fail_on_call = delay, fail_on_call
        self.lock = threading.Lock()
        self.calls = self.active = self.max_active = 0
        self.threads = set()

    def score(self, pixels):
        with self.lock:
            self.calls += 1
            call = self.calls
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.threads.add(threading.current_thread().name)
        try:
            time.sleep(self.delay * (1 + call % 3))  # batches finish out of order
            if call == self.fail_on_call:
                raise RuntimeError(f"scorer failed on call {call}")
            return pixels.mean(axis=(1, 2, 3)), pixels[:, 0].copy()
        finally:
            with self.lock:
                self.active -= 1

    def describe(self):
        return {"engine": "slow"}


def _png(seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _sources(n, bad=()):
    return [(b"junk" if i in bad else _png(i), f"{i}.png") for i in range(n)]


def _run(streams, sources, **kw):
    scorer = SlowScorer(**kw)
    pipe = InferencePipeline(scorer, batch_size=3, threshold=0.5, model_streams=streams)
    try:
        return scorer, list(pipe.run(sources))
    finally:
        pipe.close()


def test_three_streams_give_the_records_of_one_in_input_order_and_overlap():
    sources = _sources(20, bad=(4, 11))
    one_scorer, one = _run(1, sources)
    three_scorer, three = _run(3, sources)
    assert [r.index for r in three] == list(range(20))
    for a, b in zip(one, three):
        assert (a.name, a.score, a.anomalous, a.error_code, a.map_max, a.map_frac_above) == \
               (b.name, b.score, b.anomalous, b.error_code, b.map_max, b.map_frac_above)
    assert [r.error_code for r in three if r.error_code] == ["not_an_image", "not_an_image"]
    assert one_scorer.max_active == 1
    assert three_scorer.max_active >= 2  # calls overlapped on the model threads
    assert all(name.startswith("s2sw-model") for name in three_scorer.threads)
    assert one_scorer.calls == three_scorer.calls == 6  # 18 decodable images, batches of three


def test_a_record_is_yielded_only_once_its_batch_is_done():
    scorer = SlowScorer(delay=0.01)
    pipe = InferencePipeline(scorer, batch_size=2, model_streams=2)
    seen = []
    for rec in pipe.run(_sources(9)):
        assert rec.score is not None and rec.pixels is None and rec.timings_ms["batch_size"] in (1, 2)
        seen.append(rec.index)
    pipe.close()
    assert seen == list(range(9))


def test_a_scorer_failure_on_a_model_thread_stops_the_run_with_that_error():
    with pytest.raises(RuntimeError, match="scorer failed on call 2"):
        _run(2, _sources(12), fail_on_call=2)


def test_progress_counts_every_input_once():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    pipe = InferencePipeline(SlowScorer(delay=0.005), batch_size=4, model_streams=3)
    assert len(list(pipe.run(_sources(14, bad=(0,)), progress=bar))) == 14
    pipe.close()
    assert bar.n == 14


def test_a_consumer_that_stops_early_leaves_no_batch_running():
    scorer = SlowScorer(delay=0.02)
    pipe = InferencePipeline(scorer, batch_size=2, model_streams=2)
    gen = pipe.run(_sources(30))
    first = next(gen)
    gen.close()  # the finally waits for the batches in flight
    assert first.index == 0 and scorer.active == 0
    pipe.close()


def test_default_streams_come_from_the_scorer(tiny_detector, monkeypatch):
    assert default_model_streams(SlowScorer()) == 1  # a scorer that says nothing: one call at a time
    scorer = DetectorScorer(tiny_detector)
    monkeypatch.setattr("s2swclip.inference.scorers.available_cores", lambda: 8)
    saved = torch.get_num_threads()
    try:
        for threads, streams in ((1, MAX_CPU_STREAMS), (2, 4), (3, 2), (6, 1), (12, 1)):
            torch.set_num_threads(threads)
            assert scorer.model_streams == streams, threads
        torch.set_num_threads(1)
        monkeypatch.setattr(DetectorScorer, "_device", lambda self: "cuda:0")
        assert scorer.model_streams == 1  # an accelerator's queue already overlaps the host
    finally:
        torch.set_num_threads(saved)
    assert InferencePipeline(SlowScorer(), model_streams=0).model_streams == 1


@pytest.mark.parametrize("command", ["predict", "watch"])
def test_the_command_line_passes_model_streams_to_the_pipeline(command, capsys, tmp_path, monkeypatch):
    from s2swclip.inference import pipeline as pipeline_module
    from helpers import run_cli

    made = []
    real_init = pipeline_module.InferencePipeline.__init__

    def spy(self, *a, **kw):
        real_init(self, *a, **kw)
        made.append(self.model_streams)

    monkeypatch.setattr(pipeline_module.InferencePipeline, "__init__", spy)
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(_png(0))
    for flags, expected in ((["--model-streams", "3"], 3), ([], None)):
        made.clear()
        out = tmp_path / f"out{len(flags)}"
        extra = ["--exit-when-idle", "0.2"] if command == "watch" else []
        code, _, err = run_cli(capsys, command, str(src), "--out", str(out), "--backbone", "S2SW-Tiny-4L",
                               "--weights", "none", "--image-size", "56", "--threads", "1", "--quiet", *extra, *flags)
        assert code == 0, err
        assert made and made[-1] == (expected or min(4, pipeline_module.available_cores())), made
