"""Tests of cbir.io.tags.read_tags: sidecars, embedded IPTC and XMP keywords."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from PIL import Image

from badfiles import png_with_xmp
from cbir.io.images import load_image
from cbir.io.tags import read_tags

XMP = """<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF
  xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
 <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
  <dc:title><rdf:Alt><rdf:li xml:lang="x-default">not a tag</rdf:li></rdf:Alt></dc:title>
  <dc:subject>
   <rdf:Bag>
    <rdf:li>beach</rdf:li>
    <rdf:li> sunset &amp; sea </rdf:li>
    <rdf:li>beach</rdf:li>
    <rdf:li>caf\u00e9</rdf:li>
   </rdf:Bag>
  </dc:subject>
 </rdf:Description>
</rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>"""
XMP_TAGS = ["beach", "sunset & sea", "caf\u00e9"]


def jpeg(path: Path, **save: object) -> Path:
    Image.new("RGB", (16, 16), (10, 200, 30)).save(path, "JPEG", **save)
    return path


def iptc_jpeg(path: Path, keywords: list[str]) -> Path:
    """A JPEG with an APP13 Photoshop IRB holding IPTC-IIM keywords (UTF-8 declared)."""
    iim = b"\x1c\x01\x5a\x00\x03\x1b%G"  # 1:90 coded character set = UTF-8
    for k in keywords:
        kb = k.encode("utf-8")
        iim += b"\x1c\x02\x19" + len(kb).to_bytes(2, "big") + kb
    block = b"8BIM" + (0x0404).to_bytes(2, "big") + b"\x00\x00" + len(iim).to_bytes(4, "big")
    block += iim + (b"\x00" if len(iim) % 2 else b"")
    payload = b"Photoshop 3.0\x00" + block
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, "JPEG")
    data = buf.getvalue()
    path.write_bytes(data[:2] + b"\xff\xed" + (len(payload) + 2).to_bytes(2, "big") + payload
                     + data[2:])
    return path


@pytest.mark.parametrize(
    ("sidecar", "content"),
    [
        ("photo.jpg.txt", "dog, beach\n  sunset ,dog\n\n"),
        ("photo.txt", "dog\r\nbeach,sunset"),
        ("photo.jpg.json", '["dog", "beach", " sunset", "dog", 3]'),
        ("photo.json", '{"tags": ["dog", "beach", "sunset"]}'),
        ("photo.json", '{"keywords": "dog, beach, sunset"}'),
        ("photo.json", '\ufeff{"keywords": ["dog", "beach", "sunset"], "other": 1}'),
    ],
)
def test_sidecar_forms(tmp_path: Path, sidecar: str, content: str) -> None:
    img = jpeg(tmp_path / "photo.jpg", xmp=XMP.encode())
    (tmp_path / sidecar).write_text(content, encoding="utf-8")
    assert read_tags(img) == ["dog", "beach", "sunset"]  # sidecar wins over embedded XMP


def test_sidecar_priority(tmp_path: Path) -> None:
    img = jpeg(tmp_path / "photo.jpg")
    (tmp_path / "photo.json").write_text('["json"]', encoding="utf-8")
    assert read_tags(img) == ["json"]
    (tmp_path / "photo.txt").write_text("txt", encoding="utf-8")
    assert read_tags(img) == ["txt"]
    (tmp_path / "photo.jpg.txt").write_text("", encoding="utf-8")
    assert read_tags(img) == []  # an empty sidecar means "no tags", on purpose


@pytest.mark.parametrize(
    "content",
    ['{"tags": [', '{"tags": 5}', '{"title": "x"}', "42", "__import__('os')", b"\xff\xfe\x00"],
)
def test_malformed_json_sidecar_is_ignored_with_warning(
    tmp_path: Path, content: str | bytes, caplog: pytest.LogCaptureFixture
) -> None:
    img = jpeg(tmp_path / "photo.jpg", xmp=XMP.encode())
    side = tmp_path / "photo.json"
    if isinstance(content, bytes):
        side.write_bytes(content)
    else:
        side.write_text(content, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="cbir.io.tags"):
        tags = read_tags(img)
    assert tags == XMP_TAGS  # falls back to the embedded keywords
    assert "ignoring tag sidecar" in caplog.text


def test_no_tags_anywhere(tmp_path: Path) -> None:
    assert read_tags(jpeg(tmp_path / "plain.jpg")) == []
    (tmp_path / "notimage.jpg").write_text("hello", encoding="utf-8")
    assert read_tags(tmp_path / "notimage.jpg") == []
    assert read_tags(tmp_path / "missing.jpg") == []


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF", "PNG"])
def test_xmp_subject(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"x.{fmt.lower()}"
    im = Image.new("RGB", (16, 16), (1, 2, 3))
    if fmt == "PNG":
        png_with_xmp(path, XMP)
    elif fmt == "TIFF":
        im.save(path, tiffinfo={700: XMP.encode()})
    else:
        im.save(path, fmt, xmp=XMP.encode())
    assert read_tags(path) == XMP_TAGS


def test_iptc_keywords(tmp_path: Path) -> None:
    path = iptc_jpeg(tmp_path / "iptc.jpg", ["mountain", " snow ", "mountain", "\u00e9t\u00e9"])
    assert read_tags(path) == ["mountain", "snow", "\u00e9t\u00e9"]
    single = iptc_jpeg(tmp_path / "one.jpg", ["solo"])
    assert read_tags(single) == ["solo"]


def test_tags_from_opened_and_decoded_images(tmp_path: Path) -> None:
    path = iptc_jpeg(tmp_path / "iptc.jpg", ["mountain"])
    with Image.open(path) as im:
        assert read_tags(path, im) == ["mountain"]
    # load_image's RGB result keeps the metadata blocks in .info
    assert read_tags(path, load_image(path)) == ["mountain"]
    xmp = jpeg(tmp_path / "xmp.jpg", xmp=XMP.encode())
    assert read_tags(xmp, load_image(xmp)) == XMP_TAGS
