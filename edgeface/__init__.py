"""edgeface: offline face detection and recognition from int8 TFLite models.

    import edgeface
    with edgeface.FaceAnalyzer("rpi4") as analyzer:
        faces = analyzer.detect("photo.jpg")

The public names are imported on first use, so `import edgeface` alone loads no model runtime.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("edgeface")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"

_PUBLIC = {"FaceAnalyzer": "edgeface.analyzer", "Face": "edgeface.analyzer", "Verification": "edgeface.analyzer",
           "Enrolment": "edgeface.analyzer", "Gallery": "edgeface.gallery", "load_image": "edgeface.images",
           "EdgefaceError": "edgeface.errors", "ImageError": "edgeface.errors", "GalleryError": "edgeface.errors",
           "ModelError": "edgeface.errors", "ProfileError": "edgeface.errors"}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'edgeface' has no attribute {name!r}")
