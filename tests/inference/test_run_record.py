"""A Ray run's record (results/_run.json) is an untrusted file: a tampered one is one clear error."""

import json
import math

import pytest

from s2swclip.errors import S2SWError
from s2swclip.inference.run_record import load_run_record
from s2swclip.inference.shards import ResultsFolder

CAL = {"threshold": 0.42, "n": 20, "fpr": 0.1, "rank": 19, "bound": 0.0952, "flagged": 1}
GOOD = {"format": 1, "settings": {"model": "x"}, "threshold": 0.42, "calibration": CAL}


def _with(**changes):
    return json.dumps({**GOOD, **changes})


@pytest.mark.parametrize("text,needle", [
    (_with(calibration={k: v for k, v in CAL.items() if k != "rank"}), "incomplete"),
    (_with(calibration=dict(CAL, n="20")), "calibration.n has the wrong type"),
    (_with(calibration=dict(CAL, threshold=None)), "calibration.threshold"),
    (_with(calibration=dict(CAL, rank=99)), "out of range"),
    (_with(calibration=[1, 2]), "'calibration' must be null or an object"),
    (_with(threshold="high"), "'threshold' must be null or a finite number"),
    (_with(settings=[]), "'settings'"),
    (_with(threshold=0.5).replace("0.5", "NaN"), "NaN is not valid JSON"),
    (_with(threshold=0.5).replace("0.5", "1e999"), "'threshold' must be null or a finite number"),
    ("[1, 2]", "not a JSON object"),
    ('{"format": 1, "settings"', "Expecting"),
])
def test_a_tampered_run_record_is_one_line_naming_the_field(tmp_path, text, needle):
    path = tmp_path / "_run.json"
    path.write_text(text)
    with pytest.raises(S2SWError) as e:
        load_run_record(path)
    assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_valid_record_reads_and_the_results_folder_uses_the_check(tmp_path):
    results = tmp_path / "out" / "results"
    results.mkdir(parents=True)
    (results / "_run.json").write_text(_with())
    with ResultsFolder(tmp_path / "out", {"model": "x"}) as folder:
        assert folder.record()["calibration"] == CAL
    bad = json.loads(_with())
    bad["calibration"]["threshold"] = math.inf
    (results / "_run.json").write_text(json.dumps(bad))  # Infinity
    with ResultsFolder(tmp_path / "out", {"model": "x"}) as folder:
        with pytest.raises(S2SWError, match="Infinity is not valid JSON"):
            folder.record()
