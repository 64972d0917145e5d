"""The door lock under gpiozero's mock pin factory, on real LFW photos: it opens for the enrolled person only,
and every failure (camera lost, an exception while matching, SIGTERM mid-pulse) leaves the relay locked."""

from __future__ import annotations

import gc
import itertools
import json
import os
import signal
import tracemalloc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeface.analyzer import Face, FaceAnalyzer
from edgeface.camera import FolderSource
from edgeface.cli import main
from edgeface.doorlock import DoorLock, GalleryRecognizer, Recognizer, Session, audit_logger, gpio_relay
from edgeface.errors import CameraError
from edgeface.gallery import UNKNOWN
from edgeface.images import load_image
from edgeface.manifest import Manifest
from edgeface.profiles import PROFILE_DIR, load_profile

gpiozero = pytest.importorskip("gpiozero")

PERSON = "Hugo_Chavez"
PIN = 17
PROFILE = load_profile("rpi4").with_overrides(input_size=320)  # 320 keeps the tests quick; LFW faces are large
FAST = replace(PROFILE.doorlock, votes=3, window=5, unlock_seconds=0.01, cooldown_seconds=0.0, relay_pin=PIN,
               relay_active_high=True, backoff_seconds=0.001, backoff_max_seconds=0.004)


@pytest.fixture()
def relay(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The production gpiozero relay on a mock pin (GPIOZERO_PIN_FACTORY=mock)."""
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    gpiozero.Device.pin_factory = None  # read the environment afresh
    device = gpio_relay(PIN, active_high=True)
    yield device
    device.close()
    gpiozero.Device.pin_factory.reset()
    gpiozero.Device.pin_factory = None


def pin_states() -> list[bool]:
    """Every level the relay pin has had (True = driven = unlocked)."""
    return [state.state for state in gpiozero.Device.pin_factory.pin(PIN).states]


@pytest.fixture(scope="module")
def scene(manifest: Manifest, data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A gallery with PERSON enrolled from 3 photos; folders of 8 other photos of PERSON and of 10 strangers."""
    root = tmp_path_factory.mktemp("doorlock")
    people = data / "lfw_fold1" / "images"
    photos = sorted((people / PERSON).glob("*.jpg"))
    if len(photos) < 11:
        pytest.skip(f"{people / PERSON}: needs 11 photos")
    analyzer = FaceAnalyzer(PROFILE)
    with analyzer.open_gallery(root / "gallery.db") as gallery:
        for photo in photos[:3]:
            face = max(analyzer.embed(photo), key=lambda f: f.area)
            gallery.add(PERSON, face.embedding[None])
    for name, chosen in (("enrolled", photos[3:]),
                         ("strangers", [sorted(d.glob("*.jpg"))[0] for d in sorted(people.iterdir())
                                        if d.name != PERSON][:10])):
        (root / name).mkdir()
        for photo in chosen:
            (root / name / photo.name).symlink_to(photo)
    return {"gallery": root / "gallery.db", "enrolled": root / "enrolled", "strangers": root / "strangers"}


@pytest.fixture(scope="module")
def analyzer(manifest: Manifest) -> FaceAnalyzer:
    return FaceAnalyzer(PROFILE)


def folder_session(analyzer: FaceAnalyzer, gallery: Path, folder: Path) -> Session:
    @contextmanager
    def session() -> Iterator[tuple[Iterable[np.ndarray], Recognizer]]:
        with analyzer.open_gallery(gallery) as people, FolderSource(folder) as frames:
            yield frames, GalleryRecognizer(analyzer, people)
    return session


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_lock(relay: object, session: Session, log: Path, config=FAST) -> tuple[int, list[dict]]:
    audit = audit_logger(log)
    code = DoorLock(config, relay, audit).run(session)
    for handler in audit.handlers:
        handler.close()
    return code, audit_lines(log)


def test_enrolled_person_unlocks(relay: object, scene: dict[str, Path], analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    code, lines = run_lock(relay, folder_session(analyzer, scene["gallery"], scene["enrolled"]), tmp_path / "a.log")
    assert code == 0
    unlocks = [line for line in lines if line["decision"] == "unlock"]
    assert unlocks and all(line["identity"] == PERSON and line["similarity"] >= 0.5 for line in unlocks)
    assert unlocks[0]["votes"] == FAST.votes and lines.index(unlocks[0]) == FAST.votes - 1
    assert pin_states().count(True) == len(unlocks) and pin_states()[-1] is False
    assert lines[-1]["decision"] == "stopped" and lines[-1]["reason"] == "source ended"
    assert all(set(line) <= {"time", "decision", "identity", "similarity", "liveness", "votes", "reason"}
               for line in lines)


def test_stranger_never_unlocks(relay: object, scene: dict[str, Path], analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    code, lines = run_lock(relay, folder_session(analyzer, scene["gallery"], scene["strangers"]), tmp_path / "a.log")
    decisions = [line["decision"] for line in lines[:-1]]
    assert code == 0 and len(decisions) >= 8
    assert set(decisions) == {"unknown"}
    assert all(line["identity"] == "unknown" for line in lines[:-1])
    assert True not in pin_states()


def failing_session(analyzer: FaceAnalyzer, gallery: Path, folder: Path, lock: list[DoorLock],
                    recognizer_wrapper=None, frames_before_failure: int = 2, opens: int = 3) -> Session:
    """Each opening gives `frames_before_failure` frames of the folder, then the camera is lost; stops the lock
    at the `opens`-th opening. `recognizer_wrapper` may replace the recognizer."""
    count = {"opens": 0}

    @contextmanager
    def session() -> Iterator[tuple[Iterable[np.ndarray], Recognizer]]:
        count["opens"] += 1
        if count["opens"] == opens:
            lock[0].stop("test done")
        with analyzer.open_gallery(gallery) as people, FolderSource(folder) as source:
            def frames() -> Iterator[np.ndarray]:
                for index, frame in enumerate(source):
                    if index == frames_before_failure:
                        raise CameraError("camera 0: stopped delivering frames")
                    yield frame
            recognize = GalleryRecognizer(analyzer, people)
            yield frames(), recognize if recognizer_wrapper is None else recognizer_wrapper(recognize)
    return session


def test_camera_failure_mid_sequence_stays_locked(relay: object, scene: dict[str, Path], analyzer: FaceAnalyzer,
                                                  tmp_path: Path) -> None:
    audit = audit_logger(tmp_path / "a.log")
    lock = [DoorLock(FAST, relay, audit)]
    # Two matching frames per opening: with the votes kept across the failure, the second opening would unlock.
    assert lock[0].run(failing_session(analyzer, scene["gallery"], scene["enrolled"], lock)) == 0
    lines = audit_lines(tmp_path / "a.log")
    errors = [line for line in lines if line["decision"] == "error"]
    assert len(errors) == 2 and all("CameraError: camera 0: stopped" in line["error"] for line in errors)
    assert [line["decision"] for line in lines].count("pending") >= 4
    assert "unlock" not in {line["decision"] for line in lines}
    assert True not in pin_states()
    assert lines[-1] == {**lines[-1], "decision": "stopped", "reason": "test done"}


def test_exception_while_matching_stays_locked_and_is_logged(relay: object, scene: dict[str, Path],
                                                             analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    def broken_after_two(recognize: Recognizer) -> Recognizer:
        calls = {"n": 0}

        def wrapped(frame: np.ndarray) -> Face | None:
            calls["n"] += 1
            if calls["n"] > 2:
                raise RuntimeError("boom in matching")
            return recognize(frame)
        return wrapped

    audit = audit_logger(tmp_path / "a.log")
    lock = [DoorLock(FAST, relay, audit)]
    session = failing_session(analyzer, scene["gallery"], scene["enrolled"], lock, broken_after_two,
                              frames_before_failure=99)
    assert lock[0].run(session) == 0
    lines = audit_lines(tmp_path / "a.log")
    errors = [line for line in lines if line["decision"] == "error"]
    assert errors and all(line["error"] == "RuntimeError: boom in matching" for line in errors)
    assert "unlock" not in {line["decision"] for line in lines}
    assert True not in pin_states()


def test_sigterm_during_the_pulse_locks_and_exits(relay: object, scene: dict[str, Path], analyzer: FaceAnalyzer,
                                                  tmp_path: Path) -> None:
    class SignalsWhenUnlocked:
        """The real relay; turning it on sends this process SIGTERM (as systemd would mid-pulse)."""

        def on(self) -> None:
            relay.on()
            assert relay.value == 1
            os.kill(os.getpid(), signal.SIGTERM)

        def off(self) -> None:
            relay.off()

        def close(self) -> None:
            relay.close()

    before = signal.getsignal(signal.SIGTERM)
    long_pulse = replace(FAST, unlock_seconds=60.0, cooldown_seconds=60.0)
    session = folder_session(analyzer, scene["gallery"], scene["enrolled"])
    code, lines = run_lock(SignalsWhenUnlocked(), session, tmp_path / "a.log", long_pulse)
    assert code == 0
    assert [line["decision"] for line in lines][-2:] == ["unlock", "stopped"]
    assert lines[-1]["reason"] == "SIGTERM"
    assert pin_states()[-2:] == [True, False] and relay.value == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_face_judged_not_live_never_unlocks(relay: object, scene: dict[str, Path], analyzer: FaceAnalyzer,
                                             tmp_path: Path) -> None:
    seen: list[str | None] = []

    @contextmanager
    def printed_photos() -> Iterator[tuple[Iterable[np.ndarray], Recognizer]]:
        with analyzer.open_gallery(scene["gallery"]) as people, FolderSource(scene["enrolled"]) as frames:
            recognize = GalleryRecognizer(analyzer, people)

            def judged_spoof(frame: np.ndarray) -> Face | None:
                face = recognize(frame)
                if face is not None:
                    face.liveness, face.live = 0.1, False
                    seen.append(face.identity)
                return face

            yield frames, judged_spoof

    _, lines = run_lock(relay, printed_photos, tmp_path / "a.log")
    assert {line["decision"] for line in lines[:-1]} == {"not_live"}
    assert seen and seen[0] == PERSON and lines[0]["liveness"] == 0.1
    assert True not in pin_states()


def test_the_recognizer_scores_liveness_when_asked(scene: dict[str, Path], analyzer: FaceAnalyzer) -> None:
    frame = load_image(sorted(scene["enrolled"].iterdir())[0])
    with analyzer.open_gallery(scene["gallery"]) as people:
        plain = GalleryRecognizer(analyzer, people)(frame)
        checked = GalleryRecognizer(analyzer, people, check_liveness=True)(frame)
    assert plain is not None and plain.liveness is None and plain.live is None
    assert checked is not None and 0.0 <= checked.liveness <= 1.0 and isinstance(checked.live, bool)


def traced_growth(steps: Iterable[object]) -> int:
    """Bytes still allocated (as tracemalloc sees them) after consuming `steps`, garbage collected."""
    tracemalloc.start()
    try:
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        for _ in steps:
            pass
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()


def test_a_flood_of_frames_does_not_grow_memory(relay: object, scene: dict[str, Path], analyzer: FaceAnalyzer,
                                                tmp_path: Path) -> None:
    audit = audit_logger(tmp_path / "a.log")
    lock = DoorLock(FAST, relay, audit)
    # The whole pipeline on real frames: nothing of a frame (pixels, faces, embeddings) may stay behind.
    frames = [load_image(path) for path in sorted(scene["enrolled"].iterdir())[:2]]
    frames += [load_image(path) for path in sorted(scene["strangers"].iterdir())[:2]]
    frames.append(np.zeros((120, 160, 3), np.uint8))  # no face
    with analyzer.open_gallery(scene["gallery"]) as people:
        recognize = GalleryRecognizer(analyzer, people)
        for frame in frames * 4:  # warm-up: interpreters, caches
            lock.step(frame, recognize)
        grown = traced_growth(lock.step(frame, recognize) for frame in frames * 60)
    assert grown < 128 * 1024, f"{grown} bytes kept after 300 real frames"
    # Many more frames through the lock itself (votes never reach K: four identities in turn): bounded window.
    names = ["a", "b", "c", UNKNOWN]
    face = Face(box=(0.0, 0.0, 9.0, 9.0), score=0.9, landmarks=[(1.0, 1.0)] * 5, similarity=0.6)

    turns = itertools.count()

    def cycling(frame: np.ndarray) -> Face:
        return replace(face, identity=names[next(turns) % len(names)], embedding=np.ones(192, np.float32))

    frame = frames[-1]
    grown = traced_growth(lock.step(frame, cycling) for _ in range(10_000))
    for handler in audit.handlers:
        handler.close()
    assert grown < 32 * 1024, f"{grown} bytes kept after 10,000 frames"
    assert "unlock" not in {line["decision"] for line in audit_lines(tmp_path / "a.log")[-1000:]}


def test_active_low_relay_holds_its_pin_high_while_locked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    gpiozero.Device.pin_factory = None
    device = gpio_relay(PIN, active_high=False)
    try:
        assert device.value == 0 and gpiozero.Device.pin_factory.pin(PIN).state is True
    finally:
        device.close()
        gpiozero.Device.pin_factory.reset()
        gpiozero.Device.pin_factory = None


@pytest.mark.parametrize("dry_run", [True, False])
def test_cli_runs_the_lock_on_a_folder(scene: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str], dry_run: bool) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    gpiozero.Device.pin_factory = None
    profile = tmp_path / "door.toml"
    profile.write_text((PROFILE_DIR / "rpi4.toml").read_text()
                       .replace("input_size = 640\nscore", "input_size = 320\nscore")
                       .replace("unlock_seconds = 3.0", "unlock_seconds = 0.01")
                       .replace("cooldown_seconds = 5.0", "cooldown_seconds = 0.0")
                       .replace("required = true", "required = false"))  # LFW photos are not webcam frames
    args = ["doorlock", "--profile", profile, "--gallery", scene["gallery"], "--source", scene["enrolled"],
            "--audit-log", tmp_path / "audit" / "door.log", "--relay-pin", 5]
    code = main([str(a) for a in args + (["--dry-run"] if dry_run else [])])
    err = capsys.readouterr().err
    lines = audit_lines(tmp_path / "audit" / "door.log")
    assert code == 0 and "unlock" in {line["decision"] for line in lines}
    if dry_run:
        assert "relay on GPIO 5 ON (unlocked)" in err and err.rstrip().endswith("off (locked)")
    else:
        states = [state.state for state in gpiozero.Device.pin_factory.pin(5).states]
        assert True in states and states[-1] is False
        gpiozero.Device.pin_factory.reset()
    gpiozero.Device.pin_factory = None


def test_cli_lock_scores_liveness_when_the_profile_requires_it(scene: dict[str, Path], tmp_path: Path) -> None:
    profile = tmp_path / "door.toml"
    profile.write_text((PROFILE_DIR / "rpi4.toml").read_text().replace("input_size = 640\nscore", "input_size = 320\nscore")
                       .replace("unlock_seconds = 3.0", "unlock_seconds = 0.01"))
    log = tmp_path / "door.log"
    args = ["doorlock", "--profile", profile, "--gallery", scene["gallery"], "--source", scene["enrolled"],
            "--audit-log", log, "--dry-run"]
    assert main([str(a) for a in args]) == 0
    faces = audit_lines(log)[:-1]
    assert faces and all(0.0 <= line["liveness"] <= 1.0 for line in faces)
