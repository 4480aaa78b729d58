"""Predict requests while a profile changes see the old or the new bank, whole: every answer's
scores are exactly those of the version it reports, never a mix or a half-built bank."""

import asyncio
import threading
import time

import httpx
import numpy as np

from s2swclip.data.images import decode_for_model
from s2swclip.profiles import GoodImage, ProfileScorer, ProfileStore
from s2swclip.serve.app import create_app
from s2swclip.serve.profiles_routes import ProfilesService

from .profile_helpers import SIZE, image_bytes

QUERIES = [0, 2, 3, 4, 50]  # a v1 reference, the images added by versions 2, 3, 4, and an outsider
TOL = 1e-4  # float32 scores of the same bank; micro-batches of other sizes round differently


def good(seed):
    return GoodImage(f"{seed}.png", image_bytes(seed))


def expected_scores(root, det):
    """Scores of QUERIES under versions 1..4 (refs {0,1} then +2, +3, +4), built apart."""
    store = ProfileStore(root, det)
    versions = [store.create("p", [good(0), good(1)])] + [store.add_references("p", [good(s)]) for s in (2, 3, 4)]
    pixels = np.stack([decode_for_model(image_bytes(s), SIZE).pixels for s in QUERIES])
    return {p.version: ProfileScorer(det, p).score(pixels)[0] for p in versions}


def test_predicts_during_updates_see_one_whole_version(tmp_path, profile_detector):
    expected = expected_scores(tmp_path / "expected", profile_detector)
    assert expected[1][1] > 1e-3 and expected[2][1] < 1e-6  # image 2 becomes a reference at version 2
    store = ProfileStore(tmp_path / "served", profile_detector)
    store.create("p", [good(0), good(1)])
    service = ProfilesService(ProfileStore(tmp_path / "served", profile_detector))
    app = create_app(profile_detector, profiles=service, max_batch=4, batch_wait_ms=1)
    entered, release = threading.Event(), threading.Event()
    real_encode = service.store._encode

    def gated_encode(decoded, progress=None):  # the first update stops half-way until released
        banks = real_encode(decoded, progress)
        if not release.is_set():
            entered.set()
            assert release.wait(60)
        return banks

    service.store._encode = gated_encode
    queries = [("files", (f"{s}.png", image_bytes(s), "image/png")) for s in QUERIES]
    answers = []

    async def predict(client):
        r = await client.post("/v1/predict?profile=p&overlay=false", files=queries)
        assert r.status_code == 200, r.text
        answers.append((r.json()["profile_version"], [row["score"] for row in r.json()["results"]]))
        return answers[-1]

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            update = asyncio.ensure_future(client.post("/v1/profiles/p/references", files=[queries[1]]))
            deadline = time.monotonic() + 60
            while not entered.is_set():  # the update has built its bank, not saved it
                assert time.monotonic() < deadline, "the update never reached its bank"
                await asyncio.sleep(0.001)
            during = await asyncio.gather(*(predict(client) for _ in range(4)))
            release.set()
            assert (await update).json()["version"] == 2
            after = await predict(client)
            # free-running: two more updates while predicts keep coming
            updates = asyncio.ensure_future(asyncio.gather(
                client.post("/v1/profiles/p/references", files=[queries[2]])))
            while not updates.done():
                await predict(client)
            await client.post("/v1/profiles/p/references", files=[queries[3]])
            await asyncio.gather(*(predict(client) for _ in range(3)))
            return during, after

    during, after = asyncio.run(scenario())
    app.state.batcher.close()
    assert [v for v, _ in during] == [1, 1, 1, 1] and after[0] == 2
    assert {v for v, _ in answers} >= {1, 2, 4}
    for version, scores in answers:
        np.testing.assert_allclose(scores, expected[version], atol=TOL, err_msg=f"version {version}")
