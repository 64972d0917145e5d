"""Calibration inputs for int8, made from real photos exactly the way the runtime will feed each model.

Photos come from `wider_train_calib` (WIDER FACE train, which the detectors were trained on, so it is fair
for calibration and never used for accuracy). Without the shared data, the sample photos of the insightface
wheel are used instead and the manifest says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from convert import ConvertError
from edgeface.align import align_face
from edgeface.detection import Detections
from edgeface.images import letterbox, list_images, load_image, resize
from edgeface.mtcnn import crop_square_resized, pyramid_sizes
from edgeface.tools.datasets import data_dir

SEED = 20261124
FACE_SCORE = 0.8
MIN_FACE_SIDE = 24


@dataclass
class CalibrationSet:
    """The photos to calibrate on, and the faces the float RetinaFace found in them (filled in lazily)."""

    name: str
    paths: list[Path]
    faces: dict[int, Detections] = field(default_factory=dict)

    def photos(self) -> Iterator[np.ndarray]:
        """Each photo as H x W x 3 uint8 RGB."""
        for path in self.paths:
            yield load_image(path)

    def describe(self, count: int) -> dict[str, object]:
        """The manifest's calibration record."""
        return {"set": self.name, "photos": len(self.paths), "samples": count}


def calibration_set(sample_folder: Path) -> CalibrationSet:
    """wider_train_calib when the shared data is present, else the registry sample photos in `sample_folder`."""
    root = data_dir()
    if root is not None and (root / "wider_train_calib" / "images").is_dir():
        return CalibrationSet("wider_train_calib", list_images(root / "wider_train_calib" / "images"))
    if os.environ.get("CI") == "true":  # CI calibrates on the real faces: a missing folder is an error there
        raise ConvertError(f"{root or '../shared/data'}: no wider_train_calib/images to calibrate on (CI=true)")
    return CalibrationSet("insightface-2.1 sample images (shared data absent)", list_images(sample_folder))


def onnx2tf_sample(calib: CalibrationSet) -> np.ndarray:
    """20 x 128 x 128 x 3 float32 in [0, 1] from real photos, for onnx2tf's own float sanity check."""
    photos = [np.asarray(resize(photo, 128, 128)) for photo, _ in zip(calib.photos(), range(20))]
    while len(photos) < 20:
        photos.append(photos[len(photos) % len(photos)][:, ::-1])
    return np.stack(photos).astype(np.float32) / 255.0


def letterboxed(calib: CalibrationSet, size: int, fill: tuple[int, int, int]) -> Iterator[np.ndarray]:
    """Each photo letterboxed to size x size, as the detector sees it."""
    for photo in calib.photos():
        yield letterbox(photo, size, size, fill)[0][None].astype(np.float32)


def pyramid_crops(calib: CalibrationSet, crop: int, input_size: int, min_face: int,
                  factor: float, fill: tuple[int, int, int]) -> Iterator[np.ndarray]:
    """Random crop x crop windows of the MTCNN pyramid levels of each letterboxed photo (PNet's view)."""
    rng = np.random.default_rng(SEED)
    for photo in calib.photos():
        boxed = letterbox(photo, input_size, input_size, fill)[0]
        levels = pyramid_sizes(input_size, input_size, min_face, factor, max_levels=20)
        width, height = levels[rng.integers(len(levels))]
        level = np.asarray(resize(boxed, width, height))
        canvas = np.empty((crop, crop, 3), np.uint8)
        canvas[...] = np.asarray(fill, np.uint8)
        y = int(rng.integers(max(1, height - crop + 1)))
        x = int(rng.integers(max(1, width - crop + 1)))
        window = level[y:y + crop, x:x + crop]
        canvas[:window.shape[0], :window.shape[1]] = window
        yield canvas[None].astype(np.float32)


def face_crops(calib: CalibrationSet, size: int) -> Iterator[np.ndarray]:
    """R/ONet's view: jittered squares around found faces, and as many random squares (mostly background)."""
    rng = np.random.default_rng(SEED + size)
    for index, photo in enumerate(calib.photos()):
        found = calib.faces.get(index)
        height, width = photo.shape[:2]
        boxes = [] if found is None else list(found.boxes)
        for box in boxes[:8]:
            side = max(box[2] - box[0], box[3] - box[1]) * rng.uniform(0.8, 1.3)
            cx = (box[0] + box[2]) / 2 + rng.uniform(-0.2, 0.2) * side
            cy = (box[1] + box[3]) / 2 + rng.uniform(-0.2, 0.2) * side
            yield crop_square_resized(photo, np.array([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]]),
                                      size).astype(np.float32)
        for _ in range(max(2, len(boxes[:8]))):
            side = rng.uniform(12, max(13, min(width, height) / 2))
            x, y = rng.uniform(0, width - side), rng.uniform(0, height - side)
            yield crop_square_resized(photo, np.array([[x, y, x + side, y + side]]), size).astype(np.float32)


def liveness_crops(calib: CalibrationSet, size: int, limit: int = 300) -> Iterator[np.ndarray]:
    """The liveness model's view: squares around found faces (edgeface.liveness.face_square), scale-jittered."""
    rng = np.random.default_rng(SEED + size + 1)
    count = 0
    for index, photo in enumerate(calib.photos()):
        found = calib.faces.get(index)
        for box in [] if found is None else list(found.boxes)[:4]:
            side = max(box[2] - box[0], box[3] - box[1]) * rng.uniform(0.9, 1.2)
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            yield crop_square_resized(photo, np.array([[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]]),
                                      size).astype(np.float32)
            count += 1
            if count >= limit:
                return


def aligned_faces(calib: CalibrationSet, limit: int = 1000) -> Iterator[np.ndarray]:
    """112 x 112 faces aligned by the float RetinaFace's landmarks, as MobileFaceNet sees them."""
    count = 0
    for index, photo in enumerate(calib.photos()):
        found = calib.faces.get(index)
        if found is None:
            continue
        for box, score, points in zip(found.boxes, found.scores, found.landmarks):
            if score >= FACE_SCORE and min(box[2] - box[0], box[3] - box[1]) >= MIN_FACE_SIDE and count < limit:
                count += 1
                yield align_face(photo, points)[None].astype(np.float32)
