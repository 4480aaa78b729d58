"""read_multipart's timeouts: a stalled or trickling upload is answered 408, quickly."""

import asyncio
import time

import pytest

from .serve_helpers import png_bytes
from s2swclip.serve.upload import UploadError, read_multipart

BOUNDARY = "s2swtestboundary"
CTYPE = f"multipart/form-data; boundary={BOUNDARY}"


def body(*files):
    out = b""
    for name, data in files:
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


async def chunks(data, size, pause_s=0.0, stall_after=None, stall_s=0.0, log=None):
    """``data`` in ``size``-byte chunks, ``pause_s`` apart; after ``stall_after`` chunks,
    one pause of ``stall_s``. Appends "closed" to ``log`` when the generator is closed."""
    try:
        for i in range(0, len(data), size):
            if stall_after is not None and i // size == stall_after:
                await asyncio.sleep(stall_s)
            elif i and pause_s:
                await asyncio.sleep(pause_s)
            yield data[i:i + size]
    finally:
        if log is not None:
            log.append("closed")


def run(coro):
    return asyncio.run(coro)


def test_stalled_upload_is_408_after_the_idle_timeout():
    data = body(("a.png", png_bytes(40, 40, 1)))
    log = []
    t = time.perf_counter()
    with pytest.raises(UploadError) as e:
        run(read_multipart(CTYPE, str(len(data)), chunks(data, 256, stall_after=2, stall_s=30, log=log),
                           max_bytes=10**6, max_parts=8, idle_timeout_s=0.2, total_timeout_s=60))
    elapsed = time.perf_counter() - t
    assert e.value.status == 408
    assert e.value.message.startswith("upload stalled: no data for 0.2 s;")
    assert e.value.headers == {"Connection": "close"}
    assert 0.19 <= elapsed < 2.0
    assert log == ["closed"]  # the client's stream was not left hanging


def test_trickling_upload_is_408_after_the_total_timeout():
    data = body(("a.png", png_bytes(60, 60, 2)))
    assert len(data) > 40 * 64  # enough chunks to outlast the deadline
    t = time.perf_counter()
    with pytest.raises(UploadError) as e:
        # a chunk every 20 ms never trips the 1 s idle timeout, but the body outlasts 0.3 s
        run(read_multipart(CTYPE, None, chunks(data, 64, pause_s=0.02),
                           max_bytes=10**6, max_parts=8, idle_timeout_s=1.0, total_timeout_s=0.3))
    elapsed = time.perf_counter() - t
    assert e.value.status == 408 and "more than 0.3 s" in e.value.message
    assert e.value.headers == {"Connection": "close"}
    assert 0.29 <= elapsed < 2.0


def test_pauses_below_the_idle_timeout_are_fine():
    a, b = png_bytes(30, 30, 3), png_bytes(20, 10, 4)
    data = body(("a.png", a), ("b.png", b))
    parts = run(read_multipart(CTYPE, str(len(data)), chunks(data, 512, pause_s=0.05),
                               max_bytes=10**6, max_parts=8, idle_timeout_s=0.5, total_timeout_s=10))
    assert [(p.filename, bytes(p.data)) for p in parts] == [("a.png", a), ("b.png", b)]


def test_default_timeouts_keep_the_old_call_working():
    a = png_bytes(16, 16, 5)
    data = body(("x.png", a))
    parts = run(read_multipart(CTYPE, str(len(data)), chunks(data, 100), 10**6, 8))
    assert len(parts) == 1 and bytes(parts[0].data) == a


def test_size_limit_still_413_and_closes_the_stream():
    data = body(("a.png", png_bytes(80, 80, 6)))
    log = []
    with pytest.raises(UploadError) as e:
        run(read_multipart(CTYPE, None, chunks(data, 1000, log=log), max_bytes=3000, max_parts=8,
                           idle_timeout_s=5, total_timeout_s=5))
    assert e.value.status == 413 and log == ["closed"]


@pytest.mark.parametrize("kw", [{"idle_timeout_s": 0}, {"total_timeout_s": -1}, {"idle_timeout_s": float("nan")},
                                {"total_timeout_s": float("inf")}])
def test_timeouts_must_be_positive_and_finite(kw):
    with pytest.raises(ValueError, match="must be a positive number of seconds"):
        run(read_multipart(CTYPE, None, chunks(b"", 1), 10, 1, **kw))


def test_stalled_client_gets_408_from_uvicorn():
    """A real server and a client that stops sending half-way: answered 408, and with the error's
    ``Connection: close`` the server drops the connection instead of waiting for the rest."""
    import socket

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from .background import BackgroundServer

    app = FastAPI()

    @app.post("/up")
    async def up(request: Request):
        try:
            parts = await read_multipart(request.headers.get("content-type"), request.headers.get("content-length"),
                                         request.stream(), max_bytes=10**6, max_parts=8, idle_timeout_s=0.3)
        except UploadError as e:
            return JSONResponse({"detail": e.message}, status_code=e.status, headers=e.headers)
        return {"n": len(parts)}

    data = body(("a.png", png_bytes(40, 40, 7)))
    with BackgroundServer(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"POST /up HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {CTYPE}\r\n"
                      f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:len(data) // 2])
            t = time.perf_counter()
            reply = b""
            while chunk := s.recv(65536):  # the server closes the connection after answering
                reply += chunk
            elapsed = time.perf_counter() - t
        assert reply.startswith(b"HTTP/1.1 408 ") and b"\r\nconnection: close\r\n" in reply.lower()
        assert b"upload stalled: no data for 0.3 s;" in reply
        assert 0.29 <= elapsed < 5
        # the server is fine afterwards
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"POST /up HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {CTYPE}\r\n"
                      f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b'{"n":1}')
