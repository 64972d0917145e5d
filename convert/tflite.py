"""ONNX -> TFLite: onnx2tf for the graph (float32 model + SavedModel), then full-integer int8 calibration.

The int8 step runs the TFLite converter on onnx2tf's SavedModel with the same settings as onnx2tf's
`-oiqt` full-integer variant (per-channel weights, int8 input and output), but restricted to
TFLITE_BUILTINS_INT8 so a float op can never slip in, and without the four extra variants `-oiqt` also
calibrates (dynamic range, float16, int8 with float I/O, 16x8): a third of the time for the model we ship.
Optionally the activation ranges are quantiles instead of min/max (`full_integer(clip_quantile=...)`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from convert import ConvertError, bias_correction

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
    out = work / f"onnx2tf-{onnx_path.stem}"
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


def full_integer(saved_model: Path, samples: Callable[[], Iterator[np.ndarray]],
                 clip_quantile: float | None = None, bias_correct: bool = False,
                 output_floors: Mapping[tuple[int, ...], float] | None = None) -> bytes:
    """Full-integer int8 TFLite from a SavedModel, calibrated on `samples()` (real-valued NHWC batches of 1).

    By default each activation's int8 range is its min/max over the samples. With `clip_quantile` (e.g. 0.99999),
    every intermediate activation spans instead the widest per-sample `clip_quantile` / `1 - clip_quantile`
    quantiles: rare outliers, often twice the bulk's extent, are clipped and the bulk gets finer steps. The model's
    input and outputs keep their full range, except that `output_floors` (output shape -> value) raises an
    output's lower bound to a value below which the runtime never looks, so the values it does look at get finer
    steps. With `bias_correct`, each conv/depthwise/FC layer's mean output error against the calibrated float
    model is then folded into its int32 bias (convert.bias_correction).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    converter.representative_dataset = lambda: ([sample.astype(np.float32)] for sample in samples())
    two_step = clip_quantile is not None or bias_correct or bool(output_floors)
    converter._experimental_calibrate_only = two_step  # float model + recorded ranges, quantized by us
    try:
        converted = converter.convert()
        if not two_step:
            return converted
        quantized = _requantize_clipped(converted, samples, clip_quantile, output_floors or {})
        return bias_correction.bias_correct(quantized, converted, samples) if bias_correct else quantized
    except ConvertError:
        raise
    except Exception as error:  # the converter raises bare Exceptions and ConverterErrors alike
        raise ConvertError(f"{saved_model}: int8 calibration failed: {str(error).splitlines()[0]}") from None


def _requantize_clipped(calibrated: bytes, samples: Callable[[], Iterator[np.ndarray]],
                        quantile: float | None, floors: Mapping[tuple[int, ...], float]) -> bytes:
    """Quantize a calibrated float model (min/max recorded per tensor) after narrowing every intermediate range
    to the lowest per-sample `1 - quantile` and highest per-sample `quantile` quantile of the float values
    (with `quantile` None, the recorded min/max as they are), and each output whose shape is in `floors` to start
    there.

    Uses TF's own calibrate-then-quantize split (`_experimental_calibrate_only`, `mlir_quantize`), which the
    converter version in the build key pins.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.python.convert import mlir_quantize
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    graph = model.subgraphs[0]
    _raise_floors(model, floors)
    if quantile is None:
        edited = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
        return mlir_quantize(edited, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8)
    ends = {*graph.inputs, *graph.outputs}
    ranged = [index for index, tensor in enumerate(graph.tensors) if index not in ends
              and tensor.quantization is not None and tensor.quantization.min is not None
              and len(tensor.quantization.min) == 1]
    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True, num_threads=2)
    interpreter.allocate_tensors()
    low = {index: np.inf for index in ranged}
    high = {index: -np.inf for index in ranged}
    for sample in samples():
        interpreter.set_tensor(graph.inputs[0], sample.astype(np.float32))
        interpreter.invoke()
        for index in ranged:
            values = interpreter.get_tensor(index).ravel()
            ranks = [int((1 - quantile) * (values.size - 1)), int(quantile * (values.size - 1))]
            sample_low, sample_high = np.partition(values, ranks)[ranks]
            low[index], high[index] = min(low[index], sample_low), max(high[index], sample_high)
    for index in ranged:
        graph.tensors[index].quantization.min = [min(float(low[index]), 0.0)]
        graph.tensors[index].quantization.max = [max(float(high[index]), 0.0)]
    edited = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return mlir_quantize(edited, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8)


def _raise_floors(model: Any, floors: Mapping[tuple[int, ...], float]) -> None:
    """Raise the recorded minimum of each output whose shape is in `floors` (flatbuffer object API) to its floor
    (outputs are told apart by shape: the calibrated model renames them)."""
    graph = model.subgraphs[0]
    shapes = [tuple(int(v) for v in graph.tensors[index].shape) for index in graph.outputs]
    by_shape = dict(zip(shapes, graph.outputs))
    for shape, floor in floors.items():
        if shape not in by_shape:
            raise ConvertError(f"int8 output floor: the model has no output of shape {shape} "
                               f"(outputs: {sorted(by_shape)})")
        if shapes.count(shape) > 1:
            raise ConvertError(f"int8 output floor: two outputs have the shape {shape}; cannot tell them apart")
        quantization = graph.tensors[by_shape[shape]].quantization
        if (quantization is None or quantization.min is None or quantization.max is None
                or quantization.max[0] <= floor):
            raise ConvertError(f"int8 output floor: the output of shape {shape} has no recorded range above {floor}")
        quantization.min = [max(float(quantization.min[0]), floor)]
