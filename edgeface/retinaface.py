"""RetinaFace: letterbox, one invoke, prior decoding of boxes and 5 landmarks, score threshold, NMS."""

from __future__ import annotations

import numpy as np

from edgeface.detection import Detections, logit_of, sigmoid
from edgeface.errors import ModelError
from edgeface.images import Letterbox, letterbox
from edgeface.interpreter import TFLiteModel
from edgeface.manifest import Quantization
from edgeface.nms import nms


class RetinaFace:
    """Face detector over one RetinaFace model of the manifest (int8 or float)."""

    def __init__(self, model: TFLiteModel) -> None:
        self.model = model
        _, self.height, self.width, _ = model.spec.input.shape
        self.fill = tuple(model.spec.preprocessing["letterbox_fill"])
        decoder = model.spec.decoder
        self.variances = tuple(decoder["variances"])
        # The lowest threshold RetinaFace accepts: the int8 face-logit outputs start there (convert.retinaface).
        self.min_score_threshold = float(decoder.get("min_score_threshold", 0.0))
        # An int8 logit on the bottom step of its output's range is clipped (everything below the range lands
        # there), never a face: a prior counts only above the midpoint between the two lowest steps.
        self.clipped = {output.role: _bottom_step(output.dtype, output.quantization) for output in model.spec.outputs
                        if output.role.startswith("conf") and output.quantization is not None}
        self.levels = [
            (step, self._priors(step, sizes)) for step, sizes in zip(decoder["steps"], decoder["min_sizes"])
        ]

    def _priors(self, step: int, sizes: list[int]) -> np.ndarray:
        """Prior (cx, cy, size) in input pixels, ordered by cell row, cell column, then size."""
        rows, cols = -(-self.height // step), -(-self.width // step)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        centers = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * step
        centers = np.repeat(centers, len(sizes), axis=0)
        scales = np.tile(np.asarray(sizes, dtype=np.float64), rows * cols)
        return np.column_stack([centers, scales])

    def detect(self, image: np.ndarray, score_threshold: float, nms_iou: float,
               max_faces: int | None = None) -> Detections:
        """Faces in an H x W x 3 uint8 RGB image, in original-image pixels."""
        boxed, mapping = letterbox(image, self.width, self.height, self.fill)
        return self.postprocess(self.model.run(boxed[None]), mapping, score_threshold, nms_iou, max_faces)

    def postprocess(self, outputs: dict[str, np.ndarray], mapping: Letterbox, score_threshold: float,
                    nms_iou: float, max_faces: int | None = None) -> Detections:
        """Score threshold, prior decoding and NMS of one invoke's outputs, mapped back to original pixels."""
        if score_threshold < self.min_score_threshold:
            raise ModelError(f"score threshold {score_threshold} is below {self.min_score_threshold}, the lowest "
                             f"RetinaFace accepts (its int8 face-logit outputs start there)")
        logit_threshold = logit_of(score_threshold)
        picked_logits, picked_loc, picked_landmarks, picked_priors = [], [], [], []
        for step, priors in self.levels:
            logits = outputs[f"conf_s{step}"].reshape(-1)
            keep = np.flatnonzero(logits > max(logit_threshold, self.clipped.get(f"conf_s{step}", -np.inf)))
            picked_logits.append(logits[keep])
            picked_loc.append(outputs[f"loc_s{step}"].reshape(-1, 4)[keep])
            picked_landmarks.append(outputs[f"landmarks_s{step}"].reshape(-1, 10)[keep])
            picked_priors.append(priors[keep])
        scores = sigmoid(np.concatenate(picked_logits))
        boxes, landmarks = decode(
            np.concatenate(picked_loc), np.concatenate(picked_landmarks), np.concatenate(picked_priors),
            self.variances,
        )
        keep = nms(boxes, scores, nms_iou, max_keep=max_faces)
        return Detections(
            boxes=mapping.to_original(boxes[keep]),
            scores=scores[keep],
            landmarks=mapping.to_original(landmarks[keep].reshape(-1, 10)).reshape(-1, 5, 2),
        )


def _bottom_step(dtype: str, quantization: Quantization) -> float:
    """Midway between the lowest two dequantized values of an integer tensor."""
    return (np.iinfo(dtype).min + 0.5 - quantization.zero_point) * quantization.scale


def decode(loc: np.ndarray, landmarks: np.ndarray, priors: np.ndarray,
           variances: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes [x1, y1, x2, y2] and landmarks (N x 10, x/y interleaved) from regressions and priors (cx, cy, s)."""
    loc = loc.astype(np.float64)
    centers, sizes = priors[:, :2], priors[:, 2:3]
    box_centers = centers + loc[:, :2] * variances[0] * sizes
    box_sizes = sizes * np.exp(loc[:, 2:] * variances[1])
    boxes = np.concatenate([box_centers - box_sizes / 2, box_centers + box_sizes / 2], axis=1)
    points = np.tile(centers, 5) + landmarks.astype(np.float64) * variances[0] * np.tile(sizes, 10)
    return boxes, points
