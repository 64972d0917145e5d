"""The door's stream, timed: today's tracked door beside the per-frame loop it replaced, on the same frames.

Frames: each `nuaa_dev` person's live webcam frames in capture order (consecutive frames, every other one kept),
the person enrolled from their first 3 and the rest played as one visit at the door. Per loop: ms per frame,
frames/s, embeddings per frame, and the time to unlock (frames and ms from the first frame to the unlock).
The per-frame loop is the door of stop 10: detect, embed the largest face, match it at the profile's threshold and
score its liveness on every frame; unlock when one person is matched and live in `votes` of the last `window`
frames. The tracked door is `edgeface.doorlock.DoorLock.decide` over `edgeface.tracker.FaceStream`.
"""

from __future__ import annotations

import csv
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.analyzer import FaceAnalyzer
from edgeface.doorlock import AuditLog, DoorLock, accept_rules, door_stream
from edgeface.gallery import UNKNOWN, Gallery
from edgeface.images import load_image
from edgeface.profiles import Profile

ENROLL = 3
PER_FRAME_VOTES, PER_FRAME_WINDOW = 3, 5  # the K-of-N of stop 10's profiles


@dataclass
class Visit:
    """One loop over one person's frames."""

    frames: int
    seconds: float
    embeddings: int
    unlock_frame: int | None  # index of the frame that first opened the door
    unlock_seconds: float | None  # from the first frame to that unlock
    unlocked: list[str]  # who each unlock let in

    def to_dict(self) -> dict[str, float | int | None]:
        """The report's numbers for this visit."""
        return {"frames": self.frames, "ms_per_frame": 1000 * self.seconds / self.frames,
                "embeddings_per_frame": self.embeddings / self.frames, "unlock_frame": self.unlock_frame,
                "unlock_ms": None if self.unlock_seconds is None else 1000 * self.unlock_seconds}


class _NoRelay:
    def on(self) -> None:
        """Nothing to switch (the unlocks are read from the audit records)."""

    def off(self) -> None:
        """Nothing to switch."""

    def close(self) -> None:
        """Nothing to release."""


def per_frame_visit(analyzer: FaceAnalyzer, gallery: Gallery, frames: list[np.ndarray]) -> Visit:
    """The per-frame loop of stop 10 over `frames` (see the module docstring)."""
    threshold = analyzer.profile.recognition.match_threshold
    votes: deque[str | None] = deque(maxlen=PER_FRAME_WINDOW)
    embeddings, unlock, unlock_at, unlocked, started = 0, None, None, [], time.perf_counter()
    for index, frame in enumerate(frames):
        faces = analyzer.detect(frame)
        name = None
        if faces:
            face = max(faces, key=lambda f: f.area)
            analyzer.embed_faces(frame, [face])
            embeddings += 1
            [(identity, _)] = gallery.identify(face.embedding[None], threshold)
            live = analyzer.liveness_scorer.is_live(analyzer.liveness_scorer.score(frame, face.box))
            name = identity if live and identity != UNKNOWN else None
        votes.append(name)
        if name is not None and votes.count(name) >= PER_FRAME_VOTES:
            if unlock is None:
                unlock, unlock_at = index, time.perf_counter() - started
            unlocked.append(name)
            votes.clear()
    return Visit(len(frames), time.perf_counter() - started, embeddings, unlock, unlock_at, unlocked)


def tracked_visit(profile: Profile, analyzer: FaceAnalyzer, gallery: Gallery, frames: list[np.ndarray]) -> Visit:
    """The door lock's own decisions over a tracked stream of `frames` (no relay, no pulse, no cooldown)."""
    config = replace(profile.doorlock, unlock_seconds=0.0, cooldown_seconds=0.0)
    rules = accept_rules(profile, analyzer)
    door = DoorLock(config, rules, _NoRelay(), AuditLog(Path("/dev/null")))
    unlocked: list[str] = []
    door.audit.listeners.append(lambda record: unlocked.append(str(record["identity"]))
                                if record["decision"] == "unlock" else None)
    stream = door_stream(profile, analyzer, rules, lambda: gallery)
    embeddings, unlock, unlock_at, started = 0, None, None, time.perf_counter()
    for index, frame in enumerate(frames):
        result = stream.step(frame)
        embeddings += result.embedded
        door.decide(result, lambda: gallery)
        if unlock is None and unlocked:
            unlock, unlock_at = index, time.perf_counter() - started
    for result in stream.run([]):  # the tracks still open when the frames end
        door.decide(result, lambda: gallery)
    door.audit.close()
    return Visit(len(frames), time.perf_counter() - started, embeddings, unlock, unlock_at, unlocked)


def nuaa_visits(root: Path, label: str = "live") -> Iterator[tuple[str, list[Path]]]:
    """(person, their `label` frames ('live' or 'spoof') in capture order) for each nuaa_dev person."""
    rows = list(csv.DictReader((root / "labels.csv").open()))
    for subject in sorted({row["subject"] for row in rows}):
        paths = [root / row["file"] for row in rows if row["subject"] == subject and row["label"] == label]
        yield subject, sorted(paths, key=lambda p: tuple(int(part) for part in p.stem.split("_")[2:]))


def stream_bench(profile: Profile, root: Path, gallery_path: Path, people: int | None = None) -> dict[str, Any]:
    """Both loops over every person's visit (or the first `people`), the tracked one first then the per-frame one,
    person by person."""
    analyzer = FaceAnalyzer(profile)
    visits = list(nuaa_visits(root))[:people]
    with analyzer.open_gallery(gallery_path) as gallery:
        for person, paths in visits:
            for path in paths[:ENROLL]:
                gallery.add(person, max(analyzer.embed(path), key=lambda f: f.area).embedding[None])
        people: dict[str, dict[str, object]] = {}
        totals = {"tracked": [0, 0.0, 0], "per_frame": [0, 0.0, 0]}
        for person, paths in visits:
            frames = [load_image(path) for path in paths[ENROLL:]]
            analyzer.detect(frames[0])  # warm
            loops = {"tracked": tracked_visit(profile, analyzer, gallery, frames),
                     "per_frame": per_frame_visit(analyzer, gallery, frames)}
            people[person] = {name: visit.to_dict() for name, visit in loops.items()}
            for name, visit in loops.items():
                totals[name][0] += visit.frames
                totals[name][1] += visit.seconds
                totals[name][2] += visit.embeddings
    summary = {name: {"frames": n, "ms_per_frame": 1000 * s / n, "frames_per_second": n / s,
                      "embeddings_per_frame": e / n} for name, (n, s, e) in totals.items()}
    speedup = summary["tracked"]["frames_per_second"] / summary["per_frame"]["frames_per_second"]
    return {"profile": profile.name, "input_size": analyzer.input_size, "liveness": profile.liveness.required,
            "summary": summary, "tracked_speedup": speedup, "people": people}


def stream_markdown(report: dict[str, Any]) -> list[str]:
    """The stream section of the bench report."""
    tracked, per_frame = report["summary"]["tracked"], report["summary"]["per_frame"]
    lines = ["", f"## The door's stream ({report['profile']}, input {report['input_size']}, liveness "
             f"{'on' if report['liveness'] else 'off'}; nuaa_dev visits: each person's live frames in capture order)",
             "", "| loop | frames | ms / frame | frames / s | embeddings / frame |", "|---|---|---|---|---|"]
    for name, row in (("tracked door", tracked), ("per-frame loop (stop 10)", per_frame)):
        lines.append(f"| {name} | {row['frames']} | {row['ms_per_frame']:.1f} | {row['frames_per_second']:.1f} | "
                     f"{row['embeddings_per_frame']:.2f} |")
    lines += ["", f"Tracked / per-frame frames per second: {report['tracked_speedup']:.2f}x.", "",
              "| person | tracked: unlock at frame (ms) | per-frame: unlock at frame (ms) |", "|---|---|---|"]
    for person, loops in report["people"].items():
        cells = [f"{v['unlock_frame']} ({v['unlock_ms']:.0f})" if v["unlock_frame"] is not None else "not admitted"
                 for v in (loops["tracked"], loops["per_frame"])]
        lines.append(f"| {person} | {cells[0]} | {cells[1]} |")
    return lines
