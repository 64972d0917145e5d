"""Five-point face alignment onto the ArcFace 112 x 112 template (Umeyama similarity, Pillow warp)."""

from __future__ import annotations

import numpy as np
from PIL import Image

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
"""Landmarks of a 112 x 112 aligned face (pixel centres at integers): the eye on the image's left, the other
eye, the nose tip, the mouth corner on the image's left, the other mouth corner."""


def _points(points: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) < 2:
        raise ValueError(f"{name} must be an N x 2 array of (x, y) points with N >= 2, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinite coordinates")
    return array


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 least-squares similarity M (rotation, uniform scale, translation; never a reflection)
    with dst ~ M @ [x, y, 1], by Umeyama's method."""
    src, dst = _points(src, "source points"), _points(dst, "destination points")
    if src.shape != dst.shape:
        raise ValueError(f"source and destination points differ in shape: {src.shape} vs {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / len(src)
    if src_var < 1e-12:
        raise ValueError("source points all coincide: no similarity transform is defined")
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_var
    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_faces(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp each face (N x 5 x 2 landmarks: x, y in image pixels, template order) of an H x W x 3 uint8 RGB
    image onto the ArcFace template scaled to size x size; N x size x size x 3 uint8, outside the image black."""
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        raise ValueError(f"image must be an H x W x 3 uint8 RGB array, got {getattr(image, 'shape', type(image))}")
    faces = np.asarray(landmarks, dtype=np.float64)
    if faces.ndim != 3 or faces.shape[1:] != (5, 2):
        raise ValueError(f"landmarks must be an N x 5 x 2 array of (x, y) points, got shape {faces.shape}")
    if size < 1:
        raise ValueError(f"output size must be positive, got {size}")
    source = Image.fromarray(image)  # once per image: the copy costs more than a warp on a large photo
    # Pillow maps each output pixel back to the input, in coordinates where pixel i spans [i, i + 1):
    # shift by half a pixel on both sides so integer landmark coordinates are pixel centres.
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    aligned = np.empty((len(faces), size, size, 3), np.uint8)
    for i, points in enumerate(faces):
        forward = np.vstack([similarity_transform(points, ARCFACE_TEMPLATE * (size / 112.0)), [0.0, 0.0, 1.0]])
        inverse = half @ np.linalg.inv(forward) @ np.linalg.inv(half)
        aligned[i] = np.asarray(source.transform((size, size), Image.AFFINE, data=tuple(inverse[:2].ravel()),
                                                 resample=Image.BILINEAR, fillcolor=(0, 0, 0)))
    return aligned


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """`align_faces` for one face: 5 x 2 landmarks -> size x size x 3 uint8."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must be a 5 x 2 array of (x, y) points, got shape {points.shape}")
    return align_faces(image, points[None], size)[0]
