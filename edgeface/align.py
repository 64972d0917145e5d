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
CROP_MARGIN = 2
"""Pixels kept around the region a face's warp samples, so Pillow never clips a bilinear neighbour at a crop edge."""


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


def sampling_matrix(points: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2 x 3 matrix Pillow's AFFINE transform takes to warp a face with these 5 x 2 landmarks onto the template
    at size x size: output pixel coordinates -> image pixel coordinates."""
    forward = np.vstack([similarity_transform(points, ARCFACE_TEMPLATE * (size / 112.0)), [0.0, 0.0, 1.0]])
    # Pillow's coordinates put pixel i on [i, i + 1): shift by half a pixel on both sides so that integer landmark
    # coordinates are pixel centres.
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    return (half @ np.linalg.inv(forward) @ np.linalg.inv(half))[:2]


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
    corners = np.array([[0.0, 0.0, 1.0], [size, 0.0, 1.0], [0.0, size, 1.0], [size, size, 1.0]]).T
    height, width = image.shape[:2]
    aligned = np.zeros((len(faces), size, size, 3), np.uint8)
    for i, points in enumerate(faces):
        inverse = sampling_matrix(points, size)
        # Warp from the part of the image the output can sample (bilinear reads a pixel and its neighbour), plus a
        # margin: converting that crop for Pillow costs far less than the whole frame, and the pixels are the same.
        reach = inverse @ corners
        x0, y0 = np.maximum(np.floor(reach.min(axis=1)) - CROP_MARGIN, 0).astype(int)
        x1, y1 = np.minimum(np.ceil(reach.max(axis=1)) + CROP_MARGIN, (width, height)).astype(int)
        if x1 <= x0 or y1 <= y0:
            continue  # the face maps entirely outside the image: black
        crop = Image.fromarray(np.ascontiguousarray(image[y0:y1, x0:x1]))
        shifted = inverse - np.array([[0.0, 0.0, x0], [0.0, 0.0, y0]])
        aligned[i] = np.asarray(crop.transform((size, size), Image.AFFINE, data=tuple(shifted.ravel()),
                                               resample=Image.BILINEAR, fillcolor=(0, 0, 0)))
    return aligned


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """`align_faces` for one face: 5 x 2 landmarks -> size x size x 3 uint8."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must be a 5 x 2 array of (x, y) points, got shape {points.shape}")
    return align_faces(image, points[None], size)[0]
