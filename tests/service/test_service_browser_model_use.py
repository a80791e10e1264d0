"""In a real headless Chromium: a trained model used for partitioned search from the page, and
the "not geotagged" filter chip, at 1280 px and 390 px.

The same real ``cbir serve``, network guard (no request off the server) and console guard (no
console error) as test_service_browser.py, whose helpers this reuses; screenshots go to
tests/service/artifacts/. The expected hits are computed with ``cbir.train.apply`` directly.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_service_browser as tsb
from test_service_browser import expect, no_sideways_scroll, shot, wait_images
from test_service_model_use import make_gps_photos

from badfiles import make_good_images
from conftest import build_collection, make_other_images

# the browser and guarded pages of test_service_browser.py (fixtures, shared by name)
browser = tsb.browser
open_page = tsb.open_page
pytestmark = tsb.pytestmark


@pytest.fixture(scope="module")
def use_server(tmp_path_factory) -> Iterator[dict]:
    """stripes (photos/), blocks (more/), 3 geotagged and 3 plain JPEGs; model m1 (blocks vs
    stripes) trained into the collection's registry before the server starts."""
    pytest.importorskip("torch", reason="training a head needs torch")
    from cbir.service import training

    if not training.available():
        pytest.skip(f"cbir.train is not complete: {training.missing()}")
    tmp = tmp_path_factory.mktemp("browser-use")
    root = tmp / "allowed"
    make_good_images(root / "photos" / "photos", 12, size=(96, 72))
    make_other_images(root / "photos" / "more", 6)
    geo = make_gps_photos(root / "photos" / "geo", 3, seed=3, gps=True)
    plain = make_gps_photos(root / "photos" / "plain", 3, seed=4, gps=False)
    make_good_images(root / "classes" / "stripes", 8, size=(48, 48))
    make_other_images(root / "classes" / "blocks", 8)
    coll = tmp / "coll"
    build_collection(coll, root / "photos")
    training.train(coll, root / "classes", name="m1", extractor="colorhist",
                   options={"epochs": 30, "min_per_class": 2, "hidden": 16, "seed": 1}, trained_by="test",
                   cache_dir=tmp / "train-cache", stop=threading.Event(), on_progress=lambda *a: None)
    yield from tsb._serve(tmp, coll, ["--allow-root", str(root)],
                          {"root": root, "geo": geo, "plain": plain})


def _settle(url: str) -> None:
    """Wait until the server has no job writing the index (the rebuild of a change of model)."""
    t_end = time.monotonic() + 60
    while True:
        with urllib.request.urlopen(url + "/api/collection", timeout=10) as r:
            if json.load(r)["index_job"] is None:
                return
        assert time.monotonic() < t_end, "the rebuild job did not finish"
        time.sleep(0.1)


@pytest.fixture
def server(use_server) -> dict:
    """The module's server with no model in use and no job running (each test starts from there)."""
    _settle(use_server["url"])
    req = urllib.request.Request(use_server["url"] + "/api/partition-model", method="PUT",
                                 data=json.dumps({"model": None}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert json.load(r)["model"] is None
    _settle(use_server["url"])
    return use_server


#: a rebuild job's child process starts, waits for the writer lock, rebuilds: seconds under load
JOB_MS = 60_000


def _add_flag_filter(pg, kind: str) -> None:
    """Add a filter without a value (geotagged, not geotagged) from the filter panel."""
    pg.click("#filter-toggle")
    pg.select_option("#filter-kind", kind)
    expect(pg.locator("#filter-value-label")).to_be_hidden()
    pg.click("#filter-add")
    expect(pg.locator("#filter-panel")).to_be_hidden()


def _names(hits) -> list[str]:
    return hits.locator(".name").all_inner_texts()


def _expected(coll: Path, image_id: int, k: int, n_partitions: int) -> list[str]:
    """Names of the hits of cbir.train.apply's own partitioned search like ``image_id``
    (`cbir models search m1 --like ... --partitioned --nprobe N`)."""
    from cbir.collection import Collection
    from cbir.extract.base import l2_normalize
    from cbir.search import Query
    from cbir.service import training
    from cbir.train.apply import search_with_model

    model = training.registry(coll).load("m1")
    with Collection.open(coll) as col:
        rec = col.catalog.get(id=image_id, with_feature=True)
        query = Query(vector=l2_normalize(rec.feature[None, :])[0], exclude={image_id})
        ranked = search_with_model(col, model, query, k=k, partitioned=True, n_partitions=n_partitions)
    return [Path(r.hit.path).name for r in ranked]


def test_use_a_model_for_partitioned_search(open_page, server):
    from cbir.store import WriterLock

    pg, guard = open_page(server["url"] + "/#models")
    guard.allow(r"status of 409")  # "Stop using" while the rebuild job is about to write, below
    row = pg.locator("#models tbody tr[data-model=m1]")
    expect(row).to_be_visible()
    expect(row.locator(".badge.in-use")).to_have_count(0)
    expect(pg.locator("#info")).to_contain_text("none (no model in use)")
    # the model search before: "partitioned" is offered but off, and the page says why
    row.locator("button", has_text="search with it").click()
    expect(pg.locator("#tab-search")).to_be_visible()
    expect(pg.locator("#partitioned")).to_be_disabled()
    expect(pg.locator("#partition-note")).to_contain_text("no model partitions the collection's index yet")

    pg.goto(server["url"] + "/#models")
    expect(pg.locator("#stats")).to_contain_text("index exact")
    with pg.expect_response(lambda r: r.url.endswith("/api/partition-model") and r.request.method == "PUT") \
            as put:
        row.locator("button.use").click()
    job = put.value.json()["job"]
    lock = WriterLock(server["coll"])
    assert lock.acquire()  # the rebuild job (a process still starting) waits: its state shows meanwhile
    try:
        expect(pg.locator("#job-title")).to_have_text("rebuild for model m1")
        expect(pg.locator("#job-status")).to_have_text(re.compile("^(queued|running)$"))
        cell = pg.locator(f"#jobs tr[data-id='{job['id']}'] td[data-label=Folder]")
        expect(cell).to_have_text("for model m1")  # the jobs table says it as the panel does
        # the saved index is gone until the job saves it: the page says it is being rebuilt
        expect(pg.locator("#stats")).to_contain_text("index being rebuilt")
        expect(pg.locator("#stats")).not_to_contain_text("not built")
        expect(pg.locator("#info")).to_contain_text("being rebuilt by a rebuild job")
        expect(row.locator(".badge.in-use")).to_have_text("in use")
        expect(row.locator("button.use")).to_have_text("Stop using")
        expect(pg.locator("#info")).to_contain_text("model m1")
        expect(pg.locator("#maint-status")).to_contain_text("model m1 now partitions the index")
        expect(pg.locator("#maint-status")).to_contain_text(f"rebuild job {job['id']}")
        # another change while the job is about to write: refused, said, nothing changed
        row.locator("button.use").click()
        expect(pg.locator("#error-text")).to_contain_text(f"rebuild job {job['id']}")
        expect(row.locator(".badge.in-use")).to_have_text("in use")
        shot(pg, "model-use-rebuilding-desktop.png")
    finally:
        lock.release()
    expect(pg.locator("#job-status")).to_have_text("succeeded", timeout=JOB_MS)
    expect(pg.locator("#progress-text")).to_contain_text("100 %")
    expect(pg.locator("#stats")).to_contain_text("index exact")
    expect(pg.locator("#info")).to_contain_text("exact (up to date)")
    expect(pg.locator("#maint-status")).to_contain_text(
        "model m1 now partitions the index; index rebuild: succeeded — rebuilt the exact index of 24 images")
    pg.click("#error-close")  # the refusal above, read
    expect(pg.locator("#error")).to_be_hidden()
    shot(pg, "model-use-desktop.png")

    # a partitioned model search (which hits it finds through m1's classes: test_service_model_use.py)
    row.locator("button", has_text="search with it").click()
    expect(pg.locator("#tab-search")).to_be_visible()
    expect(pg.locator("#partitioned")).to_be_enabled()
    expect(pg.locator("#partition-note")).to_be_hidden()
    expect(pg.locator("#nprobe")).to_be_hidden()
    pg.check("#partitioned")
    expect(pg.locator("#nprobe")).to_be_visible()
    pg.fill("#k", "3")
    query = sorted((server["root"] / "photos" / "more").iterdir())[2]
    with pg.expect_response(lambda r: "/api/models/m1/search" in r.url) as resp:
        pg.set_input_files("#file", str(query))
    assert resp.value.ok and resp.value.json()["partitioned"] is True
    hits = pg.locator("#results .hit")
    expect(hits).to_have_count(3)
    status = pg.locator("#search-status")
    expect(status).to_contain_text("re-ranked by model m1, partitioned by its classes (1 scanned)")
    first_id = int(hits.first.get_attribute("data-id"))
    want = _expected(server["coll"], first_id, 3, 1)
    assert _names(hits)[0] == query.name  # the photo itself, stored in the collection
    # "similar": the same search by the stored image, as cbir.train.apply computes it
    with pg.expect_request(lambda r: "/api/models/m1/search?" in r.url) as req:
        hits.first.locator("button.like").click()
    assert "partitioned=true" in req.value.url and "n_partitions=1" in req.value.url
    expect(status).to_contain_text(f"images like {query.name}")
    expect(hits).to_have_count(len(want))
    assert _names(hits) == want
    wait_images(pg)
    shot(pg, "model-use-search-desktop.png")

    # stop using it: the badge goes, and the partitioned results on screen do not stay
    pg.click("nav a[data-tab=models]")
    row.locator("button.use").click()
    expect(row.locator(".badge.in-use")).to_have_count(0)
    expect(row.locator("button.use")).to_have_text("Use for partitioned search")
    expect(pg.locator("#info")).to_contain_text("none (no model in use)")
    expect(pg.locator("#job-title")).to_have_text("rebuild for the extractor's classes")
    expect(pg.locator("#job-status")).to_have_text("succeeded", timeout=JOB_MS)
    expect(pg.locator("#info")).to_contain_text("exact (up to date)")
    pg.click("nav a[data-tab=search]")
    expect(status).to_contain_text("re-ranked by model m1")
    expect(status).not_to_contain_text("partitioned")
    expect(pg.locator("#partitioned")).to_be_disabled()
    expect(pg.locator("#partitioned")).not_to_be_checked()
    expect(pg.locator("#partition-note")).to_contain_text("Use for partitioned search")
    expect(hits).to_have_count(3)
    wait_images(pg)
    shot(pg, "model-use-stopped-desktop.png")


def test_use_a_model_phone(open_page, server):
    pg, _ = open_page(server["url"] + "/#models", phone=True)
    row = pg.locator("#models tbody tr[data-model=m1]")
    row.locator("button.use").click()
    expect(row.locator(".badge.in-use")).to_be_visible()
    expect(pg.locator("#job-title")).to_have_text("rebuild for model m1")
    expect(pg.locator("#job-status")).to_have_text("succeeded", timeout=JOB_MS)
    expect(pg.locator("#stats")).to_contain_text("index exact")
    no_sideways_scroll(pg)
    shot(pg, "model-use-phone.png")
    pg.goto(server["url"] + "/#search")
    pg.select_option("#rerank", "model:m1")
    pg.check("#partitioned")
    pg.fill("#nprobe", "2")
    pg.fill("#k", "4")
    pg.set_input_files("#file", str(sorted((server["root"] / "photos" / "photos").iterdir())[0]))
    hits = pg.locator("#results .hit")
    expect(hits).to_have_count(4)
    expect(pg.locator("#search-status")).to_contain_text("partitioned by its classes (2 scanned)")
    wait_images(pg)
    no_sideways_scroll(pg)
    shot(pg, "model-use-search-phone.png")
    pg.goto(server["url"] + "/#models")
    row.locator("button.use").click()
    expect(row.locator("button.use")).to_have_text("Use for partitioned search")
    expect(pg.locator("#job-status")).to_have_text("succeeded", timeout=JOB_MS)


def test_not_geotagged_chip(open_page, server):
    pg, _ = open_page(server["url"] + "/")
    geo = {p.name for p in server["geo"]}
    sent: list[str] = []
    pg.on("request", lambda r: sent.append(r.url) if "/api/search" in r.url else None)
    pg.fill("#k", "40")
    pg.set_input_files("#file", str(server["plain"][0]))
    hits = pg.locator("#results .hit")
    expect(hits).to_have_count(24)
    assert geo <= set(_names(hits))
    _add_flag_filter(pg, "not_geotagged")
    chip = pg.locator("#filter-chips .chip.filter")
    expect(chip).to_have_count(1)
    expect(chip.first).to_have_text(re.compile(r"^not geotagged"))
    expect(pg.locator("#search-status")).to_contain_text("filtered: not geotagged")
    expect(hits).to_have_count(21)
    assert not geo & set(_names(hits)) and "geotagged=false" in sent[-1]
    wait_images(pg)
    shot(pg, "filter-not-geotagged-desktop.png")
    # "geotagged" replaces it (one GPS filter at a time)
    _add_flag_filter(pg, "geotagged")
    expect(chip).to_have_count(1)
    expect(chip.first).to_have_text(re.compile(r"^geotagged"))
    expect(hits).to_have_count(3)
    assert set(_names(hits)) == geo and "geotagged=true" in sent[-1]



def test_typed_filter_value_survives_the_late_filter_values(open_page, server):
    """The collection's filter values arrive after the user typed a value: it stays (it was
    cleared, so Enter added nothing and the panel stayed open, now and then under load)."""
    pg, _ = open_page(server["url"] + "/")
    held = []
    pg.route("**/api/filter-values*", lambda route: held.append(route))  # answered once typed
    expect(pg.locator("#stats")).to_contain_text("24 images")  # the page knows the collection
    with pg.expect_request(lambda r: "/api/filter-values" in r.url):
        pg.click("#filter-toggle")
    pg.select_option("#filter-kind", "camera")
    pg.fill("#filter-value", "canon")
    t_end = time.monotonic() + 10
    while not held:  # the route handler runs when Playwright next dispatches events
        assert time.monotonic() < t_end, "the filter values request was not held"
        pg.wait_for_timeout(20)
    expect(pg.locator("#filter-suggest button")).to_have_count(0)  # nothing has arrived yet
    for route in held:
        route.continue_()
    expect(pg.locator("#filter-suggest button")).to_have_count(1)  # the values have arrived
    expect(pg.locator("#filter-value")).to_have_value("canon")
    pg.press("#filter-value", "Enter")
    expect(pg.locator("#filter-panel")).to_be_hidden()
    expect(pg.locator("#filter-chips .chip.filter")).to_have_text(re.compile(r"^camera canon"))
