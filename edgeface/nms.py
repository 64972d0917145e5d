"""Vectorised non-maximum suppression over [x1, y1, x2, y2] boxes."""

from __future__ import annotations

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (N x 4) and b (M x 4), continuous coordinates."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def greedy_pairs(scores: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """(row, column) pairs of an N x M score matrix, highest score first, each row and column used at most once,
    only where `allowed`."""
    pairs: list[tuple[int, int]] = []
    rows: set[int] = set()
    columns: set[int] = set()
    for flat in np.argsort(np.where(allowed, -scores, np.inf), axis=None, kind="stable"):
        i, j = (int(v) for v in np.unravel_index(flat, scores.shape))
        if not allowed[i, j]:
            break
        if i not in rows and j not in columns:
            pairs.append((i, j))
            rows.add(i)
            columns.add(j)
    return pairs


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, mode: str = "union",
        max_keep: int | None = None) -> np.ndarray:
    """Indices of the boxes kept by greedy NMS, best score first.

    mode 'union' suppresses by IoU; 'min' by intersection over the smaller box (MTCNN's last stage).
    """
    order = np.argsort(-scores, kind="stable")
    boxes = boxes[order]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if max_keep is not None and len(keep) >= max_keep:
            break
        rest = np.arange(i + 1, len(order))
        rest = rest[~suppressed[rest]]
        if rest.size == 0:
            break
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        if mode == "min":
            overlap = inter / np.maximum(np.minimum(areas[i], areas[rest]), 1e-12)
        else:
            overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        suppressed[rest[overlap > iou_threshold]] = True
    return order[np.asarray(keep, dtype=np.int64)]
