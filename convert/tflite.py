"""ONNX -> TFLite: onnx2tf for the graph (float32 model + SavedModel), then full-integer int8 calibration.

The int8 step runs the TFLite converter on onnx2tf's SavedModel with the same settings as onnx2tf's
`-oiqt` full-integer variant (per-channel weights, int8 input and output), but restricted to
TFLITE_BUILTINS_INT8 so a float op can never slip in, and without the four extra variants `-oiqt` also
calibrates (dynamic range, float16, int8 with float I/O, 16x8): a third of the time for the model we ship.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx

from convert import ConvertError

ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise ConvertError(f"{path.parent}: cannot write here ({error.strerror}); choose another --out") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; models are read by the service user too
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def simplify(model: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """onnxsim's constant folding at the model's static shapes (onnx2tf needs e.g. Resize sizes as constants)."""
    import onnxsim

    simplified, checked = onnxsim.simplify(model)
    if not checked:
        raise ConvertError(f"{what}: onnxsim could not validate the simplified ONNX")
    return simplified


def run_onnx2tf(onnx_path: Path, work: Path, sample_images: np.ndarray) -> tuple[Path, Path]:
    """Convert with onnx2tf in `work`; returns (SavedModel folder, float32 .tflite).

    onnx2tf 1.29 fetches a 20x128x128x3 sample array from the internet for its own sanity check of any
    image model; it looks in the working directory first, so we put one there, made from real photos.
    """
    np.save(work / ONNX2TF_SAMPLE, sample_images.astype(np.float32))
    out = work / "onnx2tf"
    log = work.parent / f"onnx2tf-{onnx_path.stem}.log"  # outside `work`, which is removed on failure
    with open(log, "w") as stream:
        result = subprocess.run(
            [sys.executable, "-m", "onnx2tf", "-i", str(onnx_path), "-o", str(out), "-osd"],
            cwd=work, stdout=stream, stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    float_model = out / f"{onnx_path.stem}_float32.tflite"
    if result.returncode != 0 or not float_model.exists():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-5:]).strip()
        raise ConvertError(f"{onnx_path}: onnx2tf failed (log: {log}): {tail}")
    return out, float_model


def full_integer(saved_model: Path, samples: Callable[[], Iterator[np.ndarray]]) -> bytes:
    """Full-integer int8 TFLite from a SavedModel, calibrated on `samples()` (real-valued NHWC batches of 1)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    converter.representative_dataset = lambda: ([sample.astype(np.float32)] for sample in samples())
    try:
        return converter.convert()
    except Exception as error:  # the converter raises bare Exceptions and ConverterErrors alike
        raise ConvertError(f"{saved_model}: int8 calibration failed: {str(error).splitlines()[0]}") from None
