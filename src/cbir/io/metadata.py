"""Photo metadata for search filters: EXIF date taken, camera make/model, GPS presence.

Read from the image's header only (Pillow parses EXIF without decoding pixels), from bytes
already in memory at index time or, for images indexed before metadata was kept, from the
file's first bytes through :mod:`cbir.io.saferead` (links, FIFOs and devices are refused as
everywhere else). Dates are kept as ISO text ``YYYY-MM-DDTHH:MM:SS`` so that range filters
are string comparisons. Anything unreadable is simply absent: metadata never fails a file.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

#: bytes read from a file's start to find its EXIF block (JPEG APP1 sits in the first 64 KB)
HEAD_BYTES = 256 * 1024
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_DATE_ORIGINAL = 36867  # DateTimeOriginal (Exif IFD)
_DATE_DIGITIZED = 36868
_DATE_TIME = 306  # DateTime (IFD0): when the file was last changed, a fallback
_MAKE, _MODEL = 271, 272
_DATE_RE = re.compile(r"^\s*(\d{4})[:\-](\d{2})[:\-](\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?")


@dataclass
class PhotoMeta:
    taken_at: str | None = None  # ISO, local time as the camera wrote it
    make: str | None = None
    model: str | None = None
    gps: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhotoMeta:
        """The inverse of :meth:`to_dict` (a Ray worker's result row -> the driver's value)."""
        return cls(taken_at=d.get("taken_at"), make=d.get("make"), model=d.get("model"),
                   gps=bool(d.get("gps")))


def _clean(text: Any) -> str | None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        return None
    text = " ".join(text.replace("\x00", " ").split())[:80]
    return text or None


def parse_exif_date(text: Any) -> str | None:
    """``2021:07:04 18:30:12`` -> ``2021-07-04T18:30:12``; None for a blank or impossible date."""
    t = _clean(text)
    m = _DATE_RE.match(t or "")
    if not m:
        return None
    y, mo, d = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1800 <= y <= 2200 and 1 <= mo <= 12 and 1 <= d <= 31):
        return None  # "0000:00:00 00:00:00" is what cameras write without a clock
    hh, mm, ss = (int(g) if g else 0 for g in m.group(4, 5, 6))
    return f"{y:04d}-{mo:02d}-{d:02d}T{hh:02d}:{mm:02d}:{ss:02d}"


def meta_from_bytes(data: bytes) -> PhotoMeta:
    """The metadata in an image file's bytes (whole or only its start)."""
    from PIL import Image

    out = PhotoMeta()
    try:
        from cbir.io.formats import sniff, use_heif

        kind = sniff(data)
        if kind == "raw":
            return out  # camera RAW: no EXIF reader here; the image itself is indexed
        if kind == "heif":
            use_heif("metadata")
        with Image.open(io.BytesIO(data)) as im:
            return meta_from_image(im)
    except Exception:  # noqa: BLE001 - metadata is optional; a bad header just has none
        return out


def meta_of(data: bytes, image: Any = None) -> PhotoMeta:
    """The metadata of a file being indexed: from ``image`` (the bytes opened once by Pillow,
    header parsed) when there is one, else from the bytes (a camera RAW, a bad header)."""
    return meta_from_image(image) if image is not None else meta_from_bytes(data)


def meta_from_image(im: Any) -> PhotoMeta:
    """The metadata of an opened (not necessarily decoded) PIL image; never raises."""
    out = PhotoMeta()
    try:
        exif = im.getexif()
        if not exif:
            return out
        sub = exif.get_ifd(_EXIF_IFD) or {}
        out.taken_at = (parse_exif_date(sub.get(_DATE_ORIGINAL))
                        or parse_exif_date(sub.get(_DATE_DIGITIZED))
                        or parse_exif_date(exif.get(_DATE_TIME)))
        out.make, out.model = _clean(exif.get(_MAKE)), _clean(exif.get(_MODEL))
        out.gps = bool(exif.get_ifd(_GPS_IFD))
    except Exception:  # noqa: BLE001 - metadata is optional; a bad header just has none
        return PhotoMeta()
    return out


def read_meta(path: str | os.PathLike[str], *, identity: tuple[int, int] | None = None,
              max_bytes: int) -> PhotoMeta:
    """The metadata of an indexed file, read safely (its start; all of it for HEIF, whose EXIF
    may sit at the end). Raises InvalidImage (FileRefused) for links, FIFOs, devices."""
    from cbir.io.formats import sniff
    from cbir.io.saferead import open_file, read_fd

    with open_file(path, max_bytes=max_bytes, identity=identity) as (fd, st):
        head = os.read(fd, min(HEAD_BYTES, max(1, st.st_size)))
        if sniff(head) == "heif" and st.st_size > len(head):
            head += read_fd(fd, max_bytes - len(head), str(path))
    return meta_from_bytes(head)
