"""Float against int8 on the user's own photos, no labels: do the two precisions find, place, embed and name the
same faces? (`edgeface check-quant --photos DIR [--gallery DB]`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.analyzer import Face, FaceAnalyzer
from edgeface.errors import ImageError
from edgeface.gallery import UNKNOWN, Gallery
from edgeface.images import load_image
from edgeface.nms import greedy_pairs, iou_matrix

MIN_IOU = 0.5
"""Two detections of one face by the two precisions overlap at least this much."""
NEAR_THRESHOLD = 0.1
"""Faces whose float similarity is within this of the threshold are the ones a precision change can flip."""


def pair_faces(first: list[Face], second: list[Face], min_iou: float = MIN_IOU) -> list[tuple[int, int, float]]:
    """(index in first, index in second, IoU) of the faces found by both, best overlaps paired first."""
    if not first or not second:
        return []
    iou = iou_matrix(np.array([face.box for face in first], np.float64),
                     np.array([face.box for face in second], np.float64))
    return [(i, j, float(iou[i, j])) for i, j in greedy_pairs(iou, iou >= min_iou)]


@dataclass
class Agreement:
    """What the two precisions did on every photo, face by face (matched faces only for the per-face lists)."""

    photos: int = 0
    unreadable: list[str] = field(default_factory=list)
    faces: dict[str, int] = field(default_factory=lambda: {"float": 0, "int8": 0})
    only: dict[str, int] = field(default_factory=lambda: {"float": 0, "int8": 0})
    iou: list[float] = field(default_factory=list)
    landmark_shift: list[float] = field(default_factory=list)  # mean landmark distance / face side
    cosine: list[float] = field(default_factory=list)
    identities: list[tuple[str, str]] = field(default_factory=list)  # (float, int8)
    similarities: list[tuple[float, float]] = field(default_factory=list)


def _side(face: Face) -> float:
    return math.sqrt(max(face.area, 1.0))


def compare_photo(image: np.ndarray, analyzers: dict[str, FaceAnalyzer], gallery: Gallery | None,
                  threshold: float, found: Agreement) -> None:
    """Add one photo's faces to `found`: each precision detects and embeds its own faces."""
    faces = {p: analyzer.embed(image) for p, analyzer in analyzers.items()}
    for p in faces:
        found.faces[p] += len(faces[p])
    pairs = pair_faces(faces["float"], faces["int8"])
    found.only["float"] += len(faces["float"]) - len(pairs)
    found.only["int8"] += len(faces["int8"]) - len(pairs)
    for i, j, iou in pairs:
        f, q = faces["float"][i], faces["int8"][j]
        found.iou.append(iou)
        shift = np.linalg.norm(np.array(f.landmarks) - np.array(q.landmarks), axis=1).mean()
        found.landmark_shift.append(float(shift / _side(f)))
        found.cosine.append(float(np.dot(f.embedding, q.embedding)))
        if gallery is not None:
            answers = gallery.identify(np.stack([f.embedding, q.embedding]), threshold)
            found.identities.append((answers[0][0], answers[1][0]))
            found.similarities.append((answers[0][1], answers[1][1]))


def _stats(values: list[float]) -> dict[str, float | None]:
    """mean, min, 5th percentile, median, 95th percentile, max (None for no values)."""
    keys = ("mean", "min", "p05", "median", "p95", "max")
    if not values:
        return dict.fromkeys(keys)
    array = np.array(values)
    return dict(zip(keys, (float(array.mean()), float(array.min()), *map(float, np.quantile(array, [0.05, 0.5, 0.95])),
                           float(array.max()))))


def same_accept_threshold(similarities: list[tuple[float, float]], threshold: float) -> float | None:
    """The int8 threshold that accepts as many of these faces as float does at `threshold` (None if float accepts
    none or all of them)."""
    if not similarities:
        return None
    float_scores, int8_scores = (np.array(column) for column in zip(*similarities))
    accepted = int((float_scores >= threshold).sum())
    if accepted in (0, len(float_scores)):
        return None
    return float(np.sort(int8_scores)[::-1][accepted - 1])


def summarise(found: Agreement, threshold: float | None) -> dict[str, Any]:
    """The report section."""
    matched = len(found.iou)
    report: dict[str, Any] = {
        "photos": found.photos, "unreadable": found.unreadable, "faces": found.faces, "matched_faces": matched,
        "found_by_one_only": found.only, "box_iou": _stats(found.iou), "landmark_shift": _stats(found.landmark_shift),
        "cosine_int8_float": _stats(found.cosine),
    }
    if threshold is not None and found.identities:
        differ = sum(a != b for a, b in found.identities)
        shift = [q - f for f, q in found.similarities]
        near = [q - f for f, q in found.similarities if abs(f - threshold) <= NEAR_THRESHOLD]
        report["gallery"] = {
            "threshold": threshold, "faces": matched, "identity_differs": differ / matched,
            "named_by_float": sum(a != UNKNOWN for a, _ in found.identities),
            "named_by_int8": sum(b != UNKNOWN for _, b in found.identities),
            "similarity_shift": _stats(shift), "near_threshold": {"faces": len(near), "shift": _stats(near)},
            "int8_threshold_same_accept_rate": same_accept_threshold(found.similarities, threshold),
        }
    return report


def photo_agreement(paths: list[Path], analyzers: dict[str, FaceAnalyzer], gallery: Gallery | None,
                    threshold: float) -> tuple[dict[str, Any], Agreement]:
    """Both precisions over `paths` (a photo that cannot be read is listed, not fatal)."""
    found = Agreement()
    for path in paths:
        try:
            image = load_image(path)
        except ImageError as error:
            found.unreadable.append(str(error))
            continue
        found.photos += 1
        compare_photo(image, analyzers, gallery, threshold, found)
    return summarise(found, threshold if gallery is not None else None), found
