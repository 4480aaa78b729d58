"""Product profiles: many products served by one backbone, each with its own reference bank,
few-shot weight and threshold (``s2swclip profile ...``, ``serve --profiles DIR``)."""

from .manifest import InvalidName, OverLimit, ProfileExists, ProfileNotFound, check_name
from .runtime import LiveProfiles, Profile, ProfileScorer, bank_bytes_per_reference
from .store import DEFAULT_MAX_PROFILES, DEFAULT_MAX_REFERENCES, GoodImage, ProfileStore

__all__ = ["InvalidName", "OverLimit", "ProfileExists", "ProfileNotFound",
           "DEFAULT_MAX_PROFILES", "DEFAULT_MAX_REFERENCES", "GoodImage", "LiveProfiles", "Profile", "ProfileScorer",
           "ProfileStore", "bank_bytes_per_reference", "check_name"]
