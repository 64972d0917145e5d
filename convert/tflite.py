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

from convert import ConvertError, adaround, bias_correction, reader_ranges

ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
LEAKY_FRACTIONS = np.linspace(0.02, 1.0, 50)  # a LeakyReLU input's low ends tried, as fractions of its calibrated one
LEAKY_KEPT = 2000  # values per sample and tensor the low end is chosen on (a seeded random subset)
LEAKY_SEED = 20261202


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
                 clip_quantile: float | None = None, bias_correct: bias_correction.Which | None = None,
                 output_floors: Mapping[tuple[int, ...], float] | None = None, leaky_ranges: bool = False,
                 learned_rounding: bool = False, reader_aware_ranges: bool = False) -> bytes:
    """Full-integer int8 TFLite from a SavedModel, calibrated on `samples()` (real-valued NHWC batches of 1).

    By default each activation's int8 range is its min/max over the samples. With `clip_quantile` (e.g. 0.99999),
    every intermediate activation spans instead the widest per-sample `clip_quantile` / `1 - clip_quantile`
    quantiles: rare outliers, often twice the bulk's extent, are clipped and the bulk gets finer steps. The model's
    input and outputs keep their full range, except that `output_floors` (output shape -> value) raises an
    output's lower bound to a value below which the runtime never looks, so the values it does look at get finer
    steps. With `leaky_ranges`, a tensor only a LeakyReLU reads gets the low end that minimises the error the
    LeakyReLU passes on (`leaky_low_end`). With `reader_aware_ranges`, a tensor read only by convolutions, ADDs and MULs
    gets the range that minimises the error its readers pass on (convert.reader_ranges). With `learned_rounding`,
    every convolution's weights are then rounded, and its bias refitted, to bring its output closest to the
    calibrated float model's (convert.adaround); with `bias_correct` "layers", each conv/depthwise/FC layer's mean
    output error against it is folded into its int32 bias (convert.bias_correction), with "outputs" only each output
    layer's, measured where the float output lies inside the int8 output's range (above a floor, say).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    converter.representative_dataset = lambda: ([sample.astype(np.float32)] for sample in samples())
    two_step = (clip_quantile is not None or bias_correct is not None or bool(output_floors) or leaky_ranges
                or learned_rounding or reader_aware_ranges)
    converter._experimental_calibrate_only = two_step  # float model + recorded ranges, quantized by us
    try:
        converted = converter.convert()
        if not two_step:
            return converted
        quantized = _requantize_clipped(converted, samples, clip_quantile, output_floors or {}, leaky_ranges,
                                        reader_aware_ranges)
        if learned_rounding:
            quantized = adaround.adaround(quantized, converted, samples)
        if bias_correct is not None:
            quantized = bias_correction.bias_correct(quantized, converted, samples, bias_correct)
        return quantized
    except ConvertError:
        raise
    except Exception as error:  # the converter raises bare Exceptions and ConverterErrors alike
        raise ConvertError(f"{saved_model}: int8 calibration failed: {str(error).splitlines()[0]}") from None


def _requantize_clipped(calibrated: bytes, samples: Callable[[], Iterator[np.ndarray]], quantile: float | None,
                        floors: Mapping[tuple[int, ...], float], leaky_ranges: bool = False,
                        reader_aware_ranges: bool = False) -> bytes:
    """Quantize a calibrated float model (min/max recorded per tensor) after narrowing its ranges
    (`_narrow_ranges`, then with `reader_aware_ranges` convert.reader_ranges) and raising each output whose shape is in
    `floors` to start there.

    Uses TF's own calibrate-then-quantize split (`_experimental_calibrate_only`, `mlir_quantize`), which the
    converter version in the build key pins.
    """
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    _raise_floors(model, floors)
    if quantile is not None or leaky_ranges:
        _narrow_ranges(model, calibrated, samples, quantile, leaky_ranges)
    if reader_aware_ranges:
        reader_ranges.reader_ranges(model, calibrated, samples)
    edited = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return mlir_quantize(edited, fully_quantize=True, input_data_type=tf.int8, output_data_type=tf.int8)


def _narrow_ranges(model: Any, calibrated: bytes, samples: Callable[[], Iterator[np.ndarray]],
                   quantile: float | None, leaky_ranges: bool) -> None:
    """Narrow the recorded range of every intermediate tensor of `model` (flatbuffer object API of `calibrated`)
    to the lowest per-sample `1 - quantile` and highest per-sample `quantile` quantile of its float values (with
    `quantile` None, the recorded min/max as they are); with `leaky_ranges`, a tensor only a LeakyReLU reads
    then starts at `leaky_low_end` instead, and that LeakyReLU's output no lower than its image."""
    from ai_edge_litert.interpreter import Interpreter

    graph = model.subgraphs[0]
    ends = {*graph.inputs, *graph.outputs}
    ranged = [index for index, tensor in enumerate(graph.tensors) if index not in ends
              and tensor.quantization is not None and tensor.quantization.min is not None
              and len(tensor.quantization.min) == 1]
    low = {index: float(graph.tensors[index].quantization.min[0]) for index in ranged}
    high = {index: float(graph.tensors[index].quantization.max[0]) for index in ranged}
    found = bias_correction.leaky_inputs(model) if leaky_ranges else {}
    leaky = {index: pair for index, pair in found.items() if index in low}
    kept: dict[int, list[np.ndarray]] = {index: [] for index in leaky}
    if quantile is not None:
        low, high = {index: np.inf for index in ranged}, {index: -np.inf for index in ranged}
    if quantile is not None or leaky:
        rng = np.random.default_rng(LEAKY_SEED)
        interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True, num_threads=2)
        interpreter.allocate_tensors()
        for sample in samples():
            interpreter.set_tensor(graph.inputs[0], sample.astype(np.float32))
            interpreter.invoke()
            for index in ranged:
                values = interpreter.get_tensor(index).ravel()
                if quantile is not None:
                    ranks = [int((1 - quantile) * (values.size - 1)), int(quantile * (values.size - 1))]
                    sample_low, sample_high = np.partition(values, ranks)[ranks]
                    low[index], high[index] = min(low[index], sample_low), max(high[index], sample_high)
                if index in kept:
                    kept[index].append(rng.choice(values, min(values.size, LEAKY_KEPT), replace=False))
    for index, (alpha, output) in leaky.items():
        low[index] = leaky_low_end(np.concatenate(kept[index]), min(low[index], 0.0), max(high[index], 0.0), alpha)
        if output in low:
            low[output] = max(low[output], alpha * low[index])
    for index in ranged:
        graph.tensors[index].quantization.min = [min(float(low[index]), 0.0)]
        graph.tensors[index].quantization.max = [max(float(high[index]), 0.0)]


def leaky_low_end(values: np.ndarray, low: float, high: float, alpha: float) -> float:
    """The low end c (between `low` and 0) of the int8 range [c, high] that minimises the mean squared error of
    LeakyReLU_alpha(int8 value) - LeakyReLU_alpha(value) over `values`.

    A LeakyReLU scales everything below zero by alpha (0.1 in RetinaFace), errors included, so the negative side
    of its input needs few steps: giving it less of the 256 makes the steps finer where values pass unscaled."""
    x = values.astype(np.float64)
    target = np.where(x < 0, alpha * x, x)
    best, chosen = np.inf, low
    for fraction in LEAKY_FRACTIONS:
        c = low * fraction
        step = (high - c) / 255
        q = np.round((np.clip(x, c, high) - c) / step) * step + c
        error = float(np.mean((np.where(q < 0, alpha * q, q) - target) ** 2))
        if error < best:
            best, chosen = error, c
    return chosen


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
