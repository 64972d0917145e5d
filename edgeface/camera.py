"""Frame sources: H x W x 3 uint8 RGB arrays from a Pi camera, a USB/V4L2 camera, a video file or a folder of images.

picamera2 and OpenCV are optional and imported only by the source that needs them. A source that cannot open,
or stops delivering frames, raises `CameraError` (`SourceUnavailable` when no retry can help). A frame that cannot
be decoded is reported once through `warn` and skipped: only a source that stops delivering is a failure.
Iterating a source again resumes after the last frame it gave (a folder or a video never replays a frame).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from edgeface.errors import CameraError, ImageError
from edgeface.images import EMPTY_FOLDER, IMAGE_SUFFIXES, MAX_PIXELS, iter_inputs, load_image
from edgeface.profiles import CameraConfig

CAMERA = "camera"
"""The source spec that means the board's camera: picamera2 when installed, else the first V4L2 device."""

BAD_FRAMES_IN_A_ROW = 25
"""A camera or video whose reads fail this many times in a row has stopped delivering (fewer are skipped)."""

FOLLOW_POLL_SECONDS = 0.2

Warn = Callable[[str], None]


class SourceUnavailable(CameraError):
    """The source can never open as given: no such camera, folder or file, or its library is not installed."""


def _ignore(_: str) -> None:
    """The default `warn`: say nothing."""


class FrameSource:
    """Iterate to get RGB frames; use as a context manager so the device is released."""

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device (a no-op unless overridden)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class FolderSource(FrameSource):
    """The images under a folder, in sorted order; ends after the last one, or with `follow` keeps taking new
    files as they arrive (once their size holds still for one poll) until `stopped()` says so. A file that does not
    decode is reported through `warn` and skipped; no file is given twice."""

    def __init__(self, folder: Path, follow: bool = False, stopped: Callable[[], bool] = lambda: False,
                 warn: Warn = _ignore, max_pixels: int = MAX_PIXELS) -> None:
        self.folder, self.follow, self.stopped, self.warn = folder, follow, stopped, warn
        self.max_pixels = max_pixels
        self._given: set[Path] = set()
        self._sizes: dict[Path, int] = {}
        self._reported: set[str] = set()
        if not follow and not self._pending():
            raise SourceUnavailable(f"{folder}: no images to use as frames")

    def _images(self) -> list[Path]:
        """The image files under the folder now; what the walker cannot read (a dangling symlink, an unreadable
        sub-folder) is reported once through `warn` and passed over, never a reason to stop."""
        paths = []
        for item in iter_inputs([self.folder]):
            if item.problem is None:
                if item.path.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(item.path)
            elif item.problem != EMPTY_FOLDER and str(item.path) not in self._reported:
                self._reported.add(str(item.path))
                self.warn(f"skipped: {item.error()}")
        return paths

    def _pending(self) -> list[Path]:
        """The files not given yet, in order; with `follow`, only those whose size held since the last look."""
        fresh = [path for path in self._images() if path not in self._given]
        if not self.follow:
            return fresh
        ready = []
        for path in fresh:
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if self._sizes.get(path) == size:
                ready.append(path)
            self._sizes[path] = size
        return ready

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            pending = self._pending()
            for path in pending:
                self._given.add(path)
                self._sizes.pop(path, None)
                try:
                    frame = load_image(path, max_pixels=self.max_pixels)
                except ImageError as error:
                    self.warn(f"skipped frame: {error}")
                    continue
                yield frame
            if not self.follow or self.stopped():
                return
            if not pending:
                time.sleep(FOLLOW_POLL_SECONDS)


class OpenCVSource(FrameSource):
    """A V4L2/USB camera (an index or /dev/video* path) or a video file, read through OpenCV.

    A read that fails is skipped; BAD_FRAMES_IN_A_ROW failures in a row end a video file, and on a camera raise
    CameraError (stopped delivering frames).
    """

    def __init__(self, device: int | str, camera: CameraConfig, warn: Warn = _ignore) -> None:
        self.warn = warn
        try:
            import cv2
        except ImportError:
            raise SourceUnavailable("OpenCV is not installed: pip install opencv-python-headless "
                                    "(for the Pi camera: apt install python3-picamera2)") from None
        self._cv2 = cv2
        self.device = device
        self.is_file = isinstance(device, str) and not device.startswith("/dev/")
        self._capture = cv2.VideoCapture(device)
        if not self._capture.isOpened():
            self._capture.release()
            raise CameraError(f"{device}: cannot open (missing, busy, or not a video)")
        if not self.is_file:
            self._capture.set(cv2.CAP_PROP_FRAME_WIDTH, camera.width)
            self._capture.set(cv2.CAP_PROP_FRAME_HEIGHT, camera.height)
            self._capture.set(cv2.CAP_PROP_FPS, camera.fps)

    def __iter__(self) -> Iterator[np.ndarray]:
        failures = 0
        while True:
            ok, frame = self._capture.read()
            if ok and frame is not None and frame.ndim == 3:
                failures = 0
                yield self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB)
                continue
            failures += 1
            if self.is_file and self._at_end():
                return
            if failures == 1:
                self.warn(f"{self.device}: skipped a frame that could not be read")
            if failures >= BAD_FRAMES_IN_A_ROW:
                if self.is_file:
                    return
                raise CameraError(f"camera {self.device}: stopped delivering frames")

    def _at_end(self) -> bool:
        """A video file read to its last frame (as far as the container tells)."""
        position = self._capture.get(self._cv2.CAP_PROP_POS_FRAMES)
        count = self._capture.get(self._cv2.CAP_PROP_FRAME_COUNT)
        return count <= 0 or position >= count

    def close(self) -> None:
        self._capture.release()


class PiCameraSource(FrameSource):
    """The Raspberry Pi camera through picamera2 (Raspberry Pi OS: apt install python3-picamera2)."""

    def __init__(self, camera: CameraConfig, warn: Warn = _ignore) -> None:
        from picamera2 import Picamera2

        self.warn = warn
        try:
            self._camera: Any = Picamera2()
        except Exception as error:  # picamera2 raises IndexError/RuntimeError when no camera is attached
            raise CameraError(f"Pi camera: cannot open ({error})") from None
        try:
            # libcamera's 'BGR888' is R, G, B in memory: RGB arrays without a conversion.
            config = self._camera.create_video_configuration(
                main={"size": (camera.width, camera.height), "format": "BGR888"},
                controls={"FrameRate": camera.fps})
            self._camera.configure(config)
            self._camera.start()
        except Exception as error:
            self._camera.close()
            raise CameraError(f"Pi camera: cannot start {camera.width}x{camera.height} at {camera.fps} fps "
                              f"({error})") from None

    def __iter__(self) -> Iterator[np.ndarray]:
        failures = 0
        while True:
            try:
                frame = self._camera.capture_array()
            except Exception as error:  # picamera2 raises what libcamera gives it
                failures += 1
                if failures == 1:
                    self.warn(f"Pi camera: skipped a frame ({error})")
                if failures >= BAD_FRAMES_IN_A_ROW:
                    raise CameraError(f"Pi camera: stopped delivering frames ({error})") from None
                continue
            failures = 0
            yield np.ascontiguousarray(frame[..., :3])

    def close(self) -> None:
        self._camera.close()


def open_source(spec: str, camera: CameraConfig, *, follow: bool = False, stopped: Callable[[], bool] = lambda: False,
                warn: Warn = _ignore, max_pixels: int = MAX_PIXELS) -> FrameSource:
    """The frame source named by `spec`: 'camera', a camera index or /dev/video* path, a folder (with `follow`,
    watched for new images until `stopped()`; images over `max_pixels` decoded reduced or skipped) or a video
    file."""
    if spec == CAMERA:
        try:
            return PiCameraSource(camera, warn)
        except ImportError:
            return OpenCVSource(0, camera, warn)
    if spec.isdigit():
        return OpenCVSource(int(spec), camera, warn)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, follow, stopped, warn, max_pixels)
    if follow:
        raise SourceUnavailable(f"{spec}: --follow needs a folder")
    if spec.startswith("/dev/") or path.is_file():
        return OpenCVSource(spec, camera, warn)
    raise SourceUnavailable(f"{spec}: no such camera, folder or video file")
