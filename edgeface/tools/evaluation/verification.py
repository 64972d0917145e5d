"""Face verification on LFW-style pairs: protocol accuracy (threshold chosen on the other folds), ROC, TAR at FAR."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FOLDS = 10


@dataclass(frozen=True)
class Pair:
    """Two image paths (relative to the images folder) and whether they show the same person."""

    first: str
    second: str
    same: bool


def lfw_image(name: str, number: str) -> str:
    """'Abel_Pacheco', '1' -> 'Abel_Pacheco/Abel_Pacheco_0001.jpg'."""
    return f"{name}/{name}_{int(number):04d}.jpg"


def read_pairs(path: Path) -> list[Pair]:
    """LFW `pairs.txt`: a header line, then 'name i j' (same) and 'name1 i name2 j' (different) rows."""
    pairs = []
    for number, line in enumerate(Path(path).read_text().splitlines()[1:], start=2):
        fields = line.split()
        if len(fields) == 3:
            pairs.append(Pair(lfw_image(fields[0], fields[1]), lfw_image(fields[0], fields[2]), True))
        elif len(fields) == 4:
            pairs.append(Pair(lfw_image(fields[0], fields[1]), lfw_image(fields[2], fields[3]), False))
        elif fields:
            raise ValueError(f"{path}:{number}: expected 3 or 4 fields, got {len(fields)}")
    return pairs


def protocol_folds(path: Path, chosen: np.ndarray) -> tuple[np.ndarray, str]:
    """The fold of each chosen pair (indices into `read_pairs(path)`) and how the folds were made: the official
    folds of the header ('10\t300': 10 folds of 600 pairs), or with a single fold, 10 interleaved sub-folds
    (position % 10 among the chosen pairs)."""
    header = Path(path).read_text().split(maxsplit=2)
    folds, per_class = int(header[0]), int(header[1])
    if folds > 1:
        return np.asarray(chosen) // (2 * per_class), f"the {folds} official folds"
    return np.arange(len(chosen)) % FOLDS, (f"a single official fold: {FOLDS} interleaved sub-folds "
                                            f"(pair position % {FOLDS})")


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold (accept when score >= it) with the highest accuracy on these pairs, halfway between
    two neighbouring scores (so an unseen score just beside the training ones is judged fairly)."""
    ordered = np.unique(scores)
    candidates = np.concatenate([[ordered[0] - 1.0], (ordered[:-1] + ordered[1:]) / 2, [ordered[-1] + 1.0]])
    accuracy = [((scores >= t) == same).mean() for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def protocol_accuracy(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> float:
    """Mean accuracy over folds, each fold judged at the threshold that is best on all the other folds."""
    accuracies = []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = best_threshold(scores[~test], same[~test])
        accuracies.append(((scores[test] >= threshold) == same[test]).mean())
    return float(np.mean(accuracies))


def roc(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false accept rate, true accept rate, threshold) at every distinct score, strictest threshold first."""
    thresholds = np.unique(scores)[::-1]
    genuine, impostor = scores[same], scores[~same]
    tar = np.array([(genuine >= t).mean() for t in thresholds])
    far = np.array([(impostor >= t).mean() for t in thresholds])
    return far, tar, thresholds


def tar_at_far(scores: np.ndarray, same: np.ndarray, target_far: float) -> float:
    """The highest true accept rate whose false accept rate does not exceed `target_far`."""
    far, tar, _ = roc(scores, same)
    allowed = far <= target_far
    return float(tar[allowed].max()) if allowed.any() else 0.0
