"""The detector-independent result of face detection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    """N faces in original-image pixels: boxes [x1, y1, x2, y2], scores, and 5 landmarks (x, y) each.

    Landmark order is the ArcFace template's: eye on the image's left, other eye, nose tip,
    mouth corner on the image's left, other mouth corner.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def sigmoid(logits: np.ndarray | float) -> np.ndarray:
    """The probability of each logit, in float64 (the detectors' face logits, the liveness regression)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def logit_of(probability: float) -> float:
    """log(p / (1 - p)), the inverse of `sigmoid`: a threshold on a probability as one on its logit (-inf / inf at
    0 / 1)."""
    with np.errstate(divide="ignore"):
        return float(np.log(probability) - np.log1p(-probability))
