"""``s2swclip profile ...`` and ``predict --profile``: the command line of product profiles."""

import csv
import json

import pytest
from helpers import run_cli, user_error

from .profile_helpers import SIZE, image_bytes

MODEL = ["--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", str(SIZE)]


@pytest.fixture
def folders(tmp_path):
    for sub, seeds in (("good", range(3)), ("cal", range(10, 16)), ("test", ())):
        (tmp_path / sub).mkdir()
        for i in seeds:
            (tmp_path / sub / f"{sub}_{i}.png").write_bytes(image_bytes(i))
    (tmp_path / "test" / "ok.png").write_bytes(image_bytes(30))
    (tmp_path / "test" / "defect.png").write_bytes(image_bytes(31, defect=True))
    return tmp_path


def test_create_list_show_calibrate_predict_delete(capsys, folders):
    root = folders / "profiles"
    code, out, err = run_cli(capsys, "profile", "create", "bolt", folders / "good", "--profiles", root, *MODEL)
    assert code == 0, err
    assert "profile bolt version 1: 3 references" in out and "threshold none" in out
    code, out, _ = run_cli(capsys, "profile", "list", "--profiles", root)
    assert out.split()[:3] == ["bolt", "v1", "3"]
    code, out, _ = run_cli(capsys, "profile", "calibrate", "bolt", folders / "cal", "--profiles", root, "--fpr", "0.2")
    assert code == 0 and "from 6 known-good images (rank 6 of 6)" in out and "version 2" in out
    m = json.loads(run_cli(capsys, "profile", "show", "bolt", "--profiles", root)[1])
    assert m["version"] == 2 and m["calibration"]["n"] == 6 and m["threshold"] == m["calibration"]["threshold"]
    # predict: model options come from the profile; its threshold decides
    code, out, err = run_cli(capsys, "predict", folders / "test", "--profile", "bolt", "--profiles", root,
                             "--out", folders / "out", "--quiet")
    assert code == 0, err
    rows = {r["name"]: r for r in csv.DictReader(open(folders / "out" / "results.csv"))}
    assert rows["defect.png"]["anomalous"] == "True"
    assert float(rows["defect.png"]["score"]) > m["threshold"] > 0
    code, out, _ = run_cli(capsys, "profile", "add", "bolt", folders / "cal" / "cal_10.png", "--profiles", root)
    assert code == 0 and "version 3: 4 references" in out
    code, out, _ = run_cli(capsys, "profile", "delete", "bolt", "--profiles", root)
    assert code == 0 and run_cli(capsys, "profile", "list", "--profiles", root)[1].startswith("no profiles")


def test_user_errors(capsys, folders):
    root = folders / "profiles"
    user_error(capsys, ["profile", "create", "../x", folders / "good", "--profiles", root, *MODEL],
               "invalid profile name '../x'")
    user_error(capsys, ["profile", "show", "nope", "--profiles", folders], "no profile named 'nope'")
    user_error(capsys, ["profile", "list", "--profiles", folders / "missing"], "is not a folder")
    user_error(capsys, ["profile", "create", "p", folders / "cal", "--profiles", root, "--max-references", "5",
                        *MODEL], "6 good images", "--max-references")
    user_error(capsys, ["predict", folders / "test", "--profile", "p", "--out", folders / "o"],
               "--profile NAME and --profiles DIR go together")
    assert run_cli(capsys, "profile", "create", "p", folders / "good", "--profiles", root, *MODEL)[0] == 0
    user_error(capsys, ["predict", folders / "test", "--profile", "p", "--profiles", root, "--out", folders / "o",
                        "--reference", folders / "good"], "drop --reference")
    (root / "p" / "v000001" / "profile.json").write_text("[]")
    user_error(capsys, ["predict", folders / "test", "--profile", "p", "--profiles", root, "--out", folders / "o"],
               "profile manifest", "not a JSON object")
    code, out, _ = run_cli(capsys, "profile", "list", "--profiles", root)
    assert code == 0 and out.startswith("p ") and "UNUSABLE" in out


def test_serve_with_profiles(capsys, folders):
    from fastapi.testclient import TestClient

    from s2swclip.cli import build_parser
    from s2swclip.cli.serve import build_serve_app

    root = folders / "profiles"
    assert run_cli(capsys, "profile", "create", "bolt", folders / "good", "--profiles", root, *MODEL)[0] == 0
    app = build_serve_app(build_parser().parse_args(["serve", *MODEL, "--profiles", str(root), "--max-profiles", "3"]))
    with TestClient(app, base_url="http://127.0.0.1") as client:
        listed = client.get("/v1/profiles").json()
        assert [p["name"] for p in listed["profiles"]] == ["bolt"] and listed["limits"]["max_profiles"] == 3
        assert client.get("/v1/model").json()["profiles"] == {"max_profiles": 3, "max_references": 32}
    user_error(capsys, ["serve", "--model", folders, "--profiles", root], "--profiles needs the PyTorch detector")
