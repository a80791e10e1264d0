"""Photo formats Pillow does not read by itself: HEIC/HEIF (pillow-heif) and camera RAW (rawpy).

* :data:`EXTENSIONS` lists their file name extensions (cbir.io.files adds them to the walk).
* :func:`sniff` tells from a file's first bytes and its name whether it is one of them.
* HEIF: :func:`use_heif` registers pillow-heif's Pillow plugin the first time a HEIF file
  is met, after which Pillow opens HEIF like any format (cbir.io.images does the rest).
* RAW: :func:`load_raw` turns the file's bytes into an RGB image: the embedded preview
  (the camera's own JPEG) when it is large enough, else a fast demosaic of the sensor data
  (half size when that is still large enough). :func:`raw_size` reads the size only.

Both libraries are optional at run time: without them such a file raises
:class:`cbir.errors.InvalidImage` whose reason says what to install, so the indexer reports
it as skipped instead of losing it silently.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Any

import numpy as np
from PIL import Image

from cbir.errors import InvalidImage

HEIF_EXTENSIONS: frozenset[str] = frozenset({".heic", ".heif", ".hif"})
#: camera RAW formats LibRaw reads (Adobe DNG, Canon, Nikon, Sony, Fujifilm, Olympus,
#: Panasonic, Pentax, Samsung)
RAW_EXTENSIONS: frozenset[str] = frozenset({
    ".dng", ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw",
})  # fmt: skip
EXTENSIONS: frozenset[str] = HEIF_EXTENSIONS | RAW_EXTENSIONS

HEIF_HINT = "HEIC/HEIF needs pillow-heif: pip install 'cbir[heif]'"
RAW_HINT = "camera RAW needs rawpy: pip install 'cbir[raw]'"

#: a RAW's embedded preview is used when its short side reaches the caller's target size
#: (or this, without one, or the sensor's short side when that is smaller)
PREVIEW_MIN_SIDE = 256

# ISO-BMFF brands of HEIF stills and sequences (HEVC-coded or the generic image brands)
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"})
_GENERIC_BRANDS = frozenset({b"mif1", b"msf1", b"mif2"})
_TIFF = (b"II*\0", b"MM\0*")
_OTHER_IMAGE = (b"\xff\xd8", b"\x89PNG", b"GIF8", b"RIFF", b"BM")
# LibRaw flip -> EXIF orientation
_FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}

_heif_lock = threading.Lock()
_heif_ready = False


def sniff(source: str | os.PathLike[str] | bytes, name: str | None = None) -> str | None:
    """``"heif"``, ``"raw"`` or None (a format Pillow reads itself, or not an image).

    Bytes are judged by their magic, then by ``name``'s extension; a path (not read here)
    by its extension.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        head = bytes(source[:64])
    else:
        head = None
        name = name or os.fspath(source)
    ext = os.path.splitext(name or "")[1].lower()
    if head is None:
        return "heif" if ext in HEIF_EXTENSIONS else "raw" if ext in RAW_EXTENSIONS else None
    if _is_heif(head):
        return "heif"
    if _is_raw(head) or (ext in RAW_EXTENSIONS and head.startswith(_TIFF)):
        return "raw"
    if ext in EXTENSIONS and head and not head.startswith(_OTHER_IMAGE + _TIFF):
        return "heif" if ext in HEIF_EXTENSIONS else "raw"
    return None


def _is_heif(head: bytes) -> bool:
    if len(head) < 12 or head[4:8] != b"ftyp":
        return False
    major = head[8:12]
    if major in _HEIF_BRANDS:
        return True
    if major in _GENERIC_BRANDS:  # then the compatible brands say which codec
        size = int.from_bytes(head[:4], "big")
        compatible = {head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)}
        return bool(compatible & _HEIF_BRANDS)
    return False


def _is_raw(head: bytes) -> bool:
    """RAW formats recognisable by their own magic (DNG, NEF and ARW are plain TIFF)."""
    return (head.startswith((b"FUJIFILMCCD-RAW", b"IIRO", b"IIRS", b"MMOR", b"IIU\0"))
            or (head.startswith(b"II*\0") and head[8:10] == b"CR")  # Canon CR2
            or (head[4:12] == b"ftypcrx "))  # Canon CR3


# -- HEIF ----------------------------------------------------------------------------------
def use_heif(label: str) -> None:
    """Make Pillow open HEIF (registers pillow-heif once); InvalidImage with the hint without it."""
    global _heif_ready
    if _heif_ready:
        return
    with _heif_lock:
        if _heif_ready:
            return
        try:
            import pillow_heif
        except ImportError as e:
            raise InvalidImage(label, HEIF_HINT) from e
        pillow_heif.register_heif_opener()
        _heif_ready = True


# -- RAW -----------------------------------------------------------------------------------
def _rawpy(label: str) -> Any:
    try:
        import rawpy
    except ImportError as e:
        raise InvalidImage(label, RAW_HINT) from e
    return rawpy


def _open_raw(data: bytes, label: str) -> Any:
    rawpy = _rawpy(label)
    try:
        return rawpy.imread(io.BytesIO(data))
    except rawpy.LibRawFileUnsupportedError as e:
        raise InvalidImage(label, "not a camera RAW file LibRaw can read (unsupported camera, "
                                  "or a damaged file)") from e
    except MemoryError as e:
        raise InvalidImage(label, "not enough memory to read the RAW file") from e
    except Exception as e:  # noqa: BLE001 - LibRaw I/O and data errors: a broken file
        raise InvalidImage(label, f"corrupt camera RAW file ({_describe(e)})") from e


def _describe(e: BaseException) -> str:
    arg = e.args[0] if e.args else None
    text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(e)
    return text.strip() or type(e).__name__


def _sensor_size(raw: Any, label: str) -> tuple[int, int, int]:
    """(width, height, EXIF-style orientation) of the developed image, before rotation."""
    s = raw.sizes
    w, h = int(s.width), int(s.height)
    if w <= 0 or h <= 0:
        raise InvalidImage(label, f"corrupt camera RAW header (size {w}x{h})")
    return w, h, _FLIP_TO_ORIENTATION.get(int(s.flip), 1)


def raw_size(data: bytes, label: str, *, oriented: bool = True) -> tuple[int, int]:
    """(width, height) of the RAW's developed image, as displayed when ``oriented``."""
    with _open_raw(data, label) as raw:
        w, h, orientation = _sensor_size(raw, label)
    return (h, w) if oriented and orientation in (5, 6, 7, 8) else (w, h)


def load_raw(data: bytes, label: str, *, target_size: int | None = None,
             max_pixels: int | None = None) -> Image.Image:
    """Decode a camera RAW to an upright RGB image (embedded preview, else demosaic)."""
    from cbir.io import images

    max_pixels = images.DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    rawpy = _rawpy(label)
    with _open_raw(data, label) as raw:
        w, h, orientation = _sensor_size(raw, label)
        images._check_pixels(label, w, h, max_pixels)
        want = min(target_size or PREVIEW_MIN_SIDE, w, h)
        preview = _preview(raw, rawpy, want, orientation, target_size, max_pixels)
        if preview is not None:
            return preview
        half = min(w, h) // 2 >= (target_size or PREVIEW_MIN_SIDE)
        try:  # postprocess applies the camera's orientation itself
            rgb = raw.postprocess(half_size=half, use_camera_wb=True, output_bps=8)
        except MemoryError as e:
            raise InvalidImage(label, "not enough memory to decode the RAW file") from e
        except Exception as e:  # noqa: BLE001 - LibRaw data errors: truncated or corrupt
            raise InvalidImage(label, f"corrupt camera RAW data ({_describe(e)})") from e
    return Image.fromarray(np.ascontiguousarray(rgb[..., :3]), "RGB")


def _preview(raw: Any, rawpy: Any, want: int, orientation: int, target_size: int | None,
             max_pixels: int) -> Image.Image | None:
    """The embedded preview as upright RGB if it has a short side >= ``want``, else None."""
    from cbir.io import images

    try:
        thumb = raw.extract_thumb()
    except Exception:  # noqa: BLE001 - no preview, or one LibRaw cannot extract: demosaic
        return None
    try:
        if thumb.format == rawpy.ThumbFormat.JPEG:
            with Image.open(io.BytesIO(thumb.data)) as head:
                if min(head.size) < want:
                    return None
                own = images._orientation(head)
            im = images.load_image(thumb.data, target_size=target_size, max_pixels=max_pixels)
        elif thumb.format == rawpy.ThumbFormat.BITMAP:
            arr = np.asarray(thumb.data)
            if arr.ndim < 2 or min(arr.shape[:2]) < want or arr.shape[0] * arr.shape[1] > max_pixels:
                return None
            if arr.dtype != np.uint8:
                arr = (arr >> 8).astype(np.uint8) if arr.dtype == np.uint16 else None
            if arr is None:
                return None
            im = Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")
            own = 1
        else:
            return None
    except Exception:  # noqa: BLE001 - a broken preview: develop the sensor data instead
        return None
    if own == 1 and orientation in images._TRANSPOSE:  # the preview is stored unrotated
        im = im.transpose(images._TRANSPOSE[orientation])
    return im
