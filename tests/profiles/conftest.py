import pytest

from .profile_helpers import small_detector


@pytest.fixture(scope="session")
def profile_detector():
    """A tiny random-weight detector at 112 px, never mutated by the profile tests."""
    return small_detector()
