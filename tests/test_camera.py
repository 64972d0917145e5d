"""Frame sources: folders, video files through OpenCV, the Pi camera through picamera2 (faked), and clear errors."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edgeface.camera import FolderSource, OpenCVSource, PiCameraSource, open_source
from edgeface.errors import CameraError
from edgeface.profiles import CameraConfig

CAMERA = CameraConfig(width=64, height=48, fps=15)
RED = (255, 0, 0)


def test_folder_gives_rgb_frames_in_sorted_order(tmp_path: Path) -> None:
    for name, color in (("b.png", (0, 0, 255)), ("a.png", RED)):
        Image.new("RGB", (8, 6), color).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a frame")
    with open_source(str(tmp_path), CAMERA) as source:
        assert isinstance(source, FolderSource)
        frames = list(source)
    assert [f.shape for f in frames] == [(6, 8, 3), (6, 8, 3)]
    assert tuple(frames[0][0, 0]) == RED


def test_an_unreadable_image_is_reported_once_and_skipped(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (8, 6), RED).save(tmp_path / "b.png")
    warnings: list[str] = []
    source = FolderSource(tmp_path, warn=warnings.append)
    frames = list(source)
    assert len(frames) == 1 and tuple(frames[0][0, 0]) == RED
    assert len(warnings) == 1 and "a.jpg" in warnings[0]


def test_a_folder_never_replays_a_frame_it_gave(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 6), RED).save(tmp_path / name)
    source = FolderSource(tmp_path)
    first = iter(source)
    next(first)  # the consumer fails after one frame and opens the source again
    assert len(list(source)) == 2 and list(source) == []


def test_follow_takes_new_files_until_stopped(tmp_path: Path) -> None:
    Image.new("RGB", (8, 6), RED).save(tmp_path / "a.png")
    given: list[np.ndarray] = []

    def stopped() -> bool:
        if len(given) == 1 and not (tmp_path / "b.png").exists():
            Image.new("RGB", (8, 6), (0, 0, 255)).save(tmp_path / "b.png")  # arrives while the lock runs
        return len(given) >= 2

    for frame in FolderSource(tmp_path, follow=True, stopped=stopped):
        given.append(frame)
    assert [tuple(f[0, 0]) for f in given] == [RED, (0, 0, 255)]


@pytest.mark.parametrize("spec", ["missing-folder", "/dev/video-none"])
def test_missing_source(tmp_path: Path, spec: str) -> None:
    with pytest.raises(CameraError):
        open_source(spec if spec.startswith("/") else str(tmp_path / spec), CAMERA)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="no images"):
        open_source(str(tmp_path), CAMERA)


def test_video_file_through_opencv_is_rgb(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(4):
        writer.write(np.full((48, 64, 3), (0, 0, 255), np.uint8))  # red, in OpenCV's BGR order
    writer.release()
    with open_source(str(path), CAMERA) as source:
        assert isinstance(source, OpenCVSource) and source.is_file
        frames = list(source)
    assert len(frames) == 4
    assert np.abs(frames[0][24, 32].astype(int) - RED).max() < 10


class FakePicamera2:
    """Just enough of picamera2.Picamera2: delivers `frames` BGR888 frames, then fails like a lost camera."""

    frames = 2
    instances: list[FakePicamera2] = []

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.started = self.closed = False
        self.delivered = 0
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main: dict[str, Any], controls: dict[str, Any]) -> dict[str, Any]:
        return {"main": main, "controls": controls}

    def configure(self, config: dict[str, Any]) -> None:
        self.config = config

    def start(self) -> None:
        self.started = True

    def capture_array(self) -> np.ndarray:
        if self.delivered == self.frames:
            raise RuntimeError("Camera frontend has timed out!")
        self.delivered += 1
        width, height = self.config["main"]["size"]
        return np.full((height, width, 3), RED, np.uint8)

    def close(self) -> None:
        self.closed = True


def test_pi_camera_through_picamera2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    with open_source("camera", CAMERA) as source:
        assert isinstance(source, PiCameraSource)
        frames = iter(source)
        first = next(frames)
        assert first.shape == (48, 64, 3) and tuple(first[0, 0]) == RED
        next(frames)
        with pytest.raises(CameraError, match="stopped delivering frames"):
            next(frames)
    camera = FakePicamera2.instances[-1]
    assert camera.config == {"main": {"size": (64, 48), "format": "BGR888"}, "controls": {"FrameRate": 15}}
    assert camera.started and camera.closed


def test_camera_without_picamera2_or_opencv_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(CameraError, match="opencv-python-headless.*python3-picamera2"):
        open_source("camera", CAMERA)


def test_a_dangling_symlink_in_the_folder_is_reported_once_and_never_stops_it(tmp_path: Path) -> None:
    Image.new("RGB", (8, 6), RED).save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    warnings: list[str] = []
    source = FolderSource(tmp_path, warn=warnings.append)
    assert len(list(source)) == 1 and list(source) == []
    assert len(warnings) == 1 and "b.png" in warnings[0]
