"""The door lock under gpiozero's mock pin factory, on real photos: it opens for the enrolled person only, once
per track; on NUAA webcam frames each person gets in and their printed photo never does; every failure (camera
lost, SIGTERM mid-pulse, a misconfiguration) leaves the relay locked."""

from __future__ import annotations

import csv
import gc
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

from edgeface.analyzer import FaceAnalyzer
from edgeface.camera import FolderSource
from edgeface.cli import main
from edgeface.doorlock import AuditLog, DoorLock, GalleryWatch, Session, accept_rules, gpio_relay
from edgeface.errors import CameraError
from edgeface.evidence import AcceptRules
from edgeface.images import load_image
from edgeface.manifest import Manifest
from edgeface.profiles import PROFILE_DIR, load_profile
from edgeface.tracker import FaceStream, StreamFrame

gpiozero = pytest.importorskip("gpiozero")

PERSON = "Hugo_Chavez"
PIN = 17
PROFILE = load_profile("rpi4").with_overrides(input_size=320)  # 320 keeps the tests quick; LFW faces are large
FAST = replace(PROFILE.doorlock, min_frames=4, unlock_seconds=0.01, cooldown_seconds=0.0, relay_pin=PIN,
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


def folder_session(analyzer: FaceAnalyzer, gallery: Path, folder: Path, liveness_frames: int = 0) -> Session:
    @contextmanager
    def session() -> Iterator[tuple[Iterator[StreamFrame], object]]:
        watch = GalleryWatch(gallery, analyzer.open_gallery)
        try:
            with FolderSource(folder) as frames:
                yield FaceStream(analyzer, liveness_frames=liveness_frames).run(frames), watch.current
        finally:
            watch.close()
    return session


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rules(analyzer: FaceAnalyzer, liveness: bool = False) -> AcceptRules:
    profile = replace(PROFILE, liveness=replace(PROFILE.liveness, required=liveness))
    return accept_rules(profile, analyzer)


def run_lock(relay: object, session: Session, log: Path, analyzer: FaceAnalyzer, config=FAST,
             liveness: bool = False) -> tuple[int, list[dict]]:
    audit = AuditLog(log)
    code = DoorLock(config, rules(analyzer, liveness), relay, audit).run(session)
    audit.close()
    return code, audit_lines(log)


def test_enrolled_person_unlocks(relay: object, scene: dict[str, Path], analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    session = folder_session(analyzer, scene["gallery"], scene["enrolled"])
    code, lines = run_lock(relay, session, tmp_path / "a.log", analyzer)
    assert code == 0
    unlocks = [line for line in lines if line["decision"] == "unlock"]
    assert len(unlocks) == 1 and unlocks[0]["identity"] == PERSON
    assert unlocks[0]["similarity"] >= unlocks[0]["threshold"] >= PROFILE.recognition.match_threshold
    assert pin_states().count(True) == 1 and pin_states()[-1] is False
    assert lines[-1]["decision"] == "stopped" and lines[-1]["reason"] == "source ended"


def test_stranger_never_unlocks(relay: object, scene: dict[str, Path], analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    session = folder_session(analyzer, scene["gallery"], scene["strangers"])
    code, lines = run_lock(relay, session, tmp_path / "a.log", analyzer)
    assert code == 0 and {line["decision"] for line in lines[:-1]} == {"unknown"}
    assert True not in pin_states()


def failing_session(analyzer: FaceAnalyzer, gallery: Path, folder: Path, lock: list[DoorLock],
                    frames_before_failure: int = 2, opens: int = 3) -> Session:
    """Each opening gives `frames_before_failure` frames of the folder, then the camera is lost; stops the lock
    at the `opens`-th opening."""
    count = {"opens": 0}

    @contextmanager
    def session() -> Iterator[tuple[Iterator[StreamFrame], object]]:
        count["opens"] += 1
        if count["opens"] == opens:
            lock[0].stop("test done")
        watch = GalleryWatch(gallery, analyzer.open_gallery)
        with FolderSource(folder) as source:
            def frames() -> Iterator[np.ndarray]:
                for index, frame in enumerate(source):
                    if index == frames_before_failure:
                        raise CameraError("camera 0: stopped delivering frames")
                    yield frame
            yield FaceStream(analyzer).run(frames()), watch.current
        watch.close()
    return session


def test_camera_failure_mid_sequence_stays_locked(relay: object, scene: dict[str, Path], analyzer: FaceAnalyzer,
                                                  tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.log")
    lock = [DoorLock(FAST, rules(analyzer), relay, audit)]
    # Three frames per opening: one track would have been judged after four; a lost camera ends the track.
    assert lock[0].run(failing_session(analyzer, scene["gallery"], scene["enrolled"], lock, 3)) == 0
    audit.close()
    lines = audit_lines(tmp_path / "a.log")
    errors = [line for line in lines if line["decision"] == "error"]
    assert len(errors) == 2 and all("CameraError: camera 0: stopped" in line["error"] for line in errors)
    assert "unlock" not in {line["decision"] for line in lines}
    assert True not in pin_states()
    assert lines[-1] == {**lines[-1], "decision": "stopped", "reason": "test done"}


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
    code, lines = run_lock(SignalsWhenUnlocked(), session, tmp_path / "a.log", analyzer, long_pulse)
    assert code == 0
    assert [line["decision"] for line in lines][-2:] == ["unlock", "stopped"]
    assert lines[-1]["reason"] == "SIGTERM"
    assert pin_states()[-2:] == [True, False] and relay.value == 0
    assert signal.getsignal(signal.SIGTERM) is before


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


def test_a_flood_of_frames_does_not_grow_memory(scene: dict[str, Path], analyzer: FaceAnalyzer) -> None:
    """The whole tracked pipeline on real frames: nothing of a frame (pixels, faces, tracks) may stay behind."""
    frames = [load_image(path) for path in sorted(scene["enrolled"].iterdir())[:2]]
    frames += [load_image(path) for path in sorted(scene["strangers"].iterdir())[:2]]
    frames += [np.zeros((120, 160, 3), np.uint8)] * 7  # no face: the tracks end
    stream = FaceStream(analyzer)
    for frame in frames * 3:  # warm-up: interpreters, caches
        stream.step(frame)
    grown = traced_growth(stream.step(frame) for frame in frames * 30)
    assert grown < 128 * 1024, f"{grown} bytes kept after 330 real frames"


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


def door_profile(tmp_path: Path, liveness: bool) -> Path:
    """rpi4 at 320 with a short pulse and no cooldown, liveness as asked (LFW photos are not webcam frames)."""
    profile = tmp_path / "door.toml"
    profile.write_text((PROFILE_DIR / "rpi4.toml").read_text()
                       .replace("input_size = 640\nscore", "input_size = 320\nscore")
                       .replace("unlock_seconds = 3.0", "unlock_seconds = 0.01")
                       .replace("cooldown_seconds = 5.0", "cooldown_seconds = 0.0")
                       .replace("required = true", f"required = {'true' if liveness else 'false'}"))
    return profile


@pytest.mark.parametrize("dry_run", [True, False])
def test_cli_runs_the_lock_on_a_folder(scene: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str], dry_run: bool) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    gpiozero.Device.pin_factory = None
    args = ["doorlock", "--profile", door_profile(tmp_path, False), "--gallery", scene["gallery"],
            "--source", scene["enrolled"], "--audit-log", tmp_path / "audit" / "door.log", "--relay-pin", 5]
    code = main([str(a) for a in args + (["--dry-run"] if dry_run else [])])
    err = capsys.readouterr().err
    lines = audit_lines(tmp_path / "audit" / "door.log")
    assert code == 0 and "unlock" in {line["decision"] for line in lines}
    if dry_run:
        relay_lines = [line for line in err.splitlines() if "relay on GPIO 5" in line]
        assert relay_lines[0].endswith("ON (unlocked)") and relay_lines[-1].endswith("off (locked)")
    else:
        states = [state.state for state in gpiozero.Device.pin_factory.pin(5).states]
        assert True in states and states[-1] is False
        gpiozero.Device.pin_factory.reset()
    gpiozero.Device.pin_factory = None


def test_cli_lock_scores_liveness_when_the_profile_requires_it(scene: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "door.log"
    args = ["doorlock", "--profile", door_profile(tmp_path, True), "--gallery", scene["gallery"],
            "--source", scene["enrolled"], "--audit-log", log, "--dry-run"]
    assert main([str(a) for a in args]) == 0
    judged = audit_lines(log)[:-1]
    assert judged and all(0.0 <= line["liveness"] <= 1.0 for line in judged)


@pytest.mark.parametrize("problem", ["no gallery", "empty file", "another model"])
def test_a_misconfigured_lock_exits_2_and_says_why_on_stderr(scene: dict[str, Path], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str], problem: str) -> None:
    gallery = tmp_path / "gallery.db"
    if problem == "empty file":
        gallery.write_bytes(b"")
    elif problem == "another model":
        from edgeface.gallery import Gallery

        Gallery(gallery, "0" * 64, 192).close()
    log = tmp_path / "door.log"
    args = ["doorlock", "--profile", door_profile(tmp_path, False), "--gallery", gallery, "--source",
            scene["enrolled"], "--audit-log", log, "--dry-run"]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert f"edgeface: doorlock: error: GalleryError: {gallery}" in err and "; exiting with 2" in err
    assert "ON (unlocked)" not in err
    assert audit_lines(log)[-1]["reason"] == "misconfigured"


def test_an_audit_log_path_that_is_a_folder_is_one_clear_line(scene: dict[str, Path], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = ["doorlock", "--profile", door_profile(tmp_path, False), "--gallery", scene["gallery"], "--source",
            scene["enrolled"], "--audit-log", tmp_path, "--dry-run"]
    assert main([str(a) for a in args]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"edgeface: error: {tmp_path}: the audit log is a folder; give a file path, e.g. {tmp_path / 'door.jsonl'}"]


def test_a_corrupt_first_frame_is_skipped_not_fatal(scene: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "000-corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    for path in sorted(scene["enrolled"].iterdir()):
        (frames / path.name).symlink_to(path.resolve())
    log = tmp_path / "door.log"
    args = ["doorlock", "--profile", door_profile(tmp_path, False), "--gallery", scene["gallery"], "--source",
            frames, "--audit-log", log, "--dry-run"]
    assert main([str(a) for a in args]) == 0
    err = capsys.readouterr().err
    skipped = [line for line in err.splitlines() if "000-corrupt.jpg" in line]
    assert len(skipped) == 1 and skipped[0].startswith("edgeface: skipped frame: ")
    assert [line["decision"] for line in audit_lines(log)] == ["unlock", "stopped"]


def frame_order(path: Path) -> tuple[int, ...]:
    """NUAA frames in capture order ('nuaa_live_0001_00_00_01_134.jpg' -> (1, 0, 0, 1, 134))."""
    return tuple(int(part) for part in path.stem.split("_")[2:])


@pytest.fixture(scope="module")
def nuaa(data: Path, manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """All 8 nuaa_dev people enrolled from their first 3 live frames (rpi4's 640 input); per person, a folder of
    their other live frames and one of their printed-photo frames, each in capture order."""
    labels = data / "nuaa_dev" / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"{labels}: NUAA frames not found")
    rows = list(csv.DictReader(labels.open()))
    root = tmp_path_factory.mktemp("nuaa")
    analyzer = FaceAnalyzer(load_profile("rpi4"))
    folders: dict[str, dict[str, Path]] = {}
    with analyzer.open_gallery(root / "gallery.db") as gallery:
        for subject in sorted({row["subject"] for row in rows}):
            folders[subject] = {}
            for label in ("live", "spoof"):
                paths = sorted((data / "nuaa_dev" / row["file"] for row in rows
                                if row["subject"] == subject and row["label"] == label), key=frame_order)
                if label == "live":
                    for path in paths[:3]:
                        face = max(analyzer.embed(path), key=lambda f: f.area)
                        gallery.add(subject, face.embedding[None])
                    paths = paths[3:]
                folder = root / subject / label
                folder.mkdir(parents=True)
                for index, path in enumerate(paths):
                    (folder / f"{index:04d}.jpg").symlink_to(path)
                folders[subject][label] = folder
    return {"analyzer": analyzer, "gallery": root / "gallery.db", "folders": folders}


@pytest.mark.parametrize("subject", [f"nuaa_{i:04d}" for i in range(1, 9)])
def test_each_person_gets_in_and_their_printed_photo_never_does(relay: object, nuaa: dict, subject: str,
                                                                 tmp_path: Path) -> None:
    analyzer, folders = nuaa["analyzer"], nuaa["folders"]
    if subject not in folders:
        pytest.skip(f"{subject}: not in nuaa_dev")
    outcomes = {}
    for label in ("live", "spoof"):
        session = folder_session(analyzer, nuaa["gallery"], folders[subject][label], FAST.min_frames)
        _, lines = run_lock(relay, session, tmp_path / f"{label}.log", analyzer, liveness=True)
        outcomes[label] = [(line["decision"], line["identity"]) for line in lines if line["decision"] != "stopped"]
    assert ("unlock", subject) in outcomes["live"], outcomes
    assert not any(decision == "unlock" for decision, _ in outcomes["spoof"]), outcomes


def test_watch_prints_one_json_line_per_track_event(nuaa: dict, capsys: pytest.CaptureFixture[str]) -> None:
    subject = sorted(nuaa["folders"])[0]
    args = ["watch", "--profile", "rpi4", "--source", nuaa["folders"][subject]["live"], "--gallery",
            nuaa["gallery"], "--json"]
    assert main([str(a) for a in args]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "appeared" and kinds[-1] == "left" and kinds.count("identified") == 1
    identified = next(event for event in events if event["event"] == "identified")
    assert identified["identity"] == subject and identified["liveness"] >= 0.0
    person = [event for event in events if event["track"] == identified["track"]]
    assert [event["event"] for event in person] == ["appeared", "identified", "left"]
    assert person[-1]["identity"] == subject
    others = [event for event in events if event["track"] != identified["track"]]  # e.g. a face on a poster
    assert all(event.get("identity", "unknown") == "unknown" for event in others)
