"""The door's per-track rules on scripted tracks and a real SQLite gallery (no models needed): one decision per
track, a mostly-spoof track never opens, two people never mix evidence, the audit line comes before the unlock,
a gallery replaced or deleted under the running lock is noticed before the next decision, and the accept
threshold holds the false-accept rate as the gallery grows."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeface.doorlock import AuditLog, DoorLock, GalleryWatch, Session
from edgeface.evidence import IMPOSTORS, AcceptRules, ImpostorModel, accept_threshold
from edgeface.gallery import Gallery
from edgeface.profiles import load_profile
from edgeface.tracker import StreamFrame, Track, View

MODEL, DIM = "b2" * 32, 16
CONFIG = replace(load_profile("rpi4").doorlock, min_frames=4, unlock_seconds=0.001, cooldown_seconds=0.0,
                 backoff_seconds=0.001, backoff_max_seconds=0.002)
RULES = AcceptRules(min_frames=4, false_accept_rate=0.001, floor=0.5,
                    impostor=ImpostorModel((0.0,), 0.1, "test"), liveness_threshold=0.5)
LIVE, SPOOF = 3.0, -3.0  # liveness logits


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Relay:
    """Records every state it is put in."""

    def __init__(self) -> None:
        self.states: list[bool] = []

    def on(self) -> None:
        self.states.append(True)

    def off(self) -> None:
        self.states.append(False)

    def close(self) -> None:
        self.states.append(False)


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def orthogonal_to(seed: int, others: list[np.ndarray]) -> np.ndarray:
    """A unit vector at similarity 0 to every one of `others` (a stranger to everyone enrolled)."""
    basis, _ = np.linalg.qr(np.stack(others, axis=1))
    vector = unit(seed) - basis @ (basis.T @ unit(seed))
    return (vector / np.linalg.norm(vector)).astype(np.float32)


ALICE = unit(1)
STRANGER = orthogonal_to(2, [ALICE, unit(3), unit(4)])


@pytest.fixture()
def gallery_path(tmp_path: Path) -> Path:
    path = tmp_path / "gallery.db"
    with Gallery(path, MODEL, DIM) as gallery:
        gallery.add("alice", np.stack([ALICE, unit(3)]))
        gallery.add("bob", unit(4)[None])
    return path


def scripted(tracks_per_frame: list[list[tuple[int, np.ndarray, float]]]) -> Iterator[StreamFrame]:
    """StreamFrames from (track id, embedding, liveness logit) per frame; a track missing from a frame ends."""
    live: dict[int, Track] = {}
    for index, entries in enumerate(tracks_per_frame):
        seen = set()
        for track_id, embedding, logit in entries:
            seen.add(track_id)
            track = live.setdefault(track_id, Track(track_id, None, np.zeros(4), np.zeros((5, 2)),
                                                    hits=0, confirmed=True))
            track.hits += 1
            track.views = [View(index, 1.0, embedding)]
            track.liveness_logits.append(logit)
        ended = [live.pop(t) for t in list(live) if t not in seen]
        yield StreamFrame(index, list(live.values()), ended, 0)
    yield StreamFrame(len(tracks_per_frame), [], list(live.values()), 0)


def session_of(frames: Iterator[StreamFrame], gallery_path: Path) -> Session:
    @contextmanager
    def session() -> Iterator[tuple[Iterator[StreamFrame], object]]:
        watch = GalleryWatch(gallery_path, lambda path: Gallery(path, MODEL, DIM))
        try:
            yield frames, watch.current
        finally:
            watch.close()
    return session


def run_door(frames: Iterator[StreamFrame], gallery_path: Path, log: Path) -> tuple[Relay, list[dict]]:
    relay, audit = Relay(), AuditLog(log)
    DoorLock(CONFIG, RULES, relay, audit).run(session_of(frames, gallery_path))
    audit.close()
    return relay, audit_lines(log)


def test_a_live_enrolled_track_unlocks_once_however_long_it_stays(gallery_path: Path, tmp_path: Path) -> None:
    relay, lines = run_door(scripted([[(7, ALICE, LIVE)]] * 30), gallery_path, tmp_path / "a.log")
    decisions = [line for line in lines if line["decision"] != "stopped"]
    assert [(line["decision"], line["identity"], line["track"]) for line in decisions] == [("unlock", "alice", 7)]
    assert decisions[0]["frames"] == CONFIG.min_frames and decisions[0]["similarity"] >= 0.99
    assert relay.states.count(True) == 1 and relay.states[-1] is False


def test_a_mostly_spoof_track_never_opens_even_when_later_frames_look_live(gallery_path: Path, tmp_path: Path) -> None:
    logits = [SPOOF, LIVE, SPOOF, SPOOF] + [LIVE] * 20  # one lucky frame in the first four, then all "live"
    relay, lines = run_door(scripted([[(1, ALICE, z)] for z in logits]), gallery_path, tmp_path / "a.log")
    assert True not in relay.states
    assert [line["decision"] for line in lines] == ["not_live", "stopped"]
    assert lines[0]["track"] == 1 and lines[0]["frames"] == len(logits) and lines[0]["liveness"] < 0.5


def test_two_people_never_mix_evidence(gallery_path: Path, tmp_path: Path) -> None:
    """Alice's printed photo (enrolled face, spoof) beside a live stranger: per-frame votes would have opened."""
    frames = [[(1, ALICE, SPOOF), (2, STRANGER, LIVE)]] * 12
    relay, lines = run_door(scripted(frames), gallery_path, tmp_path / "a.log")
    assert True not in relay.states
    assert sorted((line["track"], line["decision"]) for line in lines[:-1]) == [(1, "not_live"), (2, "unknown")]


def test_an_unknown_track_is_one_line_when_it_ends(gallery_path: Path, tmp_path: Path) -> None:
    frames = [[(5, STRANGER, LIVE)]] * 10 + [[]] * 3 + [[(6, STRANGER, LIVE)]] * 10
    _, lines = run_door(scripted(frames), gallery_path, tmp_path / "a.log")
    assert [(line["decision"], line["track"]) for line in lines[:-1]] == [("unknown", 5), ("unknown", 6)]
    assert lines[0]["identity"] == "unknown" and lines[0]["similarity"] < 0.5


def test_an_audit_log_that_cannot_be_written_keeps_the_door_locked(gallery_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full: not on this system")
    relay = Relay()
    door = DoorLock(CONFIG, RULES, relay, AuditLog(Path("/dev/full")))  # every write: ENOSPC, a full disk
    door.run(session_of(scripted([[(1, ALICE, LIVE)]] * 10), gallery_path))
    assert True not in relay.states
    assert "cannot write the audit log (No space left on device)" in capsys.readouterr().err


def test_a_gallery_replaced_without_the_person_refuses_them_before_the_next_decision(gallery_path: Path,
                                                                                     tmp_path: Path) -> None:
    revoked = tmp_path / "revoked.db"
    with Gallery(revoked, MODEL, DIM) as gallery:
        gallery.add("bob", unit(4)[None])

    def frames() -> Iterator[StreamFrame]:
        stream = scripted([[(1, ALICE, LIVE)]] * 10)
        yield next(stream)  # frame 0 seen with the old gallery; then the gallery is replaced atomically
        os.replace(revoked, gallery_path)
        yield from stream

    relay, lines = run_door(frames(), gallery_path, tmp_path / "a.log")
    assert True not in relay.states
    assert [line["decision"] for line in lines] == ["unknown", "stopped"]


def test_a_deleted_gallery_refuses_everyone_and_says_so(gallery_path: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    def frames() -> Iterator[StreamFrame]:
        stream = scripted([[(1, ALICE, LIVE)]] * 10)
        yield next(stream)
        gallery_path.unlink()
        yield from stream

    relay = Relay()
    audit = AuditLog(tmp_path / "a.log")
    door = DoorLock(CONFIG, RULES, relay, audit)
    opened = {"n": 0}
    inner = session_of(frames(), gallery_path)

    @contextmanager
    def session() -> Iterator[tuple[Iterator[StreamFrame], object]]:
        opened["n"] += 1
        if opened["n"] == 3:
            door.stop("test done")
        with inner() as opened_session:
            yield opened_session

    assert door.run(session) == 0
    audit.close()
    assert True not in relay.states
    errors = [line for line in audit_lines(tmp_path / "a.log") if line["decision"] == "error"]
    assert errors and "no gallery there" in errors[0]["error"]
    assert "no gallery there" in capsys.readouterr().err


@pytest.mark.parametrize("people", [1, 10, 100, 1000])
def test_the_accept_threshold_holds_the_false_accept_rate_as_the_gallery_grows(people: int) -> None:
    """Strangers drawn as the model says (an offset of their own, then one normal score per enrolled person)."""
    impostor = ImpostorModel((0.0, 0.05, 0.1, 0.2), 0.12, "test")
    threshold = accept_threshold(people, 0.01, impostor, floor=-1.0)
    rng = np.random.default_rng(people)
    offsets = rng.choice(impostor.offsets, size=(20_000, 1))
    strangers = offsets + rng.normal(0.0, impostor.spread, size=(20_000, people))
    passed = float((strangers.max(axis=1) >= threshold).mean())
    assert passed == pytest.approx(0.01, abs=0.004)
    assert threshold > accept_threshold(max(1, people // 10), 0.01, impostor, floor=-1.0) or people == 1
    assert accept_threshold(people, 0.01, impostor, floor=0.9) == 0.9


def test_the_shipped_threshold_rises_with_the_household() -> None:
    impostor = IMPOSTORS["int8"]
    thresholds = [accept_threshold(n, 0.001, impostor, floor=0.0) for n in (1, 5, 20, 100, 1000)]
    assert thresholds == sorted(thresholds) and thresholds[0] > 0.4 and thresholds[-1] < 0.9
