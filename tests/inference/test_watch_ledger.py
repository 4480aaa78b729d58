"""The watch ledger's crash recovery and the file detector's settle rule, in-process (the
watcher process itself is tested in test_watch.py)."""

import json
import os
import sys
import time

import numpy as np
import pytest

from s2swclip.errors import S2SWError
from s2swclip.inference.watch.detect import FileDetector, is_temporary_name
from s2swclip.inference.watch.ledger import Ledger, ResultsLog

FP = {"model": "sha256:abc", "threshold": 0.5}


def _line(name, sha):
    return json.dumps({"name": name, "sha256": sha, "score": 0.1})


def test_lines_written_before_a_lost_transaction_are_recovered_and_a_torn_line_is_cut(tmp_path):
    led, log = Ledger(tmp_path, FP), ResultsLog(tmp_path)
    a, b, c = led.add_pending([("a.jpg", 1, 1), ("b.jpg", 2, 2), ("c.jpg", 3, 3)])
    off = log.append([_line("a.jpg", "s-a")])
    led.commit([(a, "s-a", _line("a.jpg", "s-a"), None)], off)
    log.append([_line("b.jpg", "s-b")])  # durable line, then the process dies before the commit
    with open(tmp_path / "results.jsonl", "ab") as f:
        f.write(b'{"name": "c.jpg", "sha2')  # dies in the middle of the next write
    log.close()
    led.close()

    led, log = Ledger(tmp_path, FP), ResultsLog(tmp_path)
    assert (tmp_path / "results.jsonl").read_text().splitlines() == [_line("a.jpg", "s-a"), _line("b.jpg", "s-b")]
    assert led.recover(log, "to_sort") == 1
    assert led.latest("b.jpg").state == "done" and led.latest("b.jpg").sha256 == "s-b"
    assert led.latest("b.jpg").action == "to_sort"
    assert led.latest("c.jpg").state == "pending" and led.latest("c.jpg").id == c  # scored again
    assert led.jsonl_offset == log.size()
    assert led.counts() == {"done": 2, "pending": 1}


def test_a_line_whose_pending_row_was_lost_still_counts_as_done(tmp_path):
    led, log = Ledger(tmp_path, FP), ResultsLog(tmp_path)
    log.append([_line("x.jpg", "s-x")])
    assert led.recover(log) == 1
    part = led.latest("x.jpg")
    assert (part.state, part.sha256, part.size) == ("done", "s-x", -1)


def test_another_threshold_or_model_is_refused_naming_it(tmp_path):
    Ledger(tmp_path, FP).close()
    with pytest.raises(S2SWError, match=r"another threshold \(0.5, now 0.6\)"):
        Ledger(tmp_path, dict(FP, threshold=0.6))
    with pytest.raises(S2SWError, match="another model"):
        Ledger(tmp_path, dict(FP, model="sha256:def"))
    Ledger(tmp_path, dict(FP)).close()


def test_a_results_file_shorter_than_the_ledger_records_is_refused(tmp_path):
    led, log = Ledger(tmp_path, FP), ResultsLog(tmp_path)
    (pid,) = led.add_pending([("a.jpg", 1, 1)])
    led.commit([(pid, "s", _line("a.jpg", "s"), None)], log.append([_line("a.jpg", "s")]))
    log.close()
    (tmp_path / "results.jsonl").write_bytes(b"")
    with pytest.raises(S2SWError, match="shorter"):
        led.recover(ResultsLog(tmp_path))


def test_temporary_names():
    assert [is_temporary_name(n) for n in ("a.tmp", "a.JPG.part", "~a.jpg", ".a.jpg", "a.jpg", "a.partial.png")] == \
        [True, True, True, True, False, False]


class Clock:
    """The detector's clock, moved by hand (wall and monotonic time together)."""

    def __init__(self):
        self.t = time.time()

    def monotonic(self):
        return self.t

    def time_ns(self):
        return int(self.t * 1e9)


def test_a_growing_file_is_not_ready_until_it_settles(tmp_path, monkeypatch):
    from s2swclip.inference.watch import detect

    clock = Clock()
    monkeypatch.setattr(detect, "time", clock)
    det = FileDetector(tmp_path, settle=0.3, rescan=0.0)
    f = tmp_path / "x.jpg"
    for k in range(4):  # a chunk every 0.2 s (under the settle time): never ready
        with open(f, "ab") as h:
            h.write(b"chunk")
        os.utime(f, ns=(clock.time_ns(), clock.time_ns()))
        assert det.poll(10) == []
        clock.t += 0.2
    assert det.poll(10) == []  # 0.2 s after the last chunk
    clock.t += 0.11
    ready = det.poll(10)
    assert [(c.name, c.size) for c in ready] == [("x.jpg", 20)]
    assert det.poll(10) == []  # handed out once
    det.mark_known(ready[0])
    clock.t += 1
    assert det.poll(10) == []  # rescans skip it while it stays the same
    with open(f, "ab") as h:
        h.write(b"more")
    os.utime(f, ns=(clock.time_ns(), clock.time_ns()))
    assert det.poll(10) == []  # changed: a new candidate, settling
    clock.t += 0.31
    assert [c.size for c in det.poll(10)] == [24]


def test_old_files_and_renamed_files_are_ready_at_once(tmp_path):
    (tmp_path / "old.jpg").write_bytes(b"x")
    past = time.time_ns() - 60 * 10**9
    os.utime(tmp_path / "old.jpg", ns=(past, past))
    (tmp_path / "new.jpg").write_bytes(b"y")
    det = FileDetector(tmp_path, settle=30.0, rescan=0.0)
    assert [c.name for c in det.poll(10)] == ["old.jpg"]
    (tmp_path / "cam.part").write_bytes(b"z")
    os.rename(tmp_path / "cam.part", tmp_path / "cam.jpg")
    det._event(type("E", (), {"event_type": "moved", "is_directory": False, "src_path": str(tmp_path / "cam.part"),
                              "dest_path": str(tmp_path / "cam.jpg")})())
    assert [c.name for c in det.poll(10)] == ["cam.jpg"]  # new.jpg still settling


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify's events")
def test_the_watchers_own_reads_raise_no_events_and_renames_writes_and_touches_do(tmp_path):
    seen = []
    det = FileDetector(tmp_path, settle=30.0, rescan=3600.0)
    det._event = lambda e: seen.append((e.event_type, os.path.basename(e.src_path)))
    (tmp_path / "a.jpg").write_bytes(b"x")
    det.start()
    try:
        def events_until(kind, name):  # every event up to the first (kind, name), in order
            deadline = time.monotonic() + 30
            while (kind, name) not in seen:
                assert time.monotonic() < deadline, (kind, name, seen)
                time.sleep(0.05)
            out = seen[:seen.index((kind, name)) + 1]
            del seen[:len(out)]
            return out

        def marker(i):  # a rename: its event comes after those of everything done before it
            (tmp_path / f"m{i}.part").write_bytes(b"m")
            os.rename(tmp_path / f"m{i}.part", tmp_path / f"m{i}.jpg")
            return events_until("moved", f"m{i}.part")

        marker(0)
        for _ in range(20):  # what decoding and digesting a file do: open, read, close
            (tmp_path / "a.jpg").read_bytes()
        list(os.scandir(tmp_path))
        # unfiltered: an "opened" and a "closed_no_write" for each read, before the marker's
        assert [k for k, n in marker(1) if n == "a.jpg"] == []
        os.utime(tmp_path / "a.jpg")
        assert [k for k, n in marker(2) if n == "a.jpg"] in (["attrib"], ["modified"])  # watchdog >= 5 / older
        with open(tmp_path / "a.jpg", "ab") as f:
            f.write(b"more")
        assert {"modified", "closed"} <= {k for k, n in marker(3) if n == "a.jpg"}
    finally:
        det.stop()


class StoppingScorer:
    """Score = mean pixel; asks the station to stop while scoring its ``stop_at``-th batch."""

    image_size = 32
    map_scale = 1.0

    def __init__(self, stop_at=None):
        self.calls, self.stop_at, self.station = 0, stop_at, None

    def score(self, pixels):
        self.calls += 1
        if self.calls == self.stop_at:
            self.station.request_stop()
        return pixels.mean(axis=(1, 2, 3)) * 0 + 0.3, np.zeros((len(pixels), 32, 32), np.float32)

    def describe(self):
        return {"engine": "stopping"}


def test_a_stop_finishes_the_batch_in_flight_and_the_next_start_scores_the_rest(tmp_path):
    from PIL import Image

    from s2swclip.inference.pipeline import InferencePipeline
    from s2swclip.inference.watch import WatchOptions, WatchStation

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for i in range(20):
        Image.new("RGB", (40, 30), (i, 2 * i, 3 * i)).save(inp / f"{i:02d}.png")
    opts = WatchOptions(settle_ms=0, exit_when_idle=0, overlays=False)
    scorer = StoppingScorer(stop_at=2)
    station = WatchStation(InferencePipeline(scorer, batch_size=4, threshold=0.5), inp, out, FP, opts)
    scorer.station = station
    stats = station.run()
    first = (out / "results.jsonl").read_text().splitlines()
    assert stats.scored == len(first) == 8  # the batch in flight when the stop came was finished
    led = Ledger(out, FP)
    assert led.jsonl_offset == (out / "results.jsonl").stat().st_size  # and committed
    assert led.counts() == {"done": 8, "pending": 12}
    led.close()

    stats = WatchStation(InferencePipeline(StoppingScorer(), batch_size=4, threshold=0.5), inp, out, FP, opts).run()
    names = [json.loads(line)["name"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert (stats.scored, stats.skipped) == (12, 8)
    assert sorted(names) == [f"{i:02d}.png" for i in range(20)]
    assert all(json.loads(line)["score"] == pytest.approx(0.3) for line in first)


def test_a_touched_file_whose_pending_row_a_crash_left_is_not_scored_again(tmp_path):
    from PIL import Image

    from s2swclip.inference.pipeline import InferencePipeline
    from s2swclip.inference.watch import WatchOptions, WatchStation

    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (i, 0, 0)).save(inp / f"{i}.png")
    opts = WatchOptions(settle_ms=0, exit_when_idle=0, overlays=False)

    def run():
        return WatchStation(InferencePipeline(StoppingScorer(), batch_size=4, threshold=0.5), inp, out, FP, opts).run()

    assert run().scored == 3
    later = time.time_ns() + 10**9
    os.utime(inp / "1.png", ns=(later, later))  # touched, then a crash right after its pending row
    led = Ledger(out, FP)
    led.add_pending([("1.png", (inp / "1.png").stat().st_size, later)])
    led.close()
    stats = run()
    assert (stats.scored, stats.skipped) == (0, 3)
    assert len((out / "results.jsonl").read_text().splitlines()) == 3
    led = Ledger(out, FP)
    assert led.counts() == {"done": 3} and led.latest("1.png").mtime_ns == later


@pytest.mark.parametrize("interval,most,least", [(60.0, 6, 2), (0.0, 24, 24)])
def test_a_burst_is_committed_a_few_groups_at_a_time(tmp_path, monkeypatch, interval, most, least):
    """48 files at batch 2: with a long commit interval the groups of the burst share appends (the
    last BURST_BACKLOG batches, near the end of the chunk, are committed one by one); with none,
    every group is its own append. Either way every file is one line, committed."""
    from PIL import Image

    from s2swclip.inference.pipeline import InferencePipeline
    from s2swclip.inference.watch import WatchOptions, WatchStation
    from s2swclip.inference.watch import station as station_module

    monkeypatch.setattr(station_module, "COMMIT_INTERVAL_S", interval)
    appends = []
    real = ResultsLog.append
    monkeypatch.setattr(ResultsLog, "append", lambda self, lines: (appends.append(len(lines)) if lines else None,
                                                                   real(self, lines))[1])
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    for i in range(48):
        Image.new("RGB", (40, 30), (i, 2 * i, 3 * i)).save(inp / f"{i:02d}.png")
    opts = WatchOptions(settle_ms=0, exit_when_idle=0, overlays=False)
    stats = WatchStation(InferencePipeline(StoppingScorer(), batch_size=2, threshold=0.5), inp, out, FP, opts).run()
    names = [json.loads(line)["name"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert stats.scored == 48 and sorted(names) == [f"{i:02d}.png" for i in range(48)]
    assert sum(appends) == 48 and least <= len(appends) <= most, appends
    led = Ledger(out, FP)
    assert led.counts() == {"done": 48} and led.jsonl_offset == (out / "results.jsonl").stat().st_size
    led.close()
