"""Generators of good, tricky and bad image files for tests (deterministic, small, fast).

``make_bad_files`` returns one path per bad case; ``make_good_images`` n distinct valid
images; ``make_variant_images`` valid images in awkward modes with known colours.
Permission cases use chmod, which root ignores: tests must skip them when ``IS_ROOT``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SEED = 1234
LONG_NAME_CHARS = 250

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)


def noise_jpeg_bytes(w: int = 64, h: int = 48, seed: int = SEED) -> bytes:
    """A valid JPEG of random noise (so half of it is mid-scan data, not headers)."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG",
                                                                          quality=90)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_header_png(w: int = 30000, h: int = 30000) -> bytes:
    """A tiny PNG whose IHDR claims ``w`` x ``h`` 8-bit grey pixels (one row of data)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (w + 1), 9)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def make_bad_files(dir: Path) -> dict[str, Path]:
    """Write one file per bad case into ``dir``; return {case: path}.

    Cases: corrupt, truncated, empty (alias zero_byte), not_image, too_large, unreadable (chmod 000; root can
    still read it), broken_symlink, symlink_loop (loop_a.jpg -> loop_b.jpg -> loop_a.jpg),
    dir_cycle (cycle/back -> cycle, with cycle/inside.png a valid image), non_utf8 (a valid
    image named b'bad\\xff.jpg'; absent if the file system refuses the name) and long_name
    (a VALID image with a 250-character name: it must be indexable).
    """
    dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    rng = np.random.default_rng(SEED)
    good = noise_jpeg_bytes()

    out["corrupt"] = dir / "corrupt.jpg"
    out["corrupt"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out["truncated"] = dir / "truncated.jpg"
    out["truncated"].write_bytes(good[: len(good) // 2])
    out["empty"] = dir / "empty.png"
    out["empty"].write_bytes(b"")
    out["zero_byte"] = out["empty"]  # alias used by tests/e2e
    out["not_image"] = dir / "notes.jpg"
    out["not_image"].write_text("this is a text file, not a photo\n", encoding="utf-8")
    out["too_large"] = dir / "huge.png"
    out["too_large"].write_bytes(huge_header_png())

    out["unreadable"] = dir / "unreadable.jpg"
    out["unreadable"].write_bytes(good)
    out["unreadable"].chmod(0)

    out["broken_symlink"] = dir / "broken.jpg"
    out["broken_symlink"].symlink_to(dir / "does-not-exist.jpg")
    out["symlink_loop"] = dir / "loop_a.jpg"
    (dir / "loop_a.jpg").symlink_to(dir / "loop_b.jpg")
    (dir / "loop_b.jpg").symlink_to(dir / "loop_a.jpg")

    cycle = dir / "cycle"
    cycle.mkdir()
    Image.new("RGB", (16, 16), GREEN).save(cycle / "inside.png")
    (cycle / "back").symlink_to(cycle, target_is_directory=True)
    out["dir_cycle"] = cycle / "back"

    raw = os.path.join(os.fsencode(dir), b"bad\xff.jpg")
    try:
        with open(raw, "wb") as f:
            f.write(good)
        out["non_utf8"] = Path(os.fsdecode(raw))
    except OSError:  # e.g. a file system that only stores UTF-8 names
        pass

    out["long_name"] = dir / ("L" * (LONG_NAME_CHARS - 4) + ".jpg")
    out["long_name"].write_bytes(good)
    return out


def make_good_images(dir: Path, n: int, *, size: tuple[int, int] = (64, 48)) -> list[Path]:
    """Write ``n`` distinct small valid images (alternately JPEG and PNG); return paths."""
    dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    w, h = size
    paths = []
    for i in range(n):
        base = rng.integers(0, 256, 3)
        yy, xx = np.mgrid[0:h, 0:w]
        period = 4 + 2 * (i % 7)
        stripes = (((xx + yy * (i % 3)) // period) % 2)[..., None] * 80
        arr = np.clip(base[None, None, :] + stripes - 40, 0, 255).astype(np.uint8)
        ext = ".jpg" if i % 2 == 0 else ".png"
        path = dir / f"good_{i:03d}{ext}"
        Image.fromarray(arr, "RGB").save(path)
        paths.append(path)
    return paths


def make_variant_images(dir: Path) -> dict[str, Path]:
    """Write valid images in awkward modes with known colours; return {case: path}.

    exif_rotated: 64x48 JPEG, stored top-left quadrant red, rest blue, EXIF orientation 6
        (displayed 48x64 with the red quadrant at the top-right).
    palette_transparent: 32x32 P PNG, left half transparent (index 0), right half red.
    grey16: 3x1 16-bit grey PNG with values 65535, 32768, 0.
    cmyk: 32x32 CMYK JPEG of pure red (0, 255, 255, 0).
    rgba: 32x32 RGBA PNG, left half opaque blue, right half fully transparent black.
    animated_gif: 2 frames, red then green.
    grey_jpeg: 32x32 L JPEG of value 100.
    """
    dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    im = Image.new("RGB", (64, 48), BLUE)
    im.paste(RED, (0, 0, 32, 24))
    exif = Image.Exif()
    exif[0x0112] = 6
    out["exif_rotated"] = dir / "exif6.jpg"
    im.save(out["exif_rotated"], "JPEG", quality=95, exif=exif.tobytes())

    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, *RED] + [0] * (254 * 3))
    pal.paste(1, (16, 0, 32, 32))
    out["palette_transparent"] = dir / "palette_trns.png"
    pal.save(out["palette_transparent"], transparency=0)

    g16 = Image.frombytes("I;16", (3, 1), np.array([65535, 32768, 0], "<u2").tobytes())
    out["grey16"] = dir / "grey16.png"
    g16.save(out["grey16"])

    out["cmyk"] = dir / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(out["cmyk"], quality=95)

    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((*BLUE, 255), (0, 0, 16, 32))
    out["rgba"] = dir / "rgba.png"
    rgba.save(out["rgba"])

    out["animated_gif"] = dir / "anim.gif"
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN)]
    frames[0].save(out["animated_gif"], save_all=True, append_images=frames[1:], duration=100,
                   loop=0)

    out["grey_jpeg"] = dir / "grey.jpg"
    Image.new("L", (32, 32), 100).save(out["grey_jpeg"], quality=95)
    return out


def png_with_xmp(path: Path, xmp: str) -> None:
    """Write a small PNG carrying an XMP packet (iTXt XML:com.adobe.xmp)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    Image.new("RGB", (8, 8), GREEN).save(path, pnginfo=info)
