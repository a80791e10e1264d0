"""User tags of an image: from a sidecar file, else from embedded IPTC / XMP keywords.

Sidecars, looked up next to the image in this order (the first well-formed one wins, even if
it holds no tags):

* ``photo.jpg.txt`` / ``photo.txt``: tags separated by commas and/or newlines;
* ``photo.jpg.json`` / ``photo.json``: a JSON list of strings, or an object with a ``"tags"``
  or ``"keywords"`` list (or comma-separated string).

A malformed, unreadable or oversized sidecar is logged as a warning and ignored. Without a
sidecar the embedded keywords are used: IPTC Keywords (record 2:25) then XMP ``dc:subject``.
XMP is scanned with a small regex (no XML parser, so no entity expansion, no defusedxml).
Nothing here raises for bad data; JSON is parsed with :mod:`json` only.
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
import re
import threading
from collections.abc import Container, Iterable
from pathlib import Path

from PIL import Image, IptcImagePlugin

from cbir.errors import InvalidImage
from cbir.io.saferead import read_file

MAX_FILE_BYTES = 512 * 1024 * 1024
log = logging.getLogger(__name__)

MAX_SIDECAR_BYTES = 1024 * 1024
MAX_TAG_CHARS = 200

_SPLIT_RE = re.compile(r"[,\r\n]+")
_SUBJECT_RE = re.compile(rb"<dc:subject\b[^>]*>(.*?)</dc:subject\s*>", re.DOTALL)
_LI_RE = re.compile(rb"<rdf:li\b[^>]*>(.*?)</rdf:li\s*>", re.DOTALL)
_IPTC_KEYWORDS = (2, 25)
_IPTC_CODED_CHARSET = (1, 90)
_PS_IPTC_RESOURCE = 0x0404


def read_tags(image_path: Path, image: Image.Image | None = None, data: bytes | None = None,
              siblings: Container[str] | None = None) -> list[str]:
    """Return the image's tags: stripped, de-duplicated, in their original order.

    image: an already opened image of ``image_path`` to read embedded keywords from (an
    image returned by cbir.io.images.load_image works too); data: the file's bytes, already
    read; else the file header is read (safely: a link, FIFO or device is not opened).
    Sidecars are read the same safe way, never through a symbolic link. siblings: the names
    in the image's folder (see :class:`SidecarNames`), to look for sidecars without four
    ``lstat`` calls per image.
    """
    image_path = Path(image_path)
    for sidecar in _sidecars(image_path):
        if siblings is not None and sidecar.name not in siblings:
            continue
        tags = _read_sidecar(sidecar)
        if tags is not None:
            return tags
    if image is not None:
        return _embedded(image)
    try:
        if data is None:
            data = read_file(image_path, max_bytes=MAX_FILE_BYTES)
        with Image.open(io.BytesIO(data)) as im:
            return _embedded(im)
    except Exception as e:  # noqa: BLE001 - unreadable images simply have no tags here
        log.debug("no embedded tags for %s: %s", image_path, e)
        return []


class SidecarNames:
    """Per folder, the names that could be tag sidecars (``*.txt``, ``*.json``), listed once.

    The indexer asks for each image's folder; one ``scandir`` per folder replaces four
    ``lstat`` calls per image. Thread-safe; a folder that cannot be listed gives None (then
    read_tags looks for each sidecar itself).
    """

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str] | None] = {}
        self._lock = threading.Lock()

    def __call__(self, folder: Path) -> frozenset[str] | None:
        key = os.fspath(folder)
        with self._lock:
            if key in self._names:
                return self._names[key]
        try:
            with os.scandir(key) as it:
                names = frozenset(e.name for e in it
                                  if e.name[-4:].lower() == ".txt" or e.name[-5:].lower() == ".json")
        except OSError:
            names = None
        with self._lock:
            self._names[key] = names
        return names


def parse_tag_text(text: str) -> list[str]:
    """Split sidecar text on commas and newlines into clean, unique tags."""
    return _clean(_SPLIT_RE.split(text))


def _sidecars(image_path: Path) -> list[Path]:
    stem = image_path.with_suffix("") if image_path.suffix else image_path
    names = [
        image_path.with_name(image_path.name + ".txt"),
        stem.with_name(stem.name + ".txt"),
        image_path.with_name(image_path.name + ".json"),
        stem.with_name(stem.name + ".json"),
    ]
    return list(dict.fromkeys(p for p in names if p != image_path))


def _read_sidecar(path: Path) -> list[str] | None:
    """Tags from one sidecar; None when it is absent or unusable (then warn)."""
    if not os.path.lexists(path):
        return None
    try:  # never through a link: a sidecar linked to /etc/passwd must not become "tags"
        raw = read_file(path, max_bytes=MAX_SIDECAR_BYTES)
    except InvalidImage as e:
        if e.reason != "file not found":
            log.warning("ignoring tag sidecar %s: %s", path, e.reason)
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        log.warning("ignoring tag sidecar %s: not valid UTF-8 text", path)
        return None
    if path.suffix.lower() == ".txt":
        return parse_tag_text(text)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        log.warning("ignoring tag sidecar %s: invalid JSON (%s)", path, e)
        return None
    if isinstance(data, dict):
        for key in ("tags", "keywords"):
            if key in data:
                data = data[key]
                break
        else:
            log.warning("ignoring tag sidecar %s: no \"tags\" or \"keywords\" key", path)
            return None
    if isinstance(data, str):
        return parse_tag_text(data)
    if not isinstance(data, list):
        log.warning("ignoring tag sidecar %s: expected a list of strings", path)
        return None
    return _clean(t for t in data if isinstance(t, str))


def _clean(tags: Iterable[str]) -> list[str]:
    out: dict[str, None] = {}
    for tag in tags:
        t = " ".join(tag.split())  # strip and collapse inner whitespace
        if t and len(t) <= MAX_TAG_CHARS:
            out.setdefault(t, None)
    return list(out)


def _embedded(im: Image.Image) -> list[str]:
    """IPTC keywords then XMP dc:subject of an opened image; [] on any problem."""
    tags: list[str] = []
    try:
        tags += _iptc_keywords(im)
    except Exception as e:  # noqa: BLE001 - malformed metadata is not an error
        log.debug("unreadable IPTC: %s", e)
    try:
        tags += _xmp_subjects(im)
    except Exception as e:  # noqa: BLE001
        log.debug("unreadable XMP: %s", e)
    return _clean(tags)


def _iptc_keywords(im: Image.Image) -> list[str]:
    info = IptcImagePlugin.getiptcinfo(im)  # type: ignore[arg-type]
    if info is None:  # e.g. a converted image that kept the Photoshop resources in .info
        photoshop = im.info.get("photoshop")
        data = photoshop.get(_PS_IPTC_RESOURCE) if isinstance(photoshop, dict) else None
        info = _parse_iim(data) if isinstance(data, bytes) else None
    if not info:
        return []
    values = info.get(_IPTC_KEYWORDS)
    if values is None:
        return []
    if isinstance(values, bytes):
        values = [values]
    utf8 = info.get(_IPTC_CODED_CHARSET) == b"\x1b%G"
    return [_decode(v, utf8) for v in values]


def _parse_iim(data: bytes) -> dict[tuple[int, int], bytes | list[bytes]]:
    """Parse raw IPTC-IIM datasets (0x1C, record, dataset, 2-byte length, value)."""
    out: dict[tuple[int, int], bytes | list[bytes]] = {}
    i = 0
    while i + 5 <= len(data) and data[i] == 0x1C:
        key = (data[i + 1], data[i + 2])
        size = int.from_bytes(data[i + 3:i + 5], "big")
        if size & 0x8000:  # extended length: not used for keywords
            break
        value = data[i + 5:i + 5 + size]
        i += 5 + size
        old = out.get(key)
        if old is None:
            out[key] = value
        elif isinstance(old, list):
            old.append(value)
        else:
            out[key] = [old, value]
    return out


def _decode(value: bytes, utf8: bool) -> str:
    if utf8:
        return value.decode("utf-8", "replace")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _xmp_subjects(im: Image.Image) -> list[str]:
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if not isinstance(xmp, bytes):
        return []
    tags: list[str] = []
    for subject in _SUBJECT_RE.findall(xmp):
        for li in _LI_RE.findall(subject):
            tags.append(html.unescape(li.decode("utf-8", "replace")))
    return tags
