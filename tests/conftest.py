import pytest
import torch

TINY = "S2SW-Tiny-24L"  # the paper's topology (24 vision layers, features at 6/12/18/24), tiny width
#: 4 vision layers, features at 1/2/3/4, DPAM in the last 3 (the 24-layer logic scaled; its model
#: config sets these defaults): for the tests of exports, runtimes, Ray, training crashes and the
#: feature cache, where the depth adds tracing and conversion time and no coverage.
SHALLOW = "S2SW-Tiny-4L"

pytest_plugins = ["export_fixtures"]  # exported shallow detectors (tests/export, tests/runtime)


def trained_like(det):
    """Larger prompts than the N(0, .02) init (a trained-like state), seeded; returns ``det``."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for p in det.prompts.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return det


@pytest.fixture(scope="session")
def tiny_detector():
    """Tiny paper-topology backbone (24 layers, width 64, embed 768) with random weights."""
    import s2swclip

    return trained_like(s2swclip.load_detector(TINY, None, None, image_size=224, untrained_ok=True))


@pytest.fixture(scope="session")
def shallow_detector():
    """The 4-layer backbone (same widths, feature-layer logic scaled), random weights, 224 px,
    trained-like prompts: what the export tests export."""
    import s2swclip

    return trained_like(s2swclip.load_detector(SHALLOW, None, None, image_size=224, untrained_ok=True))


@pytest.fixture
def own_detector(tiny_detector):
    """A private copy of the session detector, for tests that change it (mode, precision,
    prompts): the shared fixture is never mutated."""
    import copy

    return copy.deepcopy(tiny_detector)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance (2 CPUs, no dashboard) for the tests of one module (one start per
    module that needs it, about 7 s); yields its GCS address. Shut down after the module, so that
    Ray's threads and processes never run beside the rest of the suite in the one pytest process."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("pyarrow")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
