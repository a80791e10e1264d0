"""A server other machines can reach: reads need the token, the Host header is checked, the
token file's mode is checked, tokens stay out of the access log, uvicorn's own 400s are JSON,
and zip uploads have tight limits.

The non-loopback apps are built from a ServiceConfig with ``host="0.0.0.0"`` (or a LAN
address) and driven through a TestClient: nothing binds a public address.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cbir.commands import serve
from cbir.service.config import accepted_hosts
from cbir.service.safezip import UnsafeArchive, ZipLimits, check_zip, safe_extract
from cbir.service.security import hash_token, token_file_warning, write_token_file
from conftest import needs_service

needs_service()

TOKEN = "exposure-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _args(*argv: str):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--collection", type=Path, default=None)
    sub = p.add_subparsers()
    serve.register(sub, argparse.ArgumentParser)
    return p.parse_args(list(argv))


@pytest.fixture
def public(coll, roots, make_client):
    """The app as `cbir serve --host 0.0.0.0 --token-file F` builds it."""
    return make_client(coll, allow_roots=[roots], token_hashes=[hash_token(TOKEN)], host="0.0.0.0")


READS = [("GET", "/api/search?id=1&k=3"), ("GET", "/api/images/1"), ("GET", "/api/images/1/thumbnail"),
         ("GET", "/api/images/1/meta"), ("GET", "/api/collection"), ("GET", "/api/roots"),
         ("GET", "/api/jobs"), ("GET", "/api/jobs/0123"), ("GET", "/api/jobs/0123/events"),
         ("GET", "/metrics"), ("GET", "/api/models"), ("GET", "/api/scenes?q=sky"),
         ("GET", "/api/concept-models"), ("GET", "/api/duplicates"), ("GET", "/api/filter-values"),
         ("GET", "/api/no-such-route")]


def test_reads_need_the_token_on_a_non_loopback_bind(public, roots):
    """Every read (search, full images, thumbnails, paths in collection/jobs, metrics) is 401
    without the token; health, the page, its static files and the docs stay public."""
    for method, url in READS:
        r = public.request(method, url)
        assert r.status_code == 401, (url, r.status_code)
        assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    q = sorted((roots / "photos").iterdir())[0]
    assert public.post("/api/search", files={"file": (q.name, q.read_bytes())}).status_code == 401
    # a wrong token, or the right one in the query string, is not enough
    assert "not valid" in public.get("/api/collection", headers={"X-API-Token": "x" * 20}).json()["detail"]
    assert public.get(f"/api/collection?token={TOKEN}").status_code == 401
    assert public.get(f"/api/images/1?access_token={TOKEN}").status_code == 401
    # with the token
    assert public.get("/api/search?id=1&k=3", headers=AUTH).status_code == 200
    assert public.get("/api/images/1/thumbnail", headers=AUTH).status_code == 200
    assert public.get("/api/collection", headers={"X-API-Token": TOKEN}).status_code == 200
    assert public.get("/metrics", headers=AUTH).status_code == 200
    assert public.get("/api/filter-values", headers=AUTH).status_code == 200
    r = public.post("/api/search", files={"file": (q.name, q.read_bytes())}, headers=AUTH)
    assert r.status_code == 200
    # public: liveness (which tells the page to ask for the token), the page, docs
    h = public.get("/api/health").json()
    assert h["auth_required"] is True and h["read_auth_required"] is True
    for url in ("/", "/static/app.js", "/openapi.json", "/docs", "/redoc"):
        assert public.get(url).status_code == 200, url


def test_public_read_and_loopback_keep_reads_open(coll, roots, make_client):
    """--public-read (and a loopback bind, as before) leave reads open; writes still need the token."""
    hashes = [hash_token(TOKEN)]
    for kw in ({"host": "0.0.0.0", "public_read": True}, {"host": "127.0.0.1"}):
        c = make_client(coll, allow_roots=[roots], token_hashes=hashes, **kw)
        assert c.get("/api/health").json()["read_auth_required"] is False
        assert c.get("/api/search?id=1&k=3").status_code == 200
        assert c.get("/api/images/1/thumbnail").status_code == 200
        assert c.post("/api/index/clear", json={"confirm": True}).status_code == 401
        c.__exit__(None, None, None)  # one server per collection at a time


def test_the_page_sends_the_token_for_reads():
    """The page sends the Authorization header on every API call, fetches images with it
    when reads need it, and never puts the token in a URL."""
    js = (Path(serve.__file__).parents[1] / "service" / "static" / "app.js").read_text()
    assert 'opts.headers["Authorization"] = "Bearer " + token()' in js
    assert "read_auth_required" in js and 'headers: { Authorization: "Bearer " + token() }' in js
    assert "URL.createObjectURL(await res.blob())" in js
    assert "EventSource && !readAuth()" in js
    assert "token=" not in js


def test_host_header_is_checked_on_a_non_loopback_bind(coll, make_client):
    """DNS rebinding: a non-loopback server answers to its address, localhost and --allowed-host
    names only (JSON 421); bound to 0.0.0.0 it also answers to the address a client connected to."""
    hashes = [hash_token(TOKEN)]
    lan = make_client(coll, token_hashes=hashes, host="192.0.2.10")
    r = lan.get("/api/health", headers={"Host": "evil.example"})
    assert r.status_code == 421 and r.json()["error"] == "unknown_host"
    assert "--allowed-host" in r.json()["detail"]
    assert lan.get("/api/health").status_code == 421  # TestClient's "testserver" is no name of it
    for ok in ("192.0.2.10:8000", "192.0.2.10", "localhost:8000", "127.0.0.1"):
        assert lan.get("/api/health", headers={"Host": ok}).status_code == 200, ok
    lan.__exit__(None, None, None)  # one server per collection at a time

    wild = make_client(coll, token_hashes=hashes, host="0.0.0.0")
    assert wild.get("/api/health").status_code == 200  # Host == the connection's local address
    assert wild.get("/api/health", headers={"Host": "rebound.evil.example:8000"}).status_code == 421
    wild.__exit__(None, None, None)

    named = make_client(coll, token_hashes=hashes, host="0.0.0.0",
                        allowed_hosts=accepted_hosts("0.0.0.0", ["Photos.Example.org:8000"]))
    assert named.get("/api/health", headers={"Host": "photos.example.org"}).status_code == 200
    assert named.get("/api/health", headers={"Host": "other.example.org"}).status_code == 421


def test_serve_options_public_read_and_allowed_host(tmp_path, monkeypatch):
    monkeypatch.setenv("CBIR_API_TOKEN", TOKEN)
    cfg = serve.build_config(_args("serve", "--host", "0.0.0.0", "--collection", str(tmp_path),
                                   "--allowed-host", "cbir.lan", "--allowed-host", "fe80::1"))
    assert cfg.reads_need_token and not cfg.public_read and cfg.host == "0.0.0.0"
    assert {"cbir.lan", "[fe80::1]", "localhost", "127.0.0.1"} <= set(cfg.allowed_hosts)
    assert "0.0.0.0" not in cfg.allowed_hosts
    cfg = serve.build_config(_args("serve", "--host", "10.1.2.3", "--public-read",
                                   "--collection", str(tmp_path)))
    assert cfg.public_read and not cfg.reads_need_token and "10.1.2.3" in cfg.allowed_hosts


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_token_file_mode_warning(tmp_path, monkeypatch, capsys):
    """A token file others can write (add their own token) or read (plain tokens) is reported
    in one line on stderr when the server starts."""
    f = tmp_path / "tokens"
    write_token_file(f)
    assert token_file_warning(f) is None  # 600
    f.chmod(0o644)
    assert "readable by others" in token_file_warning(f)
    f.chmod(0o660)
    assert "writable by its group" in token_file_warning(f)
    f.chmod(0o646)
    w = token_file_warning(f)
    assert "writable by others" in w and "readable by others" in w and "chmod 600" in w
    f.chmod(0o640)
    assert token_file_warning(f) is None

    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    monkeypatch.delenv("CBIR_API_TOKEN", raising=False)
    f.chmod(0o664)
    assert serve.cmd_serve(_args("serve", "--token-file", str(f), "--collection", str(tmp_path / "c"))) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("cbir: warning:")]
    assert len(warnings) == 1 and str(f) in warnings[0]
    # the server runs with the JSON-400 protocol and the redacting access log
    assert "send_400_response" in vars(seen["http"])
    assert "redact_tokens" in seen["log_config"]["handlers"]["access"]["filters"]


def test_query_tokens_are_redacted_in_access_log_records():
    from cbir.service.httpserver import RedactTokens

    path = f"/api/images/1?x=1&token={TOKEN}&access_token=abc"
    rec = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                            ("1.2.3.4:5", "GET", path, "1.1", 401), None)
    assert RedactTokens().filter(rec)
    line = rec.getMessage()
    assert TOKEN not in line and "abc" not in line
    assert "token=REDACTED" in line and "access_token=REDACTED" in line and "x=1" in line


@contextlib.contextmanager
def _live_server(http: str | None = None) -> Iterator[int]:
    """A real uvicorn on 127.0.0.1 (its port is yielded) with the options `cbir serve` uses, over
    a tiny app; ``http`` picks the parser ("h11", "httptools"; None: uvicorn's choice)."""
    import uvicorn

    from cbir.service.httpserver import json_400_protocol, uvicorn_options

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    options = uvicorn_options(log_level="info")
    if http is not None:
        from uvicorn.config import HTTP_PROTOCOLS
        from uvicorn.importer import import_from_string

        options["http"] = json_400_protocol(import_from_string(HTTP_PROTOCOLS[http]))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", **options))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    t_end = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < t_end and t.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        t.join(10)


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("http", [None, "h11", "httptools"])
def test_uvicorn_400s_for_malformed_requests_are_json(http):
    """uvicorn answers unparsable requests itself, before the app; cbir serve's protocol makes
    those answers JSON {error, detail} like the app's errors (with either parser)."""
    if http:
        pytest.importorskip(http)
    with _live_server(http) as port:
        answers = [_raw(port, bad) for bad in (
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
            b"NOT A REQUEST LINE\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n")]
    for out in answers:
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), out
        assert b"content-type: application/json" in head.lower()
        err = json.loads(body)
        assert err["error"] == "bad_request" and "malformed" in err["detail"]


def test_access_log_of_a_live_server_has_no_query_token():
    with _live_server() as port:
        handler = logging.getLogger("uvicorn.access").handlers[0]
        buf = io.StringIO()
        old = handler.setStream(buf)
        try:
            out = _raw(port, f"GET /api/health?token={TOKEN} HTTP/1.1\r\nHost: a\r\n"
                             "Connection: close\r\n\r\n".encode())
            assert out.startswith(b"HTTP/1.1 200")
            t_end = time.monotonic() + 5
            while "GET" not in buf.getvalue() and time.monotonic() < t_end:
                time.sleep(0.02)
        finally:
            handler.setStream(old)
    assert "/api/health?token=REDACTED" in buf.getvalue() and TOKEN not in buf.getvalue()


# -- zip limits -----------------------------------------------------------------------------------
def _zip(entries: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    buf.seek(0)
    return buf


def test_zip_limits_are_10k_entries_and_10_to_1(tmp_path):
    limits = ZipLimits()
    assert limits.max_files == 10_000 and limits.max_ratio <= 10
    # a member that compresses about 30 : 1 (passed the old 100 : 1 limit)
    rng = __import__("random").Random(0)
    data = b"".join(bytes(rng.randrange(256) for _ in range(1024)) + b"\0" * 30 * 1024 for _ in range(8))
    src = _zip({"a.bin": data})
    info = zipfile.ZipFile(src).infolist()[0]
    assert 10 < info.file_size / info.compress_size < 100
    with pytest.raises(UnsafeArchive, match="zip bomb"):
        safe_extract(src, tmp_path / "ratio")
    # 10,001 entries (the old limit was 100,000)
    src = _zip({f"d/{i}.txt": b"" for i in range(10_001)})
    with pytest.raises(UnsafeArchive, match="entries"):
        safe_extract(src, tmp_path / "count")
    assert not any((tmp_path / "count").iterdir())


def test_zip_whole_archive_ratio(tmp_path):
    """Many small members (each under the per-member check) may not add up to a bomb."""
    src = _zip({f"f{i}.bin": b"\0" * 60_000 for i in range(100)})
    assert len(src.getvalue()) * 10 < 6_000_000
    with pytest.raises(UnsafeArchive, match="times its size"):
        safe_extract(src, tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())
    with pytest.raises(UnsafeArchive, match="times its size"):  # size unknown: the compressed sizes
        check_zip(zipfile.ZipFile(src))
    # a photo-like archive (incompressible data) is fine
    photos = _zip({f"c/{i}.jpg": os.urandom(20_000) for i in range(5)})
    assert len(safe_extract(photos, tmp_path / "ok")) == 5


def test_upload_unzip_cap_comes_from_the_config(coll, make_client):
    from cbir.service import training

    if not training.available():
        pytest.skip(f"training is not available: {training.missing()}")
    c = make_client(coll, max_unzip_bytes=50_000)
    zipped = _zip({f"set/a/{i}.jpg": os.urandom(20_000) for i in range(4)}).getvalue()
    r = c.post("/api/train-jobs/upload", files={"file": ("set.zip", zipped)})
    assert r.status_code == 400 and r.json()["error"] == "unsafe_archive"
    assert "50000" in r.json()["detail"]


# -- the page on a server whose reads need the token (real Chromium, skipped without one) -----------
SERVER_SCRIPT = """
import sys
import uvicorn
from cbir.service import ServiceConfig, create_app
from cbir.service.httpserver import uvicorn_options
from cbir.service.security import hash_token
config = ServiceConfig(collection=sys.argv[1], host="0.0.0.0", token_hashes=[hash_token(sys.argv[2])])
app = create_app(config)
uvicorn.run(app, host="127.0.0.1", port=0, **uvicorn_options())
"""


def test_the_page_works_when_reads_need_the_token(coll, roots, tmp_path):
    """The app configured as for --host 0.0.0.0 (but bound to 127.0.0.1): the page asks for the
    token, then searches, shows thumbnails (fetched with the header) and opens a full image."""
    import re
    import shutil
    import subprocess
    import sys

    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright")
    chromium = next((c for c in (os.environ.get("CBIR_CHROMIUM"), shutil.which("chromium"),
                                 shutil.which("chromium-browser")) if c and os.access(c, os.X_OK)), None)
    if chromium is None:
        pytest.skip("no Chromium binary")
    log = open(tmp_path / "server.log", "w+")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(coll), TOKEN], stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url, t_end = None, time.monotonic() + 60
        while url is None and proc.poll() is None and time.monotonic() < t_end:
            log.seek(0)
            m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read())
            url = m.group(1) if m else None
            time.sleep(0.1)
        assert url, "the server did not start"
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium,
                                        args=["--headless", "--no-sandbox", "--disable-gpu"])
            ctx = browser.new_context()
            pg = ctx.new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(url + "/")
            pg.wait_for_selector("#token-form:not([hidden])")
            _until(pg, "document.querySelector('#stats').textContent.includes('token')")
            pg.fill("#token", TOKEN)
            pg.press("#token", "Tab")  # "change"
            _until(pg, "document.querySelector('#stats').textContent.includes('images')")
            q = sorted((roots / "photos").iterdir())[0]
            pg.set_input_files("#file", str(q))
            pg.wait_for_selector("#results .hit")
            _until(pg, "[...document.querySelectorAll('#results img')].every(i => "
                       "i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)")
            pg.click("#results .hit button.open")  # the viewer shows the full image from a blob: URL
            _until(pg, "(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)"
                       "(document.querySelector('#viewer-img'))")
            with ctx.expect_page() as popup:
                pg.click("#viewer-open")
            popup.value.wait_for_load_state()
            # the page opens a blank window and points it at the image's blob: URL
            _until(popup.value, "location.href.startsWith('blob:') && "
                                "document.contentType.startsWith('image/')")
            browser.close()
        assert not errors, errors
    finally:
        proc.terminate()
        proc.wait(15)
        log.seek(0)
        text = log.read()
        log.close()
    assert TOKEN not in text


def _until(pg, js: str, timeout: float = 20.0) -> None:
    """Poll ``js`` on the page (wait_for_function would need eval, which the page's CSP forbids)."""
    t_end = time.monotonic() + timeout
    while True:
        try:
            if pg.evaluate(js):
                return
        except Exception as e:  # a navigation under way destroys the context: try again
            if "context was destroyed" not in str(e):
                raise
        assert time.monotonic() < t_end, f"timed out waiting for {js}"
        time.sleep(0.1)
