"""Frame sources: H x W x 3 uint8 RGB arrays from a Pi camera, a USB/V4L2 camera, a video file or a folder of images.

picamera2 and OpenCV are optional and imported only by the source that needs them. A source that cannot open,
or stops delivering frames, raises `CameraError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from edgeface.errors import CameraError, ImageError
from edgeface.images import list_images, load_image
from edgeface.profiles import CameraConfig

CAMERA = "camera"
"""The source spec that means the board's camera: picamera2 when installed, else the first V4L2 device."""


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
    """The images under a folder, in sorted order (for tests and demos); ends after the last one."""

    def __init__(self, folder: Path) -> None:
        self.paths = list_images(folder)
        if not self.paths:
            raise CameraError(f"{folder}: no images to use as frames")

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            try:
                yield load_image(path)
            except ImageError as error:
                raise CameraError(str(error)) from None


class OpenCVSource(FrameSource):
    """A V4L2/USB camera (an index or /dev/video* path) or a video file, read through OpenCV.

    A camera that stops delivering frames raises CameraError; a video file simply ends.
    """

    def __init__(self, device: int | str, camera: CameraConfig) -> None:
        try:
            import cv2
        except ImportError:
            raise CameraError("OpenCV is not installed: pip install opencv-python-headless "
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
        while True:
            ok, frame = self._capture.read()
            if not ok or frame is None:
                if self.is_file:
                    return
                raise CameraError(f"camera {self.device}: stopped delivering frames")
            yield self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._capture.release()


class PiCameraSource(FrameSource):
    """The Raspberry Pi camera through picamera2 (Raspberry Pi OS: apt install python3-picamera2)."""

    def __init__(self, camera: CameraConfig) -> None:
        from picamera2 import Picamera2

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
        while True:
            try:
                frame = self._camera.capture_array()
            except Exception as error:
                raise CameraError(f"Pi camera: stopped delivering frames ({error})") from None
            yield np.ascontiguousarray(frame[..., :3])

    def close(self) -> None:
        self._camera.close()


def open_source(spec: str, camera: CameraConfig) -> FrameSource:
    """The frame source named by `spec`: 'camera', a camera index or /dev/video* path, a folder or a video file."""
    if spec == CAMERA:
        try:
            return PiCameraSource(camera)
        except ImportError:
            return OpenCVSource(0, camera)
    if spec.isdigit():
        return OpenCVSource(int(spec), camera)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path)
    if spec.startswith("/dev/") or path.is_file():
        return OpenCVSource(spec, camera)
    raise CameraError(f"{spec}: no such camera, folder or video file")
