"""Landmark error against dlib imglab XML with 68 iBUG points per face: 5 ArcFace-order points, IoU
matching of detections to the annotated boxes, and NME normalised by the inter-ocular distance."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeface.nms import iou_matrix

IBUG_POINTS = 68


@dataclass(frozen=True)
class AnnotatedFace:
    """One annotated face: box [x1, y1, x2, y2] and the 5 points (5 x 2) in ArcFace order."""

    box: np.ndarray
    points: np.ndarray


def five_points(ibug: np.ndarray) -> np.ndarray:
    """The 5 ArcFace-order points of 68 iBUG points (0-based): the centres of eyes 36-41 and 42-47, nose tip 30,
    mouth corners 48 and 54. iBUG's 36-41 and 48 are the subject's right side, the image's left: ArcFace's
    order (eye on the image's left first) for an upright face."""
    ibug = np.asarray(ibug, dtype=np.float64)
    if ibug.shape != (IBUG_POINTS, 2):
        raise ValueError(f"expected {IBUG_POINTS} x 2 iBUG points, got shape {ibug.shape}")
    return np.stack([ibug[36:42].mean(axis=0), ibug[42:48].mean(axis=0), ibug[30], ibug[48], ibug[54]])


def read_imglab(path: Path) -> dict[str, list[AnnotatedFace]]:
    """Faces per image file name in an imglab XML; boxes marked ignore or without all 68 parts are left out."""
    faces: dict[str, list[AnnotatedFace]] = {}
    for image in ElementTree.parse(path).getroot().iter("image"):
        found = faces.setdefault(image.attrib["file"], [])
        for box in image.iter("box"):
            parts = {int(part.attrib["name"]): (float(part.attrib["x"]), float(part.attrib["y"]))
                     for part in box.iter("part")}
            if box.attrib.get("ignore") == "1" or sorted(parts) != list(range(IBUG_POINTS)):
                continue
            left, top = float(box.attrib["left"]), float(box.attrib["top"])
            corners = [left, top, left + float(box.attrib["width"]), top + float(box.attrib["height"])]
            found.append(AnnotatedFace(np.array(corners), five_points(np.array([parts[i] for i in sorted(parts)]))))
    return faces


def match(truth: np.ndarray, found: np.ndarray, min_iou: float) -> np.ndarray:
    """For each true box (N x 4), the index of its detection (M x 4) or -1: one-to-one, greedily by highest IoU."""
    owner = np.full(len(truth), -1, dtype=np.int64)
    if len(truth) == 0 or len(found) == 0:
        return owner
    overlaps = iou_matrix(np.asarray(truth, np.float64), np.asarray(found, np.float64))
    taken = np.zeros(len(found), dtype=bool)
    for flat in np.argsort(-overlaps, axis=None, kind="stable"):
        row, col = divmod(int(flat), len(found))
        if overlaps[row, col] < min_iou:
            break
        if owner[row] < 0 and not taken[col]:
            owner[row], taken[col] = col, True
    return owner


def nme(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Mean point-to-point distance of 5 predicted to 5 true points over the true inter-ocular distance
    (between the two eye centres)."""
    truth = np.asarray(truth, np.float64)
    errors = np.linalg.norm(np.asarray(predicted, np.float64) - truth, axis=1)
    return float(errors.mean() / np.linalg.norm(truth[0] - truth[1]))


def face_nme(faces: list[AnnotatedFace], boxes: np.ndarray, points: np.ndarray, min_iou: float) -> np.ndarray:
    """NME of each annotated face from the detection matched to it (boxes M x 4, points M x 5 x 2); NaN if missed."""
    owner = match(np.array([face.box for face in faces]).reshape(-1, 4), boxes, min_iou)
    return np.array([nme(points[j], face.points) if j >= 0 else np.nan for face, j in zip(faces, owner)])
