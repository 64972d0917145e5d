"""Learned rounding (convert.adaround), LeakyReLU-aware ranges (convert.tflite) and reader-aware ranges
(convert.reader_ranges) on tiny int8 models: the rounding changes only convolution weights and biases and lowers
the output error against float on inputs it did not learn from; a LeakyReLU's input gives up negative range for
finer steps, by the error the LeakyReLU passes on; a tensor a noise-amplifying filter reads gives up more range
than one an element-wise op reads, and the whole model's error falls."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("torch")
pytest.importorskip("ai_edge_litert")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from conftest import buffer_bytes, calibrate_only  # noqa: E402
from tensorflow.lite.tools import flatbuffer_utils  # noqa: E402

from convert.adaround import _Conv, _round_layer, adaround  # noqa: E402
from convert.bias_correction import leaky_inputs  # noqa: E402
from convert.convolution import Convolution, apply, convolution  # noqa: E402
from convert.reader_ranges import best_range, searched_tensors  # noqa: E402
from convert.tflite import _requantize_clipped, leaky_low_end  # noqa: E402

SAMPLES = 24
INT8, INT32 = 9, 2  # TensorType


def _samples(seed: int = 7) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for _ in range(SAMPLES):
        yield rng.normal(0.0, 1.5, (1, 16, 16, 3)).astype(np.float32)


def _calibrated(layers: list) -> bytes:
    """Calibrate-only float TFLite of `layers` applied in turn to a 16 x 16 x 3 input."""
    rng = np.random.default_rng(3)
    inputs = tf.keras.Input((16, 16, 3), batch_size=1)
    x = inputs
    for layer in layers:
        x = layer(x)
    model = tf.keras.Model(inputs, x)
    for layer in model.layers:  # one outlier weight per output channel: coarse int8 steps for all the others
        if layer.weights:
            kernel, bias = (rng.normal(0.0, 0.3, w.shape).astype(np.float32) for w in layer.get_weights())
            depthwise = isinstance(layer, tf.keras.layers.DepthwiseConv2D)  # kernel h x w x channels x 1
            kernel.reshape(-1, kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1])[0] = 3.0
            layer.set_weights([kernel, bias])
    return calibrate_only(model, _samples)


def _output_error(quantized: bytes, reference: bytes, seed: int) -> float:
    """Mean squared error of the int8 model's output against float's, on samples drawn with `seed`."""
    int8, floating = Interpreter(model_content=quantized), Interpreter(model_content=reference)
    int8.allocate_tensors()
    floating.allocate_tensors()
    source, result = int8.get_input_details()[0], int8.get_output_details()[0]
    errors = []
    for sample in _samples(seed):
        scale, zero = source["quantization"]
        int8.set_tensor(source["index"], np.clip(np.round(sample / scale) + zero, -128, 127).astype(np.int8))
        floating.set_tensor(floating.get_input_details()[0]["index"], sample)
        int8.invoke()
        floating.invoke()
        scale, zero = result["quantization"]
        value = (int8.get_tensor(result["index"]).astype(np.float64) - zero) * scale
        errors.append(np.mean((value - floating.get_tensor(floating.get_output_details()[0]["index"])) ** 2))
    return float(np.mean(errors))


def test_learned_rounding_changes_only_weights_and_biases_and_lowers_the_error_on_unseen_inputs() -> None:
    calibrated = _calibrated([tf.keras.layers.Conv2D(8, 3, padding="same"),
                              tf.keras.layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu"),
                              tf.keras.layers.Conv2D(8, 3, padding="same", groups=4),  # a grouped CONV_2D
                              tf.keras.layers.Conv2D(6, 1)])
    quantized = _requantize_clipped(calibrated, _samples, None, {})
    rounded = adaround(quantized, calibrated, _samples, limit=SAMPLES)
    graph = flatbuffer_utils.convert_bytearray_to_object(quantized).subgraphs[0]
    assert any(len(op.inputs) > 1 and len(graph.tensors[op.inputs[1]].shape) == 4
               and graph.tensors[op.inputs[1]].shape[-1] < graph.tensors[op.inputs[0]].shape[-1]
               and graph.tensors[op.inputs[1]].shape[0] > 1 for op in graph.operators)  # the grouped CONV_2D

    before, after = (flatbuffer_utils.convert_bytearray_to_object(m) for m in (quantized, rounded))
    graph, edited = before.subgraphs[0], after.subgraphs[0]
    assert [op.opcodeIndex for op in graph.operators] == [op.opcodeIndex for op in edited.operators]
    changed = [i for i, (a, b) in enumerate(zip(graph.tensors, edited.tensors))
               if buffer_bytes(before, a) != buffer_bytes(after, b)]
    assert {graph.tensors[i].type for i in changed} == {INT8, INT32}  # weights and biases, nothing else
    for a, b in zip(graph.tensors, edited.tensors):
        if a.quantization is not None and a.quantization.scale is not None:
            np.testing.assert_array_equal(a.quantization.scale, b.quantization.scale)
            np.testing.assert_array_equal(a.quantization.zeroPoint, b.quantization.zeroPoint)
    unseen = 11  # inputs the rounding was not learned on
    assert _output_error(rounded, calibrated, unseen) < 0.95 * _output_error(quantized, calibrated, unseen)
    assert adaround(quantized, calibrated, _samples, limit=SAMPLES) == rounded  # the same bytes every time


def test_a_leaky_relu_input_trades_negative_range_for_finer_steps() -> None:
    values = np.random.default_rng(5).normal(0.0, 1.0, 200_000)
    low, high = float(values.min()), float(values.max())
    leaky, identity = (leaky_low_end(values, low, high, alpha) for alpha in (0.1, 1.0))
    assert 0.0 > leaky > 0.7 * low  # a third of the negative side given up: errors there are scaled by 0.1
    assert identity < 0.8 * low  # an identity clips only the far tail

    def leaky_input_range(quantized: bytes) -> tuple[float, float]:
        model = flatbuffer_utils.convert_bytearray_to_object(quantized)
        [index] = leaky_inputs(model)  # the tensor only the LeakyReLU reads
        quantization = model.subgraphs[0].tensors[index].quantization
        scale, zero = float(quantization.scale[0]), int(quantization.zeroPoint[0])
        return (-128 - zero) * scale, (127 - zero) * scale

    calibrated = _calibrated([tf.keras.layers.Conv2D(8, 3, padding="same"), tf.keras.layers.LeakyReLU(0.1),
                              tf.keras.layers.Conv2D(4, 1)])
    plain = _requantize_clipped(calibrated, _samples, None, {})
    aware = _requantize_clipped(calibrated, _samples, None, {}, leaky_ranges=True)
    (plain_low, plain_high), (aware_low, aware_high) = leaky_input_range(plain), leaky_input_range(aware)
    assert aware_low > 0.95 * plain_low and abs(aware_high - plain_high) < 0.05 * plain_high
    assert _output_error(aware, calibrated, 11) < _output_error(plain, calibrated, 11)


def test_a_range_is_narrowed_more_for_a_reader_that_amplifies_rounding_noise() -> None:
    walk = np.cumsum(np.random.default_rng(2).normal(0.0, 1.0, 100_000)).astype(np.float32)
    walk = (walk - walk.mean()) / walk.std()  # a smooth signal: its differences are small, its rounding noise is not
    low, high = float(walk.min()), float(walk.max())
    elementwise = best_range(walk, low, high, [None])
    difference = best_range(walk, low, high, [lambda v: np.diff(v)])
    assert difference[1] - difference[0] < elementwise[1] - elementwise[0] < high - low

    calibrated = _calibrated([tf.keras.layers.Conv2D(8, 3, padding="same"),
                              tf.keras.layers.DepthwiseConv2D(3, padding="same"), tf.keras.layers.Conv2D(4, 1)])
    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    searched = searched_tensors(model)  # the two convolutions' inputs: not the model's input, not its output
    assert len(searched) == 2 and not {*model.subgraphs[0].inputs, *model.subgraphs[0].outputs} & set(searched)
    plain = _requantize_clipped(calibrated, _samples, None, {})
    aware = _requantize_clipped(calibrated, _samples, None, {}, reader_aware_ranges=True)
    kinds = [[op.opcodeIndex for op in flatbuffer_utils.convert_bytearray_to_object(m).subgraphs[0].operators]
             for m in (plain, aware)]
    assert kinds[0] == kinds[1]
    unseen = range(11, 16)  # one seed can go either way (measured -8 % to +0.5 %); five together fell 6 %
    assert (np.mean([_output_error(aware, calibrated, seed) for seed in unseen])
            < 0.98 * np.mean([_output_error(plain, calibrated, seed) for seed in unseen]))


def test_convolutions_computed_in_torch_match_tflite() -> None:
    """convert.convolution reads each conv of a float model (stride-2 SAME, grouped, depthwise with a channel
    multiplier, fused RELU6) and computes what the float TFLite interpreter does."""
    calibrated = _calibrated([tf.keras.layers.Conv2D(8, 3, strides=2, padding="same"),
                              tf.keras.layers.Conv2D(8, 3, padding="same", groups=4, activation="relu6"),
                              tf.keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="valid"),
                              tf.keras.layers.Conv2D(4, 1, activation="relu")])
    model = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    sample = next(_samples(11))
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample)
    interpreter.invoke()
    compared = 0
    for op in model.subgraphs[0].operators:
        if len(op.inputs) < 2 or len(model.subgraphs[0].tensors[op.inputs[1]].shape) != 4:
            continue
        computed = apply(convolution(model, op), interpreter.get_tensor(op.inputs[0])).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(computed, interpreter.get_tensor(op.outputs[0]), rtol=1e-4, atol=1e-4)
        compared += 1
    assert compared == 4


def _toy_layer(seed: int) -> tuple[_Conv, np.ndarray, np.ndarray, np.ndarray]:
    """A 3 x 3 convolution with per-channel int8 weights (nearest rounding), coarsely rounded inputs (as an int8
    model upstream would give them), its float outputs on the exact inputs, and those exact inputs."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 0.3, (4, 3, 3, 3))
    scale = np.abs(weight).reshape(4, -1).max(axis=1).reshape(4, 1, 1, 1) / 127
    layer = Convolution(weight=weight, bias=np.zeros(4), stride=(1, 1), dilation=(1, 1), same=True, groups=1,
                        depthwise=False, activation=0)
    inputs = rng.normal(0.0, 1.0, (6, 12, 12, 3)).astype(np.float32)
    target = apply(layer, inputs).numpy().transpose(0, 2, 3, 1)
    coarse = (np.round(inputs / 0.4) * 0.4).astype(np.float32)
    return _Conv(layer=layer, rounded=np.round(weight / scale), scale=scale, bias=np.zeros(4)), coarse, target, inputs


def test_rounding_is_fitted_to_what_the_int8_output_can_hold() -> None:
    """Float values beyond the output's int8 range (below a face-logit floor, say) cannot be matched and are never
    looked at: moving them further out changes nothing the rounding learns."""
    conv, inputs, target, _ = _toy_layer(5)
    low, high = -0.5, 2.0
    assert (target < low).mean() > 0.2  # the clipped values are a real part of the target
    farther = np.where(target < low, target - 50.0, target)
    learned = _round_layer(conv, inputs, target, low, high, np.random.default_rng(1))
    moved = _round_layer(conv, inputs, farther, low, high, np.random.default_rng(1))
    assert not np.array_equal(learned[0], conv.rounded)  # it did learn something
    np.testing.assert_array_equal(learned[0], moved[0])
    np.testing.assert_array_equal(learned[1], moved[1])


def test_rounding_under_a_leaky_relu_weighs_negative_errors_by_its_slope() -> None:
    """With a LeakyReLU as the only reader, the fit is judged after it: the error it passes on is lower than when
    the fit ignores the LeakyReLU."""
    conv, inputs, target, _ = _toy_layer(6)
    low, high, alpha = float(target.min()), float(target.max()), 0.1

    def passed_on(weights: np.ndarray, bias: np.ndarray) -> float:
        fitted = dataclasses.replace(conv.layer, weight=weights * conv.scale, bias=bias)
        z = np.clip(apply(fitted, inputs).numpy(), low, high)  # the coarse inputs, as the int8 layer gets them
        y = target.transpose(0, 3, 1, 2)
        return float(np.mean((np.where(z < 0, alpha * z, z) - np.where(y < 0, alpha * y, y)) ** 2))

    aware = passed_on(*_round_layer(conv, inputs, target, low, high, np.random.default_rng(1), alpha))
    plain = passed_on(*_round_layer(conv, inputs, target, low, high, np.random.default_rng(1)))
    assert aware < plain


def test_learning_mixes_the_float_inputs_in_and_is_judged_on_the_int8_ones() -> None:
    """With the float model's inputs given, each training input element is one of them with probability DROP
    (QDrop): a different rounding is learned, and it is kept only if it lowers the error on the int8 inputs."""
    conv, coarse, target, exact = _toy_layer(5)
    low, high = float(target.min()), float(target.max())
    plain = _round_layer(conv, coarse, target, low, high, np.random.default_rng(1))
    mixed = _round_layer(conv, coarse, target, low, high, np.random.default_rng(1), float_inputs=exact)
    assert not np.array_equal(plain[0], mixed[0])

    def error(weights: np.ndarray, bias: np.ndarray) -> float:
        fitted = dataclasses.replace(conv.layer, weight=weights * conv.scale, bias=bias)
        return float(np.mean((apply(fitted, coarse).numpy().transpose(0, 2, 3, 1) - target) ** 2))

    assert error(*mixed) < error(conv.rounded, conv.bias)
