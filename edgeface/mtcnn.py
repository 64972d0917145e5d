"""MTCNN cascade: image pyramid -> PNet per level -> NMS -> RNet -> ONet (crops batched) -> 5 landmarks.

The image is first letterboxed to the profile's input size, so the pyramid has the same fixed level sizes
on every frame. Level sizes are rounded to even numbers: the PNet model is exported without ceil-mode
padding and is exact at even sizes only (the manifest says `size_multiple: 2`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from edgeface.detection import Detections, sigmoid
from edgeface.images import letterbox, pillow, resize
from edgeface.interpreter import TFLiteModel
from edgeface.nms import nms

PNET_CELL = 12
PNET_STRIDE = 2


@dataclass(frozen=True)
class CascadeSettings:
    """Pyramid and stage thresholds (from the profile)."""

    input_size: int
    min_face: int
    factor: float
    max_levels: int
    thresholds: tuple[float, float, float]


def pyramid_sizes(width: int, height: int, min_face: int, factor: float, max_levels: int) -> list[tuple[int, int]]:
    """(width, height) of each pyramid level, even, largest first, the smallest side at least 12."""
    scale = PNET_CELL / min_face
    sizes: list[tuple[int, int]] = []
    while min(width, height) * scale >= PNET_CELL and len(sizes) < max_levels:
        sizes.append((max(PNET_CELL, 2 * round(width * scale / 2)), max(PNET_CELL, 2 * round(height * scale / 2))))
        scale *= factor
    return sizes


def crop_square_resized(image: np.ndarray | Image.Image, boxes: np.ndarray, size: int) -> np.ndarray:
    """N x size x size x 3 crops of `boxes` (black outside the image), antialiased like the calibration."""
    source = pillow(image)
    crops = np.empty((len(boxes), size, size, 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(np.int64)):
        region = source.crop((int(x1), int(y1), max(int(x2), int(x1) + 1), max(int(y2), int(y1) + 1)))
        crops[i] = np.asarray(resize(region, size, size))
    return crops


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares around their centres."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.column_stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply MTCNN box regression (offsets relative to box width/height)."""
    wh = np.tile(boxes[:, 2:4] - boxes[:, 0:2], 2)
    return boxes + offsets * wh


class Mtcnn:
    """The three-stage MTCNN detector over P/R/O-Net models of the manifest."""

    def __init__(self, pnet: TFLiteModel, rnet: TFLiteModel, onet: TFLiteModel, settings: CascadeSettings) -> None:
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.settings = settings
        self.fill = tuple(pnet.spec.preprocessing["letterbox_fill"])
        side = settings.input_size
        self.levels = pyramid_sizes(side, side, settings.min_face, settings.factor, settings.max_levels)

    def _proposals(self, boxed: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        side = self.settings.input_size
        all_boxes, all_scores = [], []
        for width, height in self.levels:
            out = self.pnet.run(np.asarray(resize(boxed, width, height))[None])
            prob = sigmoid(out["face_logit"][0, ..., 0])
            ys, xs = np.nonzero(prob >= self.settings.thresholds[0])
            if ys.size == 0:
                continue
            sx, sy = width / side, height / side
            cells = np.column_stack([xs * PNET_STRIDE, ys * PNET_STRIDE,
                                     xs * PNET_STRIDE + PNET_CELL, ys * PNET_STRIDE + PNET_CELL]).astype(np.float64)
            cells /= [sx, sy, sx, sy]
            boxes = _regress(cells, out["box_reg"][0, ys, xs].astype(np.float64))
            scores = prob[ys, xs]
            keep = nms(cells, scores, 0.5)
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
        if not all_boxes:
            return np.zeros((0, 4)), np.zeros(0)
        boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
        keep = nms(boxes, scores, 0.7)
        return _square(boxes[keep]), scores[keep]

    def _refine(self, model: TFLiteModel, boxed: Image.Image, boxes: np.ndarray,
                threshold: float) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        size = model.spec.input.shape[1]
        out = model.run(crop_square_resized(boxed, boxes, size))
        prob = sigmoid(out["face_logit"][:, 0])
        keep = prob >= threshold
        return boxes[keep], prob[keep], {role: values[keep] for role, values in out.items()}

    def detect(self, image: np.ndarray, score_threshold: float, nms_iou: float,
               max_faces: int | None = None) -> Detections:
        """Faces in an H x W x 3 uint8 RGB image, in original pixels; `score_threshold` gates ONet's output."""
        side = self.settings.input_size
        pixels, mapping = letterbox(image, side, side, self.fill)
        boxed = pillow(pixels)  # converted once for every pyramid level and crop
        empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
        boxes, _ = self._proposals(boxed)
        if len(boxes) == 0:
            return empty
        boxes, scores, out = self._refine(self.rnet, boxed, boxes, self.settings.thresholds[1])
        if len(boxes) == 0:
            return empty
        boxes = _regress(boxes, out["box_reg"].astype(np.float64))
        keep = nms(boxes, scores, 0.7)
        boxes = _square(boxes[keep])
        boxes, scores, out = self._refine(self.onet, boxed, boxes, max(self.settings.thresholds[2], score_threshold))
        if len(boxes) == 0:
            return empty
        wh = boxes[:, 2:4] - boxes[:, 0:2]
        marks = out["landmarks"].astype(np.float64)
        points = np.stack([boxes[:, None, 0] + marks[:, :5] * wh[:, None, 0],
                           boxes[:, None, 1] + marks[:, 5:] * wh[:, None, 1]], axis=2)
        boxes = _regress(boxes, out["box_reg"].astype(np.float64))
        keep = nms(boxes, scores, nms_iou, mode="min", max_keep=max_faces)
        return Detections(
            boxes=mapping.to_original(boxes[keep]),
            scores=scores[keep],
            landmarks=mapping.to_original(points[keep].reshape(-1, 10)).reshape(-1, 5, 2),
        )
