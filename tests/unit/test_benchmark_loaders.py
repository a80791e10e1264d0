"""Benchmark loaders (cbir.io.benchmarks) on tiny fixtures in the published layouts.

Corel-5K, CIFAR-10 and Wang fakes are built in tmp_path; MIRFLICKR-25K and NUS-WIDE
fixtures live in tests/data/ (see its README). Tests marked ``datasets`` read the real
tars in <repo>/../shared/datasets and skip when they are absent.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.errors import InvalidRequest
from cbir.io.benchmarks import (
    BenchmarkDataset,
    load_benchmark,
    load_cifar10,
    load_corel5k,
    load_mirflickr25k,
    load_nuswide,
    load_wang,
    with_machine_tags,
)

DATA = Path(__file__).resolve().parents[1] / "data"
DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg_bytes()


def _touch_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(JPEG)


def _check_split(ds: BenchmarkDataset) -> None:
    s = ds.split
    for part in (s.train, s.query, s.database):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
        assert part.min() >= 0 and part.max() < len(ds)
    assert np.intersect1d(s.query, s.database).size == 0
    assert len(ds.tags) == len(ds.paths) == len(ds.labels)


# --------------------------------------------------------------------------- Corel-5K


def _fake_corel(root: Path) -> Path:
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "words").write_bytes(b"city\r\nmountain\r\nsky\r\nsun\r\nwater\r\n")
    # ids 1000-1001 and 1003 are category 10; 1100-1102 and 1104 category 11
    (root / "labels" / "training_label").write_bytes(
        b"1100 3 5  \r\n1000 1 2 3 4  \r\n1001 3    \r\n1101 5 5 \r\n1102 2 3 \r\n"
    )
    (root / "labels" / "test_label").write_bytes(b"1104 1 \r\n1003 4 3 \r\n")
    for i in (1000, 1001, 1100, 1101, 1102):
        _touch_jpeg(root / "db" / "train" / f"{i}.jpeg")
    for i in (1003, 1104):
        _touch_jpeg(root / "db" / "test" / f"{i}.jpeg")
    return root


def test_corel5k_fake(tmp_path):
    ds = load_corel5k(_fake_corel(tmp_path / "c5k"))
    _check_split(ds)
    # train images by id, then test images by id
    assert [p.name for p in ds.paths] == [
        "1000.jpeg",
        "1001.jpeg",
        "1100.jpeg",
        "1101.jpeg",
        "1102.jpeg",
        "1003.jpeg",
        "1104.jpeg",
    ]
    assert ds.paths[5].parent.name == "test"
    assert ds.split.sizes() == {"train": 5, "query": 2, "database": 5}
    np.testing.assert_array_equal(ds.split.train, ds.split.database)
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 1, 0, 1])
    assert ds.label_names == ["10", "11"] and not ds.multilabel
    assert ds.tags[0] == ["city", "mountain", "sky", "sun"]
    assert ds.tags[3] == ["water"]  # repeated keyword index de-duplicated
    kw, words = ds.extra_labels["keywords"]
    assert words == ["city", "mountain", "sky", "sun", "water"]
    assert kw.dtype == np.uint8 and kw.shape == (7, 5)
    np.testing.assert_array_equal(kw[5], [0, 0, 1, 1, 0])  # 1003: sun, sky
    assert ds.info["categories"] == 2 and ds.info["words"] == 5
    # the second relevance convention
    kd = ds.relabel("keywords")
    assert kd.multilabel and kd.labels.shape == (7, 5) and kd.label_names == words
    np.testing.assert_array_equal(kd.relabel("category").labels, ds.labels)
    assert ds.labels_of("query").tolist() == [0, 1]
    assert [p.name for p in ds.paths_of("query")] == ["1003.jpeg", "1104.jpeg"]


def test_corel5k_errors(tmp_path):
    root = _fake_corel(tmp_path / "c5k")
    (root / "db" / "test" / "1104.jpeg").unlink()
    with pytest.raises(InvalidRequest, match="missing"):
        load_corel5k(root)
    assert len(load_corel5k(root, check_files=False)) == 7
    (root / "labels" / "test_label").write_bytes(b"1104 9\r\n")
    with pytest.raises(InvalidRequest, match="out of 1..5"):
        load_corel5k(root, check_files=False)


# --------------------------------------------------------------------------- CIFAR-10 / Wang


def _fake_cifar(root: Path, classes=("airplane", "cat", "truck"), n_train: int = 6, n_test: int = 4) -> Path:
    for c in classes:
        for i in range(n_train):
            _touch_jpeg(root / "train" / c / f"{i:04d}.jpg")
        for i in range(n_test):
            _touch_jpeg(root / "test" / c / f"{i:04d}.jpg")
    return root


def test_cifar10_fake_protocol(tmp_path):
    root = _fake_cifar(tmp_path / "cifar")
    ds = load_cifar10(root, queries_per_class=2, train_per_class=3, seed=7)
    _check_split(ds)
    n_tr = 18
    assert len(ds) == 30 and ds.label_names == ["airplane", "cat", "truck"]
    assert ds.split.sizes() == {"train": 9, "query": 6, "database": 24}
    assert np.all(ds.split.query >= n_tr) and np.all(ds.split.train < n_tr)  # test / train sets
    assert np.bincount(ds.labels[ds.split.query]).tolist() == [2, 2, 2]
    assert np.bincount(ds.labels[ds.split.train]).tolist() == [3, 3, 3]
    assert np.isin(ds.split.train, ds.split.database).all()  # "the other images": train included
    assert all(t == [] for t in ds.tags)
    again = load_cifar10(root, queries_per_class=2, train_per_class=3, seed=7)
    np.testing.assert_array_equal(again.split.query, ds.split.query)
    np.testing.assert_array_equal(again.split.train, ds.split.train)
    other = load_cifar10(root, queries_per_class=2, train_per_class=3, seed=8)
    assert not np.array_equal(other.split.query, ds.split.query) or not np.array_equal(
        other.split.train, ds.split.train
    )
    ex = load_cifar10(root, queries_per_class=2, train_per_class=3, seed=7, database_excludes_train=True)
    assert ex.split.sizes()["database"] == 15 and np.intersect1d(ex.split.train, ex.split.database).size == 0
    with pytest.raises(InvalidRequest, match="need 5"):
        load_cifar10(root, queries_per_class=5)


def test_with_machine_tags(tmp_path):
    ds = load_cifar10(_fake_cifar(tmp_path / "cifar"), queries_per_class=1, train_per_class=1)
    tags = [[f"tag{i}", "thing"] for i in range(len(ds))]
    t = with_machine_tags(ds, tags)
    assert t.tags[3] == ["tag3", "thing"] and t.info["tags"] == "machine" and ds.tags[3] == []
    assert t.tag_vocabulary()[0] == "thing"
    by_path = {"train/cat/0002.jpg": ["cat", "animal"]}
    with pytest.raises(InvalidRequest, match="no machine tags"):
        with_machine_tags(ds, by_path)
    m = with_machine_tags(ds, by_path, missing="empty")
    i = [p.as_posix().endswith("train/cat/0002.jpg") for p in ds.paths].index(True)
    assert m.tags[i] == ["cat", "animal"] and sum(len(x) for x in m.tags) == 2
    with pytest.raises(InvalidRequest):
        with_machine_tags(ds, tags[:-1])


def test_wang_fake(tmp_path):
    for c in ("africans", "beaches", "buses"):
        for i in range(12):
            _touch_jpeg(tmp_path / "dataset" / c / f"{i}.jpg")
    ds = load_wang(tmp_path, queries_per_class=2)
    _check_split(ds)
    assert [p.name for p in ds.paths[:12]] == [f"{i}.jpg" for i in range(12)]  # natural order
    assert ds.split.sizes() == {"train": 30, "query": 6, "database": 30}
    assert np.bincount(ds.labels[ds.split.query]).tolist() == [2, 2, 2]
    assert (
        load_benchmark("wang", tmp_path, queries_per_class=2).split.query.tolist() == ds.split.query.tolist()
    )


# --------------------------------------------------------------------------- MIRFLICKR-25K


def test_mirflickr25k_fixture():
    ds = load_mirflickr25k(DATA / "mirflickr25k", min_tag_count=2, n_query=2, n_train=2, seed=0)
    _check_split(ds)
    # im3 has no tag, im5 only a rare tag and no label: both dropped; numeric order (10 last)
    assert ds.info["image_numbers"].tolist() == [1, 2, 4, 6, 10]
    assert [p.name for p in ds.paths] == ["im1.jpg", "im2.jpg", "im4.jpg", "im6.jpg", "im10.jpg"]
    assert ds.info["images_found"] == 7 and ds.info["tag_vocabulary"] == "common_tags.txt"
    assert ds.tags == [
        ["sky", "clouds", "nikon"],
        ["dog"],
        ["sky", "sea", "nikon"],
        ["dog", "sky"],
        ["sea", "clouds"],
    ]
    assert ds.label_names == ["animals", "clouds", "dog", "sea", "sky", "sky_r1"]
    assert ds.multilabel and ds.labels.dtype == np.uint8
    np.testing.assert_array_equal(
        ds.labels,
        [[0, 1, 0, 0, 1, 1], [1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 0]],
    )
    assert ds.split.sizes() == {"train": 2, "query": 2, "database": 2}
    np.testing.assert_array_equal(ds.split.train, ds.split.database)
    rest = load_mirflickr25k(DATA / "mirflickr25k", min_tag_count=2, n_query=2, n_train=2, database="rest")
    assert rest.split.sizes() == {"train": 2, "query": 2, "database": 3}


def test_mirflickr25k_options(tmp_path):
    root = DATA / "mirflickr25k"
    pot = load_mirflickr25k(root, concepts="potential", min_tag_count=2, n_query=1, n_train=None)
    assert pot.label_names == ["animals", "clouds", "dog", "sea", "sky"] and pot.split.sizes()["train"] == 4
    rel = load_mirflickr25k(root, concepts="relevant", min_tag_count=2, n_query=1, n_train=None)
    assert rel.label_names == ["sky_r1"] and rel.info["image_numbers"].tolist() == [1, 4]
    # every raw tag kept, no filtering by tags or labels: all 7 images
    raw = load_mirflickr25k(
        root, min_tag_count=None, require_tags=False, require_labels=False, n_query=1, n_train=3
    )
    assert len(raw) == 7 and raw.tags[1] == ["dog", "cute"] and raw.tags[2] == []
    # without doc/common_tags.txt the vocabulary is counted from the tag files: same result
    copy = tmp_path / "mir"
    shutil.copytree(root, copy)
    (copy / "mirflickr" / "doc" / "common_tags.txt").unlink()
    counted = load_mirflickr25k(copy, min_tag_count=2, n_query=2, n_train=2)
    assert counted.info["tag_vocabulary"] == "min_tag_count=2"
    assert counted.tags == load_mirflickr25k(root, min_tag_count=2, n_query=2, n_train=2).tags
    # root may be the mirflickr/ folder itself
    assert len(load_mirflickr25k(copy / "mirflickr", min_tag_count=2, n_query=2, n_train=2)) == 5
    with pytest.raises(InvalidRequest, match="unknown MIRFLICKR concepts"):
        load_mirflickr25k(root, concepts=["nope"], n_query=1)
    with pytest.raises(InvalidRequest, match="need"):
        load_mirflickr25k(root, min_tag_count=2)  # the default 2,000 + 16,000 do not fit


# --------------------------------------------------------------------------- NUS-WIDE


def test_nuswide_fixture():
    ds = load_nuswide(DATA / "nuswide", top_concepts=3, n_query=2, n_train=2, seed=0)
    _check_split(ds)
    # "toy" (1 image) is the least frequent concept; image 1 has none of the others
    assert ds.label_names == ["animal", "sky", "water"]
    assert ds.info["list_index"].tolist() == [0, 2, 3, 4, 5]
    assert [p.relative_to(DATA / "nuswide").as_posix() for p in ds.paths][:2] == [
        "Flickr/actor/0001_2124494179.jpg",
        "Flickr/beach/0001_1000.jpg",
    ]
    np.testing.assert_array_equal(ds.labels, [[0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0], [1, 0, 0]])
    assert ds.tags[0] == ["actor", "cinema"] and ds.tags[4] == ["zoo"] and ds.info["tags"] == "All_Tags.txt"
    assert ds.split.sizes() == {"train": 2, "query": 2, "database": 2}
    everything = load_nuswide(
        DATA / "nuswide", top_concepts=None, require_labels=False, n_query=2, n_train=None, database="rest"
    )
    assert len(everything) == 6 and everything.label_names == ["animal", "sky", "toy", "water"]
    assert everything.split.sizes() == {"train": 4, "query": 2, "database": 4}
    named = load_nuswide(DATA / "nuswide", concepts=["toy", "sky"], n_query=1, n_train=None)
    assert named.label_names == ["sky", "toy"] and named.info["list_index"].tolist() == [0, 2, 5]
    tags81 = load_nuswide(DATA / "nuswide", top_concepts=3, tags_source="tags81", n_query=2, n_train=2)
    assert tags81.tags[1] == ["sky", "water"] and tags81.info["tags"] == "AllTags81.txt"


def test_nuswide_missing_images_and_misaligned_tags(tmp_path):
    root = tmp_path / "nus"
    shutil.copytree(DATA / "nuswide", root)
    (root / "Flickr" / "zoo" / "0002_4000.jpg").unlink()
    with pytest.raises(InvalidRequest, match="missing"):
        load_nuswide(root, top_concepts=3, n_query=2, n_train=2)
    ds = load_nuswide(root, top_concepts=3, missing="drop", n_query=2, n_train=2)
    assert len(ds) == 4 and ds.info["images_missing"] == 1
    tags = (root / "NUS_WID_Tags" / "All_Tags.txt").read_text().replace("1000 ", "1001 ")
    (root / "NUS_WID_Tags" / "All_Tags.txt").write_text(tags)
    with pytest.raises(InvalidRequest, match="not aligned"):
        load_nuswide(root, top_concepts=3, missing="drop", n_query=2, n_train=2)


# --------------------------------------------------------------------------- real datasets


def _extract(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    tar = DATASETS / f"{name}.tar"
    if not tar.is_file():
        pytest.skip(f"{tar} not found (real datasets live in <repo>/../shared/datasets)")
    dest = tmp_path_factory.mktemp(name)
    tar_cli = shutil.which("tar")
    if tar_cli:  # about 20x faster than tarfile for CIFAR-10's 60,000 members
        subprocess.run([tar_cli, "xf", str(tar), "-C", str(dest)], check=True)
    else:  # pragma: no cover - no tar binary
        with tarfile.open(tar) as t:
            t.extractall(dest, filter="data")
    return dest


@pytest.mark.datasets
def test_real_corel5k(tmp_path_factory):
    ds = load_corel5k(_extract(tmp_path_factory, "corel5k"))
    _check_split(ds)
    assert ds.split.sizes() == {"train": 4500, "query": 499, "database": 4500}
    assert ds.info["words"] == 374 and ds.extra_labels["keywords"][0].shape == (4999, 374)
    sizes = np.bincount(ds.labels)
    # 50 Corel CDs of 100 images; 4,999 are published, so one category has 99
    assert len(ds.label_names) == 50 and sorted(sizes.tolist()) == [99] + [100] * 49
    n_kw = ds.extra_labels["keywords"][0].sum(axis=1)
    assert n_kw.min() == 1 and n_kw.max() == 5 and 3.4 < n_kw.mean() < 3.6
    assert all(p.is_file() for p in ds.paths[:10])


@pytest.mark.datasets
def test_real_cifar10(tmp_path_factory):
    ds = load_cifar10(_extract(tmp_path_factory, "cifar10"))
    _check_split(ds)
    assert len(ds) == 60000 and len(ds.label_names) == 10
    assert ds.split.sizes() == {"train": 5000, "query": 1000, "database": 59000}
    assert np.bincount(ds.labels[ds.split.query]).tolist() == [100] * 10
    assert np.bincount(ds.labels[ds.split.train]).tolist() == [500] * 10
    assert all(ds.paths[i].parent.parent.name == "test" for i in ds.split.query)


@pytest.mark.datasets
def test_real_wang(tmp_path_factory):
    ds = load_wang(_extract(tmp_path_factory, "wang1k"))
    _check_split(ds)
    assert len(ds) == 1000 and len(ds.label_names) == 10
    assert ds.split.sizes() == {"train": 900, "query": 100, "database": 900}
