"""Every bad input gets one clear line and the run goes on: the walker, image inputs, galleries, options."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeface.errors import ImageError, ProfileError
from edgeface.images import content_sha256, iter_inputs, list_images, load_image
from edgeface.profiles import load_profile

def _jpeg(path: Path, width: int = 64, height: int = 48) -> Path:
    Image.new("RGB", (width, height), (200, 120, 40)).save(path)
    return path


# --- the one folder walker -------------------------------------------------------------------------------------

def test_walker_reports_what_it_cannot_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "photos"
    (root / "real").mkdir(parents=True)
    (root / "locked").mkdir()
    (root / "empty").mkdir()
    _jpeg(root / "real" / "a.jpg")
    _jpeg(root / ".hidden.jpg")
    (root / "linked").symlink_to(root / "real")  # a symlinked folder is followed
    (root / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (root / "real" / "loop").symlink_to(root)  # a folder inside itself
    os.mkfifo(root / "pipe.jpg")  # reading it would block forever
    scandir = os.scandir

    def refusing(path: object) -> object:
        if Path(str(path)).name == "locked":  # as for a folder without read permission (we may run as root)
            raise PermissionError(13, "Permission denied")
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    found = {item.name: item.problem for item in iter_inputs([root])}
    assert found == {
        "dangling.jpg": "broken symlink (its target is missing)",
        "linked/a.jpg": None,
        "linked/loop": "symlink loop (a folder inside itself), skipped",
        "locked": "cannot read this folder (Permission denied)",
        "pipe.jpg": "not a regular file (a fifo, socket or device)",
        "real/a.jpg": None,
        "real/loop": "symlink loop (a folder inside itself), skipped",
    }
    assert [(i.name, i.problem) for i in iter_inputs([root / "empty"])] == [
        (str(root / "empty"), "no files in this folder")]
    with pytest.raises(ImageError, match="dangling.jpg: broken symlink"):
        list_images(root)  # the same rules, for the tools that read image folders
    assert list_images(root / "empty") == []


def test_list_images_follows_the_walker_rules(tmp_path: Path) -> None:
    _jpeg(tmp_path / "b.jpg")
    _jpeg(tmp_path / ".skipped.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    _jpeg(tmp_path / "sub" / "a.png")
    assert list_images(tmp_path) == [tmp_path / "b.jpg", tmp_path / "sub" / "a.png"]


# --- images given to the API ------------------------------------------------------------------------------------

RGB = np.zeros((4, 6, 3), np.uint8)

ODD_ARRAYS = {  # array -> what its ImageError must say
    "grey": (np.zeros((4, 6), np.uint8), "grey"),
    "grey HxWx1": (np.zeros((4, 6, 1), np.uint8), "grey"),
    "RGBA": (np.zeros((4, 6, 4), np.uint8), "RGBA"),
    "float": (np.zeros((4, 6, 3), np.float32), "float32"),
    "NaN": (np.full((4, 6, 3), np.nan), "float64"),
    "bool": (np.zeros((4, 6, 3), bool), "bool"),
    "uint16": (np.zeros((4, 6, 3), np.uint16), "uint16"),
    "CHW": (np.zeros((3, 4, 6), np.uint8), "channels first"),
    "0x0": (np.zeros((0, 0, 3), np.uint8), "empty"),
    "1-d": (np.zeros(12, np.uint8), "not an image"),
}


@pytest.mark.parametrize("kind", ODD_ARRAYS)
def test_odd_arrays_are_refused_with_the_fix(kind: str) -> None:
    array, problem = ODD_ARRAYS[kind]
    with pytest.raises(ImageError, match="image array") as info:
        load_image(array)
    assert problem in str(info.value)


@pytest.mark.parametrize("value", [None, 3, ["a.jpg"], b"", b"not an image", Image.new("RGB", (0, 0))])
def test_other_odd_inputs_are_refused(value: object) -> None:
    with pytest.raises(ImageError):
        load_image(value)  # type: ignore[arg-type]


def test_every_kind_of_input_gives_the_same_pixels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "p.png"
    Image.fromarray(pixels).save(path)
    for given in (path, str(path), path.read_bytes(), Image.open(path), pixels):
        np.testing.assert_array_equal(load_image(given), pixels)
    np.testing.assert_array_equal(load_image(np.ascontiguousarray(pixels[..., ::-1]), bgr=True), pixels)
    assert content_sha256(path) == content_sha256(path.read_bytes()) != content_sha256(pixels)


def test_huge_jpeg_is_decoded_reduced_and_other_huge_images_refused(tmp_path: Path) -> None:
    big = _jpeg(tmp_path / "big.jpg", 1600, 1200)
    assert load_image(big).shape == (1200, 1600, 3)
    assert load_image(big, max_pixels=1_000_000).shape == (600, 800, 3)  # JPEG draft: decoded at 1/2
    assert load_image(big, max_pixels=30_000).shape == (150, 200, 3)  # ... at 1/8
    with pytest.raises(ImageError, match=r"1600x1200 is too large \(limit 20000 pixels"):
        load_image(big, max_pixels=20_000)  # even 1/8 is over
    png = tmp_path / "big.png"
    Image.new("RGB", (1600, 1200)).save(png)
    with pytest.raises(ImageError, match="too large"):
        load_image(png, max_pixels=1_000_000)


def test_every_profile_caps_image_pixels_within_its_ram() -> None:
    caps = {name: load_profile(name).runtime.max_image_pixels for name in ("rpi-zero2w", "rpi4", "x86")}
    assert caps["rpi-zero2w"] * 10 < 256 * 2**20  # about 10 bytes a pixel while loading; the board has 512 MB
    assert caps["rpi-zero2w"] < caps["rpi4"] < caps["x86"]


def test_profile_image_cap_is_validated(tmp_path: Path) -> None:
    text = load_profile("x86").path.read_text().replace("max_image_pixels = 100_000_000", "max_image_pixels = 10")
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=r"runtime\.max_image_pixels: must be at least 1000000, got 10"):
        load_profile(path)
