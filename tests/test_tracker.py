"""The face tracker on synthetic detections: stable ids when faces cross, a brief loss keeps the id, one-frame
false detections never become tracks; view quality; the stream embeds a track only on clearly better views."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edgeface.analyzer import Face
from edgeface.tracker import FaceStream, FaceTracker, TrackerConfig, frontality, view_quality


def face_at(cx: float, cy: float, side: float = 80.0, score: float = 0.9) -> Face:
    """A frontal face of `side` px centred at (cx, cy), with its 5 landmarks where a detector puts them."""
    h = side / 2
    points = [(cx - 0.18 * side, cy - 0.1 * side), (cx + 0.18 * side, cy - 0.1 * side), (cx, cy + 0.05 * side),
              (cx - 0.15 * side, cy + 0.22 * side), (cx + 0.15 * side, cy + 0.22 * side)]
    return Face(box=(cx - h, cy - h, cx + h, cy + h), score=score, landmarks=points)


def test_two_faces_crossing_keep_their_ids() -> None:
    tracker = FaceTracker()
    paths: dict[int, list[float]] = {}
    for step in range(21):  # A walks right, B walks left; they overlap fully at step 10
        a, b = face_at(100 + 20 * step, 200), face_at(500 - 20 * step, 200)
        faces = [b, a] if step % 2 else [a, b]  # the detector's order says nothing
        tracks, _ = tracker.update(faces)
        for track in tracks:
            paths.setdefault(track.track_id, []).append((track.box[0] + track.box[2]) / 2)
    assert len(paths) == 2
    for xs in paths.values():
        steps = np.diff(xs)
        assert np.all(steps > 0) or np.all(steps < 0), f"a track changed direction: {xs}"


def test_a_face_missed_for_a_few_frames_keeps_its_id_and_a_longer_loss_ends_it() -> None:
    tracker = FaceTracker(TrackerConfig(max_misses=3))
    first = [t.track_id for t in tracker.update([face_at(100, 100)])[0]]
    tracker.update([face_at(104, 100)])
    for _ in range(3):
        tracks, ended = tracker.update([])
        assert not ended and tracks[0].face is None
    tracks, _ = tracker.update([face_at(120, 100)])  # back, moved on as it was moving
    assert [t.track_id for t in tracks] == first and tracks[0].face is not None
    for _ in range(3):
        tracker.update([])
    tracks, ended = tracker.update([])
    assert not tracks and [t.track_id for t in ended] == first
    new, _ = tracker.update([face_at(120, 100)])
    assert new[0].track_id != first[0]


def test_a_one_frame_detection_never_becomes_a_confirmed_track() -> None:
    tracker = FaceTracker()
    tracker.update([face_at(100, 100), face_at(400, 300)])
    tracks, ended = tracker.update([face_at(101, 100)])
    assert [t.confirmed for t in tracks] == [True]
    assert len(ended) == 1 and not ended[0].confirmed


def test_frontality_falls_as_the_face_turns_or_rolls() -> None:
    frontal = np.array(face_at(100, 100).landmarks)
    turned = frontal.copy()
    turned[2, 0] += 20  # nose towards one eye: a turned head
    angle = np.radians(40)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = (frontal - 100) @ rotation.T + 100
    assert frontality(frontal) == pytest.approx(1.0, abs=1e-6)
    assert frontality(turned) < 0.5 and frontality(rolled) < 0.8


def test_view_quality_prefers_large_sharp_faces() -> None:
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)
    flat = np.full((400, 400, 3), 128, np.uint8)
    big, small = face_at(200, 200, 160), face_at(200, 200, 40)
    assert view_quality(sharp, big) > view_quality(sharp, small) > 0
    assert view_quality(flat, big) < view_quality(sharp, big)


class CountingAnalyzer:
    """Stands in for FaceAnalyzer: faces come from a script, embeddings are counted."""

    def __init__(self, script: list[list[Face]]) -> None:
        self.script = iter(script)
        self.embedded = 0
        self.liveness_scorer = SimpleNamespace(logit=lambda image, box: 2.0)

    def detect(self, frame: np.ndarray) -> list[Face]:
        return next(self.script)

    def embed_faces(self, frame: np.ndarray, faces: list[Face]) -> list[Face]:
        self.embedded += len(faces)
        for face in faces:
            face.embedding = np.ones(4, np.float32) / 2
        return faces


def test_a_person_standing_still_costs_one_embedding_until_a_clearly_better_view() -> None:
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    script = [[face_at(320 + (i % 2), 240, 60)] for i in range(30)] + [[face_at(320, 240, 110)]] * 5
    analyzer = CountingAnalyzer(script)
    results = list(FaceStream(analyzer, liveness_frames=4).run([frame] * len(script)))  # type: ignore[arg-type]
    assert analyzer.embedded == 2  # when it appeared, and when it came twice as close
    (track,) = results[-1].ended
    assert len(track.views) == 2 and track.views[0].quality > track.views[1].quality
    assert len(track.liveness_logits) == 4 and track.hits == len(script)
