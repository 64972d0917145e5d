"""Shared fixtures: the converted models and the labelled photos; helpers for the converter's tiny test models.

Without models (no `make models` yet) or without ../shared/data, the tests that need them skip, except
under CI=true, where `make test` has just built the models and either one missing is a failure.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
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


@contextmanager
def raw_sqlite(path: Path | str, **options: Any) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to `path` (how a test tampers with or inspects a database behind the product's
    back), committed and closed on exit. `with sqlite3.connect(...)` commits but does not close, and an unclosed
    connection is closed by the cycle collector at a random later moment, checkpointing the WAL as it goes."""
    connection = sqlite3.connect(path, **options)
    try:
        with connection:
            yield connection
    finally:
        connection.close()


def calibrate_only(model: Any, samples: Callable[[], Iterator[np.ndarray]]) -> bytes:
    """The TFLite converter's calibrate-only output for a Keras `model`: the float model with each tensor's
    min/max recorded on `samples()`, set up as convert.tflite.full_integer sets it up (int8 in and out)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    converter.representative_dataset = lambda: ([sample] for sample in samples())
    converter._experimental_calibrate_only = True
    return converter.convert()


def buffer_bytes(model: Any, tensor: Any) -> bytes:
    """A tensor's constant data in a flatbuffer object-API model (b'' when it has none)."""
    data = model.buffers[tensor.buffer].data
    return b"" if data is None else np.asarray(data, np.uint8).tobytes()
