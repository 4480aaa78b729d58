"""SecurityMiddleware on a minimal FastAPI app: token, Host check, cross-site refusals, headers."""

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from s2swclip.errors import S2SWError
from s2swclip.serve.security import (DEFAULT_CSP, TOKEN_ENV, SecurityMiddleware, SecuritySettings,
                                     exposure_warning, fastapi_docs_kwargs, is_loopback, resolve_token)

BASE = "http://127.0.0.1:8000"
TOKEN = "s3cret-Token_42"
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'")
EVIL_FORM = {"Origin": "https://evil.example", "Content-Type": "application/x-www-form-urlencoded"}


def build_app(static_dir, settings=None, outside=False):
    app = FastAPI(**fastapi_docs_kwargs())

    @app.get("/")
    async def page():
        return HTMLResponse("<!doctype html><p>page</p>", headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/framed")
    async def framed():
        return HTMLResponse("x", headers={"Content-Security-Policy": "default-src 'none'; frame-ancestors 'self'",
                                          "X-Frame-Options": "SAMEORIGIN"})

    @app.post("/v1/echo")
    async def echo(request: Request):
        return {"got": (await request.body()).decode()}

    @app.get("/v1/ping")
    async def ping():
        return {"ok": True}

    @app.get("/v1/boom")
    async def boom():
        raise RuntimeError("boom")

    @app.websocket("/v1/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")
    settings = settings or SecuritySettings()
    if outside:
        return SecurityMiddleware(app, settings)
    app.add_middleware(SecurityMiddleware, settings=settings)
    return app


@pytest.fixture
def static_dir(tmp_path):
    (tmp_path / "style.css").write_text("body { color: black; }\n")
    return tmp_path


@pytest.fixture
def make_client(static_dir):
    clients = []

    def make(outside=False, raise_server_exceptions=True, **kw):
        c = TestClient(build_app(static_dir, SecuritySettings(**kw), outside=outside), base_url=BASE,
                       raise_server_exceptions=raise_server_exceptions)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def assert_security_headers(r, csp=DEFAULT_CSP):
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers.get_list("content-security-policy") == [csp]


# ------------------------------------------------------------------------------------ token
def test_without_a_token_the_api_is_open(make_client):
    c = make_client()
    r = c.get("/v1/ping")
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert_security_headers(r)


def test_token_required_on_the_api_and_openapi(make_client):
    c = make_client(token=TOKEN)
    for path in ("/v1/ping", "/openapi.json", "/v1/nothing-here", "/elsewhere"):
        r = c.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json() == {"detail": "this server needs a token: send the header 'Authorization: Bearer <token>'"}
        assert_security_headers(r)
    r = c.post("/v1/echo", content=b"x")
    assert r.status_code == 401


@pytest.mark.parametrize("auth", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", f"Basic {TOKEN}",
                                  TOKEN, f"Bearer {TOKEN.upper()}"])
def test_wrong_token_is_401(make_client, auth):
    r = make_client(token=TOKEN).get("/v1/ping", headers={"Authorization": auth})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert r.json()["detail"].startswith("invalid token")


@pytest.mark.parametrize("auth", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "])
def test_right_token_is_accepted(make_client, auth):
    c = make_client(token=TOKEN)
    h = {"Authorization": auth}
    assert c.get("/v1/ping", headers=h).json() == {"ok": True}
    assert c.post("/v1/echo", content=b"abc", headers=h).json() == {"got": "abc"}
    assert c.get("/openapi.json", headers=h).json()["paths"]["/v1/ping"]
    r = c.get("/v1/nothing-here", headers=h)
    assert r.status_code == 404
    assert_security_headers(r)


def test_page_and_static_need_no_token(make_client):
    c = make_client(token=TOKEN)
    assert c.get("/").status_code == 200
    r = c.get("/static/style.css")
    assert r.status_code == 200 and r.text.startswith("body")
    assert c.get("/static/missing.css").status_code == 404


def test_public_paths_have_no_dot_segments():
    s = SecuritySettings(token=TOKEN)
    assert s.is_public("/") and s.is_public("/static/app.js")
    assert not s.is_public("/static/../v1/ping") and not s.is_public("/static/..")
    assert not s.is_public("/v1/ping") and not s.is_public("/openapi.json") and not s.is_public("/staticx")


# ------------------------------------------------------------------------------------- Host
@pytest.mark.parametrize("host", ["127.0.0.1:8000", "127.0.0.1", "localhost", "LocalHost:5", "localhost.:8000",
                                  "[::1]:8000", "[::1]", "[0:0::1]:1"])
def test_loopback_hosts_are_allowed(make_client, host):
    assert make_client().get("/v1/ping", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host,shown", [("evil.example", "evil.example"), ("evil.example:8000", "evil.example"),
                                        ("127.0.0.2:8000", "127.0.0.2"), ("[::2]:80", "[::2]"),
                                        ("localhost.evil.example", "localhost.evil.example")])
def test_other_hosts_are_refused(make_client, host, shown):
    c = make_client(token=TOKEN)
    for r in (c.get("/v1/ping", headers={"Host": host, "Authorization": f"Bearer {TOKEN}"}),
              c.get("/", headers={"Host": host}), c.get("/static/style.css", headers={"Host": host})):
        assert r.status_code == 400
        bare = shown.strip("[]")
        assert r.json() == {"detail": f"Host '{shown}' is not allowed; start the server with --allow-host {bare}"}
        assert_security_headers(r)


@pytest.mark.parametrize("host", ["a:b:c", "x:port", "[::1", "[nothost]:80", ":80", "h:99999"])
def test_malformed_host_is_400(make_client, host):
    r = make_client().get("/v1/ping", headers={"Host": host})
    assert r.status_code == 400 and r.json()["detail"].startswith("malformed Host header")


def test_allow_host_and_bound_host(make_client):
    c = make_client(host="inspect.lan", allow_hosts=("Gateway.Example", "10.1.2.3", "[fe80::1]"))
    for host in ("inspect.lan:8000", "INSPECT.LAN", "gateway.example", "gateway.example:443", "10.1.2.3:8000",
                 "[fe80::1]:8000", "localhost:8000"):
        assert c.get("/v1/ping", headers={"Host": host}).status_code == 200, host
    for host in ("sub.gateway.example", "inspect.lan.evil", "10.1.2.4"):
        assert c.get("/v1/ping", headers={"Host": host}).status_code == 400, host


def test_allow_host_star_allows_any(make_client):
    c = make_client(allow_hosts=("*",))
    assert c.get("/v1/ping", headers={"Host": "anything.example:1"}).status_code == 200


def test_wildcard_bind_accepts_ip_literals_but_not_names(make_client):
    for bind in ("0.0.0.0", "::"):
        c = make_client(host=bind)
        assert c.get("/v1/ping", headers={"Host": "192.168.1.5:8000"}).status_code == 200
        assert c.get("/v1/ping", headers={"Host": "[2001:db8::5]:8000"}).status_code == 200
        r = c.get("/v1/ping", headers={"Host": "rebind.evil.example:8000"})
        assert r.status_code == 400 and "--allow-host rebind.evil.example" in r.json()["detail"]


def test_specific_bind_refuses_other_ip_literals(make_client):
    c = make_client(host="192.168.1.5")
    assert c.get("/v1/ping", headers={"Host": "192.168.1.5:8000"}).status_code == 200
    assert c.get("/v1/ping", headers={"Host": "192.168.1.6:8000"}).status_code == 400


@pytest.mark.parametrize("bad", ["evil.example:80", "", "a b", "*.example", "[::1]:80"])
def test_allow_host_values_are_checked(bad):
    with pytest.raises(S2SWError, match="--allow-host takes a host name or IP address without port"):
        SecuritySettings(allow_hosts=(bad,))


# ------------------------------------------------------------------------------ cross-site
@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1:9999", "http://127.0.0.1",
                                    "http://localhost:8000", "http://127.0.0.1:8000.evil.example", "garbage",
                                    "http://"])
def test_cross_site_posts_are_refused(make_client, origin):
    c = make_client()
    r = c.post("/v1/echo", data={"a": "1"}, headers={"Origin": origin})
    assert r.status_code == 403
    assert r.json()["detail"].startswith("cross-site request refused (")
    assert_security_headers(r)
    for method in ("PUT", "PATCH", "DELETE"):
        assert c.request(method, "/v1/echo", headers={"Origin": origin}).status_code == 403
    # the page's path too: the check does not depend on a route existing
    assert c.post("/", headers={"Origin": origin}).status_code == 403


def test_a_plain_cross_site_form_post_is_refused(make_client):
    r = make_client().post("/v1/echo", content=b"files=x", headers=EVIL_FORM)
    assert r.status_code == 403
    assert r.json()["detail"] == ("cross-site request refused (Origin 'https://evil.example' is not this server's "
                                  "origin); send it from the service's own page, or without an Origin header "
                                  "(curl, Python), or with the bearer token, or start the server with "
                                  "--allow-host evil.example")


def test_same_origin_post_is_accepted(make_client):
    c = make_client()
    assert c.post("/v1/echo", content=b"a", headers={"Origin": BASE}).json() == {"got": "a"}
    assert c.post("/v1/echo", content=b"b", headers={"Origin": "http://LOCALHOST:8000",
                                                     "Host": "localhost:8000"}).json() == {"got": "b"}
    # default ports: Host without port against an origin without port
    assert c.post("/v1/echo", content=b"c", headers={"Origin": "http://localhost",
                                                     "Host": "localhost"}).status_code == 200
    assert c.post("/v1/echo", content=b"d", headers={"Origin": "http://localhost:80",
                                                     "Host": "localhost"}).status_code == 200
    assert c.post("/v1/echo", content=b"e", headers={"Origin": "https://localhost",
                                                     "Host": "localhost:443"}).status_code == 200
    # the scheme is not compared (a TLS proxy in front): same host and port is the same server
    assert c.post("/v1/echo", content=b"f", headers={"Origin": "https://127.0.0.1:8000"}).status_code == 200


def test_clients_without_origin(make_client):
    c = make_client()
    # curl / Python: neither Origin nor Sec-Fetch-Site -> accepted, with or without a custom header
    assert c.post("/v1/echo", content=b"plain").json() == {"got": "plain"}
    assert c.post("/v1/echo", content=b"x", headers={"X-Requested-With": "fetch"}).json() == {"got": "x"}
    for site in ("same-origin", "none"):
        assert c.post("/v1/echo", content=b"y", headers={"Sec-Fetch-Site": site}).status_code == 200
    # a browser that left Origin out but says where the request comes from
    for site in ("cross-site", "same-site"):
        r = c.post("/v1/echo", content=b"z", headers={"Sec-Fetch-Site": site})
        assert r.status_code == 403 and f"Sec-Fetch-Site: {site}" in r.json()["detail"]


def test_safe_methods_are_not_checked_for_origin(make_client):
    c = make_client()
    r = c.get("/v1/ping", headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 200


def test_a_valid_token_overrides_the_origin_check(make_client):
    c = make_client(token=TOKEN)
    r = c.post("/v1/echo", content=b"t", headers={**EVIL_FORM, "Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json() == {"got": "t"}
    assert c.post("/v1/echo", content=b"t", headers=EVIL_FORM).status_code == 401
    assert c.post("/", headers=EVIL_FORM).status_code == 403  # public path, no token: origin checked


def test_origin_named_with_allow_host_is_accepted_but_star_is_not_enough(make_client):
    c = make_client(allow_hosts=("front.example",))
    assert c.post("/v1/echo", content=b"f", headers={"Origin": "https://front.example"}).status_code == 200
    c = make_client(allow_hosts=("*",))
    assert c.post("/v1/echo", content=b"f", headers={"Origin": "https://evil.example"}).status_code == 403
    # "*" still lets the same-origin page of any host name work
    assert c.post("/v1/echo", content=b"f", headers={"Origin": "https://proxy.example",
                                                     "Host": "proxy.example"}).status_code == 200


def test_websocket_handshake_is_checked(make_client):
    ws_url = "ws://127.0.0.1:8000/v1/ws"
    c = make_client(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with c.websocket_connect(ws_url, headers=auth) as ws:
        assert ws.receive_text() == "hello"
    for headers in ({}, {"Origin": "https://evil.example"}, {**auth, "Host": "evil.example"}):
        with pytest.raises(WebSocketDisconnect) as e:
            with c.websocket_connect(ws_url, headers=headers):
                pass
        assert e.value.code == 1008
    c = make_client()
    with pytest.raises(WebSocketDisconnect):
        with c.websocket_connect(ws_url, headers={"Origin": "https://evil.example"}):
            pass
    with c.websocket_connect(ws_url, headers={"Origin": BASE}) as ws:
        assert ws.receive_text() == "hello"


# --------------------------------------------------------------------------------- headers
def test_route_csp_is_kept_and_gets_frame_ancestors(make_client):
    c = make_client(token=TOKEN)
    r = c.get("/")
    assert r.status_code == 200
    assert_security_headers(r, csp=PAGE_CSP + "; frame-ancestors 'none'")
    r = c.get("/framed", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.headers.get_list("content-security-policy") == ["default-src 'none'; frame-ancestors 'self'"]
    assert r.headers["x-frame-options"] == "SAMEORIGIN"  # a route's own choice is kept
    assert r.headers["x-content-type-options"] == "nosniff"


def test_headers_on_static_files_errors_and_refusals(make_client):
    c = make_client(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for r, status in ((c.get("/static/style.css"), 200), (c.get("/static/nope.css"), 404),
                      (c.get("/v1/none", headers=auth), 404), (c.get("/v1/ping"), 401),
                      (c.post("/v1/echo", headers={**auth, "Host": "evil.example"}), 400),
                      (c.post("/", headers=EVIL_FORM), 403), (c.put("/v1/ping", headers=auth), 405)):
        assert r.status_code == status
        assert_security_headers(r)


def test_server_error_gets_headers_when_wrapped_outside(make_client):
    c = make_client(outside=True, raise_server_exceptions=False)
    r = c.get("/v1/boom")
    assert r.status_code == 500
    assert_security_headers(r)
    assert c.post("/v1/echo", headers=EVIL_FORM).status_code == 403


def test_docs_are_off_and_the_schema_stays(make_client):
    c = make_client()
    assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    assert "/v1/echo" in c.get("/openapi.json").json()["paths"]


def test_through_uvicorn(static_dir):
    """The real server: Host and Origin as a browser and curl send them."""
    from .background import BackgroundServer

    with BackgroundServer(build_app(static_dir, SecuritySettings(token=TOKEN))) as url:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.get("/v1/ping", headers=auth).json() == {"ok": True}
            assert c.get("/v1/ping").status_code == 401
            assert c.post("/v1/echo", content=b"u", headers={**auth, "Origin": url}).json() == {"got": "u"}
            assert c.post("/", headers={"Origin": "null"}).status_code == 403
            r = c.get("/v1/ping", headers={**auth, "Host": "evil.example"})
            assert r.status_code == 400 and "--allow-host evil.example" in r.json()["detail"]
            assert_security_headers(c.get("/static/style.css"))


# ---------------------------------------------------------------------------------- helpers
def test_resolve_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert resolve_token(None) is None
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    assert resolve_token(None) == "from-env"
    assert resolve_token("from-flag") == "from-flag"
    monkeypatch.setenv(TOKEN_ENV, "")
    assert resolve_token(None) is None
    monkeypatch.setenv(TOKEN_ENV, "has space")
    with pytest.raises(S2SWError, match=f"^{TOKEN_ENV} may only hold visible ASCII"):
        resolve_token(None)
    with pytest.raises(S2SWError, match="^--token is empty"):
        resolve_token("")
    with pytest.raises(S2SWError, match="^--token may only hold visible ASCII"):
        resolve_token("tökén")
    with pytest.raises(S2SWError, match="^--token is empty"):
        SecuritySettings(token="")


@pytest.mark.parametrize("host,expected", [
    ("127.0.0.1", True), ("127.8.9.1", True), ("localhost", True), ("LOCALHOST.", True), ("::1", True),
    ("[::1]", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("", False),
    ("192.168.1.5", False), ("myhost", False), ("localhost.example", False), ("fe80::1", False),
])
def test_is_loopback(host, expected):
    assert is_loopback(host) is expected


def test_exposure_warning():
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("localhost", None) is None
    assert exposure_warning("0.0.0.0", TOKEN) is None
    w = exposure_warning("0.0.0.0", None)
    assert w.startswith("warning: --host 0.0.0.0 makes the service reachable from other machines")
    assert TOKEN_ENV in w and "--token" in w and "\n" not in w
