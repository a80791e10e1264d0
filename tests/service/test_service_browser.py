"""End to end in a real headless Chromium: every flow of the web page, at 1280 px and 390 px.

The server is the real ``cbir serve`` (``python -m cbir.commands.serve``) on a free loopback
port. Every page runs with a network guard (a request to any other origin is aborted and fails
the test) and a console guard (a console error or an uncaught exception fails the test, except
the HTTP errors a test provokes on purpose). Screenshots go to tests/service/artifacts/
(git-ignored), one per flow and width: look at them. Skips when Playwright or a Chromium binary
is missing (Debian: ``apt-get install chromium``; or set $CBIR_CHROMIUM); Playwright's own
browser download is not needed. Waits are on conditions, never fixed sleeps.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from badfiles import make_good_images
from conftest import build_collection, make_exif_photos, make_other_images, needs_service

ARTIFACTS = Path(__file__).with_name("artifacts")
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-dev-shm-usage"]
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def find_chromium() -> str | None:
    for cand in (os.environ.get("CBIR_CHROMIUM"), shutil.which("chromium"),
                 shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


needs_service()
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="needs the playwright package (pip install playwright)")
expect = sync_api.expect
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary: apt-get install chromium "
                                "(or set CBIR_CHROMIUM=/path/to/chrome)")


# -- servers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("browser")
    root = tmp / "allowed"
    photos = make_good_images(root / "photos", 12, size=(96, 72))
    shutil.copy(photos[3], root / "photos" / "copy_of_photo.png")  # an exact duplicate
    make_other_images(root / "more", 80)
    make_good_images(root / "classes" / "stripes", 8, size=(48, 48))
    make_other_images(root / "classes" / "blocks", 8)
    coll = tmp / "coll"
    build_collection(coll, root / "photos")
    yield from _serve(tmp, coll, ["--allow-root", str(root)], {"root": root, "original": photos[3]})


def _serve(tmp: Path, coll: Path, args: list[str], info: dict, env: dict | None = None) -> Iterator[dict]:
    """Run `cbir serve` on ``coll`` on a free port until the fixture ends."""
    log = open(tmp / "server.log", "w+")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([sys.executable, "-m", "cbir.commands.serve", "--collection", str(coll),
                             *args, "--port", "0", "--log-level", "info"],
                            stdout=log, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CBIR_CACHE_DIR": str(tmp / "cbir-cache"), **(env or {})})
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
        yield {"url": url, "coll": coll, **info}
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
    yield from _serve(tmp, coll, ["--allow-root", str(root)], {"root": root, "truth": truth})


@pytest.fixture(scope="module")
def filter_server(tmp_path_factory) -> Iterator[dict]:
    """Two folders, two cameras, two years: trip/ (Canon, 2021) and home/ (Pixel 7, 2023), each
    with one exact copy (a duplicates group per folder); 14 images."""
    tmp = tmp_path_factory.mktemp("filters")
    root = (tmp / "allowed").resolve()
    trip = make_exif_photos(root / "trip", 6, "Canon", "Canon EOS R6", 2021, seed=5)
    home = make_exif_photos(root / "home", 6, "Google", "Pixel 7", 2023, seed=6)
    shutil.copy(trip[2], root / "trip" / "trip_copy.jpg")
    shutil.copy(home[3], root / "home" / "home_copy.jpg")
    coll = tmp / "coll"
    build_collection(coll, root)
    yield from _serve(tmp, coll, ["--allow-root", str(root)], {"root": root, "trip": trip, "home": home})


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        yield b
        b.close()


# -- pages with guards ------------------------------------------------------------------------
@dataclass
class Guard:
    """What one page did wrong: requests off the server, console errors, uncaught exceptions."""

    origin: str
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        """Let console errors matching ``pattern`` pass (an HTTP error the test provokes)."""
        self.allowed.append(pattern)

    def check(self) -> None:
        assert not self.blocked, f"the page requested other origins: {self.blocked}"
        bad = [e for e in self.errors if not any(re.search(p, e) for p in self.allowed)]
        assert not bad, f"console errors on the page: {bad}"


@pytest.fixture
def open_page(browser) -> Iterator[Callable[..., tuple[object, Guard]]]:
    """``open_page(url, phone=False)`` -> (page, guard); guards are checked at teardown."""
    made: list[tuple[object, Guard]] = []

    def make(url: str, phone: bool = False) -> tuple[object, Guard]:
        origin = re.match(r"https?://[^/]+", url).group(0)
        opts = ({"viewport": PHONE, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
                if phone else {"viewport": DESKTOP})
        ctx = browser.new_context(accept_downloads=True, **opts)
        guard = Guard(origin)

        def only_local(route) -> None:
            u = route.request.url
            if u.startswith(origin + "/") or u.startswith(("data:", "blob:")):
                route.continue_()
            else:
                guard.blocked.append(u)
                route.abort()

        ctx.route("**/*", only_local)
        pg = ctx.new_page()
        pg.on("pageerror", lambda e: guard.errors.append(f"uncaught: {e}"))
        pg.on("console", lambda m: guard.errors.append(m.text) if m.type == "error" else None)
        pg.goto(url)
        made.append((ctx, guard))
        return pg, guard

    yield make
    for ctx, _ in made:
        ctx.close()
    for _, guard in made:
        guard.check()


def poll(pg, js: str, what: str, timeout: float = 20.0) -> None:
    """Wait until ``js`` is true in the page (polled here: the page's CSP forbids eval)."""
    t_end = time.monotonic() + timeout
    while not pg.evaluate(js):
        assert time.monotonic() < t_end, what
        time.sleep(0.05)


def wait_images(pg, scope: str = "#results") -> None:
    """Wait for the thumbnails in view (those further down load lazily, as the user scrolls)."""
    poll(pg, f"[...document.querySelectorAll('{scope} img')]"
         ".filter(i => i.getBoundingClientRect().top < innerHeight)"
         ".every(i => i.complete && i.naturalWidth > 0)", f"thumbnails in {scope} did not load")


def shot(pg, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / name), full_page=full_page)


def no_sideways_scroll(pg) -> None:
    width = pg.evaluate("document.documentElement.scrollWidth")
    view = pg.evaluate("window.innerWidth")
    assert width <= view, f"the page scrolls sideways ({width} px in {view} px)"


def uniform_tiles(pg, scope: str = "#results .hit") -> None:
    """Every tile of a result grid has the same size (no ragged cards)."""
    sizes = pg.evaluate(f"[...document.querySelectorAll('{scope}')].map(e => e.getBoundingClientRect())"
                        ".map(r => [Math.round(r.width), Math.round(r.height)])")
    distinct = sorted({tuple(s) for s in sizes})
    assert len(distinct) == 1, f"tiles of different sizes: {distinct}"


def drop_file(pg, path: Path, target: str = "#search-status") -> None:
    """Drop a file on the page as a person dragging it from their file manager would."""
    data = base64.b64encode(path.read_bytes()).decode()
    pg.evaluate("""([b64, name, sel]) => {
        const bin = atob(b64);
        const file = new File([Uint8Array.from(bin, (c) => c.charCodeAt(0))], name, { type: 'image/png' });
        const dt = new DataTransfer();
        dt.items.add(file);
        const at = document.querySelector(sel);
        for (const type of ['dragenter', 'dragover', 'drop'])
            at.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
    }""", [data, path.name, target])


# -- flows ------------------------------------------------------------------------------------
def test_search_by_upload_viewer_and_similar(open_page, server):
    pg, guard = open_page(server["url"] + "/")
    guard.allow(r"status of 400")  # the words search below, on a collection without concepts
    expect(pg.locator("#stats")).to_contain_text("13 images")
    expect(pg.locator("#pick-text")).to_have_text("Photo…")
    query = sorted((server["root"] / "photos").glob("good_*"))[0]
    pg.set_input_files("#file", str(query))
    hits = pg.locator("#results .hit")
    expect(hits).to_have_count(13)
    first = hits.first.locator(".sim").inner_text()
    assert first.endswith("% match") and int(first.split()[0]) > 98  # the same photo: ~100 %
    assert query.name in hits.first.locator(".name").inner_text()
    expect(pg.locator("#query-chip")).to_be_visible()
    wait_images(pg)
    uniform_tiles(pg)
    shot(pg, "search-upload-desktop.png")

    # the viewer: metadata, next / previous
    hits.nth(0).locator("button.open").click()
    viewer = pg.locator("#viewer")
    expect(viewer).to_be_visible()
    expect(pg.locator("#viewer-name")).to_have_text(query.name)
    expect(pg.locator("#viewer-pos")).to_have_text("1 of 13")
    expect(pg.locator("#viewer-meta [data-field=size]")).to_contain_text("96 × 72 px")
    expect(pg.locator("#viewer-meta")).to_contain_text(str(query))
    expect(pg.locator("#viewer-prev")).to_be_disabled()
    poll(pg, "document.querySelector('#viewer-img').naturalWidth > 0", "the viewer's image did not load")
    shot(pg, "viewer-desktop.png", full_page=False)
    second = hits.nth(1).locator(".name").inner_text()
    pg.click("#viewer-next")
    expect(pg.locator("#viewer-pos")).to_have_text("2 of 13")
    expect(pg.locator("#viewer-name")).to_have_text(second)
    pg.keyboard.press("ArrowLeft")
    expect(pg.locator("#viewer-pos")).to_have_text("1 of 13")
    # "similar" from the viewer: a search by the stored vector of that image
    pg.click("#viewer-next")
    pg.click("#viewer-similar")
    expect(viewer).to_be_hidden()
    expect(pg.locator("#search-status")).to_contain_text(f"images like {second}")
    expect(pg.locator("#query-name")).to_have_text(f"like {second}")
    expect(hits).to_have_count(12)  # the image itself is left out
    # "similar" on a tile, with re-ranking
    pg.fill("#k", "5")
    pg.select_option("#rerank", "qe")
    third = hits.nth(2).locator(".name").inner_text()
    hits.nth(2).locator("button.like").click()
    expect(pg.locator("#search-status")).to_contain_text(f"images like {third}")
    expect(pg.locator("#search-status")).to_contain_text("re-ranked (qe)")
    expect(hits).to_have_count(5)
    wait_images(pg)

    # a words search that fails leaves nothing of the image search on screen
    pg.select_option("#rerank", "none")
    pg.fill("#q", "dog")
    expect(pg.locator("#query-chip")).to_be_hidden()
    pg.click("#search-btn")
    expect(pg.locator("#error-text")).to_contain_text("concept")
    expect(hits).to_have_count(0)
    expect(pg.locator("#search-status")).to_have_text("")
    # dropping a photo on the page searches with it and clears the error
    drop_file(pg, query)
    expect(hits).to_have_count(5)
    expect(pg.locator("#error")).to_be_hidden()
    expect(pg.locator("#query-name")).to_have_text(query.name)
    expect(pg.locator("#q")).to_have_value("")
    # pasting a photo (Ctrl+V of a copied image) searches with it too
    other = sorted((server["root"] / "photos").glob("good_*"))[1]
    paste_file(pg, other)
    expect(pg.locator("#query-name")).to_have_text(other.name)
    expect(hits).to_have_count(5)
    expect(hits.first.locator(".name")).to_contain_text(other.name)


def paste_file(pg, path: Path) -> None:
    """Paste an image as a clipboard paste of a copied picture delivers it (a file item)."""
    data = base64.b64encode(path.read_bytes()).decode()
    pg.evaluate("""([b64, name]) => {
        const bin = atob(b64);
        const file = new File([Uint8Array.from(bin, (c) => c.charCodeAt(0))], name, { type: 'image/png' });
        const dt = new DataTransfer();
        dt.items.add(file);
        const init = { clipboardData: dt, bubbles: true, cancelable: true };
        document.dispatchEvent(new ClipboardEvent('paste', init));
    }""", [data, path.name])


def test_bad_upload_clears_old_results(open_page, server, tmp_path):
    pg, guard = open_page(server["url"] + "/")
    guard.allow(r"status of 422")
    pg.set_input_files("#file", str(sorted((server["root"] / "photos").glob("good_*"))[1]))
    expect(pg.locator("#results .hit")).to_have_count(13)
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is a text file, not a photo\n")
    pg.set_input_files("#file", str(bad))
    err = pg.locator("#error")
    expect(err).to_be_visible()
    expect(err).to_contain_text("not an image")
    expect(pg.locator("#results .hit")).to_have_count(0)
    expect(pg.locator("#search-status")).to_have_text("")
    shot(pg, "error-desktop.png")
    pg.click("#error-close")
    expect(err).to_be_hidden()


def test_duplicates_review_keep_mark_export(open_page, server):
    pg, _ = open_page(server["url"] + "/#duplicates")
    pg.fill("#dup-threshold", "0.99")
    pg.click("#dup-btn")
    group = pg.locator(".dup-group").first
    expect(group).to_contain_text("identical files")
    cards = group.locator(".dup-card")
    expect(cards).to_have_count(2)
    names = sorted(cards.locator(".name").all_inner_texts())
    assert names == sorted([server["original"].name, "copy_of_photo.png"])
    expect(group.locator(".dup-card.keep")).to_have_count(1)
    expect(group.locator(".dup-card.mark")).to_have_count(1)
    expect(group).to_contain_text("suggested keeper")
    wait_images(pg, "#dup-groups")
    shot(pg, "duplicates-desktop.png")
    # the user keeps both, then marks the suggested keeper instead
    marked = group.locator(".dup-card.mark")
    marked_name = marked.locator(".name").inner_text()
    marked.locator("button.keep").click()
    expect(group.locator(".dup-card.keep")).to_have_count(2)
    keeper = group.locator(".dup-card", has_text="suggested keeper")
    keeper_name = keeper.locator(".name").inner_text()
    keeper.locator("button.mark").click()
    expect(group.locator(".dup-card.mark")).to_have_count(1)
    with pg.expect_download() as dl:
        pg.click("#dup-csv")
    rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
    decided = {Path(r["path"]).name: r["decision"] for r in rows}
    assert decided == {keeper_name: "remove", marked_name: "keep"}
    # the choices are kept: after a reload and a new run the same cards are kept / marked
    pg.reload()
    pg.fill("#dup-threshold", "0.99")
    pg.click("#dup-btn")
    group = pg.locator(".dup-group").first
    expect(group.locator(".dup-card.mark")).to_have_count(1)
    expect(group.locator(".dup-card.mark .name")).to_have_text(keeper_name)
    expect(group.locator(".dup-card.keep .name")).to_have_text(marked_name)
    with pg.expect_download() as dl:
        pg.click("#dup-json")
    data = json.loads(Path(dl.value.path()).read_text())
    assert data["threshold"] == 0.99 and len(data["images"]) == 2
    assert all(Path(r["path"]).exists() for r in data["images"])  # nothing was deleted

    # "duplicates of this" from the viewer of a search hit
    pg.goto(server["url"] + "/#search")
    pg.set_input_files("#file", str(server["original"]))
    hits = pg.locator("#results .hit")
    expect(hits).to_have_count(13)
    hits.first.locator("button.open").click()
    pg.click("#viewer-dups")
    expect(pg.locator("#tab-duplicates")).to_be_visible()
    expect(pg.locator("#dup-status")).to_contain_text("copies of")
    expect(pg.locator(".dup-group")).to_have_count(1)
    expect(pg.locator(".dup-group .dup-card")).to_have_count(2)


def test_index_a_folder_progress_and_jobs_table_agree(open_page, server):
    pg, _ = open_page(server["url"] + "/#index")
    expect(pg.locator("#roots")).to_contain_text(str(server["root"]))
    pg.fill("#folder", str(server["root"] / "more"))
    pg.click("#index-btn")
    expect(pg.locator("#job-panel")).to_be_visible()
    expect(pg.locator("#job-status")).to_have_text("succeeded", timeout=60_000)
    expect(pg.locator("#progress-text")).to_contain_text("100 %")
    assert pg.locator("#progress").evaluate("p => p.value") == 100
    expect(pg.locator("#stats")).to_contain_text("93 images")
    row = pg.locator("#jobs tbody tr").first
    expect(row).to_contain_text("succeeded")
    panel = pg.locator("#progress-text").inner_text()
    assert row.locator("td").nth(3).inner_text() in panel  # the same words in both places
    shot(pg, "index-desktop.png")
    # the job survives a page reload
    pg.reload()
    expect(pg.locator("#jobs tbody tr").first).to_contain_text("100 %")


def test_first_run_on_loopback_indexes_a_folder_in_home(open_page, tmp_path):
    """`cbir serve` as the README says, without --allow-root: the user's home may be indexed."""
    home = tmp_path / "home"
    make_good_images(home / "Pictures", 6, size=(64, 48))
    for info in _serve(tmp_path, tmp_path / "new-coll", [], {}, env={"HOME": str(home)}):
        pg, guard = open_page(info["url"] + "/")
        guard.allow(r"status of 403")  # /etc, below
        welcome = pg.locator("#welcome")
        expect(welcome).to_be_visible()
        expect(pg.locator("#search-form")).to_be_hidden()
        expect(pg.locator("#welcome-roots")).to_contain_text(str(home.resolve()))
        shot(pg, "first-run-desktop.png")
        pg.fill("#welcome-folder", str(home / "Pictures"))
        pg.click("#welcome-btn")
        expect(pg.locator("#job-status")).to_have_text("succeeded", timeout=60_000)
        expect(pg.locator("#progress-text")).to_contain_text("100 %")
        expect(welcome).to_be_hidden()
        expect(pg.locator("#search-form")).to_be_visible()
        expect(pg.locator("#stats")).to_contain_text("6 images")
        pg.set_input_files("#file", str(sorted((home / "Pictures").iterdir())[0]))
        expect(pg.locator("#results .hit")).to_have_count(6)
        wait_images(pg)
        shot(pg, "first-run-done-desktop.png")
        # outside home stays refused
        pg.goto(info["url"] + "/#index")
        pg.fill("#folder", "/etc")
        pg.click("#index-btn")
        expect(pg.locator("#error-text")).to_contain_text("outside the allowed folders")


def test_train_use_a_model_and_cancel_a_job(open_page, server):
    from cbir.service import training

    if not training.available():
        pytest.skip(f"cbir.train is not complete: {training.missing()}")
    pytest.importorskip("torch", reason="training needs torch")
    pytest.importorskip("matplotlib", reason="the curves are drawn by matplotlib")
    pg, _ = open_page(server["url"] + "/#models")
    expect(pg.locator("#train-form")).to_be_visible()
    pg.fill("#train-folder", str(server["root"] / "classes"))
    pg.fill("#train-name", "web-model")
    pg.fill("#train-epochs", "30")
    pg.fill("#train-patience", "3")
    pg.click("#train-btn")
    expect(pg.locator("#job-status")).to_have_text("succeeded", timeout=240_000)
    text = pg.locator("#progress-text").inner_text()
    m = re.match(r"100 % — done: (\d+) of (\d+) epochs", text)
    assert m and m.group(1) == m.group(2), text  # early stopping: the bar ends at the epochs run
    row = pg.locator("#models tbody tr", has_text="web-model")
    expect(row.locator("td").nth(1)).to_have_text("2")  # classes
    expect(row.locator("td").nth(3)).to_have_text(m.group(1))  # epochs run, as the panel said
    expect(row.locator("td").nth(4)).to_have_text(re.compile(r"^\d+ %$"))
    assert not re.search(r"\d{4}-\d\d-\d\dT", row.inner_text())  # no ISO timestamps
    row.locator("button", has_text="curves").click()
    poll(pg, "(i => i && i.complete && i.naturalWidth > 600)(document.querySelector('#curves img.curves'))",
         "the curves PNG did not load")
    row.locator("button", has_text="labels").click()
    expect(pg.locator("#labels .chips button").first).to_be_visible()
    expect(pg.locator("#labels .hit").first).to_be_visible()
    expect(pg.locator("#labels .chips button")).to_have_count(2)  # stripes, blocks
    wait_images(pg, "#labels")
    shot(pg, "models-desktop.png")

    # search with the model: a "similar" search re-ranked by its classes
    row.locator("button", has_text="search with it").click()
    expect(pg.locator("#tab-search")).to_be_visible()
    expect(pg.locator("#rerank")).to_have_value("model:web-model")
    pg.set_input_files("#file", str(server["original"]))
    hits = pg.locator("#results .hit")
    expect(hits.first).to_be_visible()
    expect(pg.locator("#search-status")).to_contain_text("re-ranked by model web-model")
    assert re.search(r"(stripes|blocks) \d+ %", hits.first.locator(".evidence").inner_text())
    hits.nth(1).locator("button.like").click()
    expect(pg.locator("#search-status")).to_contain_text("images like")
    expect(hits.first).to_be_visible()

    # a cancelled job never says 100 %, and the jobs table says what the panel says
    pg.goto(server["url"] + "/#models")
    pg.fill("#train-folder", str(server["root"] / "classes"))
    pg.fill("#train-name", "cancelled-model")
    pg.fill("#train-epochs", "10000")
    pg.fill("#train-patience", "10000")
    pg.click("#train-btn")
    expect(pg.locator("#job-title")).to_have_text("train model cancelled-model")
    expect(pg.locator("#progress-text")).to_contain_text(re.compile(r"of 10\D?000 epochs"), timeout=120_000)
    pg.click("#job-cancel")
    expect(pg.locator("#job-status")).to_have_text("cancelled", timeout=60_000)
    text = pg.locator("#progress-text").inner_text()
    assert "100 %" not in text and re.match(r"cancelled at \d+ of 10\D?000 epochs", text), text
    assert pg.locator("#progress").evaluate("p => p.value") < 100
    shot(pg, "cancel-desktop.png")
    pg.goto(server["url"] + "/#index")
    row = pg.locator("#jobs tbody tr").first
    expect(row).to_contain_text("cancelled")
    assert row.locator("td").nth(3).inner_text() in text


def test_search_by_words(open_page, scene_server):
    pg, guard = open_page(scene_server["url"] + "/")
    guard.allow(r"status of 400")
    pg.fill("#k", "12")
    pg.fill("#q", "red, blue")
    pg.press("#q", "Enter")
    hits = pg.locator("#results .hit")
    expect(hits).to_have_count(12)
    expect(pg.locator("#search-status")).to_contain_text("showing blue + red")
    assert "red" in hits.first.locator(".evidence").inner_text()
    wait_images(pg)
    uniform_tiles(pg)
    shot(pg, "search-words-desktop.png")
    pg.fill("#q", "red xylophone")
    pg.click("#search-btn")
    expect(pg.locator("#error-text")).to_contain_text("does not know the concept 'xylophone'")
    expect(hits).to_have_count(0)


def test_phone_every_tab_fits(open_page, server, scene_server):
    """390 px: no sideways scrolling on any tab, "choose a photo" instead of "drop"."""
    pg, _ = open_page(server["url"] + "/", phone=True)
    expect(pg.locator("#pick-text")).to_have_text("Choose a photo")
    pg.fill("#k", "8")
    assert "drop" not in (pg.locator("#q").get_attribute("placeholder") or "").lower()
    pg.set_input_files("#file", str(sorted((server["root"] / "photos").glob("good_*"))[2]))
    hits = pg.locator("#results .hit")
    expect(hits.first).to_be_visible()
    wait_images(pg)
    uniform_tiles(pg)
    no_sideways_scroll(pg)
    shot(pg, "search-phone.png")
    hits.nth(1).locator("button.open").click()
    expect(pg.locator("#viewer-pos")).to_contain_text("2 of")
    poll(pg, "document.querySelector('#viewer-img').naturalWidth > 0", "the viewer's image did not load")
    pg.click("#viewer-next")
    expect(pg.locator("#viewer-pos")).to_contain_text("3 of")
    expect(pg.locator("#viewer-meta [data-field=size]")).to_be_visible()
    no_sideways_scroll(pg)
    shot(pg, "viewer-phone.png", full_page=False)
    pg.click("#viewer-close")
    for tab, ready in (("duplicates", "#dup-btn"), ("index", "#index-btn"), ("models", "#info dt")):
        pg.goto(server["url"] + f"/#{tab}")
        expect(pg.locator(ready).first).to_be_visible()
        if tab == "duplicates":
            pg.fill("#dup-threshold", "0.99")
            pg.click("#dup-btn")
            expect(pg.locator(".dup-card").first).to_be_visible()
            wait_images(pg, "#dup-groups")
        if tab == "index":
            expect(pg.locator("#roots")).not_to_have_text("…")
        if tab == "models":
            expect(pg.locator("#models")).not_to_contain_text("loading")
        no_sideways_scroll(pg)
        shot(pg, f"{tab}-phone.png")
    words, _ = open_page(scene_server["url"] + "/", phone=True)
    words.fill("#k", "12")
    words.fill("#q", "red, blue")
    words.press("#q", "Enter")
    expect(words.locator("#results .hit")).to_have_count(12)
    wait_images(words)
    no_sideways_scroll(words)
    shot(words, "search-words-phone.png")


def _folders(hits) -> set[str]:
    """The folder names of the results on screen."""
    return {Path(p).parent.name for p in hits.locator(".name").evaluate_all("els => els.map(e => e.title)")}


def _add_filter(pg, kind: str, value: str | None = None, suggestion: str | None = None) -> None:
    pg.click("#filter-toggle")
    expect(pg.locator("#filter-panel")).to_be_visible()
    pg.select_option("#filter-kind", kind)
    if suggestion is not None:
        pg.locator(f"#filter-suggest button[data-value='{suggestion}']").click()
    else:
        pg.fill("#filter-value", value or "")
        pg.press("#filter-value", "Enter")
    expect(pg.locator("#filter-panel")).to_be_hidden()


def test_filter_values_endpoint(filter_server):
    with urllib.request.urlopen(filter_server["url"] + "/api/filter-values", timeout=10) as r:
        data = json.load(r)
    root = filter_server["root"]
    assert data["images"] == 14
    assert {c["value"]: c["count"] for c in data["cameras"]} == {"Canon EOS R6": 7, "Pixel 7": 7}
    assert {f["path"]: f["count"] for f in data["folders"]} == {
        str(root): 14, str(root / "trip"): 7, str(root / "home"): 7}
    assert data["taken"] == {"first": "2021-07-01", "last": "2023-07-06"}
    assert data["without_metadata"] == 0


def test_filter_chips_narrow_every_search(open_page, filter_server):
    """Chips for folder, camera and date: searches by photo, "similar", words and duplicates all
    send them; adding or removing one re-runs the search on screen, never leaving old results."""
    pg, guard = open_page(filter_server["url"] + "/")
    guard.allow(r"status of 400")  # the words search: this collection has no concept model
    root = filter_server["root"]
    sent: list[str] = []
    pg.on("request", lambda r: sent.append(r.url)
          if "/api/search" in r.url or "/api/duplicates" in r.url else None)
    expect(pg.locator("#stats")).to_contain_text("14 images")
    pg.fill("#k", "24")
    pg.set_input_files("#file", str(filter_server["trip"][0]))
    hits = pg.locator("#results .hit")
    expect(hits).to_have_count(14)
    assert _folders(hits) == {"trip", "home"}

    # a folder chip, from the folders the collection offers
    pg.click("#filter-toggle")
    pg.select_option("#filter-kind", "folder")
    expect(pg.locator("#filter-suggest button")).to_have_count(3)  # the root, home, trip
    expect(pg.locator("#filter-suggest")).to_contain_text("trip · 7")
    options = pg.locator("#filter-options option").evaluate_all("os => os.map(o => o.value)")
    assert sorted(options) == sorted([str(root), str(root / "home"), str(root / "trip")])
    pg.click("#filter-toggle")
    _add_filter(pg, "folder", suggestion=str(root / "trip"))
    chips = pg.locator("#filter-chips .chip.filter")
    expect(chips).to_have_count(1)
    expect(chips.first).to_have_text(re.compile(r"^trip"))
    expect(pg.locator("#search-status")).to_contain_text("filtered: trip")
    expect(hits).to_have_count(7)
    assert _folders(hits) == {"trip"}
    assert "folder=" + urllib.parse.quote(str(root / "trip"), safe="") in sent[-1]
    wait_images(pg)
    shot(pg, "filters-desktop.png")
    # removed: both folders come back
    chips.first.locator("button").click()
    expect(chips).to_have_count(0)
    expect(hits).to_have_count(14)
    assert _folders(hits) == {"trip", "home"}
    expect(pg.locator("#search-status")).not_to_contain_text("filtered")

    # a camera chip typed by hand (make or model contains), then "similar" keeps it
    pg.click("#filter-toggle")
    pg.select_option("#filter-kind", "camera")
    expect(pg.locator("#filter-suggest")).to_contain_text("Pixel 7 · 7")
    expect(pg.locator("#filter-suggest")).to_contain_text("Canon EOS R6 · 7")
    pg.click("#filter-toggle")
    _add_filter(pg, "camera", "pixel")
    expect(hits).to_have_count(7)
    assert _folders(hits) == {"home"}
    hits.nth(1).locator("button.like").click()
    expect(pg.locator("#search-status")).to_contain_text("images like")
    expect(hits).to_have_count(6)  # the image itself is left out
    assert _folders(hits) == {"home"} and "camera=pixel" in sent[-1]
    # a date chip too; then without the camera chip the date still keeps 2021 (trip) out
    _add_filter(pg, "after", "2022")
    expect(chips).to_have_count(2)
    expect(pg.locator("#search-status")).to_contain_text("taken ≥ 2022")
    pg.locator("#filter-chips .chip.filter[data-key=camera] button").click()
    expect(chips).to_have_count(1)
    expect(pg.locator("#search-status")).not_to_contain_text("camera")
    expect(hits).to_have_count(6)
    assert _folders(hits) == {"home"}
    # a bad value is refused on the page, nothing is added
    pg.click("#filter-toggle")
    pg.select_option("#filter-kind", "before")
    pg.fill("#filter-value", "last week")
    pg.click("#filter-add")
    expect(pg.locator("#error-text")).to_contain_text("taken before takes a date")
    expect(chips).to_have_count(1)
    pg.click("#filter-toggle")
    pg.click("#error-close")
    # the words search sends the filters as well
    pg.fill("#q", "sky")
    with pg.expect_request(lambda r: "/api/scenes" in r.url) as req:
        pg.click("#search-btn")
    assert "after=2022" in req.value.url
    pg.set_input_files("#file", str(filter_server["trip"][0]))
    expect(hits).to_have_count(7)
    assert _folders(hits) == {"home"}

    # the duplicates tab: the same chips, one group per folder
    pg.click("nav a[data-tab=duplicates]")
    expect(pg.locator("#tab-duplicates .filters #filter-chips .chip.filter")).to_have_count(1)
    pg.fill("#dup-threshold", "0.99")
    pg.click("#dup-btn")
    groups = pg.locator(".dup-group")
    expect(pg.locator("#dup-status")).to_contain_text("filtered: taken ≥ 2022")
    expect(groups).to_have_count(1)
    expect(groups.first).to_contain_text("home_copy.jpg")
    pg.locator("#filter-chips .chip.filter button").click()  # removing it runs it again
    expect(groups).to_have_count(2)
    expect(pg.locator("#dup-status")).not_to_contain_text("filtered")
    _add_filter(pg, "folder", suggestion=str(root / "trip"))
    expect(groups).to_have_count(1)
    expect(groups.first).to_contain_text("trip_copy.jpg")
    assert "folder=" in sent[-1] and "/api/duplicates" in sent[-1]
    wait_images(pg, "#dup-groups")
    shot(pg, "filters-duplicates-desktop.png")
    # back on the search tab, the photo search runs again under the chips changed meanwhile:
    # none of its old (home) results are left
    pg.click("nav a[data-tab=search]")
    expect(pg.locator("#tab-search .filters #filter-chips .chip.filter")).to_have_count(1)
    expect(pg.locator("#search-status")).to_contain_text("filtered: trip")
    expect(hits).to_have_count(7)
    assert _folders(hits) == {"trip"}


def test_filter_chips_phone(open_page, filter_server):
    pg, _ = open_page(filter_server["url"] + "/", phone=True)
    root = filter_server["root"]
    pg.fill("#k", "24")
    pg.set_input_files("#file", str(filter_server["home"][0]))
    hits = pg.locator("#results .hit")
    expect(hits).to_have_count(14)
    pg.click("#filter-toggle")
    pg.select_option("#filter-kind", "folder")
    expect(pg.locator("#filter-suggest button")).to_have_count(3)
    no_sideways_scroll(pg)
    shot(pg, "filters-panel-phone.png", full_page=False)
    pg.locator(f"#filter-suggest button[data-value='{root / 'home'}']").click()
    _add_filter(pg, "camera", "Pixel 7")
    expect(pg.locator("#filter-chips .chip.filter")).to_have_count(2)
    expect(hits).to_have_count(7)
    assert _folders(hits) == {"home"}
    wait_images(pg)
    no_sideways_scroll(pg)
    shot(pg, "filters-phone.png")


def test_maintenance_clear_and_rebuild(open_page, server):
    """Last of the module's flows on ``server``: it empties the collection."""
    pg, _ = open_page(server["url"] + "/#maintenance")
    expect(pg.locator("#info")).to_contain_text("colorhist")
    pg.click("#rebuild-btn")
    expect(pg.locator("#maint-status")).to_contain_text("succeeded", timeout=60_000)
    pg.on("dialog", lambda d: d.accept())
    pg.click("#clear-btn")
    expect(pg.locator("#maint-status")).to_contain_text("clear: succeeded", timeout=60_000)
    expect(pg.locator("#stats")).to_contain_text("0 images")
    expect(pg.locator("#welcome")).to_be_attached()
    shot(pg, "maintenance-desktop.png")


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_render_without_network(open_page, server, path):
    """Swagger UI and ReDoc come from the server itself: every request off it is refused."""
    pytest.importorskip("fastapi_offline", reason="the service extra's fastapi-offline serves the docs files")
    pg, guard = open_page(server["url"] + path)
    # ReDoc's sidebar shows Redocly's logo from their CDN: the page's CSP blocks it (no request is sent)
    guard.allow(r"cdn\.redoc\.ly.*Content Security Policy|Content Security Policy.*cdn\.redoc\.ly")
    if path == "/docs":
        ops = pg.locator(".swagger-ui .opblock")
        expect(ops.first).to_be_visible(timeout=20_000)
        expect(pg.locator(".swagger-ui .info .title")).to_contain_text("cbir")
        search = pg.locator("#operations-search-search_upload_api_search_post")
        expect(search).to_be_visible()
        assert ops.count() >= 15, f"only {ops.count()} operations rendered"
        # an operation opens and shows its parameters (the UI works, not only the HTML)
        search.locator(".opblock-summary").first.click()
        expect(search.locator(".opblock-body")).to_contain_text("file")
    else:
        expect(pg.locator("h1").first).to_contain_text("cbir", timeout=20_000)
        expect(pg.locator("[data-section-id^='operation/']").first).to_be_attached()
        assert pg.locator("[data-section-id^='operation/']").count() >= 15
    shot(pg, f"api{path.replace('/', '-')}.png")
