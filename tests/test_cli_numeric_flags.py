"""Every numeric flag of every command: a value that is not a finite number in range is one
``error:`` line naming the flag, exit status 2, before any work (nothing loaded, nothing written,
no server started); the library refuses the same values with an S2SWError naming the field."""

import pytest

from s2swclip.cli import main
from s2swclip.errors import S2SWError

# (command and the arguments it requires, flag, bad value)
PREDICT = ["predict", "x.png", "--out", "OUT"]
TEST = ["test", "--data", "DATA", "--out", "OUT"]
TRAIN = ["train", "--data", "DATA", "--out", "OUT", "--backbone", "no-such-model"]
EXPORT = ["export", "--format", "onnx", "--out", "OUT"]
CASES = [
    (["serve"], "--port", "70000"), (["serve"], "--port", "-1"), (["serve"], "--port", "80.5"),
    (["serve"], "--batch-wait-ms", "nan"), (["serve"], "--batch-wait-ms", "inf"),
    (["serve"], "--batch-wait-ms", "-1"), (["serve"], "--batch-wait-ms", "1e12"),
    (["serve"], "--max-batch", "0"), (["serve"], "--max-batch", "1000000"), (["serve"], "--queue-size", "0"),
    (["serve"], "--max-upload-mb", "nan"), (["serve"], "--max-upload-mb", "0"), (["serve"], "--max-upload-mb", "1e300"),
    (["serve"], "--max-inflight-mb", "-5"), (["serve"], "--max-inflight-mb", "inf"),
    (["serve"], "--max-mpx", "0"), (["serve"], "--max-inflight-mpx", "nan"), (["serve"], "--save-max-mb", "inf"),
    (["serve"], "--upload-timeout", "0"), (["serve"], "--upload-timeout", "nan"),
    (["serve"], "--max-connections", "0"), (["serve"], "--header-timeout", "nan"),
    (["serve"], "--header-timeout", "0"), (["serve"], "--threshold", "nan"), (["serve"], "--image-size", "0"),
    (["serve"], "--shots", "0"), (["serve"], "--few-shot-weight", "2"), (["serve"], "--coreset", "0"),
    (PREDICT, "--batch-size", "0"), (PREDICT, "--max-mpx", "inf"), (PREDICT, "--fpr", "1"),
    (PREDICT, "--threshold", "inf"), (PREDICT, "--workers", "0"), (PREDICT, "--gpus-per-worker", "-1"),
    (PREDICT, "--gpus-per-worker", "nan"), (PREDICT, "--cpus-per-worker", "0"), (PREDICT, "--shard-rows", "0"),
    (TEST, "--workers", "-3"), (TEST, "--workers", "100000"), (TEST, "--figures", "-1"), (TEST, "--batch-size", "0"),
    (TEST, "--shot-seed", "-1"), (TEST, "--shots", "0"),
    (TRAIN, "--epochs", "0"), (TRAIN, "--lr", "nan"), (TRAIN, "--lr", "inf"), (TRAIN, "--batch-size", "-4"),
    (TRAIN, "--seed", "-1"), (TRAIN, "--alpha", "inf"), (TRAIN, "--beta", "nan"), (TRAIN, "--max-batches", "-1"),
    (TRAIN, "--workers", "-3"), (TRAIN, "--epochs", "two"),
    (["demo", "--out", "OUT"], "--seed", "-1"),
    (EXPORT, "--calibrate-max", "0"), (EXPORT, "--threshold", "nan"),
]


@pytest.mark.parametrize("base,flag,value", CASES, ids=[f"{b[0]} {f} {v}" for b, f, v in CASES])
def test_bad_numeric_flag_is_one_error_line(capsys, tmp_path, base, flag, value):
    argv = [str(tmp_path / a) if a in ("OUT", "DATA") else a for a in base] + [f"{flag}={value}"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "OUT").exists()


def test_upload_larger_than_the_body_budget_is_refused_before_the_model_loads(capsys):
    assert main(["serve", "--backbone", "no-such-model", "--max-upload-mb", "50", "--max-inflight-mb", "20"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --max-upload-mb 50 is more than --max-inflight-mb 20") and len(err.splitlines()) == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 1e13])
def test_batcher_and_app_refuse_a_wait_out_of_range(value):
    from s2swclip.serve.batcher import MicroBatcher

    with pytest.raises(S2SWError, match=r"^max_wait_ms must be a finite number >= 0 and <= 10000"):
        MicroBatcher(lambda xs: xs, max_wait_ms=value)
    pytest.importorskip("fastapi")
    from s2swclip.serve.app import create_app

    from serve.serve_helpers import FakeDetector

    with pytest.raises(S2SWError, match=r"^batch_wait_ms must be a finite number") as e:
        create_app(FakeDetector(), batch_wait_ms=value)
    assert e.value.fields == ("batch_wait_ms",)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(max_batch=0), "max_batch must be an integer >= 1, got 0"),
    (dict(max_batch=2.5), "max_batch must be an integer >= 1, got 2.5"),
    (dict(queue_size=float("nan")), "queue_size must be an integer >= 1, got nan"),
])
def test_batcher_refuses_sizes_out_of_range(kwargs, needle):
    from s2swclip.cli.serve import FLAGS
    from s2swclip.serve.batcher import MicroBatcher

    with pytest.raises(S2SWError) as e:
        MicroBatcher(lambda xs: xs, **kwargs)
    assert str(e.value) == needle
    flag = "--max-batch" if "max_batch" in kwargs else "--queue-size"
    assert e.value.with_flags(FLAGS) == f"{needle} ({flag})"  # what the serve command shows
