"""``s2swclip serve`` argument handling: the CLI's options reach the app; a busy port is a clean error."""

import socket

import pytest
from fastapi.testclient import TestClient

from s2swclip.cli import build_parser, main
from s2swclip.cli.serve import build_serve_app
from s2swclip.errors import S2SWError
from s2swclip.serve.app import bind_socket

from .serve_helpers import png_bytes


def test_serve_arguments_build_the_app(tmp_path):
    args = build_parser().parse_args([
        "serve", "--backbone", "S2SW-Tiny-24L", "--weights", "none", "--image-size", "112",
        "--threshold", "0.25", "--save", str(tmp_path / "out"), "--max-batch", "4", "--batch-wait-ms", "3",
        "--queue-size", "9", "--max-upload-mb", "1.5", "--max-mpx", "0.005", "--max-inflight-mb", "30"])
    app = build_serve_app(args)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        m = client.get("/v1/model").json()
        assert (m["backbone"], m["weights"], m["image_size"], m["threshold"]) == ("S2SW-Tiny-24L", None, 112, 0.25)
        assert m["limits"] == {"max_batch": 4, "batch_wait_ms": 3.0, "queue_size": 9,
                               "max_upload_bytes": 1_500_000, "max_pixels": 5000,
                               "max_inflight_pixels": 64_000_000, "max_inflight_bytes": 30_000_000,
                               "save_max_bytes": 1_000_000_000}
        assert m["save"] is True
        r = client.post("/v1/predict", files=[("files", ("a.png", png_bytes(60, 40), "image/png"))])
        assert r.status_code == 200
        row = r.json()["results"][0]
        assert row["anomalous"] == (row["score"] > 0.25)
        assert client.get("/v1/health").json()["images_scored"] == 1  # the warm-up ran before the app (cli.serve.warm_up)
    assert len(list((tmp_path / "out" / "uploads").iterdir())) == 1


def test_busy_port_is_a_user_error(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(S2SWError, match="cannot listen on 127.0.0.1"):
            bind_socket("127.0.0.1", port)
        # the CLI says so in one line, before loading any model
        assert main(["serve", "--backbone", "S2SW-Tiny-24L", "--weights", "none", "--port", str(port)]) == 2
    assert "error: cannot listen on" in capsys.readouterr().err


def test_bad_limits_are_user_errors():
    with pytest.raises(S2SWError, match="--port"):
        bind_socket("127.0.0.1", 70000)
