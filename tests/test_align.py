"""Alignment: Umeyama similarity recovery, no reflections, landmarks landing on the template, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from edgeface.align import ARCFACE_TEMPLATE, align_face, align_faces, sampling_matrix, similarity_transform
from edgeface.images import list_images, load_image
from edgeface.tools.datasets import data_dir


def _similarity(angle: float, scale: float, tx: float, ty: float) -> np.ndarray:
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_recovers_known_similarity() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth = _similarity(rng.uniform(-np.pi, np.pi), rng.uniform(0.2, 5.0), *rng.uniform(-300, 300, 2))
        recovered = similarity_transform(ARCFACE_TEMPLATE, _apply(truth, ARCFACE_TEMPLATE))
        np.testing.assert_allclose(recovered, truth, atol=1e-9)


def test_mirrored_points_give_no_reflection() -> None:
    mirrored = ARCFACE_TEMPLATE * [-1.0, 1.0]
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    linear = matrix[:, :2]
    assert np.linalg.det(linear) > 0
    assert linear[0, 0] == pytest.approx(linear[1, 1]) and linear[0, 1] == pytest.approx(-linear[1, 0])


def _background(rng: np.random.Generator) -> np.ndarray:
    """A real photo when the shared data is present, else noise."""
    root = data_dir()
    photos = list_images(root / "group_photos") if root and (root / "group_photos").is_dir() else []
    image = load_image(photos[0]) if photos else rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    return np.ascontiguousarray(image[:360, :480])


@pytest.mark.parametrize("size", [112, 160])
def test_landmarks_land_on_template(size: int) -> None:
    rng = np.random.default_rng(1)
    points = np.round(_apply(_similarity(np.deg2rad(25), 1.6, 150.0, 40.0), ARCFACE_TEMPLATE))  # pixel centres
    canvas = Image.fromarray(_background(rng))
    draw = ImageDraw.Draw(canvas)
    for x, y in points:  # a bright dot inside a black halo, so the photo does not bias the centroid
        draw.ellipse((x - 12, y - 12, x + 12, y + 12), fill=(0, 0, 0))
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(255, 255, 255))
    aligned = align_face(np.asarray(canvas), points, size)
    assert aligned.shape == (size, size, 3) and aligned.dtype == np.uint8
    brightness = aligned.astype(np.float64).mean(axis=2)
    ys, xs = np.mgrid[:size, :size]
    template = ARCFACE_TEMPLATE * (size / 112)
    # Rounding the dots leaves a small least-squares residual, so also compare with where the fit sends each
    # dot: a half-pixel convention error would show there (it measures 0.3 px or more for this face).
    fitted = _apply(similarity_transform(points, template), points)
    for target, exact in zip(template, fitted):
        weights = brightness * (np.hypot(xs - target[0], ys - target[1]) <= 4 * size / 112)
        centroid = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
        assert np.hypot(*(centroid - target)) < 1.0
        assert np.hypot(*(centroid - exact)) < 0.15


def test_outside_the_image_is_black() -> None:
    image = np.full((60, 60, 3), 200, np.uint8)
    aligned = align_face(image, ARCFACE_TEMPLATE * 0.3 + 30)  # a small face at the bottom-right corner
    assert (aligned[-1, -1] == 0).all() and (aligned[0, 0] == 200).all()


def test_warping_a_crop_equals_warping_the_frame() -> None:
    """align_faces warps from a crop around each face: the pixels must be those of a warp of the whole frame, for
    faces inside, across the edges of and beyond the image, tiny or larger than the frame, at any angle."""
    rng = np.random.default_rng(2)
    image = _background(rng)
    height, width = image.shape[:2]
    faces = [_apply(_similarity(rng.uniform(-np.pi, np.pi), scale, *rng.uniform([-80, -80], [width + 80, height + 80])),
                    ARCFACE_TEMPLATE - 56)
             for scale in np.geomspace(0.05, 12, 120)]
    frame = Image.fromarray(image)
    for size in (112, 57):
        expected = [np.asarray(frame.transform((size, size), Image.AFFINE, data=tuple(sampling_matrix(f, size).ravel()),
                                               resample=Image.BILINEAR, fillcolor=(0, 0, 0))) for f in faces]
        np.testing.assert_array_equal(align_faces(image, np.array(faces), size), np.array(expected))


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        (np.zeros((4, 2)), "5 x 2"),
        (np.zeros((5, 3)), "5 x 2"),
        (np.where(np.eye(5, 2) > 0, np.nan, ARCFACE_TEMPLATE), "NaN"),
        (np.full((5, 2), 50.0), "coincide"),
    ],
)
def test_bad_landmarks_raise(landmarks: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        align_face(np.zeros((100, 100, 3), np.uint8), landmarks)


def test_bad_image_raises() -> None:
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        align_face(np.zeros((100, 100), np.uint8), ARCFACE_TEMPLATE)
