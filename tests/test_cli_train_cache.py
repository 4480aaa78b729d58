"""``s2swclip train --cache-features``: the expected size is printed first; mistakes are one line."""

import json

import pytest

from s2swclip.cli import main
from s2swclip.data.synthetic import generate_dataset

TINY = ["--backbone", "S2SW-Tiny-4L", "--weights", "none", "--image-size", "56", "--batch-size", "2"]


def _train(capsys, *args):
    code = main(["train", *args])
    _, err = capsys.readouterr()
    return code, err


@pytest.mark.parametrize("args,needle", [
    (["--cache-dtype", "fp16"], "error: cache_dtype fp16 applies to a feature cache (--cache-dtype); set cache_features"),
    (["--cache-features", "memory", "--cache-dtype", "bf16"], "error: argument --cache-dtype: invalid choice"),
])
def test_cache_option_mistakes_are_one_line(capsys, tmp_path, args, needle):
    code, err = _train(capsys, "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "out"), *TINY, *args)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and err.startswith(needle), err
    assert not (tmp_path / "out").exists()


def test_train_with_a_cache_reports_its_size_then_reads_it(capsys, tmp_path):
    data = generate_dataset(tmp_path / "data", classes=["pill"], n_train_good=1, n_test_good=2,
                            n_test_defect=2, image_size=64, seed=6)
    out, cache = tmp_path / "out", tmp_path / "cache"
    code, err = _train(capsys, "--data", str(data), "--out", str(out), *TINY, "--epochs", "2",
                       "--cache-features", str(cache), "--workers", "2")
    assert code == 0, err
    first = [line for line in err.splitlines() if line.startswith("feature cache (")]
    assert first == [f"feature cache ({cache}, fp32): 0.06 MB per image, 0.000 GB for 4 images; "
                     f"0 entries already there, 0.000 GB to add, " + first[0].split(", ")[-1]]
    assert first[0].endswith("GB free")
    assert err.index("feature cache (") < err.index("epoch 1/2")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["features_cached"] for r in log] == [False, True]
