"""Bias correction (convert.bias_correction) and output floors (convert.tflite) on a tiny int8 model: bias
correction changes only biases and shrinks the mean output error per channel against float; a floor moves the
bottom of an output's int8 range and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from conftest import buffer_bytes, calibrate_only  # noqa: E402
from tensorflow.lite.tools import flatbuffer_utils  # noqa: E402

from convert import ConvertError  # noqa: E402
from convert.bias_correction import bias_correct  # noqa: E402
from convert.tflite import _requantize_clipped  # noqa: E402

SAMPLES = 24


def _samples() -> Iterator[np.ndarray]:
    rng = np.random.default_rng(7)
    for _ in range(SAMPLES):  # positive, off-centre inputs, like pixels: weight rounding shifts the means
        yield (rng.uniform(0.0, 4.0, (1, 12, 12, 3)) + 1.0).astype(np.float32)


def _calibrated(tmp_path: Path) -> bytes:
    """Calibrate-only float TFLite of conv -> depthwise (fused ReLU) -> conv -> dense."""
    tf.keras.utils.set_random_seed(3)
    inputs = tf.keras.Input((12, 12, 3), batch_size=1)
    x = tf.keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = tf.keras.layers.Conv2D(6, 1)(x)
    x = tf.keras.layers.Dense(5)(tf.keras.layers.Flatten()(x))
    model = tf.keras.Model(inputs, x)
    for layer in model.layers:  # coarse weights: a large, systematic rounding error per channel
        if layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel * np.linspace(0.05, 3.0, kernel.shape[-1]), bias + 0.3])
    return calibrate_only(model, _samples)


def _layer_errors(quantized: bytes, reference: bytes) -> dict[str, float]:
    """Mean over channels of |E[int8 - float]| (in output steps) for every tensor both models name alike."""
    int8 = Interpreter(model_content=quantized, experimental_preserve_all_tensors=True)
    floating = Interpreter(model_content=reference, experimental_preserve_all_tensors=True)
    int8.allocate_tensors()
    floating.allocate_tensors()
    names = {d["name"]: d for d in floating.get_tensor_details()}
    pairs = [(d, names[d["name"]]) for d in int8.get_tensor_details()
             if d["name"] in names and d["dtype"] == np.int8 and d["quantization"][0] and len(d["shape"]) > 1
             and list(d["shape"]) == list(names[d["name"]]["shape"])]
    sums: dict[str, np.ndarray] = {}
    source = int8.get_input_details()[0]
    for sample in _samples():
        scale, zero = source["quantization"]
        int8.set_tensor(source["index"], np.clip(np.round(sample / scale) + zero, -128, 127).astype(np.int8))
        floating.set_tensor(floating.get_input_details()[0]["index"], sample)
        int8.invoke()
        floating.invoke()
        for q, f in pairs:
            scale, zero = q["quantization"]
            error = (int8.get_tensor(q["index"]).astype(np.float64) - zero) - floating.get_tensor(f["index"]) / scale
            sums[q["name"]] = sums.get(q["name"], 0.0) + error.reshape(-1, error.shape[-1]).mean(axis=0)
    return {name: float(np.abs(total / SAMPLES).mean()) for name, total in sums.items()}


def test_bias_correction_only_moves_biases_and_shrinks_the_mean_error(tmp_path: Path) -> None:
    calibrated = _calibrated(tmp_path)
    quantized = _requantize_clipped(calibrated, _samples, None, {})
    corrected = bias_correct(quantized, calibrated, _samples, limit=SAMPLES)

    before, after = (flatbuffer_utils.convert_bytearray_to_object(m) for m in (quantized, corrected))
    graph, edited = before.subgraphs[0], after.subgraphs[0]
    assert [op.opcodeIndex for op in graph.operators] == [op.opcodeIndex for op in edited.operators]
    changed = {i for i, (a, b) in enumerate(zip(graph.tensors, edited.tensors))
               if buffer_bytes(before, a) != buffer_bytes(after, b)}
    assert changed and all(graph.tensors[i].type == 2 for i in changed)  # int32 biases only
    for a, b in zip(graph.tensors, edited.tensors):
        if a.quantization is not None and a.quantization.scale is not None:
            np.testing.assert_array_equal(a.quantization.scale, b.quantization.scale)

    error_before, error_after = _layer_errors(quantized, calibrated), _layer_errors(corrected, calibrated)
    assert error_before.keys() == error_after.keys() and len(error_before) >= 3
    assert sum(error_after.values()) < 0.5 * sum(error_before.values())


def test_output_bias_correction_moves_only_the_output_layers_bias(tmp_path: Path) -> None:
    """With which="outputs", the one bias that changes is the output layer's, and the output's mean error shrinks."""
    calibrated = _calibrated(tmp_path)
    quantized = _requantize_clipped(calibrated, _samples, None, {})
    corrected = bias_correct(quantized, calibrated, _samples, "outputs", limit=SAMPLES)

    before, after = (flatbuffer_utils.convert_bytearray_to_object(m) for m in (quantized, corrected))
    graph, edited = before.subgraphs[0], after.subgraphs[0]
    [output_op] = [op for op in graph.operators if int(op.outputs[0]) in graph.outputs]
    changed = {i for i, (a, b) in enumerate(zip(graph.tensors, edited.tensors))
               if buffer_bytes(before, a) != buffer_bytes(after, b)}
    assert changed == {int(output_op.inputs[2])}
    name = Interpreter(model_content=quantized).get_output_details()[0]["name"]
    assert _layer_errors(corrected, calibrated)[name] < 0.5 * _layer_errors(quantized, calibrated)[name]


def _output_range(quantized: bytes) -> tuple[float, float, float]:
    detail = Interpreter(model_content=quantized).get_output_details()[0]
    scale, zero = detail["quantization"]
    return (-128 - zero) * scale, (127 - zero) * scale, scale


def test_an_output_floor_raises_only_the_bottom_of_that_outputs_range(tmp_path: Path) -> None:
    calibrated = _calibrated(tmp_path)
    low, high, scale = _output_range(_requantize_clipped(calibrated, _samples, None, {}))
    floor = low + (high - low) / 2
    floored_low, floored_high, floored_scale = _output_range(_requantize_clipped(calibrated, _samples, None,
                                                                                 {(1, 5): floor}))
    assert abs(floored_low - floor) <= floored_scale and abs(floored_high - high) <= floored_scale
    assert floored_scale < 0.6 * scale  # half the range in the same 256 steps
    with pytest.raises(ConvertError, match=r"no output of shape \(1, 6\)"):
        _requantize_clipped(calibrated, _samples, None, {(1, 6): floor})
    with pytest.raises(ConvertError, match="no recorded range above"):
        _requantize_clipped(calibrated, _samples, None, {(1, 5): high + 1})
