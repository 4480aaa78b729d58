"""Split-conformal thresholds: the rank formula and the false-positive guarantee."""

import math

import numpy as np
import pytest

from s2swclip.errors import S2SWError
from s2swclip.inference.calibration import conformal_threshold


@pytest.mark.parametrize("n,fpr", [(10, 0.2), (100, 0.01), (99, 0.01), (50, 0.1), (7, 0.3)])
def test_rank_and_bound(n, fpr):
    scores = np.random.default_rng(n).random(n)
    cal = conformal_threshold(scores, fpr)
    k = math.ceil((n + 1) * (1 - fpr))
    assert cal.rank == k and cal.threshold == np.sort(scores)[k - 1]
    assert cal.bound == pytest.approx(1 - k / (n + 1)) and cal.bound <= fpr + 1e-12
    assert cal.flagged == n - k


def test_expected_false_positive_rate_is_bounded():
    """Over many calibration/test draws from the same distribution, the mean fraction of new
    normal images flagged stays below F (and close to the bound 1 - k/(n+1))."""
    rng = np.random.default_rng(0)
    n, fpr, trials = 40, 0.1, 4000
    rates = []
    for _ in range(trials):
        cal = conformal_threshold(rng.normal(size=n), fpr)
        rates.append((rng.normal(size=200) > cal.threshold).mean())
    k = math.ceil((n + 1) * (1 - fpr))
    assert np.mean(rates) <= fpr
    assert abs(np.mean(rates) - (1 - k / (n + 1))) < 0.005


def test_too_few_images_warn_and_use_the_largest(caplog):
    cal = conformal_threshold([0.1, 0.5, 0.3], 0.01)
    assert cal.threshold == 0.5 and cal.rank == 3 and cal.bound == pytest.approx(0.25)
    assert "cannot guarantee" in caplog.text and "at least 99" in caplog.text


@pytest.mark.parametrize("scores,fpr,msg", [([], 0.1, "at least one"), ([0.1], 0.0, "^fpr must be"),
                                            ([0.1], 1.0, "^fpr must be"),
                                            ([float("nan")], 0.1, "NaN")])
def test_bad_calibration_input(scores, fpr, msg):
    with pytest.raises(S2SWError, match=msg):
        conformal_threshold(scores, fpr)
