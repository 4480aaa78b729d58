"""Profiles on an exported model folder (``profile create NAME --model EXPORT_DIR``): the
references are the export's, the profile records the folder and its manifest's SHA-256."""

import csv
import hashlib
import json
import shutil

import pytest
from fastapi.testclient import TestClient

from s2swclip.deploy.runtime import load_exported
from s2swclip.deploy.runtime.manifest import MANIFEST_NAME
from s2swclip.profiles import ProfileStore
from s2swclip.serve.app import create_app
from s2swclip.serve.profiles_routes import ProfilesService

from export_fixtures import ONNX_SIZE
from helpers import run_cli, user_error
from hostile_models import hostile_copy

pytestmark = pytest.mark.slow
URL = "http://127.0.0.1"


@pytest.fixture
def export(onnx_export, tmp_path):
    """A private copy of the session's ONNX export (tests edit it)."""
    return shutil.copytree(onnx_export[0], tmp_path / "exp")


def _rows(folder):
    return {r["name"]: r for r in csv.DictReader(open(folder / "results.csv"))}


def _reexport(folder, tmp_path, **changes):
    """``folder`` exported again: a consistent manifest (resealed) with ``changes``."""
    again = hostile_copy(folder, tmp_path / "again", **changes)
    shutil.copyfile(again / MANIFEST_NAME, folder / MANIFEST_NAME)


def test_create_show_predict_equals_the_export_and_calibrate(capsys, export, export_images, tmp_path):
    root = tmp_path / "profiles"
    recorded = json.loads((export / MANIFEST_NAME).read_text())["threshold"]
    code, out, err = run_cli(capsys, "profile", "create", "cast", "--profiles", root, "--model", export)
    assert code == 0, err
    assert f"exported model {export}" in out and f"threshold {recorded:.6f}" in out
    m = json.loads(run_cli(capsys, "profile", "show", "cast", "--profiles", root)[1])
    assert m["model"]["exported"] == str(export) and m["model"]["image_size"] == ONNX_SIZE
    assert m["model"]["exported_sha256"] == hashlib.sha256((export / MANIFEST_NAME).read_bytes()).hexdigest()
    assert m["references"] == {"in_export": True, "count": 0, "few_shot_weight": None, "sha256": None}
    assert m["threshold"] == recorded and m["images"] == []
    code, out, _ = run_cli(capsys, "profile", "list", "--profiles", root)
    assert out.split()[:3] == ["cast", "v1", "0"] and f"export {export}" in out
    # predict --profile scores with the export through the same pipeline as predict --model
    for flags, out_dir in ((["--profile", "cast", "--profiles", root], "p"), (["--model", export], "m")):
        code, _, err = run_cli(capsys, "predict", export_images, "--out", tmp_path / out_dir, "--quiet", *flags)
        assert code == 0, err
    by_profile, by_model = _rows(tmp_path / "p"), _rows(tmp_path / "m")
    assert len(by_profile) == 3
    for name, row in by_model.items():  # the same computation on the same model: equal numbers
        assert (by_profile[name]["score"], by_profile[name]["anomalous"]) == (row["score"], row["anomalous"])
    # calibrate: the export scores the good images, the threshold is their conformal quantile
    code, out, err = run_cli(capsys, "profile", "calibrate", "cast", export_images, "--profiles", root,
                             "--fpr", "0.5")
    assert code == 0, err
    m = json.loads(run_cli(capsys, "profile", "show", "cast", "--profiles", root)[1])
    scores = sorted(float(r["score"]) for r in by_model.values())
    assert m["version"] == 2 and m["calibration"]["n"] == 3
    assert m["threshold"] == m["calibration"]["threshold"] == scores[m["calibration"]["rank"] - 1]
    code, _, err = run_cli(capsys, "predict", export_images, "--out", tmp_path / "p2", "--quiet",
                           "--profile", "cast", "--profiles", root)
    assert code == 0, err
    assert sum(r["anomalous"] == "True" for r in _rows(tmp_path / "p2").values()) == 3 - m["calibration"]["rank"]


def test_user_errors_on_exported_profiles(capsys, export, export_images, tmp_path):
    root = tmp_path / "profiles"
    user_error(capsys, ["profile", "create", "cast", export_images, "--profiles", root, "--model", export],
               f"--model {export}", "references are fixed", "export again")
    user_error(capsys, ["profile", "create", "cast", "--profiles", root, "--model", tmp_path / "nothing"],
               f"model {tmp_path / 'nothing'} (--model): no such folder")
    assert not (root / "cast").exists()
    assert run_cli(capsys, "profile", "create", "cast", "--profiles", root, "--model", export, "--threshold",
                   "0.25")[0] == 0
    assert json.loads(run_cli(capsys, "profile", "show", "cast", "--profiles", root)[1])["threshold"] == 0.25
    user_error(capsys, ["profile", "add", "cast", export_images, "--profiles", root],
               "profile 'cast' uses the exported model", "fixed in the export",
               "export the model again with the new references")
    user_error(capsys, ["profile", "calibrate", "cast", export_images, "--profiles", root, "--model", export],
               "drop --model")
    user_error(capsys, ["profile", "create", "other", "--profiles", root], "no good images given")
    user_error(capsys, ["predict", export_images, "--out", tmp_path / "o", "--profile", "cast", "--profiles", root,
                        "--backbone", "S2SW-Tiny-24L"], f"--model {export} already fixes", "drop --backbone")
    # exported again into the same folder: refused naming the profile
    _reexport(export, tmp_path, threshold=0.01)
    assert load_exported(export).threshold == 0.01  # a valid export, only not the one recorded
    user_error(capsys, ["predict", export_images, "--out", tmp_path / "o", "--profile", "cast", "--profiles", root],
               "profile 'cast'", f"exported model {export} was exported again or edited")


def test_service_scores_exported_profiles_sharing_one_loaded_export(capsys, export, export_images, onnx_detector,
                                                                     tmp_path):
    root = tmp_path / "profiles"
    for name in ("a", "b"):
        assert run_cli(capsys, "profile", "create", name, "--profiles", root, "--model", export)[0] == 0
    code, _, err = run_cli(capsys, "predict", export_images, "--out", tmp_path / "m", "--quiet", "--model", export)
    assert code == 0, err
    want = {name: float(r["score"]) for name, r in _rows(tmp_path / "m").items()}
    parts = [("files", (p.name, p.read_bytes(), "image/png")) for p in sorted(export_images.iterdir())]
    service = ProfilesService(ProfileStore(root, onnx_detector))
    assert service.problems == {} and [p.name for p in service.live.all()] == ["a", "b"]
    with TestClient(create_app(onnx_detector, profiles=service, max_upload_bytes=2_000_000), base_url=URL) as client:
        for name in ("a", "b"):
            r = client.post(f"/v1/predict?profile={name}", files=parts)
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["profile"], body["profile_version"]) == (name, 1)
            assert {row["filename"]: row["score"] for row in body["results"]} == pytest.approx(want, rel=0, abs=1e-6)
        assert service.scorer("a").model is service.scorer("b").model and service.store.exports.loads == 1
        assert client.get("/v1/profiles/a").json()["references"] == 0
    # the folder exported again while a service holds the profiles (loaded, not yet scored with)
    served = ProfilesService(ProfileStore(root, onnx_detector))
    _reexport(export, tmp_path, threshold=0.01)
    with TestClient(create_app(onnx_detector, profiles=served, max_upload_bytes=2_000_000), base_url=URL) as client:
        assert client.post("/v1/predict?profile=a", files=parts).status_code == 404
        unusable = client.get("/v1/profiles").json()["unusable"]
        assert list(unusable) == ["a"] and "profile 'a'" in unusable["a"] and "exported again" in unusable["a"]
    # and at a service's start: both reported unusable by name and skipped
    service = ProfilesService(ProfileStore(root, onnx_detector))
    assert sorted(service.problems) == ["a", "b"] and "profile 'b'" in service.problems["b"]
    with TestClient(create_app(onnx_detector, profiles=service, max_upload_bytes=2_000_000), base_url=URL) as client:
        assert sorted(client.get("/v1/profiles").json()["unusable"]) == ["a", "b"]
        assert client.post("/v1/predict?profile=b", files=parts).status_code == 404


@pytest.mark.parametrize("change, needle", [
    ({"exported": "relative/exp"}, "model 'exported' must be an absolute folder path"),
    ({"exported_sha256": "abc"}, "model 'exported_sha256' is not a SHA-256"),
    ({"image_size": 0}, "model 'image_size' must be >= 1"),
])
def test_a_hostile_exported_profile_manifest_is_refused_naming_the_field(change, needle):
    from s2swclip.errors import S2SWError
    from s2swclip.profiles.manifest import parse_manifest

    m = {"format": "s2swclip-profile", "format_version": 1, "name": "cast", "version": 1, "created": "t",
         "updated": "t", "few_shot_weight": 0.0, "threshold": None, "calibration": None, "images": [],
         "model": {"exported": "/x/exp", "exported_sha256": "0" * 64, "image_size": 280},
         "references": {"in_export": True, "count": 0}}
    assert parse_manifest(json.dumps(m).encode(), "p.json", 32)["model"]["exported"] == "/x/exp"
    m["model"].update(change)
    with pytest.raises(S2SWError, match=needle):
        parse_manifest(json.dumps(m).encode(), "p.json", 32)
    m["model"] = {"exported": "/x/exp", "exported_sha256": "0" * 64, "image_size": 280}
    m["images"] = [{"file": "images/000.png", "name": "a", "sha256": "0" * 64}]
    with pytest.raises(S2SWError, match="a profile on an exported model has no images"):
        parse_manifest(json.dumps(m).encode(), "p.json", 32)
