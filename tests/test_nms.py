"""Greedy NMS: hand-computed cases and agreement with a naive O(n^2) loop."""

from __future__ import annotations

import numpy as np
import pytest

from edgeface.nms import iou_matrix, nms


def _boxes(*rows: tuple[float, float, float, float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64)


def naive_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union",
              max_keep: int | None = None) -> list[int]:
    """The textbook loop: best remaining box first (ties: lower index), drop boxes overlapping it too much."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    dropped: set[int] = set()
    for position, i in enumerate(order):
        if i in dropped:
            continue
        keep.append(i)
        if max_keep is not None and len(keep) == max_keep:
            break
        ax1, ay1, ax2, ay2 = (float(v) for v in boxes[i])
        for j in order[position + 1:]:
            bx1, by1, bx2, by2 = (float(v) for v in boxes[j])
            inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
            area_a, area_b = (ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1)
            denominator = min(area_a, area_b) if mode == "min" else area_a + area_b - inter
            if denominator > 0 and inter / denominator > threshold:
                dropped.add(j)
    return keep


def test_overlap_above_threshold_is_suppressed() -> None:
    boxes = _boxes((0, 0, 10, 10), (5, 0, 15, 10))  # IoU = 50 / 150 = 1/3
    scores = np.array([0.6, 0.9])
    assert nms(boxes, scores, 0.30).tolist() == [1]
    assert nms(boxes, scores, 0.34).tolist() == [1, 0]


def test_overlap_exactly_at_threshold_is_kept() -> None:
    boxes = _boxes((0, 0, 10, 10), (0, 5, 10, 15))  # IoU = 50 / 150 = 1/3
    third = iou_matrix(boxes[:1], boxes[1:])[0, 0]
    assert third == pytest.approx(1 / 3)
    assert nms(boxes, np.array([0.9, 0.8]), float(third)).tolist() == [0, 1]


def test_keeps_best_first_and_non_overlapping_boxes() -> None:
    boxes = _boxes((0, 0, 10, 10), (1, 1, 11, 11), (50, 50, 60, 60), (0, 0, 9, 10))
    scores = np.array([0.7, 0.8, 0.95, 0.5])  # 1 beats 0 (IoU 81/119) and 3 (IoU 72/127); 2 is alone
    assert nms(boxes, scores, 0.5).tolist() == [2, 1]


def test_identical_scores_keep_the_first() -> None:
    boxes = _boxes((0, 0, 10, 10), (0, 0, 10, 10), (20, 20, 30, 30), (20, 20, 30, 30))
    assert nms(boxes, np.full(4, 0.8), 0.5).tolist() == [0, 2]
    assert nms(boxes[::-1].copy(), np.full(4, 0.8), 0.5).tolist() == [0, 2]


def test_min_mode_suppresses_a_box_inside_another() -> None:
    boxes = _boxes((0, 0, 10, 10), (2, 2, 4, 4))  # IoU 4/100, but intersection over the smaller box is 1
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5, mode="min").tolist() == [0]
    inside = _boxes((0, 0, 10, 10), (5, 0, 10, 10))  # the right half: intersection over smaller = 1
    assert nms(inside, scores, 0.99, mode="min").tolist() == [0]
    side = _boxes((0, 0, 10, 10), (6, 0, 16, 10))  # intersection 40 / smaller area 100 = 0.4
    assert nms(side, scores, 0.39, mode="min").tolist() == [0]
    assert nms(side, scores, 0.41, mode="min").tolist() == [0, 1]


def test_max_keep_stops_after_the_best() -> None:
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(6)], dtype=np.float64)  # disjoint
    scores = np.array([0.1, 0.9, 0.3, 0.8, 0.5, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 5, 4, 2, 0]
    assert nms(boxes, scores, 0.5, max_keep=2).tolist() == [1, 3]
    assert nms(boxes, scores, 0.5, max_keep=10).tolist() == [1, 3, 5, 4, 2, 0]


def test_empty_input() -> None:
    kept = nms(np.zeros((0, 4)), np.zeros(0), 0.5)
    assert kept.shape == (0,) and np.issubdtype(kept.dtype, np.integer)


def test_iou_matrix_matches_hand_values() -> None:
    a = _boxes((0, 0, 10, 10), (0, 0, 2, 2))
    b = _boxes((5, 0, 15, 10), (100, 100, 110, 110), (0, 0, 10, 10))
    np.testing.assert_allclose(iou_matrix(a, b), [[1 / 3, 0, 1], [0, 0, 4 / 100]])


def _random_case(seed: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 200, size=(count, 2))
    sizes = rng.uniform(5, 60, size=(count, 2))
    boxes = np.column_stack([corners, corners + sizes])
    scores = np.round(rng.uniform(0, 1, count), 1 if seed % 2 else 6)  # odd seeds: many tied scores
    return boxes, scores


@pytest.mark.parametrize("seed", range(6))
def test_matches_naive_loop_on_random_boxes(seed: int) -> None:
    boxes, scores = _random_case(seed, 150)
    for mode in ("union", "min"):
        for threshold in (0.2, 0.5, 0.8):
            for max_keep in (None, 5):
                expected = naive_nms(boxes, scores, threshold, mode, max_keep)
                assert nms(boxes, scores, threshold, mode, max_keep).tolist() == expected, (mode, threshold, max_keep)


def test_greedy_pairs_take_the_best_first_once_each_and_only_where_allowed() -> None:
    from edgeface.nms import greedy_pairs

    scores = np.array([[0.9, 0.8, 0.1], [0.85, 0.2, 0.0], [0.3, 0.7, 0.6]])
    allowed = scores >= 0.5
    assert greedy_pairs(scores, allowed) == [(0, 0), (2, 1)]  # row 1 lost its only partner to row 0
    assert greedy_pairs(scores, np.zeros_like(allowed)) == []
