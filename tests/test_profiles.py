"""Hardware profiles: the shipped ones load, and every kind of bad file gives one ProfileError naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeface.errors import ProfileError
from edgeface.profiles import (DEFAULT_PROFILE, PROFILE_DIR, Profile, available_profiles, load_profile)

SHIPPED = ["coral-devboard", "coral-usb", "rpi-zero2w", "rpi3", "rpi4", "rpi5", "x86"]

VALID = """\
description = "test board"
[detector]
name = "retinaface"
input_size = 640
score_threshold = 0.5
nms_iou = 0.4
[mtcnn]
input_size = 640
min_face = 20
factor = 0.709
max_levels = 8
thresholds = [0.6, 0.7, 0.7]
[runtime]
threads = 4
delegate = "xnnpack"
precision = "int8"
[recognition]
match_threshold = 0.5
top_k = 1
false_accept_rate = 0.001
[camera]
width = 1280
height = 720
fps = 15
[doorlock]
min_frames = 4
max_misses = 5
unlock_seconds = 3.0
cooldown_seconds = 5.0
relay_pin = 17
relay_active_high = true
backoff_seconds = 1.0
backoff_max_seconds = 30.0
[liveness]
required = true
"""


def write(tmp_path: Path, text: str, name: str = "board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def edited(old: str, new: str) -> str:
    """VALID with one line replaced (asserting the line exists)."""
    assert old in VALID
    return VALID.replace(old, new)


def error_for(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def test_shipped_profiles_all_load() -> None:
    assert available_profiles() == SHIPPED
    for name in SHIPPED:
        profile = load_profile(name)
        assert profile.name == name
        assert profile.path == PROFILE_DIR / f"{name}.toml"
        assert profile.detector.input_size in (320, 640)
        assert profile.mtcnn.thresholds == (0.6, 0.7, 0.7)
        assert profile.recognition.match_threshold == 0.5
        assert profile.doorlock.min_frames >= 2 and profile.recognition.false_accept_rate <= 0.01
        # Every expected latency says where it comes from: a measurement here, or a cited and derived figure.
        assert profile.expected is not None and profile.expected.latency_ms > 0, profile.name
        source = profile.expected.source
        assert source.startswith("measured") or (source.startswith("derived") and "https://" in source), source


def test_coral_profiles_use_the_edgetpu() -> None:
    assert {load_profile(name).runtime.delegate for name in ("coral-usb", "coral-devboard")} == {"edgetpu"}


def test_default_is_x86() -> None:
    assert DEFAULT_PROFILE == "x86"
    profile = load_profile()
    assert profile.name == "x86"
    assert (profile.detector.name, profile.detector.input_size) == ("retinaface", 640)
    assert (profile.runtime.threads, profile.runtime.delegate) == (2, "xnnpack")


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ProfileError, match="unknown profile 'nope'") as info:
        load_profile("nope")
    assert all(name in str(info.value) for name in SHIPPED)


def test_valid_file_loads_by_path_with_defaults(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, VALID))
    assert isinstance(profile, Profile)
    assert profile.name == "board"
    assert profile.detector.max_faces == 100
    assert isinstance(profile.detector.score_threshold, float)
    assert profile.expected is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "absent.toml")


@pytest.mark.parametrize(("text", "key", "problem"), [
    (edited("nms_iou = 0.4", "nms_iou = 0.4\nspeed = 3"), "detector.speed", "unknown key"),
    (VALID + "[extra]\nx = 1\n", "extra", "unknown key"),
    (edited("threads = 4\n", ""), "runtime.threads", "missing required key"),
    (edited("[camera]\nwidth = 1280\nheight = 720\nfps = 15\n", ""), "camera", "missing required key"),
    (edited("threads = 4", 'threads = "4"'), "runtime.threads", 'must be an integer, got string "4"'),
    (edited("threads = 4", "threads = 2.5"), "runtime.threads", "must be an integer, got float 2.5"),
    (edited("threads = 4", "threads = true"), "runtime.threads", "must be an integer, got boolean true"),
    (edited("top_k = 1", "top_k = false"), "recognition.top_k", "must be an integer, got boolean false"),
    (edited("nms_iou = 0.4", "nms_iou = true"), "detector.nms_iou", "must be a number, got boolean true"),
    ("runtime = 3\n" + edited('[runtime]\nthreads = 4\ndelegate = "xnnpack"\nprecision = "int8"\n', ""),
     "runtime", "must be a table, got integer 3"),
    (edited("score_threshold = 0.5", "score_threshold = 1.5"), "detector.score_threshold",
     "must be between 0 and 1, got 1.5"),
    (edited("input_size = 640\nscore", "input_size = 480\nscore"), "detector.input_size",
     "must be one of 320, 640, got 480"),
    (edited('name = "retinaface"', 'name = "yolo"'), "detector.name", "must be one of"),
    (edited("threads = 4", "threads = 0"), "runtime.threads", "must be at least 1, got 0"),
    (edited("input_size = 640\nmin_face", "input_size = 641\nmin_face"), "mtcnn.input_size", "even integer"),
    (edited("factor = 0.709", "factor = 1.0"), "mtcnn.factor", "at least 0.5 and below 1"),
    (edited("[0.6, 0.7, 0.7]", "[0.6, 1.2, 0.7]"), "mtcnn.thresholds[1]", "must be between 0 and 1, got 1.2"),
    (edited("[0.6, 0.7, 0.7]", "[0.6, 0.7]"), "mtcnn.thresholds", "must be an array of 3 numbers"),
    (edited("min_face = 20", "min_face = 700"), "mtcnn.min_face", "at most mtcnn.input_size"),
    (edited("min_frames = 4", "min_frames = 0"), "doorlock.min_frames", "must be from 1 to 100, got 0"),
    (edited("false_accept_rate = 0.001", "false_accept_rate = 0.7"), "recognition.false_accept_rate",
     "must be between 0 and 0.5, got 0.7"),
    (edited("relay_pin = 17", "relay_pin = 40"), "doorlock.relay_pin", "a BCM GPIO number from 0 to 27, got 40"),
    (edited("relay_active_high = true", "relay_active_high = 1"), "doorlock.relay_active_high",
     "must be a boolean, got integer 1"),
    (edited("unlock_seconds = 3.0", "unlock_seconds = 0"), "doorlock.unlock_seconds", "greater than 0"),
    (edited("backoff_max_seconds = 30.0", "backoff_max_seconds = 0.5"), "doorlock.backoff_max_seconds",
     "must be at least doorlock.backoff_seconds"),
    (edited("max_misses = 5", "max_misses = 5\nvotes = 3"), "doorlock.votes", "unknown key"),
    (edited("required = true", "required = true\nthreshold = 1.5"), "liveness.threshold",
     "must be between 0 and 1, got 1.5"),
    (edited("required = true", 'required = "yes"'), "liveness.required", 'must be a boolean, got string "yes"'),
    (VALID + "[expected]\nlatency_ms = 120\n", "expected.source", "required when expected.latency_ms"),
    (VALID + '[expected]\nlatency_ms = -1\nsource = "x"\n', "expected.latency_ms", "greater than 0"),
])
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    message = error_for(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'board.toml'}: {key}: ")
    assert problem in message


def test_expected_section_with_source(tmp_path: Path) -> None:
    profile = load_profile(write(tmp_path, VALID + '[expected]\nlatency_ms = 120\nsource = "bench log"\n'))
    assert profile.expected is not None
    assert (profile.expected.latency_ms, profile.expected.source) == (120.0, "bench log")


def test_bad_toml(tmp_path: Path) -> None:
    assert "invalid TOML" in error_for(tmp_path, VALID + "[detector\n")


def test_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, VALID, "bench.toml")
    monkeypatch.setenv("EDGEFACE_PROFILES", str(tmp_path))
    assert available_profiles() == ["bench"]
    assert load_profile("bench").path == tmp_path / "bench.toml"
    with pytest.raises(ProfileError, match=r"available: bench\)"):
        load_profile("x86")
    monkeypatch.setenv("EDGEFACE_PROFILES", str(tmp_path / "missing"))
    with pytest.raises(ProfileError, match="EDGEFACE_PROFILES"):
        available_profiles()


def test_overrides_are_validated() -> None:
    profile = load_profile("rpi4")
    changed = profile.with_overrides(detector="mtcnn", input_size=320, score_threshold=0.7, precision="float")
    assert (changed.detector.name, changed.mtcnn.input_size, changed.detector.input_size) == ("mtcnn", 320, 640)
    assert (changed.detector.score_threshold, changed.runtime.precision) == (0.7, "float")
    assert profile.with_overrides(input_size=320).detector.input_size == 320
    assert profile.with_overrides() == profile
    with pytest.raises(ProfileError, match=r"detector\.score_threshold: must be between 0 and 1"):
        profile.with_overrides(score_threshold=1.5)
    with pytest.raises(ProfileError, match=r"runtime\.precision: must be one of"):
        profile.with_overrides(precision="fp16")
