"""Tests of cbir.io.images: colour modes, orientation, draft decoding and every bad file."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from badfiles import (
    BLUE,
    GREEN,
    IS_ROOT,
    RED,
    huge_header_png,
    make_bad_files,
    make_good_images,
    make_variant_images,
)
from cbir.errors import InvalidImage
from cbir.io.images import DEFAULT_MAX_PIXELS, image_size, load_image


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_variant_images(tmp_path_factory.mktemp("variants"))


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bad_files(tmp_path_factory.mktemp("bad"))


def test_good_images_decode_to_distinct_rgb(tmp_path: Path) -> None:
    paths = make_good_images(tmp_path, 6)
    arrays = []
    for p in paths:
        im = load_image(p)
        assert im.mode == "RGB" and im.size == (64, 48)
        arrays.append(np.asarray(im, dtype=np.int16))
    for i in range(len(arrays)):
        for j in range(i + 1, len(arrays)):
            assert np.abs(arrays[i] - arrays[j]).mean() > 5


def test_bytes_and_path_give_same_pixels(tmp_path: Path) -> None:
    (p,) = make_good_images(tmp_path, 1)
    a = np.asarray(load_image(p))
    b = np.asarray(load_image(p.read_bytes()))
    assert np.array_equal(a, b)


def test_exif_orientation_6_rotates_clockwise(variants: dict[str, Path]) -> None:
    im = load_image(variants["exif_rotated"])
    assert im.size == (48, 64)  # stored 64x48
    assert close(im.getpixel((36, 16)), RED)  # stored top-left -> displayed top-right
    assert close(im.getpixel((12, 16)), BLUE)
    assert close(im.getpixel((36, 48)), BLUE)
    assert image_size(variants["exif_rotated"]) == (48, 64)
    assert image_size(variants["exif_rotated"], oriented=False) == (64, 48)
    assert "exif" not in im.info  # orientation already applied, must not be applied twice


def test_grey16_scaled_not_clipped(variants: dict[str, Path]) -> None:
    im = load_image(variants["grey16"])
    assert [im.getpixel((x, 0)) for x in range(3)] == [(255,) * 3, (128,) * 3, (0,) * 3]


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        ("F", [0.0, 0.5, 1.0], [0, 128, 255]),  # 0..1 floats
        ("F", [-1.0, 0.0, 3.0], [0, 64, 255]),  # out of range: min-max stretch
        ("I", [0, 32768, 65535], [0, 128, 255]),  # 16-bit values in a 32-bit image
        ("I", [0, 100, 255], [0, 100, 255]),  # 8-bit values in a 32-bit image
    ],
)
def test_float_and_int_grey_tiff(tmp_path: Path, mode: str, values: list[float],
                                 expected: list[int]) -> None:
    dtype = "<f4" if mode == "F" else "<i4"
    raw = Image.frombytes(mode, (3, 1), np.array(values, dtype).tobytes())
    path = tmp_path / "grey.tif"
    raw.save(path)
    im = load_image(path)
    assert [im.getpixel((x, 0))[0] for x in range(3)] == expected


def test_alpha_composited_on_white(variants: dict[str, Path]) -> None:
    im = load_image(variants["rgba"])
    assert im.getpixel((4, 4)) == BLUE
    assert im.getpixel((28, 4)) == (255, 255, 255)


def test_half_alpha_blends_with_white(tmp_path: Path) -> None:
    path = tmp_path / "la.png"
    Image.new("LA", (4, 4), (0, 128)).save(path)
    assert close(load_image(path).getpixel((0, 0)), (127, 127, 127), tol=1)


def test_palette_transparency(variants: dict[str, Path]) -> None:
    im = load_image(variants["palette_transparent"])
    assert im.getpixel((4, 4)) == (255, 255, 255)
    assert im.getpixel((28, 4)) == RED


def test_cmyk_jpeg(variants: dict[str, Path]) -> None:
    assert close(load_image(variants["cmyk"]).getpixel((16, 16)), RED)


def test_animated_gif_first_frame(variants: dict[str, Path]) -> None:
    assert load_image(variants["animated_gif"]).getpixel((8, 8)) == RED


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_png_webp_first_frame(tmp_path: Path, fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN)]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], lossless=True)
    assert close(load_image(path).getpixel((8, 8)), RED, tol=2)


def test_grey_and_one_bit(variants: dict[str, Path], tmp_path: Path) -> None:
    assert close(load_image(variants["grey_jpeg"]).getpixel((16, 16)), (100,) * 3, tol=2)
    one = Image.new("1", (8, 8), 0)
    one.paste(1, (4, 0, 8, 8))
    one.save(tmp_path / "one.png")
    im = load_image(tmp_path / "one.png")
    assert im.getpixel((0, 0)) == (0, 0, 0) and im.getpixel((7, 0)) == (255, 255, 255)


def big_rotated_jpeg(path: Path) -> None:
    im = Image.new("RGB", (2000, 1500), BLUE)
    im.paste(RED, (0, 0, 1000, 750))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(path, quality=85, exif=exif.tobytes())


def test_draft_reduces_decode_size_and_keeps_orientation(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    big_rotated_jpeg(path)
    full = load_image(path)
    assert full.size == (1500, 2000)
    small = load_image(path, target_size=224)
    assert 224 <= min(small.size) < 1500
    assert small.size[0] < small.size[1]  # still portrait after the EXIF rotation
    w, h = small.size
    assert close(small.getpixel((w * 3 // 4, h // 4)), RED)  # red at top-right
    assert close(small.getpixel((w // 4, h // 4)), BLUE)


def test_draft_never_goes_below_target(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    big_rotated_jpeg(path)
    for target in (100, 200, 375, 376, 700, 800):
        assert min(load_image(path, target_size=target).size) >= target


def test_pixel_limit_checked_from_header(tmp_path: Path) -> None:
    (p,) = make_good_images(tmp_path, 1)
    with pytest.raises(InvalidImage, match=r"image has 3072 pixels, more than the limit 1000"):
        load_image(p, max_pixels=1000)


def test_decompression_bomb_is_invalid_image(bad: dict[str, Path]) -> None:
    with pytest.raises(InvalidImage, match=r"image has 900000000 pixels, more than the limit"):
        load_image(bad["too_large"])
    assert DEFAULT_MAX_PIXELS < 900_000_000


def test_bomb_warning_as_error_is_invalid_image() -> None:
    data = huge_header_png(10000, 10000)  # between Pillow's warning and error thresholds
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(InvalidImage, match="pixels, more than the limit"):
            load_image(data)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("corrupt", "not an image Pillow can read"),
        ("truncated", "truncated file"),
        ("empty", "empty file"),
        ("not_image", "not an image Pillow can read (looks like a text file)"),
        ("too_large", "more than the limit"),
        ("broken_symlink", "broken symbolic link"),
        ("symlink_loop", "symbolic link loop"),
        ("dir_cycle", "is a directory"),
    ],
)
def test_bad_files_raise_invalid_image(bad: dict[str, Path], case: str, reason: str) -> None:
    with pytest.raises(InvalidImage) as exc:
        load_image(bad[case])
    assert reason in exc.value.reason
    assert exc.value.path == str(bad[case])


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidImage, match="file not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(InvalidImage, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(InvalidImage, match="empty file"):
        load_image(b"")


def test_corrupt_image_data(tmp_path: Path) -> None:
    path = tmp_path / "bad_scan.png"
    good = io.BytesIO()
    Image.new("RGB", (64, 64), RED).save(good, "PNG")
    png = bytearray(good.getvalue())
    idat = png.index(b"IDAT")
    png[idat + 8:idat + 20] = b"\x00" * 12  # garbage in the zlib stream, CRC now wrong
    path.write_bytes(bytes(png))
    with pytest.raises(InvalidImage, match="corrupt image|truncated"):
        load_image(path)


def test_name_labels_errors() -> None:
    with pytest.raises(InvalidImage) as exc:
        load_image(b"hello", name="upload.jpg")
    assert exc.value.path == "upload.jpg"
    assert "looks like a text file" in str(exc.value)


def test_non_utf8_and_long_names_decode(bad: dict[str, Path]) -> None:
    assert load_image(bad["long_name"]).size == (64, 48)
    if "non_utf8" in bad:
        assert load_image(bad["non_utf8"]).size == (64, 48)


@pytest.mark.skipif(IS_ROOT, reason="root reads chmod 000 files; see the monkeypatch test")
def test_unreadable_file_real(bad: dict[str, Path]) -> None:
    with pytest.raises(InvalidImage, match="permission denied"):
        load_image(bad["unreadable"])


def test_unreadable_file_simulated(bad: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    real_open = os.open  # files are opened by descriptor (cbir.io.saferead)

    def deny(file: object, *args: object, **kwargs: object) -> object:
        if str(file) == str(bad["unreadable"]):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(InvalidImage, match="permission denied"):
        load_image(bad["unreadable"])
