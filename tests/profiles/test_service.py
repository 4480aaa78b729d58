"""``serve --profiles DIR``: the /v1/profiles routes and /v1/predict?profile=NAME."""

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from s2swclip.profiles import ProfileStore
from s2swclip.serve.app import create_app
from s2swclip.serve.profiles_routes import ProfilesService
from s2swclip.serve.security import SecuritySettings

from .profile_helpers import image_bytes

URL = "http://127.0.0.1"


def files(seeds, field="files", **kw):
    return [(field, (f"img_{s}.png", image_bytes(s, **kw), "image/png")) for s in seeds]


def make_app(root, det, token=None, **limits):
    service = ProfilesService(ProfileStore(root, det, **limits))
    return create_app(det, profiles=service, security=SecuritySettings(token=token), max_upload_bytes=2_000_000)


def test_create_predict_update_delete(tmp_path, profile_detector):
    with TestClient(make_app(tmp_path, profile_detector), base_url=URL) as client:
        assert client.get("/v1/profiles").json()["profiles"] == []
        r = client.post("/v1/profiles", data={"name": "bolt"}, files=files([0, 1, 2]))
        assert r.status_code == 200, r.text
        assert (r.json()["name"], r.json()["version"], r.json()["references"]) == ("bolt", 1, 3)
        listed = client.get("/v1/profiles").json()
        assert [(p["name"], p["version"]) for p in listed["profiles"]] == [("bolt", 1)]
        shown = client.get("/v1/profiles/bolt").json()
        assert len(shown["thumbnails"]) == 3
        thumb = Image.open(io.BytesIO(base64.b64decode(shown["thumbnails"][0])))
        assert max(thumb.size) == 96 and thumb.size == (96, 77)  # 80 x 64 scaled to a 96 px side
        parts = [("files", ("ref.png", image_bytes(0), "image/png")),
                 ("files", ("new.png", image_bytes(9), "image/png")),
                 ("files", ("defect.png", image_bytes(10, defect=True), "image/png"))]
        body = client.post("/v1/predict?profile=bolt", files=parts).json()
        assert (body["profile"], body["profile_version"], body["threshold"]) == ("bolt", 1, None)
        scores = [row["score"] for row in body["results"]]
        assert scores[0] < 1e-5 < scores[1] < scores[2]
        plain = client.post("/v1/predict", files=parts).json()
        assert "profile" not in plain and plain["results"][0]["score"] > 1e-3  # zero-shot: the bank is not used
        assert client.post("/v1/predict?profile=nope", files=parts).status_code == 404
        r = client.post("/v1/profiles/bolt/references", files=files([9]))
        assert r.status_code == 200 and (r.json()["version"], r.json()["references"]) == (2, 4)
        body = client.post("/v1/predict?profile=bolt", files=parts).json()
        assert body["profile_version"] == 2 and body["results"][1]["score"] < 1e-5  # img 9 is a reference now
        r = client.post("/v1/profiles/bolt/calibration", data={"fpr": "0.25"}, files=files(range(20, 27)))
        assert r.status_code == 200 and r.json()["version"] == 3
        cal = r.json()["calibration"]
        assert (cal["n"], cal["rank"]) == (7, 6) and r.json()["threshold"] == cal["threshold"]
        body = client.post("/v1/predict?profile=bolt", files=parts).json()
        assert body["threshold"] == cal["threshold"]
        assert [row["anomalous"] for row in body["results"]] == [False, False, True]
        assert client.delete("/v1/profiles/bolt").json() == {"deleted": "bolt"}
        assert client.get("/v1/profiles/bolt").status_code == 404
        assert client.post("/v1/predict?profile=bolt", files=parts).status_code == 404


def test_errors_and_limits(tmp_path, profile_detector):
    app = make_app(tmp_path, profile_detector, max_profiles=1, max_references=3)
    with TestClient(app, base_url=URL) as client:
        def create(name, seeds, **kw):
            return client.post("/v1/profiles", data={"name": name, **kw}, files=files(seeds))

        for bad in ("../etc", "a/b", "", "x" * 65, "tab\there"):
            r = create(bad, [0])
            assert r.status_code == 400 and "invalid profile name" in r.json()["detail"], bad
        assert create("p", [0, 1, 2, 3]).status_code == 413  # 4 > --max-references 3
        r = client.post("/v1/profiles", data={"name": "p"}, files=[("files", ("x.png", b"not an image", "image/png"))])
        assert r.status_code == 422 and "good image 'x.png' unusable" in r.json()["detail"]
        r = create("p", [0], few_shot_weight="2")
        assert r.status_code == 400 and "field 'few_shot_weight' must be in [0.0, 1.0]" in r.json()["detail"]
        assert create("p", [0, 1]).status_code == 200
        assert create("p", [0]).status_code == 409
        assert create("q", [0]).status_code == 413  # --max-profiles 1
        assert client.post("/v1/profiles/p/references", files=files([5, 6])).status_code == 413  # 2 + 2 > 3
        huge = [("files", ("a.png", b"0" * 2_100_000, "image/png"))]
        r = client.post("/v1/profiles", data={"name": "big"}, files=huge)
        assert r.status_code == 413 and "--max-upload-mb" in r.json()["detail"]
        assert client.post("/v1/profiles/nope/references", files=files([1])).status_code == 404
        assert client.delete("/v1/profiles/nope").status_code == 404
        assert client.get("/v1/profiles/p").json()["version"] == 1  # nothing above changed it
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "p"]


def test_management_needs_the_token(tmp_path, profile_detector):
    token = "s3cret-token-for-tests"
    with TestClient(make_app(tmp_path, profile_detector, token=token), base_url=URL) as client:
        assert client.post("/v1/profiles", data={"name": "p"}, files=files([0])).status_code == 401
        assert client.get("/v1/profiles").status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert client.post("/v1/profiles", data={"name": "p"}, files=files([0]), headers=auth).status_code == 200
        assert client.delete("/v1/profiles/p").status_code == 401
        assert client.delete("/v1/profiles/p", headers=auth).status_code == 200


def test_restart_serves_the_good_profiles_and_names_the_corrupt_one(tmp_path, profile_detector):
    store = ProfileStore(tmp_path, profile_detector)
    store.create("a", [store_image(0)])
    store.create("b", [store_image(1)])
    (tmp_path / "b" / "v000001" / "references.safetensors").write_bytes(b"garbage")
    with TestClient(make_app(tmp_path, profile_detector), base_url=URL) as client:
        listed = client.get("/v1/profiles").json()
        assert [p["name"] for p in listed["profiles"]] == ["a"]
        assert list(listed["unusable"]) == ["b"] and "references file" in listed["unusable"]["b"]
        assert client.post("/v1/predict?profile=a", files=files([0])).json()["results"][0]["score"] < 1e-5
        assert client.post("/v1/predict?profile=b", files=files([0])).status_code == 404
        assert client.delete("/v1/profiles/b").status_code == 200  # a corrupt profile can be removed
        assert client.get("/v1/profiles").json()["unusable"] == {}


def store_image(seed):
    from s2swclip.profiles import GoodImage

    return GoodImage(f"{seed}.png", image_bytes(seed))


def test_saved_results_name_the_profile_version(tmp_path, profile_detector):
    import json

    service = ProfilesService(ProfileStore(tmp_path / "profiles", profile_detector))
    app = create_app(profile_detector, profiles=service, save_dir=tmp_path / "saved")
    with TestClient(app, base_url=URL) as client:
        assert client.post("/v1/profiles", data={"name": "p"}, files=files([0])).status_code == 200
        assert client.post("/v1/profiles/p/references", files=files([1])).status_code == 200
        assert client.post("/v1/predict?profile=p", files=files([5])).status_code == 200
        assert client.post("/v1/predict", files=files([5])).status_code == 200
    lines = [json.loads(x) for x in (tmp_path / "saved" / "results.jsonl").read_text().splitlines()]
    assert [(x.get("profile"), x.get("profile_version")) for x in lines] == [("p", 2), (None, None)]


def test_predict_with_a_profile_on_a_service_without_profiles_is_404(profile_detector):
    with TestClient(create_app(profile_detector), base_url=URL) as client:
        r = client.post("/v1/predict?profile=bolt", files=files([0]))
        assert r.status_code == 404 and "start it with --profiles DIR" in r.json()["detail"]
        assert client.get("/v1/profiles").status_code == 404
        assert client.get("/v1/model").json()["profiles"] is None


@pytest.mark.parametrize("route", ["/v1/profiles", "/v1/profiles/{name}", "/v1/profiles/{name}/references"])
def test_routes_are_in_the_openapi_schema(tmp_path, profile_detector, route):
    with TestClient(make_app(tmp_path, profile_detector), base_url=URL) as client:
        schema = client.get("/openapi.json").json()
        assert route in schema["paths"]
        assert "profile" in [p["name"] for p in schema["paths"]["/v1/predict"]["post"]["parameters"]]


def test_build_progress_is_reported_while_the_bank_is_built(tmp_path, profile_detector):
    import asyncio
    import threading
    import time

    import httpx

    service = ProfilesService(ProfileStore(tmp_path, profile_detector, batch_size=2))
    app = create_app(profile_detector, profiles=service)
    real = profile_detector.reference_banks
    batches, release = [], threading.Event()

    class Gated:  # the store's detector, holding the second batch of the bank until released
        def __getattr__(self, name):
            return getattr(profile_detector, name)

        def reference_banks(self, pixels, **kw):
            batches.append(len(pixels))
            if len(batches) == 2:
                assert release.wait(60)
            return real(pixels, **kw)

    service.store.detector = Gated()

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=URL) as client:
            assert (await client.get("/v1/profiles/p/progress")).status_code == 404
            create = asyncio.ensure_future(client.post("/v1/profiles", data={"name": "p"}, files=files(range(5))))
            deadline = time.monotonic() + 60
            while len(batches) < 2:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            during = (await client.get("/v1/profiles/p/progress")).json()
            release.set()
            done = await create
            after = await client.get("/v1/profiles/p/progress")
            return during, done, after

    during, done, after = asyncio.run(scenario())
    assert during == {"stage": "bank", "done": 2, "total": 5}
    assert done.status_code == 200 and done.json()["references"] == 5 and batches == [2, 2, 1]
    assert after.status_code == 404
