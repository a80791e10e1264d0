"""Photo metadata for filters (cbir.io.metadata): EXIF read from the header, safely."""

from __future__ import annotations

import os

import pytest

from cbir.errors import InvalidImage
from cbir.io.metadata import PhotoMeta, meta_from_bytes, parse_exif_date, read_meta
from photo_meta import exif_photo


def test_parse_exif_date():
    assert parse_exif_date("2021:07:04 18:30:12") == "2021-07-04T18:30:12"
    assert parse_exif_date(b"2021:07:04 18:30:12\x00") == "2021-07-04T18:30:12"
    assert parse_exif_date("2021-07-04") == "2021-07-04T00:00:00"
    for bad in ("0000:00:00 00:00:00", "", None, "yesterday", "2021:13:01 00:00:00", 12):
        assert parse_exif_date(bad) is None


def test_meta_from_a_jpegs_exif(tmp_path):
    p = exif_photo(tmp_path / "a.jpg", seed=1, date="2019:05:01 10:11:12", make="Canon",
                   model="Canon EOS 5D Mark IV", gps=True)
    m = meta_from_bytes(p.read_bytes())
    assert m == PhotoMeta(taken_at="2019-05-01T10:11:12", make="Canon", model="Canon EOS 5D Mark IV",
                          gps=True)
    assert read_meta(p, max_bytes=10**7) == m
    # only the header is needed: the first 4 KB hold the EXIF block
    assert meta_from_bytes(p.read_bytes()[:4096]).taken_at == "2019-05-01T10:11:12"
    plain = exif_photo(tmp_path / "b.jpg", seed=2)
    assert meta_from_bytes(plain.read_bytes()) == PhotoMeta()
    assert meta_from_bytes(b"not an image at all") == PhotoMeta()  # never raises


def test_read_meta_refuses_links_and_fifos(tmp_path):
    p = exif_photo(tmp_path / "a.jpg", seed=1, make="Nikon")
    link = tmp_path / "link.jpg"
    link.symlink_to(p)
    with pytest.raises(InvalidImage):
        read_meta(link, max_bytes=10**7)
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InvalidImage):
        read_meta(fifo, max_bytes=10**7)  # refused at once, never blocks
