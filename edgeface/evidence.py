"""What a track's evidence means: who it is (if anyone) and whether it is live, decided on the track as a whole.

Identity: each person's mean cosine similarity over the track's embedded views (its best few), re-matched against
the gallery as it is at decision time (so a removal takes effect at once). The person with the highest mean is
accepted only at or above `accept_threshold(N)`, which grows with the number N of people enrolled so that the
chance that a stranger's best match passes stays at the profile's `false_accept_rate`: a stranger scores
against each enrolled person like a draw from the fitted impostor distribution (`IMPOSTORS`, normal), so
P(best of N >= t) = 1 - F(t)^N, solved for t. The profile's `match_threshold` is the floor.
Liveness: the mean logit over the track's first `min_frames` scored frames against the liveness threshold's logit;
a verdict once made holds for the life of the track.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from edgeface.gallery import UNKNOWN, Gallery
from edgeface.tracker import Track


@dataclass(frozen=True)
class ImpostorModel:
    """The similarity of a stranger's face to one enrolled person (best of their embeddings), as a normal."""

    mean: float
    std: float
    fitted_on: str


IMPOSTORS = {
    "int8": ImpostorModel(0.0, 0.15, "placeholder"),
    "float": ImpostorModel(0.0, 0.15, "placeholder"),
}


def accept_threshold(people: int, false_accept_rate: float, impostor: ImpostorModel, floor: float) -> float:
    """The similarity a stranger's best match over `people` enrolled reaches with probability `false_accept_rate`
    (never below `floor`)."""
    if people < 1:
        return floor
    quantile = (1.0 - false_accept_rate) ** (1.0 / people)
    return max(floor, impostor.mean + impostor.std * NormalDist().inv_cdf(min(quantile, 1 - 1e-12)))


@dataclass(frozen=True)
class Verdict:
    """A decision on a track: 'unlock', 'not_live', 'refused' (enrolled but not allowed now), or 'wait' (not
    enough evidence yet; at the end of the track it reads 'unknown')."""

    decision: str
    identity: str = UNKNOWN
    similarity: float | None = None
    liveness: float | None = None  # P(live) of the mean logit
    reason: str | None = None


def logit(p: float) -> float:
    """log(p / (1 - p)), with p kept inside (0, 1)."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    """The inverse of `logit`."""
    return 1.0 / (1.0 + math.exp(-z))


@dataclass(frozen=True)
class AcceptRules:
    """The door's accept rule, from the profile (see the module docstring)."""

    min_frames: int
    false_accept_rate: float
    floor: float
    impostor: ImpostorModel
    liveness_threshold: float | None  # P(live); None: liveness not required

    def threshold(self, gallery: Gallery) -> float:
        """The similarity a person must reach with this gallery's number of people."""
        return accept_threshold(len(gallery.people()), self.false_accept_rate, self.impostor, self.floor)

    def identity(self, track: Track, gallery: Gallery) -> tuple[str, float]:
        """(best person, mean similarity over the track's views), against the gallery as it is now."""
        if not track.views:
            return UNKNOWN, -1.0
        people = len(gallery.people())
        if people == 0:
            return UNKNOWN, -1.0
        totals: dict[str, float] = {}
        for ranked in gallery.match(np.stack([view.embedding for view in track.views]), people):
            for name, score in ranked:
                totals[name] = totals.get(name, 0.0) + score
        name = max(totals, key=totals.__getitem__)
        return name, totals[name] / len(track.views)

    def liveness(self, track: Track) -> float | None:
        """P(live) of the mean logit over the first `min_frames` scored frames (None before there are that many)."""
        if len(track.liveness_logits) < self.min_frames:
            return None
        return sigmoid(float(np.mean(track.liveness_logits[:self.min_frames])))

    def judge(self, track: Track, gallery: Gallery) -> Verdict:
        """The verdict on a track now; 'wait' until it has `min_frames` frames (and liveness scores)."""
        if track.hits < self.min_frames or not track.views:
            return Verdict("wait")
        live = None
        if self.liveness_threshold is not None:
            live = self.liveness(track)
            if live is None:
                return Verdict("wait")
            if live < self.liveness_threshold:
                return Verdict("not_live", liveness=live)
        name, similarity = self.identity(track, gallery)
        if name == UNKNOWN or similarity < self.threshold(gallery):
            return Verdict("wait", UNKNOWN, similarity, live)
        return Verdict("unlock", name, similarity, live)
