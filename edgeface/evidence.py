"""What a track's evidence means: who it is (if anyone) and whether it is live, decided on the track as a whole.

Identity: each person's mean cosine similarity over the track's embedded views (its best few), re-matched against
the gallery as it is at decision time (so a removal takes effect at once). The person with the highest mean is
accepted only at or above `accept_threshold(N)`, which grows with the number N of people enrolled so that the
chance that a stranger's best match passes stays at the profile's `false_accept_rate`: with the fitted impostor
model (`IMPOSTORS`: a stranger's own offset, then a normal draw per enrolled person),
P(best of N >= t) = E[1 - F(t | offset)^N], solved for t. The profile's `match_threshold` is the floor.
Liveness: the mean logit over the track's first `min_frames` scored frames against the liveness threshold's logit;
a verdict once made holds for the life of the track.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeface.detection import sigmoid
from edgeface.gallery import UNKNOWN, Gallery
from edgeface.tracker import Track


@dataclass(frozen=True)
class ImpostorModel:
    """How a stranger's face scores against enrolled people (each person: the best of their embeddings).

    A stranger brings an offset of their own (a blurred or an "average" face scores high against everyone): the
    offsets are the quantiles in `offsets`; around it, each person's score is normal with `spread`, matched to the
    upper tail of the fitted scores (edgeface.tools.fit_acceptance)."""

    offsets: tuple[float, ...]
    spread: float
    fitted_on: str

    def false_accept(self, threshold: float, people: int) -> float:
        """The chance that a stranger's best match over `people` enrolled reaches `threshold`."""
        z = (threshold - np.asarray(self.offsets)) / (self.spread * math.sqrt(2.0))
        below = 0.5 * (1.0 + np.vectorize(math.erf)(z))
        return float(np.mean(1.0 - below ** people))


_FITTED_ON = "celeba_dev, all 80 identities: {} photos x 75 people enrolled with 3 photos"
IMPOSTORS = {
    # python -m edgeface.tools.fit_acceptance; held out (fitted on half the people, judged on the other half, both
    # ways), int8 at a target of 0.1 %: 0.05-0.19 % of strangers passed with 5 enrolled, 0.38-0.87 % with 35
    # (float: 0.02-0.21 % and 0.38-0.96 %). Refitted 2026-12-07 for RetinaFace's learned rounding with QDrop (its
    # int8 pipeline finds a face in 1732 of the 1733 photos); fitted before it: 0.03-0.18 % and 0.48-0.58 %.
    "int8": ImpostorModel((-0.0293, -0.0144, -0.007, -0.0002, 0.0065, 0.0119, 0.0165, 0.0203, 0.0243, 0.0276,
                           0.0312, 0.0342, 0.0377, 0.0403, 0.0441, 0.048, 0.0531, 0.0597, 0.0671, 0.0758), 0.1584,
                          _FITTED_ON.format(1732)),
    "float": ImpostorModel((-0.0642, -0.0502, -0.0425, -0.0353, -0.0284, -0.0238, -0.0197, -0.016, -0.0123, -0.0089,
                            -0.0059, -0.0024, 0.0006, 0.004, 0.0077, 0.0122, 0.017, 0.0228, 0.0307, 0.0388), 0.1736,
                           _FITTED_ON.format(1733)),
}


def accept_threshold(people: int, false_accept_rate: float, impostor: ImpostorModel, floor: float) -> float:
    """The similarity a stranger's best match over `people` enrolled reaches with probability `false_accept_rate`
    (never below `floor`), by bisection."""
    if people < 1:
        return floor
    low, high = -1.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if impostor.false_accept(middle, people) > false_accept_rate else (low, middle)
    return max(floor, high)


@dataclass(frozen=True)
class Verdict:
    """A decision on a track: 'unlock', 'not_live', 'refused' (enrolled but not allowed now), or 'wait' (not
    enough evidence yet; at the end of the track it reads 'unknown')."""

    decision: str
    identity: str = UNKNOWN
    similarity: float | None = None
    liveness: float | None = None  # P(live) of the mean logit
    reason: str | None = None
    threshold: float | None = None  # the similarity it was judged against (None before identity was judged)


@dataclass(frozen=True)
class AcceptRules:
    """The door's accept rule, from the profile (see the module docstring)."""

    min_frames: int
    false_accept_rate: float
    floor: float
    impostor: ImpostorModel
    liveness_threshold: float | None  # P(live); None: liveness not required

    def identity(self, track: Track, gallery: Gallery, people: int) -> tuple[str, float]:
        """(best person, mean similarity over the track's views), against the gallery as it is now (`people`
        enrolled in it)."""
        if not track.views or people == 0:
            return UNKNOWN, -1.0
        totals: dict[str, float] = {}
        for ranked in gallery.match(np.stack([view.embedding for view in track.views]), people):
            for name, score in ranked:
                totals[name] = totals.get(name, 0.0) + score
        name = max(totals, key=totals.__getitem__)
        return name, totals[name] / len(track.views)

    def candidate(self, track: Track, gallery: Gallery) -> bool:
        """Whether the track matches someone enrolled at the floor at least (only then is its liveness worth
        scoring: nobody else can open the door)."""
        return self.identity(track, gallery, len(gallery.people()))[1] >= self.floor

    def liveness(self, track: Track) -> float | None:
        """P(live) of the mean logit over the first `min_frames` scored frames (None before there are that many)."""
        if len(track.liveness_logits) < self.min_frames:
            return None
        return float(sigmoid(np.mean(track.liveness_logits[:self.min_frames])))

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
        people = len(gallery.people())
        threshold = accept_threshold(people, self.false_accept_rate, self.impostor, self.floor)
        name, similarity = self.identity(track, gallery, people)
        if name == UNKNOWN or similarity < threshold:
            return Verdict("wait", UNKNOWN, similarity, live, threshold=threshold)
        return Verdict("unlock", name, similarity, live, threshold=threshold)
