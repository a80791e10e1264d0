"""HEIC/HEIF (pillow-heif) and camera RAW (rawpy) through cbir.io.images, on files made here.

The HEICs are encoded by pillow-heif; the DNGs are written by hand (tests/photo_formats.py)
with an embedded JPEG or bitmap preview and a real RGGB sensor mosaic, which LibRaw reads
like a camera's DNG. Other RAW formats (CR2, NEF, ARW, ...) cannot be made without their
cameras: they share the code path (rawpy), and only their detection is tested here.
"""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest

from badfiles import make_good_images
from cbir.errors import InvalidImage
from cbir.io import formats
from cbir.io.files import IMAGE_EXTENSIONS
from cbir.io.images import image_size, load_image
from photo_formats import make_dng, make_heic

pytest.importorskip("pillow_heif")
pytest.importorskip("rawpy")

RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 14) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


def two_colours(w: int = 40, h: int = 30) -> np.ndarray:
    a = np.empty((h, w, 3), np.uint8)
    a[:, : w // 2], a[:, w // 2 :] = RED, BLUE
    return a


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch):
    """without("rawpy"): make importing that package fail, as when it is not installed."""

    def hide(module: str) -> None:
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
        if module == "pillow_heif":
            monkeypatch.setattr(formats, "_heif_ready", False)

    return hide


def test_extensions_are_walked() -> None:
    for ext in (".heic", ".heif", ".dng", ".cr2", ".nef", ".arw", ".raf", ".orf", ".rw2"):
        assert ext in IMAGE_EXTENSIONS and ext in formats.EXTENSIONS


def test_sniff_by_magic_and_name() -> None:
    heic = make_heic(two_colours())
    dng = make_dng()
    assert formats.sniff(heic) == "heif"
    assert formats.sniff(heic, "IMG_0001.JPG") == "heif"  # a HEIC named .jpg: magic wins
    assert formats.sniff(dng, "a.dng") == "raw"
    assert formats.sniff(dng) is None  # a DNG is a TIFF: only its name tells
    assert formats.sniff(b"FUJIFILMCCD-RAW 0201" + bytes(40)) == "raw"
    assert formats.sniff(b"IIRO\x08\0\0\0" + bytes(40)) == "raw"  # Olympus ORF
    assert formats.sniff(b"IIU\0\x08\0\0\0" + bytes(40)) == "raw"  # Panasonic RW2
    assert formats.sniff(b"II*\0\x10\0\0\0CR\x02\0" + bytes(40)) == "raw"  # Canon CR2
    assert formats.sniff(b"\xff\xd8\xff\xe0" + bytes(40), "x.dng") is None  # JPEG named .dng
    assert formats.sniff("/photos/x.HEIC") == "heif" and formats.sniff("/p/x.nef") == "raw"
    assert formats.sniff("/p/x.jpg") is None
    avif_like = b"\0\0\0\x1cftypavif\0\0\0\0mif1miafMA1B"
    assert formats.sniff(avif_like) is None  # AVIF: Pillow's own plugin


def test_heic_decodes_to_its_size_and_colours(tmp_path) -> None:
    data = make_heic(two_colours())
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(data)
    for src, name in ((data, "IMG_0001.HEIC"), (data, None), (path, None)):
        im = load_image(src, name=name)
        assert im.mode == "RGB" and im.size == (40, 30)
        assert close(im.getpixel((5, 15)), RED) and close(im.getpixel((34, 15)), BLUE)
        assert image_size(src, name=name) == (40, 30)


def test_heic_without_pillow_heif_says_what_to_install(without) -> None:
    data = make_heic(two_colours())
    without("pillow_heif")
    for call in (lambda: load_image(data, name="a.heic"), lambda: image_size(data, name="a.heic")):
        with pytest.raises(InvalidImage) as e:
            call()
        assert e.value.reason == formats.HEIF_HINT
        assert "pip install 'cbir[heif]'" in e.value.reason


def test_dng_uses_the_embedded_jpeg_preview() -> None:
    data = make_dng(sensor=RED, preview="jpeg", preview_colour=GREEN)
    im = load_image(data, name="DSC_0001.dng")
    assert im.mode == "RGB" and im.size == (64, 48)
    assert close(im.getpixel((40, 24)), GREEN)  # the preview's colour, not the sensor's
    assert image_size(data, name="DSC_0001.dng") == (64, 48)


def test_dng_bitmap_preview() -> None:
    im = load_image(make_dng(sensor=RED, preview="bitmap", preview_colour=GREEN), name="a.dng")
    assert im.size == (64, 48) and im.getpixel((40, 24)) == GREEN


def test_dng_too_small_preview_or_none_demosaics_the_sensor() -> None:
    for preview in ("jpeg", "bitmap", None):
        data = make_dng(sensor=RED, preview=preview, preview_size=(32, 24), preview_colour=GREEN)
        im = load_image(data, name="a.dng")
        assert im.size == (64, 48), preview  # full size: half would be under the preview floor
        r, g, b = im.getpixel((40, 24))
        assert r > 200 and r > g + 100 and r > b + 100, (preview, (r, g, b))


def test_dng_target_size_takes_a_small_preview_or_a_half_size_demosaic() -> None:
    small = make_dng(sensor=RED, preview="jpeg", preview_size=(32, 24), preview_colour=GREEN)
    im = load_image(small, name="a.dng", target_size=16)
    assert im.size == (32, 24) and close(im.getpixel((20, 12)), GREEN)  # 24 >= 16: enough
    im = load_image(make_dng(sensor=RED, preview=None), name="a.dng", target_size=16)
    assert im.size == (32, 24)  # half-size demosaic: 24 >= 16 still


@pytest.mark.parametrize("orientation,size,top_left_is_marker", [
    (1, (64, 48), True), (3, (64, 48), False), (6, (48, 64), True), (8, (48, 64), False),
])
@pytest.mark.parametrize("preview", ["jpeg", "bitmap", None])
def test_dng_orientation_preview_agrees_with_demosaic(orientation, size, top_left_is_marker,
                                                      preview) -> None:
    """The left half is blue: after rotation it must be where LibRaw's own develop puts it."""
    data = make_dng(sensor=RED, preview=preview, preview_colour=GREEN, left=BLUE,
                    orientation=orientation)
    im = load_image(data, name="a.dng")
    assert im.size == size and image_size(data, name="a.dng") == size
    assert image_size(data, name="a.dng", oriented=False) == (64, 48)
    w, h = im.size
    tl, br = im.getpixel((2, 2)), im.getpixel((w - 3, h - 3))
    marker, other = (tl, br) if top_left_is_marker else (br, tl)
    assert marker[2] > 200 and marker[2] > marker[0] + 100, (tl, br)
    assert other[2] < 100, (tl, br)


def test_dng_max_pixels_checked_before_decoding() -> None:
    with pytest.raises(InvalidImage, match="more than the limit 1000"):
        load_image(make_dng(), name="a.dng", max_pixels=1000)


def test_corrupt_and_truncated_raw_are_invalid_images() -> None:
    dng = make_dng()
    cases = {
        "garbage": b"II*\0" + bytes(range(256)) * 4,
        "truncated": dng[: len(dng) // 3],
        "raf_header_only": b"FUJIFILMCCD-RAW 0201FF383501" + bytes(64),
    }
    for case, data in cases.items():
        with pytest.raises(InvalidImage) as e:
            load_image(data, name=f"{case}.dng")
        assert "RAW" in e.value.reason and e.value.path == f"{case}.dng", case
        with pytest.raises(InvalidImage):
            image_size(data, name=f"{case}.dng")
    # a readable header whose sensor data lies past the end of the file
    lost = bytearray(make_dng(preview=None))
    at = lost.find(struct.pack("<HHI", 273, 4, 1))  # StripOffsets, one LONG
    struct.pack_into("<I", lost, at + 8, len(lost) - 100)
    assert image_size(bytes(lost), name="a.dng") == (64, 48)
    with pytest.raises(InvalidImage, match="corrupt camera RAW data"):
        load_image(bytes(lost), name="a.dng")


def test_raw_without_rawpy_says_what_to_install(without) -> None:
    data = make_dng()
    without("rawpy")
    for call in (lambda: load_image(data, name="a.NEF"), lambda: image_size(data, name="a.NEF")):
        with pytest.raises(InvalidImage) as e:
            call()
        assert e.value.reason == formats.RAW_HINT and "pip install 'cbir[raw]'" in e.value.reason


def _index(tmp_path, capsys) -> dict:
    from cbir.cli import main

    code = main(["-c", str(tmp_path / "coll"), "index", str(tmp_path / "photos"),
                 "--extractor", "colorhist", "--json", "-q"])
    report = json.loads(capsys.readouterr().out)
    report["code"] = code
    return report


def _photos(tmp_path) -> dict[str, str]:
    photos = tmp_path / "photos"
    make_good_images(photos, 2)
    (photos / "IMG_0001.HEIC").write_bytes(make_heic(two_colours()))
    (photos / "DSC_0001.dng").write_bytes(make_dng())
    (photos / "DSC_0002.nef").write_bytes(b"II*\0" + bytes(range(256)) * 4)  # broken
    return {p.name: str(p) for p in photos.iterdir()}


def test_index_reads_heic_and_raw_and_reports_a_broken_raw(tmp_path, capsys) -> None:
    paths = _photos(tmp_path)
    report = _index(tmp_path, capsys)
    assert report["added"] == 4, report
    skipped = {f["path"]: f["reason"] for f in report["skipped_files"]}
    assert list(skipped) == [paths["DSC_0002.nef"]] and "RAW" in skipped[paths["DSC_0002.nef"]]


def test_index_lists_heic_and_raw_as_skipped_with_the_install_hint(tmp_path, capsys,
                                                                    without) -> None:
    paths = _photos(tmp_path)
    without("pillow_heif")
    without("rawpy")
    report = _index(tmp_path, capsys)
    assert report["added"] == 2 and report["code"] != 0
    skipped = {f["path"]: f["reason"] for f in report["skipped_files"]}
    assert skipped == {paths["IMG_0001.HEIC"]: formats.HEIF_HINT,
                       paths["DSC_0001.dng"]: formats.RAW_HINT,
                       paths["DSC_0002.nef"]: formats.RAW_HINT}
