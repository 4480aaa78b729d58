"""Exposure controls of the inspection service: a pure ASGI middleware and its settings.

:class:`SecurityMiddleware` wraps any Starlette/FastAPI app (``app.add_middleware(
SecurityMiddleware, settings=SecuritySettings(...))``, or ``SecurityMiddleware(app, settings)``
to wrap from outside) and applies, to every HTTP and WebSocket request, in this order:

1. **Host check** (DNS rebinding). The ``Host`` header must name the bound host, ``localhost``,
   ``127.0.0.1`` or ``[::1]`` (any port), or a name given with ``--allow-host`` (exact,
   case-insensitive; ``*`` turns the check off, for a proxy that checks ``Host`` itself).
   When the server binds a wildcard address (``0.0.0.0``, ``::``) any IP literal is accepted
   too: a rebinding page reaches the server under its own *name*, never under an IP literal.
   A request without ``Host`` (HTTP/1.0 tools; browsers always send it) passes.
   Refused: 400 ``{"detail": "Host 'evil.example' is not allowed; start the server with
   --allow-host evil.example"}``.
2. **Bearer token** (when one is configured). Every path except the page (``/``) and its
   assets (``/static/...``) needs ``Authorization: Bearer <token>``; that covers ``/v1/...``,
   ``/openapi.json`` and any route added later (deny by default). Compared in constant time.
   Refused: 401 with ``WWW-Authenticate: Bearer`` and a JSON ``detail``.
3. **Cross-site requests**. A method other than GET/HEAD/OPTIONS (and every WebSocket
   handshake) is accepted only when

   * it carries the valid bearer token (a cross-site form cannot set ``Authorization``), or
   * its ``Origin`` names the host and port of the request's ``Host`` header (the scheme is not
     compared, so a TLS-terminating proxy in front works; one port is one server), or its
     host is a name given with ``--allow-host`` (``*`` does not count here), or
   * it has no ``Origin`` and no ``Sec-Fetch-Site`` other than ``same-origin``/``none``:
     every current browser sends ``Origin`` on a POST (``null`` from privacy-sensitive or
     sandboxed contexts) and ``Sec-Fetch-Site``; curl and Python clients send neither.

   So a plain cross-site ``<form method=post>`` (``Origin: https://evil.example`` or
   ``Origin: null``) is refused, while curl, Python clients and the service's own page
   (``Origin`` equal to its host) work unchanged. Refused: 403 with a JSON ``detail``.
4. **Security headers** on every response, the middleware's own refusals included:
   ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``, ``Referrer-Policy:
   no-referrer`` (each only when the route did not set it) and a ``Content-Security-Policy``:
   a route's own policy is kept as it is, with ``frame-ancestors 'none'`` appended when it has
   no ``frame-ancestors``; a response without one gets :data:`DEFAULT_CSP`.
   Added with ``add_middleware``, the middleware sits inside Starlette's error middleware, so
   the bare 500 page of an unhandled exception goes out without these headers; wrap the app
   from outside (``SecurityMiddleware(app, settings)``) to cover that one too.

The token comes from ``--token`` or the environment variable ``S2SWCLIP_TOKEN``
(:func:`resolve_token`; the environment keeps it out of ``ps`` listings). Clients send it as
``Authorization: Bearer <token>``, e.g. ``curl -H "Authorization: Bearer $S2SWCLIP_TOKEN" ...``.

FastAPI's ``/docs`` and ``/redoc`` load their scripts from a CDN and are blank offline; build the
app with :func:`fastapi_docs_kwargs` (turns both off). ``/openapi.json`` stays available (behind
the token when one is set) for any OpenAPI tool.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import S2SWError

TOKEN_ENV = "S2SWCLIP_TOKEN"
DEFAULT_CSP = "default-src 'self'; frame-ancestors 'none'"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def fastapi_docs_kwargs() -> dict:
    """Keyword arguments for ``FastAPI(...)`` that turn off ``/docs`` and ``/redoc`` (their
    CDN-hosted scripts leave them blank offline); ``/openapi.json`` stays."""
    return {"docs_url": None, "redoc_url": None}


def resolve_token(cli_value: str | None) -> str | None:
    """The bearer token: ``--token`` when given, else ``$S2SWCLIP_TOKEN``, else None.

    An empty environment variable counts as unset. Raises S2SWError when the token is empty
    (given explicitly) or holds characters other than visible ASCII (it could not be sent in
    an HTTP header).
    """
    if cli_value is not None:
        source, token = "--token", cli_value
    else:
        token = os.environ.get(TOKEN_ENV) or None
        if token is None:
            return None
        source = TOKEN_ENV
    _check_token(token, source)
    return token


def _check_token(token: str, source: str) -> None:
    if not token:
        raise S2SWError(f"{source} is empty; give a secret, e.g. "
                        f"python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if not all("!" <= c <= "~" for c in token):
        raise S2SWError(f"{source} may only hold visible ASCII characters (no spaces), "
                        f"e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")


def _ip(host: str):
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """True when binding ``host`` (a ``--host`` value) is reachable from this machine only:
    ``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``, ``::ffff:127.x.x.x``)."""
    h = host.strip().lower().rstrip(".")
    if h == "localhost":
        return True
    ip = _ip(h)
    if ip is None:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def exposure_warning(host: str, token: str | None) -> str | None:
    """The warning to print when the service listens beyond loopback without a token; None
    when ``host`` is loopback or a token is set."""
    if token or is_loopback(host):
        return None
    return (f"warning: --host {host} makes the service reachable from other machines and no token is set: "
            f"anyone who can reach it can use the API; set {TOKEN_ENV} (or --token) to require "
            f"'Authorization: Bearer <token>'")


def _normal_host(name: str) -> str:
    """Lower case, no brackets, no trailing dot; IP literals in canonical form."""
    h = name.strip().lower()
    ip = _ip(h)
    if ip is not None:
        return str(ip)
    return h.rstrip(".")


def _split_host_header(value: str) -> tuple[str, int | None] | None:
    """``(host, port)`` from a ``Host`` header or an origin's netloc; None when malformed."""
    v = value.strip()
    if v.startswith("["):
        end = v.find("]")
        if end < 0 or _ip(v[1:end]) is None:
            return None
        host, rest = v[1:end], v[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_s = rest[1:] if rest else None
    else:
        if v.count(":") > 1:
            return None
        host, _, port_s = v.partition(":")
        port_s = port_s if ":" in v else None
    if not host:
        return None
    if port_s is not None:
        if not port_s.isdigit() or int(port_s) > 65535:
            return None
        return _normal_host(host), int(port_s)
    return _normal_host(host), None


@dataclass(frozen=True)
class SecuritySettings:
    """What :class:`SecurityMiddleware` enforces.

    Args:
        token: bearer token required outside the public paths; None: no token check.
        host: the address the server binds (``--host``); requests may name it in ``Host``.
        allow_hosts: extra ``Host`` names to accept (``--allow-host``, repeatable); ``*``
            accepts any ``Host``. Names without port; IPv6 with or without brackets.
        public_paths: exact paths reachable without the token (the page).
        public_prefixes: path prefixes reachable without the token (the page's assets).
        default_csp: Content-Security-Policy for responses that set none.
    """

    token: str | None = None
    host: str = "127.0.0.1"
    allow_hosts: tuple[str, ...] = ()
    public_paths: tuple[str, ...] = ("/",)
    public_prefixes: tuple[str, ...] = ("/static/",)
    default_csp: str = DEFAULT_CSP
    _hosts: frozenset = field(init=False, repr=False, compare=False)
    _extra: frozenset = field(init=False, repr=False, compare=False)
    _any_host: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.token is not None:
            _check_token(self.token, "--token")
        extra, any_host = set(), False
        for name in self.allow_hosts:
            if name.strip() == "*":
                any_host = True
                continue
            parsed = (_normal_host(name), None) if _ip(name) is not None else _split_host_header(name)
            if parsed is None or parsed[1] is not None or not (_ip(parsed[0]) or _HOST_NAME.fullmatch(parsed[0])):
                raise S2SWError(f"--allow-host takes a host name or IP address without port, got {name!r}")
            extra.add(parsed[0])
        object.__setattr__(self, "allow_hosts", tuple(self.allow_hosts))
        object.__setattr__(self, "_extra", frozenset(extra))
        object.__setattr__(self, "_any_host", any_host)
        bound = _normal_host(self.host)
        hosts = {_normal_host(h) for h in LOOPBACK_NAMES} | extra
        if bound not in _WILDCARD_HOSTS:
            hosts.add(bound)
        object.__setattr__(self, "_hosts", frozenset(hosts))

    def host_allowed(self, host: str) -> bool:
        """True when a request may name ``host`` (already normalised) in its ``Host`` header."""
        if self._any_host or host in self._hosts:
            return True
        return _normal_host(self.host) in _WILDCARD_HOSTS and _ip(host) is not None

    def origin_listed(self, host: str) -> bool:
        """True when ``host`` (normalised) was named with ``--allow-host`` (``*`` does not count):
        a page there may send unsafe requests."""
        return host in self._extra

    def is_public(self, path: str) -> bool:
        """True for the paths that need no token (no ``..`` segments)."""
        if ".." in path.split("/"):
            return False
        return path in self.public_paths or any(path.startswith(p) for p in self.public_prefixes)


class SecurityMiddleware:
    """ASGI middleware applying :class:`SecuritySettings` (see the module docstring)."""

    def __init__(self, app, settings: SecuritySettings | None = None):
        self.app = app
        self.settings = settings or SecuritySettings()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        refusal = self._check(scope)
        if scope["type"] == "websocket":
            if refusal is None:
                await self.app(scope, receive, send)
                return
            await receive()  # websocket.connect
            reason = refusal[1].encode("utf-8")[:120].decode("utf-8", "ignore")  # close reasons: <= 123 bytes
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=self._with_security_headers(message.get("headers", [])))
            await send(message)

        if refusal is None:
            await self.app(scope, receive, send_with_headers)
            return
        status, detail, extra = refusal
        body = json.dumps({"detail": detail}).encode("utf-8")
        await send_with_headers({
            "type": "http.response.start", "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        *extra],
        })
        await send_with_headers({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------------------ checks
    def _check(self, scope) -> tuple[int, str, list] | None:
        """None when the request may go on, else ``(status, detail, extra headers)``."""
        s = self.settings
        headers = _headers(scope)
        host_value = headers.get("host")
        host = None
        if host_value is not None:
            host = _split_host_header(host_value)
            if host is None:
                return 400, f"malformed Host header {host_value!r}", []
            if not s.host_allowed(host[0]):
                shown = f"[{host[0]}]" if ":" in host[0] else host[0]
                return 400, (f"Host {shown!r} is not allowed; start the server with --allow-host {host[0]}"), []
        authorised = False
        if s.token is not None:
            auth = headers.get("authorization")
            authorised = _bearer_matches(auth, s.token)
            if not authorised and not s.is_public(scope["path"]):
                if auth is None:
                    detail = "this server needs a token: send the header 'Authorization: Bearer <token>'"
                    challenge = b"Bearer"
                else:
                    detail = "invalid token: send 'Authorization: Bearer <token>' with the server's token"
                    challenge = b'Bearer error="invalid_token"'
                return 401, detail, [(b"www-authenticate", challenge)]
        unsafe = scope["type"] == "websocket" or scope.get("method", "GET").upper() not in SAFE_METHODS
        if unsafe and not authorised:
            reason = self._cross_site(headers, host)
            if reason is not None:
                return 403, reason, []
        return None

    def _cross_site(self, headers: dict, host: tuple[str, int | None] | None) -> str | None:
        """Why an unsafe request looks cross-site (None: it does not)."""
        origin = headers.get("origin")
        hint = ("send it from the service's own page, or without an Origin header (curl, Python), "
                "or with the bearer token")
        if origin is None:
            fetch_site = headers.get("sec-fetch-site")
            if fetch_site is not None and fetch_site.strip().lower() not in _SAME_ORIGIN_FETCH:
                return f"cross-site request refused (Sec-Fetch-Site: {fetch_site}); {hint}"
            return None
        if origin.strip().lower() == "null":
            return f"cross-site request refused (Origin: null); {hint}"
        parts = urlsplit(origin.strip())
        netloc = _split_host_header(parts.netloc) if parts.scheme and parts.netloc else None
        if netloc is None:
            return f"cross-site request refused (malformed Origin {origin!r}); {hint}"
        o_host, o_port = netloc
        if self.settings.origin_listed(o_host):
            return None
        default = _DEFAULT_PORTS.get(parts.scheme.lower())
        if host is not None and o_host == host[0] and (o_port or default) == (host[1] or default):
            return None
        return (f"cross-site request refused (Origin {origin!r} is not this server's origin); "
                f"{hint}, or start the server with --allow-host {o_host}")

    def _with_security_headers(self, raw: list) -> list:
        out = list(raw)
        names = {bytes(k).lower() for k, _ in out}
        for name, value in ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")):
            if name not in names:
                out.append((name, value))
        csp_at = [i for i, (k, _) in enumerate(out) if bytes(k).lower() == b"content-security-policy"]
        if not csp_at:
            out.append((b"content-security-policy", self.settings.default_csp.encode("latin-1")))
        for i in csp_at:
            k, v = out[i]
            directives = [d.strip().split(None, 1)[0].lower() for d in bytes(v).decode("latin-1").split(";")
                          if d.strip()]
            if "frame-ancestors" not in directives:
                policy = bytes(v).rstrip().rstrip(b";")
                out[i] = (k, policy + b"; frame-ancestors 'none'" if policy else b"frame-ancestors 'none'")
        return out


def _headers(scope) -> dict[str, str]:
    """Request headers by lower-case name (the first of repeated ones), decoded as latin-1."""
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        out.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
    return out


def _bearer_matches(auth: str | None, token: str) -> bool:
    if auth is None:
        return False
    scheme, _, given = auth.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("latin-1"), token.encode("ascii"))
