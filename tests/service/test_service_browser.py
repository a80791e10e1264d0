"""End to end in a real headless Chromium: search by upload, index with progress, maintenance.

The server is the real ``cbir serve`` (``python -m cbir.commands.serve``) on a free
loopback port. Screenshots go to tests/service/artifacts/ (git-ignored). Skips when
Playwright or a Chromium binary is missing (Debian: ``apt-get install chromium``; or set
$CBIR_CHROMIUM); Playwright's own browser download is not needed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from badfiles import make_good_images
from conftest import build_collection, make_other_images, needs_service

ARTIFACTS = Path(__file__).with_name("artifacts")
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-dev-shm-usage"]


def find_chromium() -> str | None:
    for cand in (os.environ.get("CBIR_CHROMIUM"), shutil.which("chromium"),
                 shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


needs_service()
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="needs the playwright package (pip install playwright)")
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary: apt-get install chromium "
                                "(or set CBIR_CHROMIUM=/path/to/chrome)")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("browser")
    root = tmp / "allowed"
    make_good_images(root / "photos", 12, size=(96, 72))
    make_other_images(root / "more", 80)
    make_good_images(root / "classes" / "stripes", 8, size=(48, 48))
    make_other_images(root / "classes" / "blocks", 8)
    coll = tmp / "coll"
    build_collection(coll, root / "photos")
    yield from _serve(tmp, coll, root)


def _serve(tmp: Path, coll: Path, root: Path) -> Iterator[dict]:
    """Run `cbir serve` on ``coll`` on a free port until the fixture ends."""
    log = open(tmp / "server.log", "w+")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([sys.executable, "-m", "cbir.commands.serve", "--collection", str(coll),
                             "--allow-root", str(root), "--port", "0", "--log-level", "info"],
                            stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CBIR_CACHE_DIR": str(tmp / "cbir-cache")})
    url = None
    t_end = time.monotonic() + 60
    while time.monotonic() < t_end and url is None:
        if proc.poll() is not None:
            break
        log.seek(0)
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log.read())
        url = m.group(1) if m else None
        time.sleep(0.1)
    if url is None:
        proc.kill()
        log.seek(0)
        pytest.fail(f"the server did not start:\n{log.read()}")
    with urllib.request.urlopen(url + "/api/health", timeout=10) as r:
        assert r.status == 200
    try:
        yield {"url": url, "root": root, "coll": coll}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()




@pytest.fixture(scope="module")
def scene_server(tmp_path_factory) -> Iterator[dict]:
    """A tagged collection with a trained concept model (colour concepts, see scene_photos)."""
    pytest.importorskip("torch")
    from cbir.collection import Collection
    from cbir.indexing import index_paths
    from cbir.scenes import train_concepts
    from scene_photos import make_tagged_photos

    tmp = tmp_path_factory.mktemp("scenes")
    root = tmp / "allowed"
    truth = make_tagged_photos(root / "photos")
    coll = tmp / "coll"
    with Collection.create_or_open(coll, "colorhist") as col, col.writer_lock():
        index_paths(col, [root / "photos"], progress=False)
        train_concepts(col, vectors=None)
    for info in _serve(tmp, coll, root):
        yield {**info, "truth": truth}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1100, "height": 800})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def wait_images(pg, timeout: float = 20.0) -> None:
    """Wait until every result thumbnail has loaded (polled here: the page's CSP forbids eval)."""
    js = "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    t_end = time.monotonic() + timeout
    while not pg.evaluate(js):
        assert time.monotonic() < t_end, "thumbnails did not load"
        time.sleep(0.1)


def shot(pg, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_search_by_upload(page, server):
    query = sorted((server["root"] / "photos").iterdir())[0]
    page.goto(server["url"] + "/")
    sync_api.expect(page.locator("#stats")).to_contain_text("12 images")
    page.set_input_files("#file", str(query))
    hits = page.locator("#results .hit")
    sync_api.expect(hits).to_have_count(12)
    first = hits.first.locator(".sim").inner_text()
    assert first.endswith("% match") and float(first.split()[0]) > 98  # the same photo: ~100 %
    assert query.name in hits.first.locator(".name").inner_text()
    wait_images(page)
    shot(page, "search.png")
    page.fill("#k", "5")
    page.click("#search-btn")
    sync_api.expect(hits).to_have_count(5)
    # "similar" searches by the stored vector of that image
    hits.nth(1).locator("button.like").click()
    sync_api.expect(page.locator("#search-status")).to_contain_text("images like")
    sync_api.expect(hits).to_have_count(5)
    with page.expect_popup() as popup:
        hits.first.locator("a.open").click()
    opened = popup.value
    opened.wait_for_load_state()
    assert "/api/images/" in opened.url


def test_bad_upload_shows_a_readable_error(page, server, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is a text file, not a photo\n")
    page.goto(server["url"] + "/")
    page.set_input_files("#file", str(bad))
    err = page.locator("#error")
    sync_api.expect(err).to_be_visible()
    sync_api.expect(err).to_contain_text("not an image")
    shot(page, "error.png")
    page.click("#error-close")
    sync_api.expect(err).to_be_hidden()


def test_index_a_folder_and_watch_progress(page, server):
    page.goto(server["url"] + "/#index")
    sync_api.expect(page.locator("#roots")).to_contain_text(str(server["root"]))
    page.fill("#folder", str(server["root"] / "more"))
    seen: list[str] = []
    page.on("console", lambda m: seen.append(m.text))
    page.click("#index-btn")
    sync_api.expect(page.locator("#job-panel")).to_be_visible()
    sync_api.expect(page.locator("#job-status")).to_have_text("succeeded", timeout=60_000)
    sync_api.expect(page.locator("#progress-text")).to_contain_text("100 %")
    assert page.locator("#progress").evaluate("p => p.value") == 100
    sync_api.expect(page.locator("#stats")).to_contain_text("92 images")
    shot(page, "index.png")
    # the job survives a page reload
    page.reload()
    sync_api.expect(page.locator("#jobs tbody tr").first).to_contain_text("succeeded")
    sync_api.expect(page.locator("#jobs tbody tr").first).to_contain_text("100 %")


def test_narrow_screen(browser, server):
    ctx = browser.new_context(viewport={"width": 375, "height": 740}, device_scale_factor=2)
    pg = ctx.new_page()
    try:
        pg.goto(server["url"] + "/")
        query = sorted((server["root"] / "photos").iterdir())[2]
        pg.set_input_files("#file", str(query))
        sync_api.expect(pg.locator("#results .hit").first).to_be_visible()
        wait_images(pg)
        width = pg.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"the page scrolls sideways on a phone ({width} px)"
        shot(pg, "search-narrow.png")
    finally:
        ctx.close()


def test_train_a_model_and_see_its_curves(page, server):
    from cbir.service import training

    if not training.available():
        pytest.skip(f"cbir.train is not complete: {training.missing()}")
    pytest.importorskip("torch", reason="training needs torch")
    page.goto(server["url"] + "/#maintenance")
    sync_api.expect(page.locator("#train-form")).to_be_visible()
    page.fill("#train-folder", str(server["root"] / "classes"))
    page.fill("#train-name", "web-model")
    page.fill("#train-epochs", "5")
    page.click("#train-btn")
    sync_api.expect(page.locator("#job-status")).to_have_text("succeeded", timeout=240_000)
    sync_api.expect(page.locator("#progress-text")).to_contain_text("100 %")
    row = page.locator("#models tbody tr").first
    sync_api.expect(row).to_contain_text("web-model")
    row.locator("button", has_text="curves").click()
    sync_api.expect(page.locator("#curves svg.curve").first).to_be_visible()
    shot(page, "training.png")


def test_maintenance_clear_and_rebuild(page, server):
    page.goto(server["url"] + "/#maintenance")
    sync_api.expect(page.locator("#info")).to_contain_text("colorhist")
    page.click("#rebuild-btn")
    sync_api.expect(page.locator("#maint-status")).to_contain_text("succeeded", timeout=60_000)
    page.on("dialog", lambda d: d.accept())
    page.click("#clear-btn")
    sync_api.expect(page.locator("#maint-status")).to_contain_text("clear: succeeded", timeout=60_000)
    sync_api.expect(page.locator("#stats")).to_contain_text("0 images")
    shot(page, "maintenance.png")


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_render_without_network(browser, server, path):
    """Swagger UI and ReDoc come from the server itself: every request off it is refused."""
    pytest.importorskip("fastapi_offline", reason="the service extra's fastapi-offline serves the docs files")
    ctx = browser.new_context(viewport={"width": 1100, "height": 800})
    origin = server["url"]
    requested: list[str] = []
    blocked: list[str] = []

    def only_local(route) -> None:
        url = route.request.url
        requested.append(url)
        if url.startswith(origin + "/") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    ctx.route("**/*", only_local)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        pg.goto(origin + path)
        if path == "/docs":
            ops = pg.locator(".swagger-ui .opblock")
            sync_api.expect(ops.first).to_be_visible(timeout=20_000)
            sync_api.expect(pg.locator(".swagger-ui .info .title")).to_contain_text("cbir")
            search = pg.locator("#operations-search-search_upload_api_search_post")
            sync_api.expect(search).to_be_visible()
            assert ops.count() >= 15, f"only {ops.count()} operations rendered"
            # an operation opens and shows its parameters (the UI works, not only the HTML)
            search.locator(".opblock-summary").first.click()
            sync_api.expect(search.locator(".opblock-body")).to_contain_text("file")
        else:
            sync_api.expect(pg.locator("h1").first).to_contain_text("cbir", timeout=20_000)
            sync_api.expect(pg.locator("[data-section-id^='operation/']").first).to_be_attached()
            assert pg.locator("[data-section-id^='operation/']").count() >= 15
        shot(pg, f"api{path.replace('/', '-')}.png")
    finally:
        ctx.close()
    assert not blocked, f"the docs page tried to reach other sites: {blocked}"
    assert any(u.endswith("/openapi.json") for u in requested)
    # ReDoc's sidebar shows Redocly's logo from their CDN: the page's CSP blocks it (no request is sent)
    errors = [e for e in errors if not ("cdn.redoc.ly" in e and "Content Security Policy" in e)]
    assert not errors, f"errors on {path}: {errors}"


def test_search_by_concepts(page, scene_server):
    page.goto(scene_server["url"] + "/")
    page.fill("#scene-q", "red, blue")
    page.click("#scene-btn")
    hits = page.locator("#results .hit")
    sync_api.expect(hits).to_have_count(12)
    sync_api.expect(page.locator("#search-status")).to_contain_text("showing blue + red")
    assert "red" in hits.first.locator(".evidence").inner_text()
    wait_images(page)
    shot(page, "scenes.png")
    page.fill("#scene-q", "red xylophone")
    page.click("#scene-btn")
    sync_api.expect(page.locator("#error-text")).to_contain_text("does not know the concept 'xylophone'")
