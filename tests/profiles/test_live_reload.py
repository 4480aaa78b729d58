"""A running service sees what another process changes under its profiles root, without a
restart: a new version, a new profile, a deleted profile; a corrupt new version is reported by
name while the old one keeps serving."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from s2swclip.data.images import decode_for_model
from s2swclip.profiles import ProfileScorer, ProfileStore
from s2swclip.serve.app import create_app
from s2swclip.serve.profiles_routes import ProfilesService

from .profile_helpers import SIZE, goods, image_bytes

URL = "http://127.0.0.1"
SRC = str(Path(__file__).resolve().parents[2] / "src")
QUERIES = [0, 5, 40]  # a reference of v1, the image the other process adds, an outsider
TOL = 1e-5  # float32 scores of the same bank, scored in two processes


def cli(*args):
    """``s2swclip ARGS`` in a separate process (the command line, as an operator runs it)."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "s2swclip.cli", *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout


def predict(client, name):
    parts = [("files", (f"{s}.png", image_bytes(s), "image/png")) for s in QUERIES]
    return client.post(f"/v1/predict?profile={name}&overlay=false", files=parts)


def write_images(folder, seeds):
    folder.mkdir()
    for s in seeds:
        (folder / f"g{s}.png").write_bytes(image_bytes(s))
    return folder


def test_service_follows_changes_made_by_another_process(tmp_path, profile_detector):
    root = tmp_path / "profiles"
    ProfileStore(root, profile_detector).create("bolt", goods(3))  # seeds 0, 1, 2
    ProfileStore(root, profile_detector).create("nut", goods(2, start=20))
    service = ProfilesService(ProfileStore(root, profile_detector))
    app = create_app(profile_detector, profiles=service, max_upload_bytes=2_000_000)
    more, gasket = write_images(tmp_path / "more", [5]), write_images(tmp_path / "gasket", [30, 31])
    with TestClient(app, base_url=URL) as client:
        before = predict(client, "bolt").json()
        assert before["profile_version"] == 1 and before["results"][1]["score"] > 1e-3  # image 5 is no reference
        loads = service.sync.loads
        # the other process: a new version of bolt, a new profile, nut deleted; the service runs on
        script = ("from s2swclip.cli.main import main\n"
                  f"assert main(['profile', 'add', 'bolt', {str(more)!r}, '--profiles', {str(root)!r}]) == 0\n"
                  f"assert main(['profile', 'create', 'gasket', {str(gasket)!r}, '--profiles', {str(root)!r}, "
                  f"'--backbone', 'S2SW-Tiny-24L', '--weights', 'none', '--image-size', '{SIZE}']) == 0\n"
                  f"assert main(['profile', 'delete', 'nut', '--profiles', {str(root)!r}]) == 0\n")
        env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        after = predict(client, "bolt").json()
        assert after["profile_version"] == 2
        v2 = ProfileStore(root, profile_detector).load("bolt")
        pixels = np.stack([decode_for_model(image_bytes(s), SIZE).pixels for s in QUERIES])
        want = ProfileScorer(profile_detector, v2).score(pixels)[0]
        np.testing.assert_allclose([row["score"] for row in after["results"]], want, atol=TOL)
        assert after["results"][1]["score"] < 1e-5  # image 5 is a reference of version 2
        assert service.sync.loads == loads + 1
        predict(client, "bolt")
        assert service.sync.loads == loads + 1  # unchanged on disk: not loaded again
        listed = client.get("/v1/profiles").json()
        assert [(p["name"], p["version"]) for p in listed["profiles"]] == [("bolt", 2), ("gasket", 1)]
        assert predict(client, "nut").status_code == 404
        assert predict(client, "gasket").json()["profile_version"] == 1

        # a corrupt new version: the pointer names version 3, whose manifest says version 2
        folder = root / "bolt"
        shutil.copytree(folder / "v000002", folder / "v000003")
        (folder / "current.json").write_text(json.dumps({"version": 3, "folder": "v000003"}))
        listed = client.get("/v1/profiles").json()
        assert [(p["name"], p["version"]) for p in listed["profiles"]] == [("bolt", 2), ("gasket", 1)]
        assert "bolt" in listed["unusable"] and "version 3" in listed["unusable"]["bolt"]
        still = predict(client, "bolt").json()
        assert still["profile_version"] == 2
        np.testing.assert_allclose([row["score"] for row in still["results"]], want, atol=TOL)
        # repaired by the command line: a good version 3 replaces the report
        (folder / "current.json").write_text(json.dumps({"version": 2, "folder": "v000002"}))
        shutil.rmtree(folder / "v000003")
        cli("profile", "calibrate", "bolt", write_images(tmp_path / "cal", range(50, 54)), "--profiles", root,
            "--fpr", "0.25")
        listed = client.get("/v1/profiles").json()
        assert listed["unusable"] == {} and listed["profiles"][0]["version"] == 3
        assert predict(client, "bolt").json()["threshold"] == listed["profiles"][0]["threshold"]
