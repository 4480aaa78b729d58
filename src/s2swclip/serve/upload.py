"""Reading uploads in memory: a bounded multipart/form-data body, with timeouts.

The framework's own form parser spools large files to temporary files on disk; the service
promises to write nothing unless ``--save`` is given, so it streams the body through
``python_multipart``'s low-level parser into memory instead, counting bytes as they come.
"""

from __future__ import annotations

import asyncio
import math
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, AsyncIterable, AsyncIterator


class UploadError(Exception):
    """A request-level problem with an upload; carries the HTTP status and the headers to answer
    with (``Connection: close`` for a stalled upload: the server drops the connection after
    answering instead of waiting for the rest of the body)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class Part:
    """One multipart part: form field name, client file name (None for plain fields), bytes."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytearray = field(default_factory=bytearray)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n} bytes"


DEFAULT_IDLE_TIMEOUT_S = 30.0
DEFAULT_TOTAL_TIMEOUT_S = 300.0
_CLOSE = {"Connection": "close"}


async def _timed_chunks(stream: AsyncIterable[bytes], idle_timeout_s: float,
                        total_timeout_s: float) -> AsyncIterator[bytes]:
    """The chunks of ``stream``; UploadError 408 when none comes for ``idle_timeout_s`` seconds
    or the whole stream takes longer than ``total_timeout_s``."""
    it = aiter(stream)
    deadline = time.monotonic() + total_timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            wait = min(idle_timeout_s, left)
            try:
                if wait <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(anext(it), wait)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if wait < idle_timeout_s:
                    raise UploadError(408, f"upload too slow: the request body took more than {total_timeout_s:g} s; "
                                           f"send fewer or smaller images per request", _CLOSE) from None
                raise UploadError(408, f"upload stalled: no data for {idle_timeout_s:g} s; "
                                       f"check the connection and send the request again", _CLOSE) from None
            yield chunk
    finally:
        close = getattr(it, "aclose", None)
        if close is not None:
            await close()


async def read_multipart(content_type: str | None, content_length: str | None,
                         stream: AsyncIterable[bytes], max_bytes: int, max_parts: int, *,
                         idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
                         total_timeout_s: float = DEFAULT_TOTAL_TIMEOUT_S) -> list[Part]:
    """Parse a multipart/form-data body from ``stream`` into memory.

    Raises :class:`UploadError`: 413 when the body is (or announces to be) larger than
    ``max_bytes`` or holds more than ``max_parts`` parts; 400 when it is not multipart or is
    malformed; 408 when no data arrives for ``idle_timeout_s`` seconds or the body takes
    longer than ``total_timeout_s`` seconds in all (a stalled or trickling client).
    """
    from python_multipart.multipart import MultipartParser

    for name, value in (("idle_timeout_s", idle_timeout_s), ("total_timeout_s", total_timeout_s)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number of seconds, got {value}")
    boundary = _check_request_headers(content_type, content_length, max_bytes)
    collector = _PartCollector(max_parts)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        async with aclosing(_timed_chunks(stream, idle_timeout_s, total_timeout_s)) as chunks:
            async for chunk in chunks:
                if not chunk:
                    continue
                received += len(chunk)
                if received > max_bytes:
                    raise UploadError(413, f"request body is larger than the limit of {_mb(max_bytes)} "
                                           f"(--max-upload-mb); send fewer or smaller images")
                parser.write(chunk)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python_multipart's parse errors
        raise UploadError(400, f"malformed multipart body ({exc})") from None
    return collector.parts


def _check_request_headers(content_type: str | None, content_length: str | None, max_bytes: int) -> bytes:
    """The multipart boundary of a request with these headers; :class:`UploadError` 400 when it
    is not multipart/form-data or its Content-Length is not a number, 413 when it announces
    more than ``max_bytes``."""
    from python_multipart.multipart import parse_options_header

    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(400, "send the images as multipart/form-data (form field 'files'), e.g. "
                               "curl -F files=@a.png -F files=@b.png URL")
    if content_length is not None:
        try:
            announced = int(content_length)
        except ValueError:
            raise UploadError(400, f"invalid Content-Length header {content_length!r}") from None
        if announced > max_bytes:
            raise UploadError(413, f"request body is {_mb(announced)}, more than the limit of "
                                   f"{_mb(max_bytes)} (--max-upload-mb); send fewer or smaller images")
    return params[b"boundary"]


class _PartCollector:
    """The streaming parser's callbacks: collects the parts (name, file name, content type,
    bytes) and refuses (413) a part beyond ``max_parts`` as soon as its headers end."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.parts: list[Part] = []
        self._headers: dict[str, str] = {}
        self._field = b""
        self._value = b""

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._headers.clear, "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value, "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished, "on_part_data": self._on_part_data}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value.decode("utf-8", "replace")
        self._field, self._value = b"", b""

    def _on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, disp = parse_options_header(self._headers.get("content-disposition", ""))
        fname = disp.get(b"filename")
        self.parts.append(Part(name=disp.get(b"name", b"").decode("utf-8", "replace"),
                               filename=None if fname is None else fname.decode("utf-8", "replace"),
                               content_type=self._headers.get("content-type")))
        if len(self.parts) > self.max_parts:
            raise UploadError(413, f"too many files in one request (more than {self.max_parts}); "
                                   f"split the upload into several requests")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.parts[-1].data += data[start:end]
