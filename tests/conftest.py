import pytest
import torch

TINY = "S2SW-Tiny-24L"

pytest_plugins = ["export_fixtures"]  # exported tiny detectors (tests/export, tests/runtime)


@pytest.fixture(scope="session")
def tiny_detector():
    """Tiny paper-topology backbone (24 layers, width 64, embed 768) with random weights."""
    import s2swclip

    det = s2swclip.load_detector("S2SW-Tiny-24L", None, None, image_size=224, untrained_ok=True)
    with torch.no_grad():  # larger prompts than the N(0, .02) init: a trained-like state
        g = torch.Generator().manual_seed(5)
        for p in det.prompts.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return det


@pytest.fixture
def own_detector(tiny_detector):
    """A private copy of the session detector, for tests that change it (mode, precision,
    prompts): the shared fixture is never mutated."""
    import copy

    return copy.deepcopy(tiny_detector)
