"""Image loading (EXIF orientation, every Pillow mode, refusals) and letterboxing with its exact inverse."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import subset
from edgeface.errors import ImageError
from edgeface.images import letterbox, load_image, to_rgb

FILL = (127, 117, 104)


def _blocks(rows: int = 3, cols: int = 4, side: int = 16) -> np.ndarray:
    """A rows x cols grid of strongly different colour blocks (side px each): every orientation differs."""
    rng = np.random.default_rng(7)
    colours = rng.choice([0, 255], size=(rows, cols, 3))
    colours[0, 0] = (255, 0, 0)  # make sure no two neighbouring layouts coincide
    colours[0, 1] = (0, 0, 255)
    return np.kron(colours, np.ones((side, side, 1))).astype(np.uint8)


# What a viewer shows for each EXIF orientation value (EXIF 2.3, tag 0x0112), as plain numpy ops.
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # rotate 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),  # rotate 90 degrees counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    stored = _blocks()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95, subsampling=0)
    expected = DISPLAYED[orientation](stored)
    loaded = load_image(path)
    assert loaded.shape == expected.shape and loaded.dtype == np.uint8
    assert np.abs(loaded.astype(int) - expected).mean() < 8  # JPEG noise only; a wrong turn is ~100


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_grayscale_loads_as_rgb(tmp_path: Path) -> None:
    gray = np.arange(15, dtype=np.uint8).reshape(3, 5) * 17
    loaded = load_image(_save(Image.fromarray(gray, "L"), tmp_path / "gray.png"))
    assert loaded.shape == (3, 5, 3) and loaded.dtype == np.uint8
    assert (loaded == gray[..., None]).all()


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((3, 5, 4), np.uint8)
    rgba[..., :] = (10, 20, 30, 255)
    rgba[1, 2] = (200, 100, 50, 0)
    loaded = load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    assert loaded.shape == (3, 5, 3) and loaded.dtype == np.uint8
    assert (loaded[0, 0] == (10, 20, 30)).all()
    assert (loaded[1, 2] == (255, 255, 255)).all()


@pytest.mark.parametrize("suffix, tolerance", [(".tif", 0), (".jpg", 12)])
def test_cmyk_loads_as_rgb(tmp_path: Path, suffix: str, tolerance: int) -> None:
    cmyk = np.zeros((16, 24, 4), np.uint8)  # white
    cmyk[:, 8:16] = (255, 0, 0, 0)  # cyan
    cmyk[:, 16:] = (0, 0, 0, 255)  # black
    loaded = load_image(_save(Image.fromarray(cmyk, "CMYK"), tmp_path / f"cmyk{suffix}"))
    assert loaded.shape == (16, 24, 3) and loaded.dtype == np.uint8
    for column, rgb in ((4, (255, 255, 255)), (12, (0, 255, 255)), (20, (0, 0, 0))):
        assert np.abs(loaded[8, column].astype(int) - rgb).max() <= tolerance


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_loads_as_rgb(tmp_path: Path, suffix: str) -> None:
    palette_image = Image.new("P", (5, 3))
    palette_image.putpalette([255, 0, 0, 0, 128, 0, 10, 20, 250] + [0] * (256 * 3 - 9))
    palette_image.putdata([0, 1, 2, 1, 0] * 3)
    loaded = load_image(_save(palette_image, tmp_path / f"palette{suffix}"))
    assert loaded.shape == (3, 5, 3) and loaded.dtype == np.uint8
    assert loaded[0, :3].tolist() == [[255, 0, 0], [0, 128, 0], [10, 20, 250]]


def test_palette_transparency_is_white(tmp_path: Path) -> None:
    palette_image = Image.new("P", (4, 2))
    palette_image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    palette_image.putdata([0, 1, 1, 1, 1, 1, 1, 1])
    palette_image.info["transparency"] = 0
    loaded = load_image(_save(palette_image, tmp_path / "transparent.png"))
    assert loaded[0, 0].tolist() == [255, 255, 255] and loaded[0, 1].tolist() == [255, 0, 0]


def test_sixteen_bit_gray_is_scaled_to_eight_bits(tmp_path: Path) -> None:
    values = np.array([[0, 32896, 65535], [257, 1000, 60000]], dtype=np.uint16)  # 32896 = 128 * 257
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    expected = np.round(values / 257.0).astype(np.uint8)
    direct = to_rgb(image)
    loaded = load_image(_save(image, tmp_path / "deep.png"))  # read back as I;16 or I, both 16-bit
    for rgb in (direct, loaded):
        assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
        assert (rgb == expected[..., None]).all()


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG that declares width x height (RGB, 8 bit) but holds almost no pixel data."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (10_000, 10_001)])
def test_oversized_header_is_refused_quietly(tmp_path: Path, width: int, height: int) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(width, height))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning on stderr either
        with pytest.raises(ImageError, match=r"bomb\.png: .*too large"):
            load_image(path)


@pytest.mark.parametrize("content, problem", [
    (b"", "empty"),
    (b"hello, not a picture\n", "not a readable image"),
    (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "not a readable image"),
])
def test_unreadable_files_raise_image_error_naming_the_file(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=rf"broken\.jpg: {problem}"):
        load_image(path)


SIZES = [(1986, 1545), (1545, 1986), (641, 359), (359, 641), (7, 1001), (1001, 7), (333, 333), (640, 640), (101, 51)]
TARGETS = [(640, 640), (320, 320), (640, 480)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("size", SIZES)
def test_letterbox_geometry_and_exact_round_trip(size: tuple[int, int], target: tuple[int, int]) -> None:
    (width, height), (target_w, target_h) = size, target
    image = np.empty((height, width, 3), np.uint8)
    image[...] = (200, 30, 90)
    canvas, mapping = letterbox(image, target_w, target_h, FILL)
    assert canvas.shape == (target_h, target_w, 3) and canvas.dtype == np.uint8

    # The picture sits at the top-left, exactly where the mapping sends the original corners.
    corner = mapping.to_input(np.array([0.0, 0.0, width, height]))
    assert corner[:2].tolist() == [0.0, 0.0]
    new_w, new_h = corner[2:]
    assert new_w == pytest.approx(round(new_w), abs=1e-9) and new_h == pytest.approx(round(new_h), abs=1e-9)
    content = (canvas != FILL).any(axis=2)
    assert content[: round(new_h), : round(new_w)].all() and content.sum() == round(new_w) * round(new_h)

    # It fills one side, keeps the aspect ratio (to the rounding pixel) and never spills over.
    ratio = min(target_w / width, target_h / height)
    assert round(new_w) == target_w or round(new_h) == target_h
    assert abs(new_w - width * ratio) <= 0.5 + 1e-9 and abs(new_h - height * ratio) <= 0.5 + 1e-9

    rng = np.random.default_rng(width * 7 + height)
    points = rng.uniform(0, 1, size=(50, 10)) * np.tile([width, height], 5)
    np.testing.assert_allclose(mapping.to_original(mapping.to_input(points)), points, rtol=0, atol=1e-9)
    inputs = rng.uniform(0, 1, size=(50, 4)) * np.tile([new_w, new_h], 2)
    np.testing.assert_allclose(mapping.to_input(mapping.to_original(inputs)), inputs, rtol=0, atol=1e-9)


def _magenta(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] > 200)


@pytest.mark.parametrize("portrait", [False, True])
def test_box_drawn_on_a_real_photo_lands_where_mapped(data: Path, portrait: bool) -> None:
    photo = load_image(subset(data / "group_photos", 1)[0])
    if portrait:
        photo = np.ascontiguousarray(np.rot90(photo))
    height, width = photo.shape[:2]
    x1, y1, x2, y2 = round(0.31 * width), round(0.27 * height), round(0.58 * width), round(0.61 * height)
    drawn = photo.copy()
    drawn[y1:y2, x1:x2] = (255, 0, 255)

    plain, _ = letterbox(photo, 640, 640, FILL)
    boxed, mapping = letterbox(drawn, 640, 640, FILL)
    assert not _magenta(plain).any()  # the photo itself has no such pixels: what we find below is the box
    rows, cols = np.nonzero(_magenta(boxed))
    found = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)
    expected = mapping.to_input(np.array([x1, y1, x2, y2], dtype=np.float64))
    np.testing.assert_allclose(found, expected, atol=1.0)  # antialiased edges blur by under a pixel
    scale = max(width, height) / 640
    np.testing.assert_allclose(mapping.to_original(found), [x1, y1, x2, y2], atol=1.0 * scale)
