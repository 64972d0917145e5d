"""The verification and open-set evaluators against hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeface.tools.evaluation.identification import open_set, split_people, threshold_for
from edgeface.tools.evaluation.verification import protocol_accuracy, read_pairs, roc, tar_at_far


def test_read_pairs(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text("1\t2\nAbel_Pacheco\t1\t4\nAbdel_Madi_Shabneh\t1\tDean_Barker\t12\n")
    same, different = read_pairs(path)
    assert (same.first, same.second, same.same) == ("Abel_Pacheco/Abel_Pacheco_0001.jpg",
                                                     "Abel_Pacheco/Abel_Pacheco_0004.jpg", True)
    assert (different.second, different.same) == ("Dean_Barker/Dean_Barker_0012.jpg", False)
    path.write_text("1\t2\nonly two\n")
    with pytest.raises(ValueError, match="pairs.txt:2: expected 3 or 4 fields"):
        read_pairs(path)


def test_roc_and_tar_at_far_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.4, 0.5, 0.3, 0.1])
    same = np.array([True, True, True, False, False, False])
    far, tar, thresholds = roc(scores, same)
    point = dict(zip(thresholds.round(2), zip(far, tar)))
    assert point[0.8] == (0.0, pytest.approx(2 / 3)) and point[0.4] == (pytest.approx(1 / 3), 1.0)
    assert tar_at_far(scores, same, 0.0) == pytest.approx(2 / 3)
    assert tar_at_far(scores, same, 1 / 3) == 1.0


def test_protocol_accuracy_perfect_and_shuffled() -> None:
    rng = np.random.default_rng(0)
    same = np.arange(600) < 300
    scores = np.where(same, rng.uniform(0.5, 1.0, 600), rng.uniform(-0.2, 0.45, 600))
    folds = np.arange(600) % 10
    assert protocol_accuracy(scores, same, folds) == 1.0
    assert protocol_accuracy(rng.permutation(scores), same, folds) < 0.6


def test_open_set_by_hand() -> None:
    # Every other person in sorted order is enrolled, if they have a photo left to probe with: c has not.
    assert split_people(["a", "a", "b", "b", "c"], 1) == ({"a": [0]}, [1], [2, 3, 4])
    labels = ["a", "a", "b", "b", "c", "c"]  # a and c enrolled (sorted order a, b, c), b the stranger
    vectors = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-1.0, 0.0], [0.0, 1.0], [0.28, 0.96]])
    [strict, loose] = open_set(vectors, labels, 1, np.array([0.9, 0.5]))
    # probes: a's second photo (best a at 0.8), c's second (best c at 0.96); strangers: b's photos
    # (0.6 vs a, 0.8 vs c -> best c at 0.8; -1.0 vs a, 0.0 vs c -> best c at 0.0).
    assert (strict.rank1, strict.correct_accept, strict.false_reject) == (1.0, 0.5, 0.5)
    assert strict.stranger_accept == 0.0
    assert (loose.correct_accept, loose.stranger_accept) == (1.0, 0.5)
    threshold = threshold_for(vectors, labels, 1, 0.0)
    assert 0.8 < threshold < 0.8001


def test_recommended_threshold_holds_for_float32_embeddings() -> None:
    # float32 similarities against a float64 threshold one ulp above a stranger's score: that stranger must
    # stay rejected (NumPy 1.x compared in float32, where the two are equal).
    rng = np.random.default_rng(0)
    labels = [str(i // 10) for i in range(200)]
    vectors = rng.standard_normal((200, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    threshold = threshold_for(vectors, labels, 3, 0.01)
    [result] = open_set(vectors, labels, 3, np.array([threshold]))
    assert result.stranger_accept <= 0.01
