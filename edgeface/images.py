"""Image loading (EXIF-aware, any Pillow mode) and letterboxing with its exact inverse."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from edgeface.errors import ImageError

MAX_PIXELS = 100_000_000
"""Refuse images above this many pixels (a decompression bomb, or simply too large for a Pi)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


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


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB, rotated upright by its EXIF orientation.

    Raises ImageError (naming the file) for a missing, empty, truncated, non-image or oversized file.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file")
        with warnings.catch_warnings():
            # MAX_PIXELS is the limit: Pillow's own bomb warning (above ~89 Mpx) would only add stderr noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f"{path}: {width}x{height} is too large (limit {MAX_PIXELS} pixels)")
                image.load()
                upright = ImageOps.exif_transpose(image)
                return to_rgb(upright)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None


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


def list_images(root: Path) -> list[Path]:
    """Image files under a directory, recursively, in sorted order."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
