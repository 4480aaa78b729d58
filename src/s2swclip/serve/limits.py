"""What slow or numerous clients can hold: connections, time to send the request headers, and
request-body bytes in flight.

**Connections** (:class:`ConnectionLimits`, used by :func:`server_config`): the service runs on
uvicorn's h11 protocol with a guard (:func:`guarded_protocol`) that

* closes a connection whose request headers are not complete ``header_timeout_s`` seconds after
  it opened, or after the previous response on it ended (uvicorn itself only times out idle
  keep-alive connections, and the upload timeouts cover request bodies); a connection that had
  sent part of a request gets ``408 Request Timeout`` first;
* holds at most ``max_connections`` connections: one more evicts the connection that has been
  waiting longest for its request headers (a stalled or idle one), and when every connection
  is busy with a request the new one is answered ``503`` with ``Retry-After`` and closed. So
  connections that never finish their headers cannot keep others, ``/v1/health`` included, out.

uvicorn's own settings do the rest: ``limit_concurrency`` (twice the connection cap: requests
still running after their clients left), ``timeout_keep_alive``, h11's 16 KiB limit on the
request head, and a listen backlog equal to the cap (which is also how many connections asyncio
accepts at once), so that the file descriptors the server can hold stay bounded;
:meth:`ConnectionLimits.check` refuses a cap that the process's descriptor limit cannot hold.

**Request bodies** (:class:`ByteBudget`, :class:`BodyBudgetMiddleware`): a request holds the
size of its body (declared, or the per-request cap ``--max-upload-mb`` when it is sent chunked)
in one budget shared by all requests (``--max-inflight-mb``) until it is answered; a request
that does not fit is answered ``503`` with ``Retry-After`` before its body is read.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ..errors import S2SWError, check_number
from .upload import UploadError

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 128
DEFAULT_HEADER_TIMEOUT_S = 5.0
DEFAULT_KEEP_ALIVE_S = 5
DEFAULT_MAX_INFLIGHT_BYTES = 200_000_000
#: most bytes of request line and headers (h11's limit; larger requests are answered 400)
MAX_HEAD_BYTES = 16 * 1024
#: file descriptors kept apart for everything but client connections (model files, pipes, ...)
RESERVED_FDS = 64
_WARN_EVERY_S = 60.0


def _raw_answer(status: str, text: str, *headers: str) -> bytes:
    """A complete HTTP/1.1 answer written before any request was read (the connection closes)."""
    body = text.encode()
    head = [f"HTTP/1.1 {status}", "content-type: text/plain; charset=utf-8", *headers, "connection: close",
            f"content-length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_BUSY = _raw_answer("503 Service Unavailable", "too many connections; retry in a moment", "retry-after: 1")
_TIMEOUT = _raw_answer("408 Request Timeout", "request headers not received in time")


@dataclass(frozen=True)
class ConnectionLimits:
    """Connection limits of the server (``serve --max-connections``, ``--header-timeout``)."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    keep_alive_s: int = DEFAULT_KEEP_ALIVE_S

    def __post_init__(self):
        check_number("max_connections", self.max_connections, 1, 100_000, integer=True)
        check_number("header_timeout_s", self.header_timeout_s, 0, 600, lo_open=True)
        check_number("keep_alive_s", self.keep_alive_s, 1, 600, integer=True)

    def check(self) -> None:
        """S2SWError when this process may not open enough file descriptors for the cap (the
        open connections, as many being accepted, and :data:`RESERVED_FDS`)."""
        try:
            import resource
        except ImportError:  # pragma: no cover - not POSIX
            return
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = 2 * int(self.max_connections) + RESERVED_FDS
        if soft != resource.RLIM_INFINITY and need > soft:
            raise S2SWError(f"max_connections {self.max_connections} needs about {need} file descriptors; this "
                            f"process may open {soft} ('ulimit -n'): lower it or raise 'ulimit -n'",
                            fields=["max_connections"])


class _Warnings:
    """At most one warning a minute about connections refused, evicted or timed out."""

    def __init__(self):
        self.counts = {"evicted": 0, "refused": 0, "timed out": 0}
        self.last = 0.0

    def note(self, kind: str, max_connections: int) -> None:
        self.counts[kind] += 1
        now = time.monotonic()
        if now - self.last >= _WARN_EVERY_S:
            self.last = now
            log.warning("connections at the limit of %d (--max-connections) or slow to send their headers; so far "
                        "%s", max_connections, ", ".join(f"{v} {k}" for k, v in self.counts.items()))


def guarded_protocol(limits: ConnectionLimits):
    """uvicorn's h11 protocol with the header deadline and the connection cap (module docstring)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    cap, timeout = int(limits.max_connections), float(limits.header_timeout_s)
    notes = _Warnings()

    class GuardedH11Protocol(H11Protocol):
        waiting_since: float | None = None  # when it started waiting for request headers; None: not waiting
        _deadline = None
        _partial = False
        _seen_cycle = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            live = [c for c in self.connections if c is not self and not c.transport.is_closing()]
            if len(live) >= cap:
                waiting = [c for c in live if getattr(c, "waiting_since", None) is not None]
                if not waiting:
                    notes.note("refused", cap)
                    transport.write(_BUSY)
                    transport.close()
                    return
                min(waiting, key=lambda c: c.waiting_since).drop()
                notes.note("evicted", cap)
            self._wait_for_headers()

        def _wait_for_headers(self) -> None:
            self._cancel()
            self.waiting_since, self._partial = self.loop.time(), False
            self._deadline = self.loop.call_later(timeout, self._headers_late)

        def _cancel(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline, self.waiting_since = None, None

        def _headers_late(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                notes.note("timed out", cap)
                if self._partial:
                    self.transport.write(_TIMEOUT)
                self.drop()

        def drop(self) -> None:
            """Close the connection now (it is waiting for request headers)."""
            self._cancel()
            self.transport.close()

        def _headers_done(self) -> None:
            if self.cycle is not None and self.cycle is not self._seen_cycle:
                self._seen_cycle = self.cycle
                self._cancel()

        def data_received(self, data: bytes) -> None:
            self._partial = self._partial or self.waiting_since is not None
            super().data_received(data)
            self._headers_done()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if self.cycle is self._seen_cycle:  # no pipelined request started: wait for the next one
                self._wait_for_headers()
            else:
                self._headers_done()

        def handle_websocket_upgrade(self, event) -> None:
            self._cancel()  # the head is complete; the connection is the WebSocket protocol's now
            super().handle_websocket_upgrade(event)

        def connection_lost(self, exc) -> None:
            self._cancel()
            super().connection_lost(exc)

    return GuardedH11Protocol


def server_config(app, limits: ConnectionLimits | None = None, *, log_level: str = "info"):
    """The uvicorn configuration of the service: the guarded h11 protocol and uvicorn's own limits."""
    import uvicorn

    limits = limits or ConnectionLimits()
    return uvicorn.Config(app, http=guarded_protocol(limits), log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=10, timeout_keep_alive=int(limits.keep_alive_s),
                          limit_concurrency=2 * int(limits.max_connections),
                          backlog=min(2048, int(limits.max_connections)), h11_max_incomplete_event_size=MAX_HEAD_BYTES)


# ------------------------------------------------------------------------------ request bodies
class ByteBudget:
    """Bytes held at once by all requests together; :meth:`take` never waits (thread-safe)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(check_number("max_inflight_bytes", max_bytes, 1, integer=True))
        self.in_use = 0
        self.peak = 0
        self.refused = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        """Hold ``n`` more bytes if they fit; False (and nothing held) when they do not."""
        with self._lock:
            if self.in_use + n > self.max_bytes:
                self.refused += 1
                return False
            self.in_use += n
            self.peak = max(self.peak, self.in_use)
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.in_use -= n


def _declared_size(scope) -> int | None:
    """The request's ``Content-Length`` (None: chunked, i.e. unknown; 0: no body; -1: unreadable)."""
    length, chunked = None, False
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return -1
        elif name == b"transfer-encoding":
            chunked = True
    if length is not None:
        return length
    return None if chunked else 0


class BodyBudgetMiddleware:
    """Pure ASGI middleware: admission of request bodies under one shared ``budget``.

    A request holds, from its start until the application has answered, the size of its body:
    the ``Content-Length`` it declares, or ``max_request_bytes`` when it does not declare one
    (chunked). A request that does not fit is answered ``503`` with ``Retry-After: 1`` and
    ``Connection: close`` before its body is read, so an admitted upload is never cut off
    midway (concurrent uploads do not starve each other). A declared size over
    ``max_request_bytes`` holds nothing: the application answers 413 without reading it. Should
    a body send more than it held, the excess is taken as it comes, and a chunk that does not
    fit makes ``receive`` raise :class:`~.upload.UploadError` 503 (the upload reader passes it
    on as the answer)."""

    def __init__(self, app, budget: ByteBudget, max_request_bytes: int):
        self.app = app
        self.budget = budget
        self.max_request_bytes = int(max_request_bytes)

    def _busy(self) -> str:
        b = self.budget
        return (f"the server is busy: request bodies in flight hold {b.in_use / 1e6:.1f} of {b.max_bytes / 1e6:.1f} MB "
                f"(--max-inflight-mb); retry in a moment")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_size(scope)
        held = self.max_request_bytes if declared is None else max(0, declared)
        if held > self.max_request_bytes:
            held = 0  # answered 413 unread
        if held and not self.budget.take(held):
            await _answer_503(send, self._busy())
            return
        received = 0

        async def counted_receive():
            nonlocal held, received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > held:
                    if not self.budget.take(received - held):
                        raise UploadError(503, self._busy(), {"Retry-After": "1", "Connection": "close"})
                    held = received
            return message

        try:
            await self.app(scope, counted_receive, send)
        finally:
            self.budget.give(held)


async def _answer_503(send, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
