"""Fixtures for the inspection-service tests."""

import pytest

from .serve_helpers import FakeDetector


@pytest.fixture
def fake_detector():
    return FakeDetector()


@pytest.fixture
def gated_detector():
    det = FakeDetector(gated=True)
    yield det
    det.release()
