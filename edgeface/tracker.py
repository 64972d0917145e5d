"""VIDEO / LIVE_STREAM mode: faces followed across frames with a stable `track_id`, embedded only on better views.

`FaceTracker` is the association alone (numpy): each track predicts its box from its last motion, detections are
paired with tracks greedily by IoU against the prediction and landmark distance, a track is `confirmed` after
`min_hits` frames and ended after `max_misses` frames unseen (a face hidden for fewer comes back with its id).
`FaceStream` runs it over frames with a `FaceAnalyzer`: a track is embedded when it appears and again only when
a view clearly better than its best so far arrives (`view_quality`: size, frontality from the 5 landmarks,
sharpness), and, when asked, scored for liveness on its first frames. Evidence is kept on the track (embeddings
of its best views, liveness logits); what it means for a door is `edgeface.evidence`'s business.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from edgeface.analyzer import Face, FaceAnalyzer
from edgeface.liveness import log_sharpness
from edgeface.nms import greedy_pairs, iou_matrix

FULL_QUALITY_SIDE = 112.0  # MobileFaceNet's input side: larger faces add no detail to the embedding
SHARPNESS_FULL = 5.0  # log Laplacian variance of a crisp webcam face (see edgeface.liveness.log_sharpness)


@dataclass(frozen=True)
class TrackerConfig:
    """How detections become tracks, and when a track is embedded again."""

    min_iou: float = 0.2  # a detection continues a track only above this IoU with its predicted box ...
    max_landmark_shift: float = 0.5  # ... or with landmarks within this fraction of the box side
    min_hits: int = 2  # frames before a track is confirmed (a one-frame false detection never becomes one)
    max_misses: int = 5  # frames unseen before a track ends
    better_view: float = 1.15  # re-embed when a view's quality beats the track's best by this factor
    max_views: int = 3  # embeddings kept per track (its best views)


@dataclass
class View:
    """One embedded view of a track."""

    frame: int
    quality: float
    embedding: np.ndarray


@dataclass
class Track:
    """One face followed over frames; `face` is this frame's detection (None while it is missed)."""

    track_id: int
    face: Face | None
    box: np.ndarray
    landmarks: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    hits: int = 1
    misses: int = 0
    confirmed: bool = False  # seen in min_hits frames: a face, not a one-off detection
    views: list[View] = field(default_factory=list)
    liveness_logits: list[float] = field(default_factory=list)
    state: dict[str, object] = field(default_factory=dict)  # for the consumer (e.g. the door's verdict)

    @property
    def best_quality(self) -> float:
        """Quality of the best embedded view (0 before the first embedding)."""
        return max((view.quality for view in self.views), default=0.0)

    @property
    def predicted(self) -> tuple[np.ndarray, np.ndarray]:
        """Box and landmarks moved on by the track's velocity for each frame it has been missed, plus this one."""
        shift = self.velocity * (self.misses + 1)
        return self.box + np.tile(shift, 2), self.landmarks + shift


def landmark_shift(a: np.ndarray, b: np.ndarray, a_boxes: np.ndarray) -> np.ndarray:
    """Mean landmark distance of every face of `a` (N x 5 x 2) to every face of `b` (M x 5 x 2), in units of
    the side of `a`'s box: N x M."""
    distance = np.linalg.norm(a[:, None] - b[None, :], axis=3).mean(axis=2)
    side = np.maximum(np.sqrt(np.prod(np.clip(a_boxes[:, 2:] - a_boxes[:, :2], 1, None), axis=1)), 1.0)
    return distance / side[:, None]


class FaceTracker:
    """Pairs each frame's faces with the live tracks; see the module docstring."""

    def __init__(self, config: TrackerConfig = TrackerConfig()) -> None:
        self.config = config
        self.tracks: list[Track] = []
        self.frame = -1
        self._next_id = 1

    def update(self, faces: list[Face]) -> tuple[list[Track], list[Track]]:
        """Advance one frame: (the live tracks, each with this frame's `face` or None; the tracks that ended)."""
        self.frame += 1
        cfg = self.config
        pairs: list[tuple[int, int]] = []
        if self.tracks and faces:
            predicted = [track.predicted for track in self.tracks]
            boxes = np.array([p[0] for p in predicted])
            points = np.array([p[1] for p in predicted])
            found_boxes = np.array([face.box for face in faces], np.float64)
            found_points = np.array([face.landmarks for face in faces], np.float64)
            iou = iou_matrix(boxes, found_boxes)
            shift = landmark_shift(points, found_points, boxes)
            allowed = (iou >= cfg.min_iou) | (shift <= cfg.max_landmark_shift)
            pairs = greedy_pairs(iou - shift, allowed)  # lowest cost (1 - IoU) + shift first
        matched_tracks = {t for t, _ in pairs}
        matched_faces = {f for _, f in pairs}
        for t, f in pairs:
            self._continue(self.tracks[t], faces[f])
        ended = []
        for index, track in enumerate(self.tracks):
            if index not in matched_tracks:
                track.face = None
                track.misses += 1
                if track.misses > cfg.max_misses or not track.confirmed:
                    ended.append(track)
        self.tracks = [track for track in self.tracks if track not in ended]
        for f, face in enumerate(faces):
            if f not in matched_faces:
                self.tracks.append(Track(self._next_id, face, np.array(face.box, np.float64),
                                         np.array(face.landmarks, np.float64), confirmed=cfg.min_hits <= 1))
                self._next_id += 1
        return list(self.tracks), ended

    def _continue(self, track: Track, face: Face) -> None:
        """`face` is `track` in this frame: move it there and update its velocity (per frame, smoothed)."""
        box = np.array(face.box, np.float64)
        step = ((box[:2] + box[2:]) - (track.box[:2] + track.box[2:])) / 2 / (track.misses + 1)
        track.velocity = 0.5 * track.velocity + 0.5 * step
        track.box, track.landmarks = box, np.array(face.landmarks, np.float64)
        track.face, track.hits, track.misses = face, track.hits + 1, 0
        track.confirmed = track.confirmed or track.hits >= self.config.min_hits


def frontality(landmarks: np.ndarray) -> float:
    """1 for a frontal, upright face, falling towards 0 as it turns or rolls (from the 5 landmarks: eyes, nose,
    mouth corners): the nose's offset from the eyes' midline, relative to the eye distance, and the eye line's tilt."""
    left_eye, right_eye, nose = landmarks[0], landmarks[1], landmarks[2]
    eyes = right_eye - left_eye
    distance = float(np.hypot(*eyes))
    if distance < 1e-6:
        return 0.0
    mid = (left_eye + right_eye) / 2
    yaw = abs(float(np.dot(nose - mid, eyes)) / distance ** 2)  # the nose's offset along the eye line, in eye distances
    roll = abs(math.atan2(float(eyes[1]), float(eyes[0])))
    return float(max(0.0, 1.0 - 2.0 * yaw) * max(0.0, math.cos(roll)))


def view_quality(image: np.ndarray, face: Face) -> float:
    """How good a view of a face is for recognition, 0..1: size (saturating at MobileFaceNet's 112 px),
    frontality and sharpness, multiplied."""
    x1, y1, x2, y2 = face.box
    size = min(1.0, math.sqrt(max(x2 - x1, 0.0) * max(y2 - y1, 0.0)) / FULL_QUALITY_SIDE)
    sharp = min(1.0, max(0.0, log_sharpness(image, face.box) / SHARPNESS_FULL))
    return size * frontality(np.asarray(face.landmarks, np.float64)) * sharp


@dataclass
class StreamFrame:
    """What `FaceStream` gives per frame: its index, the live tracks, the tracks that ended, embeddings made."""

    index: int
    tracks: list[Track]
    ended: list[Track]
    embedded: int


class FaceStream:
    """Detect, track, embed better views and (optionally) score liveness over a stream of RGB frames.

    `liveness_frames` > 0 scores each confirmed track's liveness on that many of its frames (then stops: the
    evidence is in), as the liveness scorer's logits; with `liveness_wanted`, only the tracks it accepts (the door
    spends liveness only on faces that match someone enrolled).
    """

    def __init__(self, analyzer: FaceAnalyzer, config: TrackerConfig = TrackerConfig(), liveness_frames: int = 0,
                 liveness_wanted: Callable[[Track], bool] = lambda track: True) -> None:
        self.analyzer = analyzer
        self.tracker = FaceTracker(config)
        self.liveness_frames = liveness_frames
        self.liveness_wanted = liveness_wanted

    def step(self, frame: np.ndarray) -> StreamFrame:
        """One frame through the pipeline."""
        faces = self.analyzer.detect(frame)
        tracks, ended = self.tracker.update(faces)
        cfg = self.tracker.config
        seen = [track for track in tracks if track.face is not None and track.confirmed]
        wanted: list[tuple[Track, float]] = []
        for track in seen:
            quality = view_quality(frame, track.face)
            if not track.views or quality > track.best_quality * cfg.better_view:
                wanted.append((track, quality))
        if wanted:
            embedded = self.analyzer.embed_faces(frame, [track.face for track, _ in wanted])
            for (track, quality), face in zip(wanted, embedded):
                track.views.append(View(self.tracker.frame, quality, face.embedding))
                track.views = sorted(track.views, key=lambda v: -v.quality)[:cfg.max_views]
        for track in seen:
            if len(track.liveness_logits) < self.liveness_frames and self.liveness_wanted(track):
                track.liveness_logits.append(self.analyzer.liveness_scorer.logit(frame, track.face.box))
        return StreamFrame(self.tracker.frame, tracks, ended, len(wanted))

    def run(self, frames: Iterable[np.ndarray]) -> Iterator[StreamFrame]:
        """`step` over every frame; the tracks still live when the frames end are given as ended last."""
        for frame in frames:
            yield self.step(frame)
        if self.tracker.tracks:
            ended, self.tracker.tracks = self.tracker.tracks, []
            yield StreamFrame(self.tracker.frame + 1, [], ended, 0)
