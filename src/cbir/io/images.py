"""Safe image decoding: any format Pillow reads, to an RGB image, or one typed error.

Every failure (missing file, permission, empty, not an image, truncated, corrupt, too many
pixels) raises :class:`cbir.errors.InvalidImage` with a short human reason. Nothing here
changes Pillow's global settings (``LOAD_TRUNCATED_IMAGES``, ``MAX_IMAGE_PIXELS``, warning
filters); the only global change is registering pillow-heif's HEIF plugin when the first
HEIC/HEIF file is met. Camera RAW files (by name, or by magic for RAF, ORF, RW2, CR2, CR3)
are developed by rawpy instead of Pillow: see :mod:`cbir.io.formats`.

Colour handling:

* EXIF orientation is applied (the image comes back the way a viewer shows it).
* Transparency (alpha, palette or tRNS transparency) is composited onto white.
* 16-bit grey (``I;16*``) is scaled by 255/65535; 32-bit ``I`` is taken as 8-bit if its
  values fit in 0..255, as 16-bit if they fit in 0..65535, else min-max stretched; float
  ``F`` is taken as 0..1 if it fits, as 0..255 if it fits, else min-max stretched.
* CMYK uses the embedded ICC profile when there is one, else Pillow's conversion (Pillow
  already reads Adobe-style inverted CMYK JPEGs correctly).
* Animated images (GIF, APNG, WebP) give their first frame.
"""

from __future__ import annotations

import contextlib
import io as _io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin, UnidentifiedImageError

from cbir.errors import InvalidImage
from cbir.io import formats as _formats
from cbir.io.saferead import os_reason as os_error_reason  # noqa: F401 - re-exported
from cbir.io.saferead import read_file

# 2 x Pillow's default MAX_IMAGE_PIXELS (89_478_485), i.e. exactly where Pillow itself
# refuses to open an image: about 13_400 x 13_400, enough for any camera photo and
# ~537 MB as RGB. Raising it above Image.MAX_IMAGE_PIXELS * 2 has no effect unless the
# application also raises Pillow's global limit.
DEFAULT_MAX_PIXELS = 178_956_970
#: files larger than this are refused when read by path (the walk's default limit too)
MAX_FILE_BYTES = 512 * 1024 * 1024

WHITE = (255, 255, 255)

_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_BOMB_RE = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")
# info keys that no longer describe the returned RGB image.
_STALE_INFO = ("exif", "transparency", "icc_profile", "duration", "loop", "background")


def load_image(
    source: str | Path | bytes,
    *,
    target_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) to an upright RGB PIL image.

    target_size: the short side the caller will resize to. A JPEG whose short side is at
    least twice that is decoded at a reduced scale (libjpeg DCT scaling, 1/2 to 1/8) whose
    short side is still >= target_size. max_pixels: refuse images with more pixels than
    this, checked from the header before any pixel is decoded. name: label used in errors
    (default: the path, or ``<bytes>``). Raises InvalidImage(path, reason) on any failure.
    """
    label = _label(source, name)
    raw = _raw_bytes(source, label, name)
    if raw is not None:  # camera RAW: rawpy develops it (cbir.io.formats)
        return _formats.load_raw(raw, label, target_size=target_size, max_pixels=max_pixels)
    with _open_image(source, label) as im:
        _check_pixels(label, *im.size, max_pixels)
        return decode_opened(im, label, target_size=target_size)


@contextlib.contextmanager
def opened(data: bytes, *, name: str, max_pixels: int = DEFAULT_MAX_PIXELS
           ) -> Iterator[ImageFile.ImageFile | None]:
    """The image in ``data`` opened once, lazily (header parsed, pixel count checked, nothing
    decoded), for header reads (:func:`displayed_size`, EXIF, embedded tags) and then
    :func:`decode_opened`: the indexer reads each file's bytes through one Pillow open instead
    of four. Yields None for a camera RAW (rawpy decodes those: use :func:`load_image`).
    Raises InvalidImage like load_image."""
    if _raw_bytes(data, name, name) is not None:
        yield None
        return
    with _open_image(data, name) as im:
        _check_pixels(name, *im.size, max_pixels)
        yield im


def decode_opened(im: ImageFile.ImageFile, label: str, *, target_size: int | None = None
                  ) -> Image.Image:
    """An image from :func:`opened` decoded as :func:`load_image` decodes: upright RGB, JPEG
    draft mode down to ``target_size``. Raises InvalidImage."""
    w, h = im.size
    jpeg = isinstance(im, JpegImagePlugin.JpegImageFile)
    if target_size and jpeg and min(w, h) >= 2 * target_size:
        im.draft("RGB", (target_size, target_size))
    rgb = _upright_rgb(im, label, own=True)
    rgb.info = {k: v for k, v in im.info.items() if k not in _STALE_INFO}
    return rgb


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as displayed (a 90-degree EXIF orientation swaps
    them), from the header: a PNG's EXIF after the pixel data is not looked for."""
    w, h = im.size
    cheap = im.format != "PNG" or "exif" in im.info
    if cheap and _orientation(im) in (5, 6, 7, 8):
        return h, w
    return w, h


def _upright_rgb(im: Image.Image, label: str, *, own: bool = False) -> Image.Image:
    """Decode ``im``'s pixels (no-op when loaded), convert to RGB, apply EXIF orientation.

    own: ``im`` is ours and closed right after (a file we opened): an RGB result may take
    over its decoded pixels instead of copying them (~0.13 ms of a 224-px JPEG's 0.5 ms).
    """
    _decode(im, label)
    orientation = _orientation(im)
    try:
        rgb = _to_rgb(im, own=own)
    except (ValueError, OSError) as e:
        raise InvalidImage(label, f"cannot convert colour mode {im.mode} to RGB ({e})") from e
    except MemoryError as e:
        raise InvalidImage(label, "not enough memory to decode the image") from e
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    return rgb


def image_size(
    source: str | Path | bytes, *, oriented: bool = True, name: str | None = None
) -> tuple[int, int]:
    """Return ``(width, height)`` from the file header without decoding pixels.

    With oriented=True a 90-degree EXIF orientation swaps the two (the size as displayed
    and as load_image returns it). Raises InvalidImage like load_image.
    """
    label = _label(source, name)
    raw = _raw_bytes(source, label, name)
    if raw is not None:
        return _formats.raw_size(raw, label, oriented=oriented)
    with _open_image(source, label) as im:
        # (PNG keeps EXIF after the pixel data: reading it would decode the image)
        return displayed_size(im) if oriented else im.size


def from_pil(image: Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS,
             name: str = "<image>") -> Image.Image:
    """An in-memory PIL image as :func:`load_image` returns a file: upright RGB (EXIF
    orientation applied), transparency composited onto white. The caller's image is not
    changed. Raises InvalidImage like load_image (too many pixels, pixels that fail to load).
    """
    if not isinstance(image, Image.Image):
        raise InvalidImage(name, f"not a PIL image ({type(image).__name__})")
    w, h = image.size
    _check_pixels(name, w, h, max_pixels)
    return _upright_rgb(image, name)  # a lazily opened image loads there; twice is a no-op


def _label(source: str | Path | bytes, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    return str(source)


def _raw_bytes(source: str | Path | bytes, label: str, name: str | None) -> bytes | None:
    """The file's bytes if it is a camera RAW, else None; a HEIF file gets Pillow's HEIF
    plugin registered (both raise InvalidImage naming the package to install without it)."""
    kind = _formats.sniff(source, name)
    if kind == "heif":
        _formats.use_heif(label)
    if kind != "raw":
        return None
    with _open_source(source, label) as fp:
        return fp.read()


@contextlib.contextmanager
def _open_image(source: str | Path | bytes, label: str) -> Iterator[ImageFile.ImageFile]:
    """Open ``source`` lazily (header only); map every opening failure to InvalidImage."""
    with _open_source(source, label) as fp:
        try:
            im = Image.open(fp)
        except UnidentifiedImageError as e:
            raise InvalidImage(label, _not_an_image_reason(fp)) from e
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # DecompressionBombWarning is only raised when warnings are errors.
            raise InvalidImage(label, _bomb_reason(e)) from e
        except MemoryError as e:
            raise InvalidImage(label, "not enough memory to read the image header") from e
        except Exception as e:  # noqa: BLE001 - any plugin error means a broken header
            raise InvalidImage(label, f"corrupt image header ({_describe(e)})") from e
        with im:
            yield im


@contextlib.contextmanager
def _open_source(source: str | Path | bytes, label: str) -> Iterator[BinaryIO]:
    """The bytes to decode. A path is read once through cbir.io.saferead (a link the user
    typed is followed, but a FIFO, device or oversized file is refused without blocking)."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        data = read_file(source, max_bytes=MAX_FILE_BYTES, follow_symlinks=True, label=label)
    if len(data) == 0:
        raise InvalidImage(label, "empty file")
    with _io.BytesIO(data) as bio:
        yield bio


def _not_an_image_reason(fp: BinaryIO) -> str:
    reason = "not an image Pillow can read (unknown or unsupported format)"
    try:
        fp.seek(0)
        head = fp.read(512)
    except OSError:
        return reason
    if head and b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return reason
        return "not an image Pillow can read (looks like a text file)"
    return reason


def _bomb_reason(e: Exception) -> str:
    m = _BOMB_RE.search(str(e))
    if m:
        return f"image has {m.group(1)} pixels, more than the limit {m.group(2)}"
    return f"image has too many pixels ({e})"


def _check_pixels(label: str, w: int, h: int, max_pixels: int) -> None:
    if w <= 0 or h <= 0:
        raise InvalidImage(label, f"corrupt image header (size {w}x{h})")
    n = w * h
    if n > max_pixels:
        raise InvalidImage(label, f"image has {n} pixels, more than the limit {max_pixels} "
                                  f"({w}x{h})")


def _decode(im: ImageFile.ImageFile, label: str) -> None:
    """Decode the (first frame's) pixels; truncated or corrupt data raise InvalidImage."""
    try:
        im.load()
    except MemoryError as e:
        raise InvalidImage(label, "not enough memory to decode the image") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidImage(label, _bomb_reason(e)) from e
    except Exception as e:  # noqa: BLE001 - plugins raise OSError, SyntaxError, zlib.error...
        msg = _describe(e)
        if isinstance(e, EOFError) or "truncated" in msg.lower():
            raise InvalidImage(label, f"truncated file: the image data ends early ({msg})") from e
        raise InvalidImage(label, f"corrupt image data ({msg})") from e


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return text if text else type(e).__name__


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8), 1 when absent or unreadable."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if value in _TRANSPOSE else 1
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not lose the image
        return 1


def _to_rgb(im: Image.Image, *, own: bool = False) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency onto white."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _scale_to_l(im).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if mode == "RGB" and "transparency" not in im.info:
        # a new Image object on the same decoded core: closing ``im`` afterwards only drops
        # its own reference (Image._new is how Pillow itself wraps a core)
        return im._new(im.im) if own else im.copy()
    if mode in ("P", "PA", "RGBa") or (
        mode in ("1", "L", "RGB") and "transparency" in im.info
    ):
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    if im.mode in ("RGBA", "LA"):
        alpha = im.getchannel("A")
        out = Image.new("RGB", im.size, WHITE)
        out.paste(im.convert("RGB"), mask=alpha)
        return out
    return im.convert("RGB")


def _scale_to_l(im: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit integer or float grey image to 8-bit L (see module doc)."""
    a = np.asarray(im, dtype=np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = 0.0, 65535.0
    if not im.mode.startswith("I;16") and a.size:
        mn, mx = float(a.min()), float(a.max())
        fits = [1.0, 255.0] if im.mode == "F" else [255.0, 65535.0]
        for top in fits:
            if mn >= 0 and mx <= top:
                hi = top
                break
        else:
            lo, hi = mn, mx
    if hi <= lo:
        out = np.zeros(a.shape, dtype=np.uint8)
    else:
        out = np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(_io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if out is not None:
                return out
        except Exception:  # noqa: BLE001 - a bad profile falls back to the plain formula
            pass
    return im.convert("RGB")
