"""Image loading (EXIF-aware, any Pillow mode, bounded memory), the input walker, and letterboxing."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from edgeface.errors import ImageError

MAX_PIXELS = 100_000_000
"""The default cap on decoded pixels (a profile sets its board's own: `[runtime] max_image_pixels`)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")

EMPTY_FOLDER = "no files in this folder"

ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray]
"""What the API accepts as an image: a file path, encoded file bytes, a Pillow image, or an H x W x 3 uint8 array."""


def to_rgb(image: Image.Image) -> np.ndarray:
    """An H x W x 3 uint8 RGB array from a Pillow image of any mode (L, LA, P, RGBA, CMYK, I;16, I, F...)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        gray = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_image(image: ImageInput, *, bgr: bool = False, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any `ImageInput` as H x W x 3 uint8 RGB. A file (path or bytes) is turned upright by its EXIF orientation;
    an array is checked and used as it is (`bgr=True`: its channels are in OpenCV's B, G, R order).

    At most `max_pixels` are decoded: a larger JPEG is decoded at a reduced scale (1/2 to 1/8) that fits, anything
    else larger is refused. Raises ImageError naming the input for anything that is not a readable image.
    """
    if isinstance(image, np.ndarray):
        return _checked_array(image, bgr)
    with warnings.catch_warnings():
        # The image decodes or is an ImageError: Pillow's warnings (corrupt EXIF or TIFF tags skipped, its own
        # bomb warning below max_pixels) would only be stray lines on stderr.
        warnings.simplefilter("ignore")
        if isinstance(image, Image.Image):
            return _decoded(image, "image", max_pixels, upright=False)
        if isinstance(image, (bytes, bytearray, memoryview)):
            if not len(image):
                raise ImageError("image bytes: empty")
            return _read(io.BytesIO(image), "image bytes", max_pixels)
        if isinstance(image, (str, Path)):
            path = Path(image)
            try:
                if path.stat().st_size == 0:
                    raise ImageError(f"{path}: empty file")
            except FileNotFoundError:
                raise ImageError(f"{path}: no such file") from None
            except OSError as error:
                raise ImageError(f"{path}: cannot read ({error.strerror})") from None
            return _read(path, str(path), max_pixels)
    raise ImageError(f"expected an image path, file bytes, a PIL image or an H x W x 3 uint8 array, "
                     f"got {type(image).__name__}")


def _read(source: Path | io.BytesIO, where: str, max_pixels: int) -> np.ndarray:
    """Decode an image file (a path or its bytes) named `where` in errors."""
    try:
        with Image.open(source) as image:
            return _decoded(image, where, max_pixels, upright=True)
    except ImageError:
        raise
    except IsADirectoryError:
        raise ImageError(f"{where}: is a directory") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{where}: too large to decode safely") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"{where}: not a readable image ({error})") from None


def _decoded(image: Image.Image, where: str, max_pixels: int, upright: bool) -> np.ndarray:
    """The RGB pixels of an opened image, at most `max_pixels` (JPEGs drafted to a smaller scale to fit)."""
    width, height = image.size
    if width * height > max_pixels and image.format in ("JPEG", "MPO"):  # MPO: a camera JPEG with a preview
        for divisor in (2, 4, 8):
            if -(-width // divisor) * -(-height // divisor) <= max_pixels:
                image.draft(None, (width // divisor, height // divisor))
                break
    if image.size[0] * image.size[1] > max_pixels:
        raise ImageError(f"{where}: {width}x{height} is too large (limit {max_pixels} pixels for this profile)")
    if image.size[0] * image.size[1] == 0:
        raise ImageError(f"{where}: an empty {width}x{height} image")
    try:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image) if upright else image)
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, KeyError) as error:
        raise ImageError(f"{where}: not a readable image ({error})") from None


def _checked_array(array: np.ndarray, bgr: bool) -> np.ndarray:
    """A contiguous RGB copy-or-view of an H x W x 3 uint8 array; ImageError saying how to fix any other."""
    shape = array.shape
    if array.dtype != np.uint8:
        hint = " (scale floats in 0..1 with (a * 255).round().astype(np.uint8))" if array.dtype.kind == "f" else ""
        raise ImageError(f"image array: must be uint8 RGB, got dtype {array.dtype}{hint}")
    if array.ndim != 3 or shape[2] != 3:
        if array.ndim == 2 or (array.ndim == 3 and shape[2] == 1):
            hint = "grey: repeat it into 3 channels, np.dstack([a] * 3)"
        elif array.ndim == 3 and shape[2] == 4:
            hint = "RGBA: drop or composite the alpha channel"
        elif array.ndim == 3 and shape[0] in (1, 3, 4):
            hint = "channels first: a.transpose(1, 2, 0)"
        else:
            hint = "not an image"
        raise ImageError(f"image array: must be H x W x 3 (RGB), got shape {shape} ({hint})")
    if 0 in shape:
        raise ImageError(f"image array: empty, shape {shape}")
    return np.ascontiguousarray(array[..., ::-1] if bgr else array)


def content_sha256(image: ImageInput) -> str:
    """The SHA-256 of an input's content: the file's bytes, the bytes given, or the decoded pixels."""
    if isinstance(image, (str, Path)):
        try:
            return hashlib.sha256(Path(image).read_bytes()).hexdigest()
        except OSError as error:
            raise ImageError(f"{image}: cannot read ({error.strerror})") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return hashlib.sha256(image).hexdigest()
    pixels = load_image(image)
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


@dataclass(frozen=True)
class Input:
    """One input of a run: the name it is shown by, its path, and why it cannot be read (None: try to read it)."""

    name: str
    path: Path
    problem: str | None = None

    def error(self) -> ImageError:
        """The problem as an ImageError naming the path."""
        return ImageError(f"{self.path}: {self.problem}")


def iter_inputs(paths: Iterable[str | Path]) -> Iterator[Input]:
    """Every input of a run: a file as given, or every file under a folder, recursively in name order.

    A file found in a folder is named by its path relative to that folder. Hidden files and folders (a leading
    '.') are skipped; symlinked folders are followed (a loop is reported once). Everything else is an input, so a
    stray non-image, a dangling symlink, a fifo, an unreadable or an empty folder is reported rather than ignored.
    """
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            yield Input(str(given), root)
            continue
        found = False
        for item in _walk(root, PurePosixPath(), ()):
            found = True
            yield item
        if not found:
            yield Input(str(given), root, EMPTY_FOLDER)


def _walk(folder: Path, relative: PurePosixPath, ancestors: tuple[tuple[int, int], ...]) -> Iterator[Input]:
    """The inputs under `folder`, shown as `relative`/name; `ancestors` are the (device, inode) above it."""
    name = relative.as_posix() if relative.parts else str(folder)
    try:
        status = folder.stat()
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as error:
        yield Input(name, folder, f"cannot read this folder ({error.strerror})")
        return
    here = (status.st_dev, status.st_ino)
    if here in ancestors:
        yield Input(name, folder, "symlink loop (a folder inside itself), skipped")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path, shown = Path(entry.path), relative / entry.name
        try:
            if entry.is_dir():
                yield from _walk(path, shown, (*ancestors, here))
            elif entry.is_file():
                yield Input(shown.as_posix(), path)
            elif entry.is_symlink():
                yield Input(shown.as_posix(), path, "broken symlink (its target is missing)")
            else:
                yield Input(shown.as_posix(), path, "not a regular file (a fifo, socket or device)")
        except OSError as error:
            yield Input(shown.as_posix(), path, f"cannot read ({error.strerror})")


def list_images(root: Path) -> list[Path]:
    """The image files (by suffix) under a folder, walked by `iter_inputs`' rules; ImageError for a folder that
    cannot be read completely (an unreadable sub-folder, a dangling symlink...)."""
    paths = []
    for item in iter_inputs([root]):
        if item.problem not in (None, EMPTY_FOLDER):
            raise item.error()
        if item.problem is None and item.path.suffix.lower() in IMAGE_SUFFIXES:
            paths.append(item.path)
    return paths


@dataclass(frozen=True)
class Letterbox:
    """How an image was scaled into a model input: input = original * scale, placed at the top-left corner."""

    scale_x: float
    scale_y: float

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map (..., 2k) x/y-interleaved coordinates from model-input pixels back to original pixels."""
        points = np.asarray(points, dtype=np.float64)
        factors = np.tile([1.0 / self.scale_x, 1.0 / self.scale_y], points.shape[-1] // 2)
        return points * factors

    def to_input(self, points: np.ndarray) -> np.ndarray:
        """The forward mapping, original pixels to model-input pixels (the inverse of `to_original`)."""
        points = np.asarray(points, dtype=np.float64)
        return points * np.tile([self.scale_x, self.scale_y], points.shape[-1] // 2)


def letterbox(image: np.ndarray, width: int, height: int, fill: tuple[int, int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize `image` (H x W x 3 uint8) to fit width x height keeping its aspect, pad right/bottom with `fill`."""
    src_h, src_w = image.shape[:2]
    ratio = min(width / src_w, height / src_h)
    new_w = min(width, max(1, round(src_w * ratio)))
    new_h = min(height, max(1, round(src_h * ratio)))
    canvas = Image.new("RGB", (width, height), tuple(fill))
    canvas.paste(pillow(image) if (new_w, new_h) == (src_w, src_h) else resize(image, new_w, new_h))
    return np.asarray(canvas), Letterbox(new_w / src_w, new_h / src_h)


def pillow(image: np.ndarray | Image.Image) -> Image.Image:
    """A Pillow image of an H x W x 3 uint8 RGB array (a copy); a Pillow image as it is. Convert a frame once when
    several resizes or crops are made from it: the conversion costs about as much as a resize."""
    return image if isinstance(image, Image.Image) else Image.fromarray(image)


def resize(image: np.ndarray | Image.Image, width: int, height: int) -> Image.Image:
    """Bilinear (antialiased when shrinking) resize of an RGB image: the one filter model inputs are made with."""
    return pillow(image).resize((width, height), Image.BILINEAR)
