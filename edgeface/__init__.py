"""edgeface: offline face detection and recognition from int8 TFLite models.

    import edgeface
    with edgeface.FaceAnalyzer("rpi4") as analyzer:
        faces = analyzer.detect("photo.jpg")
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from edgeface.analyzer import Enrolment, Face, FaceAnalyzer, Verification
from edgeface.errors import EdgefaceError, GalleryError, ImageError, ModelError, ProfileError
from edgeface.gallery import Gallery
from edgeface.images import load_image

try:
    __version__ = version("edgeface")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["EdgefaceError", "Enrolment", "Face", "FaceAnalyzer", "Gallery", "GalleryError", "ImageError",
           "ModelError", "ProfileError", "Verification", "__version__", "load_image"]
