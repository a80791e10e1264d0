"""Real HEIC and DNG files for tests, made here (no sample files needed).

``make_heic`` encodes with pillow-heif (libheif + x265). ``make_dng`` writes a minimal but
valid Adobe DNG by hand (a little-endian TIFF): IFD0 holds the preview (a JPEG, or an
uncompressed RGB bitmap) and the DNG tags, its SubIFD the 16-bit RGGB sensor mosaic. LibRaw
(rawpy) reads it like a camera's DNG: ``extract_thumb`` gives the preview and
``postprocess`` demosaics the mosaic. The preview and the sensor can have different
colours, so a test can tell which of the two a decoder used.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image

BYTE, ASCII, SHORT, LONG, RATIONAL, SRATIONAL = 1, 2, 3, 4, 5, 10
_FMT = {BYTE: "B", ASCII: "B", SHORT: "H", LONG: "I", RATIONAL: "II", SRATIONAL: "ii"}
_SIZE = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, SRATIONAL: 8}
Tags = dict[int, tuple[int, object]]


def make_heic(rgb: np.ndarray, quality: int = 95) -> bytes:
    """A HEIC (HEVC) still of the (h, w, 3) uint8 array."""
    import pillow_heif

    buf = io.BytesIO()
    pillow_heif.from_pillow(Image.fromarray(rgb, "RGB")).save(buf, quality=quality)
    return buf.getvalue()


def _pack(typ: int, values: object) -> bytes:
    if typ == ASCII:
        return str(values).encode() + b"\0"
    if typ in (RATIONAL, SRATIONAL):
        return b"".join(struct.pack("<" + _FMT[typ], *v) for v in values)  # type: ignore[attr-defined]
    vals = list(values)  # type: ignore[call-overload]
    return struct.pack(f"<{len(vals)}{_FMT[typ]}", *vals)


def write_tiff(ifds: list[tuple[Tags, bytes]]) -> bytes:
    """A little-endian TIFF: ``ifds[0]`` is IFD0, the others its SubIFDs (tag 330).

    Each IFD is (tags, strip data); StripOffsets/StripByteCounts (one strip) are filled in.
    """
    buf = bytearray(b"II*\0\0\0\0\0")
    data_at = []
    for _, data in ifds:
        buf += b"\0" * (len(buf) % 2)
        data_at.append(len(buf))
        buf += data
    tables = []
    for n, (tags, data) in enumerate(ifds):
        t = dict(tags)
        t[273], t[279] = (LONG, [data_at[n]]), (LONG, [len(data)])
        if n == 0 and len(ifds) > 1:
            t[330] = (LONG, [0] * (len(ifds) - 1))  # patched below
        tables.append(t)
    offsets, pos = [], len(buf)
    for t in tables:  # where each IFD will start
        pos += pos % 2
        offsets.append(pos)
        extra = sum(len(r) + len(r) % 2 for r in (_pack(*v) for v in t.values()) if len(r) > 4)
        pos += 2 + 12 * len(t) + 4 + extra
    if len(ifds) > 1:
        tables[0][330] = (LONG, offsets[1:])
    for n, t in enumerate(tables):
        buf += b"\0" * (len(buf) % 2)
        assert len(buf) == offsets[n]
        entries = sorted(t.items())
        head = bytearray(struct.pack("<H", len(entries)))
        ext_at, ext = offsets[n] + 2 + 12 * len(entries) + 4, bytearray()
        for tag, (typ, values) in entries:
            raw = _pack(typ, values)
            count = len(raw) // _SIZE[typ]
            if len(raw) <= 4:
                head += struct.pack("<HHI", tag, typ, count) + raw.ljust(4, b"\0")
            else:
                head += struct.pack("<HHII", tag, typ, count, ext_at + len(ext))
                ext += raw + b"\0" * (len(raw) % 2)
        buf += head + struct.pack("<I", 0) + ext
    struct.pack_into("<I", buf, 4, offsets[0])
    return bytes(buf)


def make_dng(size: tuple[int, int] = (64, 48), sensor: tuple[int, int, int] = (220, 30, 30), *,
             preview: str | None = "jpeg", preview_size: tuple[int, int] | None = None,
             preview_colour: tuple[int, int, int] = (30, 200, 30), orientation: int = 1,
             left: tuple[int, int, int] | None = None) -> bytes:
    """A DNG whose sensor sees ``sensor`` (8-bit RGB, stored linear 16-bit) everywhere.

    preview: "jpeg", "bitmap" (uncompressed RGB) or None, of ``preview_size`` (default the
    sensor size) in ``preview_colour``. orientation: the TIFF/EXIF orientation tag.
    left: a colour for the left half of both the sensor and the preview (a marker that
    shows where rotation took it).
    """
    w, h = size
    scene = np.empty((h, w, 3), np.uint16)
    scene[:] = sensor
    if left is not None:
        scene[:, : w // 2] = left
    scene *= 257
    mosaic = np.empty((h, w), np.uint16)  # RGGB
    mosaic[0::2, 0::2] = scene[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = scene[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = scene[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = scene[1::2, 1::2, 2]
    raw_tags: Tags = {
        254: (LONG, [0]), 256: (LONG, [w]), 257: (LONG, [h]), 258: (SHORT, [16]),
        259: (SHORT, [1]), 262: (SHORT, [32803]), 277: (SHORT, [1]), 278: (LONG, [h]),
        284: (SHORT, [1]), 33421: (SHORT, [2, 2]), 33422: (BYTE, [0, 1, 1, 2]),
        50714: (LONG, [0]), 50717: (LONG, [65535]),
    }
    ifd0: Tags = {
        271: (ASCII, "Cbir"), 272: (ASCII, "Test"), 274: (SHORT, [orientation]),
        50706: (BYTE, [1, 4, 0, 0]), 50707: (BYTE, [1, 1, 0, 0]), 50708: (ASCII, "Cbir Test"),
        # XYZ -> camera: the camera's native space is linear sRGB
        50721: (SRATIONAL, [(32406, 10000), (-15372, 10000), (-4986, 10000),
                            (-9689, 10000), (18758, 10000), (415, 10000),
                            (557, 10000), (-2040, 10000), (10570, 10000)]),
        50778: (SHORT, [21]), 50728: (RATIONAL, [(1, 1), (1, 1), (1, 1)]),
    }
    sensor_ifd = (raw_tags, mosaic.astype("<u2").tobytes())
    if preview is None:  # IFD0 is the raw image itself
        return write_tiff([({**raw_tags, **ifd0}, sensor_ifd[1])])
    pw, ph = preview_size or size
    pix = np.empty((ph, pw, 3), np.uint8)
    pix[:] = preview_colour
    if left is not None:
        pix[:, : pw // 2] = left
    if preview == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(pix).save(buf, "JPEG", quality=95)
        data, compression, photometric = buf.getvalue(), 7, 6
    else:
        data, compression, photometric = pix.tobytes(), 1, 2
    ifd0.update({
        254: (LONG, [1]), 256: (LONG, [pw]), 257: (LONG, [ph]), 258: (SHORT, [8, 8, 8]),
        259: (SHORT, [compression]), 262: (SHORT, [photometric]), 277: (SHORT, [3]),
        278: (LONG, [ph]), 284: (SHORT, [1]),
    })
    return write_tiff([(ifd0, data), sensor_ifd])
