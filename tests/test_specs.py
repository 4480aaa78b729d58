"""The specs: each option validated in one place, errors naming the field; the CLI words them
with its flags (one table, ``s2swclip.cli.options.FLAGS``)."""

import math
import pickle

import pytest

from s2swclip.cli.options import FLAGS, flag_message
from s2swclip.inference.local import predict_files
from s2swclip.specs import DetectorSpec, RunOptions, ServeSettings, SpecError


@pytest.mark.parametrize("make, field, message", [
    (lambda: RunOptions(threshold=math.nan), "threshold", "threshold must be a finite number, got nan"),
    (lambda: RunOptions(heatmap_scale="per-image"), "heatmap_scale",
     "heatmap_scale must be one of fixed, image, got 'per-image'"),
    (lambda: RunOptions(fpr=1.0), "fpr", "fpr must be a number > 0 and < 1, got 1.0"),
    (lambda: RunOptions(batch_size=0), "batch_size", "batch_size must be an integer >= 1, got 0"),
    (lambda: ServeSettings(max_batch=0), "max_batch", "max_batch must be an integer >= 1, got 0"),
    (lambda: ServeSettings(batch_wait_ms=-1.0), "batch_wait_ms", "batch_wait_ms must be a finite number >= 0 and <= 10000, got -1.0"),
    (lambda: ServeSettings(threshold=math.inf), "threshold", "threshold must be a finite number, got inf"),
    (lambda: DetectorSpec(coreset=0), "coreset", "coreset must be a number > 0 and <= 1, got 0"),
    (lambda: DetectorSpec(preset="nope"), "preset", "preset must be one of visa-to-all, mvtec-to-visa, got 'nope'"),
])
def test_a_wrong_value_is_one_error_naming_the_field(make, field, message):
    with pytest.raises(SpecError) as err:
        make()
    assert (err.value.field, str(err.value)) == (field, message)
    assert err.value.fields == (field,) and flag_message(err.value) == f"{message} ({FLAGS[field]})"


def test_specs_are_frozen_picklable_values():
    for spec in (DetectorSpec("S2SW-Tiny-24L", None, image_size=56), RunOptions(threshold=0.5), ServeSettings()):
        again = pickle.loads(pickle.dumps(spec))
        assert again == spec and hash(again) == hash(spec)
    assert RunOptions().replace(threshold=0.25).threshold == 0.25
    assert DetectorSpec(preset="visa-to-all").input_size() == 410 and DetectorSpec().input_size() == 518


def test_the_engine_names_the_field_not_a_flag(tmp_path):
    with pytest.raises(SpecError, match="^threshold must be a finite number"):
        predict_files(object(), [tmp_path], tmp_path / "out", threshold=math.nan)
    assert not (tmp_path / "out").exists()
