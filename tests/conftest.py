"""Shared fixtures: the converted models and the labelled photos.

Without models (no `make models` yet) or without ../shared/data, the tests that need them skip, except
under CI=true, where `make test` has just built the models and either one missing is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeface.errors import ModelError
from edgeface.manifest import Manifest, load_manifest
from edgeface.tools.datasets import data_dir


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    """The manifest of the converted models."""
    try:
        return load_manifest()
    except ModelError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"models missing under CI: {error}")
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def data() -> Path:
    """The labelled photo folder (../shared/data or $EDGEFACE_DATA)."""
    root = data_dir()
    if root is None:
        message = "labelled photos not found (../shared/data or $EDGEFACE_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"data missing under CI: {message}")
        pytest.skip(message)
    return root


def subset(folder: Path, count: int) -> list[Path]:
    """`count` images spread evenly over a folder (sorted, recursive), the same on every run."""
    from edgeface.images import list_images

    paths = list_images(folder)
    if not paths:
        pytest.skip(f"{folder}: no images")
    step = max(1, len(paths) // count)
    return paths[::step][:count]
