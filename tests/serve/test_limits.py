"""What slow or numerous clients can hold (s2swclip.serve.limits): a real server on 127.0.0.1
for connections and header deadlines, the ASGI app directly for the request-body budget."""

import asyncio
import contextlib
import selectors
import socket
import time

import httpx
import pytest

from .background import BackgroundServer
from .serve_helpers import png_bytes
from s2swclip.errors import S2SWError
from s2swclip.serve.app import create_app
from s2swclip.serve.limits import ConnectionLimits, RESERVED_FDS
from s2swclip.serve.security import SecuritySettings

TOKEN = "limits-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PARTIAL = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
BOUNDARY = "s2swlimitsboundary"


def multipart(*files):
    out = b""
    for name, data in files:
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def open_stalled(stack, server, n):
    """``n`` connections that send part of a request head and then nothing."""
    socks = []
    for _ in range(n):
        s = socket.create_connection((server.host, server.port), timeout=30)  # SYN retries while the queue is full
        stack.callback(s.close)
        s.sendall(PARTIAL)
        socks.append(s)
    return socks


def wait_closed(socks, timeout_s, enough=None):
    """Read every socket until the server closes it, for at most ``timeout_s`` seconds (or until
    ``enough`` are closed). Returns (sockets still open, {socket: bytes received before the close})."""
    enough = len(socks) if enough is None else enough
    sel = selectors.DefaultSelector()
    received: dict = {}
    still = set(socks)
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    try:
        while len(socks) - len(still) < enough and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(min(left, 0.5)):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:  # reset: closed with unread data
                    data = b""
                if data:
                    received[s] = received.get(s, b"") + data
                    continue
                still.discard(s)
                sel.unregister(s)
    finally:
        sel.close()
        for s in socks:
            s.setblocking(True)
    return still, received


def test_stalled_headers_are_closed_and_health_still_answers(fake_detector):
    """250 connections that never finish their headers (slowloris): at most --max-connections are
    held (the ones waiting longest are evicted), each is closed at the header deadline, and an
    authorised health request is answered meanwhile."""
    app = create_app(fake_detector, security=SecuritySettings(token=TOKEN))
    limits = ConnectionLimits(max_connections=64, header_timeout_s=2.0)
    server = BackgroundServer(app, limits=limits)
    with server as url, contextlib.ExitStack() as stack:
        socks = open_stalled(stack, server, 250)
        r = httpx.get(f"{url}/v1/health", headers=AUTH, timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        # at most 64 connections held: the others were closed by the server (no deadline needed)
        still, _ = wait_closed(socks, timeout_s=1.5, enough=250 - 64)
        assert len(still) <= 64
        # and every stalled one is closed by the header deadline; those that lived that long
        # were told why (408)
        still, received = wait_closed(socks, timeout_s=limits.header_timeout_s + 10)
        assert not still
        assert received, "no connection reached the header deadline"
        for data in received.values():
            assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and data.endswith(b"not received in time")
        # the service is still fine
        assert httpx.get(f"{url}/v1/health", headers=AUTH, timeout=10).status_code == 200


def test_keep_alive_connection_gets_the_header_deadline_again(fake_detector):
    app = create_app(fake_detector)
    server = BackgroundServer(app, limits=ConnectionLimits(max_connections=8, header_timeout_s=1.0))
    with server, socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk, "closed before answering"
            first += chunk
        assert first.startswith(b"HTTP/1.1 200 OK")
        s.sendall(PARTIAL)  # the next request on the kept-alive connection never completes
        still, received = wait_closed([s], timeout_s=10)
        assert not still and received[s].startswith(b"HTTP/1.1 408 Request Timeout")


def _predict_request(data: bytes) -> bytes:
    body = multipart(("a.png", data))
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
            f"boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def _read_answer(s) -> bytes:
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next((int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")[1:])
                           if k.strip().lower() == b"content-length"), None)
            if length is not None and len(body) >= length:
                return data


def test_when_every_connection_is_busy_a_new_one_is_answered_503(gated_detector):
    app = create_app(gated_detector, batch_wait_ms=0)
    batcher = app.state.batcher
    server = BackgroundServer(app, limits=ConnectionLimits(max_connections=2, header_timeout_s=5.0))
    with server, contextlib.ExitStack() as stack:
        busy = []
        for i in range(2):
            s = stack.enter_context(socket.create_connection((server.host, server.port), timeout=10))
            s.sendall(_predict_request(png_bytes(16, 16, i)))
            busy.append(s)
        deadline = time.monotonic() + 20
        while batcher.pending < 2:  # both requests are waiting for the (held) model
            assert time.monotonic() < deadline, "the two requests never reached the model"
            time.sleep(0.01)
        third = stack.enter_context(socket.create_connection((server.host, server.port), timeout=10))
        answer = _read_answer(third)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"retry-after: 1" in answer
        assert third.recv(10) == b""  # and closed
        gated_detector.release()
        for s in busy:
            assert _read_answer(s).startswith(b"HTTP/1.1 200 OK")


def test_a_cap_the_descriptor_limit_cannot_hold_is_refused():
    resource = pytest.importorskip("resource")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > 200_000:
        pytest.skip("no file-descriptor limit to exceed")
    fits = (soft - RESERVED_FDS) // 2
    ConnectionLimits(max_connections=fits).check()
    with pytest.raises(S2SWError, match=rf"^max_connections {fits + 1} needs about .*; this process may open {soft} "
                                        rf"\('ulimit -n'\)") as e:
        ConnectionLimits(max_connections=fits + 1).check()
    assert e.value.fields == ("max_connections",)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(max_connections=0), "max_connections must be an integer >= 1"),
    (dict(header_timeout_s=float("nan")), "header_timeout_s must be a finite number > 0"),
    (dict(header_timeout_s=0), "header_timeout_s must be a finite number > 0"),
])
def test_connection_limits_are_checked(kwargs, needle):
    with pytest.raises(S2SWError) as e:
        ConnectionLimits(**kwargs)
    assert str(e.value).startswith(needle)


# ------------------------------------------------------------------------------ request bodies
def test_request_bodies_share_one_byte_budget(fake_detector):
    """An upload holds its declared size from its start until it is answered (a stalled one too);
    another that does not fit next to it is answered 503 with Retry-After at once, before its
    body is read; once the first is answered its bytes are free again. A chunked upload (size
    unknown) holds the per-request cap."""
    body_a = multipart(("a.png", png_bytes(48, 40, 1)))
    body_b = multipart(("b.png", png_bytes(40, 40, 2)))
    budget = len(body_a) + len(body_b) - 1  # each fits alone, not both
    app = create_app(fake_detector, max_upload_bytes=len(body_a), max_inflight_bytes=budget)
    ctype = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}

    async def scenario():
        release = asyncio.Event()
        sent_b = []

        async def stalled_a():
            yield body_a[:100]
            await release.wait()
            yield body_a[100:]

        async def counted_b():
            sent_b.append(len(body_b))
            yield body_b

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=30) as client:
            first = asyncio.ensure_future(client.post("/v1/predict", content=stalled_a(),
                                                      headers={**ctype, "Content-Length": str(len(body_a))}))
            for _ in range(500):  # until the first upload is admitted
                health = (await client.get("/v1/health")).json()
                if health["bodies"]["bytes_in_flight"]:
                    break
                await asyncio.sleep(0.01)
            in_flight = health["bodies"]["bytes_in_flight"]
            second = await client.post("/v1/predict", content=counted_b(),
                                       headers={**ctype, "Content-Length": str(len(body_b))})
            release.set()
            first = await first
            third = await client.post("/v1/predict", content=body_b, headers=ctype)
            chunked = await client.post("/v1/predict", content=counted_b(), headers=ctype)  # no Content-Length
            after = (await client.get("/v1/health")).json()["bodies"]
        return in_flight, first, second, sent_b, third, chunked, after

    in_flight, first, second, sent_b, third, chunked, after = asyncio.run(scenario())
    app.state.batcher.close()
    assert in_flight == len(body_a)  # held from the start, not as the bytes come
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert second.headers["connection"] == "close" and "--max-inflight-mb" in second.json()["detail"]
    assert len(sent_b) == 1  # the refused body was never read: only the chunked upload's generator ran
    assert first.status_code == 200 and first.json()["n_scored"] == 1
    assert third.status_code == 200 and third.json()["n_scored"] == 1
    assert chunked.status_code == 200 and chunked.json()["n_scored"] == 1
    assert after == {"bytes_in_flight": 0, "peak_bytes_in_flight": len(body_a), "budget_bytes": budget,
                     "rejected_budget_full": 1}


def test_body_budget_smaller_than_one_upload_is_refused(fake_detector):
    with pytest.raises(S2SWError, match=r"^max_inflight_bytes \(10000000\) must be at least max_upload_bytes "
                                        r"\(20000000\)") as e:
        create_app(fake_detector, max_upload_bytes=20_000_000, max_inflight_bytes=10_000_000)
    assert e.value.fields == ("max_inflight_bytes", "max_upload_bytes")
