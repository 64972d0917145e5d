"""Learned rounding of a full-integer int8 TFLite model's convolution weights (AdaRound, Nagel et al. 2020), with
each layer's bias refitted alongside (as in AdaQuant, Hubara et al. 2021).

Rounding every weight to its nearest int8 step minimises each weight's own error, not the layer's output error.
For every convolution and depthwise convolution, in dependency order, this picks per weight whether to round
down or up (and refits the float bias) so that the layer's output on calibration inputs comes closest to the
calibrated float model's same-named tensor, both as the layer's reader sees them: clipped to the output's int8
range (no int8 value lies outside it, and the runtime never looks below an output floor), then through the
LeakyReLU when only a LeakyReLU reads the output (it shrinks the error of negative values with them). The
layer's input is read from the int8 model as corrected so far, so each layer also absorbs the int8 error of
everything upstream; while it learns, each element of a training window's input is instead, with probability
DROP, the float model's own value (QDrop, Wei et al. 2022), so that the rounding is not fitted to the exact int8
error of the calibration photos and holds on photos whose error differs. The choice is learned as in AdaRound: a
rectified sigmoid per weight, trained by Adam on random output windows with a regulariser that anneals it to 0
or 1. A layer whose learned rounding does not lower its output error on the calibration inputs (int8 inputs
only) keeps the quantizer's own weights and bias. Only weight and bias values change: the ops, their scales and
zero points, and so the kernels a delegate picks, stay the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from convert import ConvertError
from convert.bias_correction import (
    Layer,
    _int8_input,
    _layers,
    float_outputs,
    int8_interpreter,
    leaky_inputs,
    op_kind,
    output_range,
    private_buffer,
    spread_samples,
)
from convert.convolution import CONVOLUTIONS, Convolution, convolution, padded, tensor_array, torch_order

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch (AdaRound, eq. 23)
DEFAULT_LIMIT = 32  # calibration samples, spread over the set
ITERATIONS = 400
WINDOW = 24  # output rows and columns per training window
BATCH = 8  # windows per step
REGULARISER = 0.01  # weight of the rounding regulariser, relative to the reconstruction error
SEED = 20261202
DROP = 0.5  # chance that a training input element is the float model's instead of the int8 one (QDrop's 0.5)


@dataclass
class _Conv:
    """A layer's float convolution and its int8 weights, weight scales and bias, in PyTorch's layouts."""

    layer: Convolution  # the float model's op: weights and geometry
    rounded: np.ndarray  # the quantizer's int8 weights, O x I x kh x kw
    scale: np.ndarray  # per-output-channel weight scale, O x 1 x 1 x 1
    bias: np.ndarray  # the int8 model's bias, as float, O


def _conv(model: Any, op: Any, float_model: Any, float_op: Any) -> _Conv:
    """The int8 op's weights, weight scales and bias with the float op's weights and geometry."""
    graph = model.subgraphs[0]
    layer = convolution(float_model, float_op)
    if layer.depthwise and layer.weight.shape[0] != int(graph.tensors[op.inputs[0]].shape[-1]):
        raise ConvertError(f"AdaRound: {graph.tensors[op.outputs[0]].name!r} is a depthwise convolution with a "
                           "channel multiplier, which it does not handle")
    rounded = np.transpose(tensor_array(model, graph.tensors[op.inputs[1]], np.int8), torch_order(layer.depthwise))
    scale = np.asarray(graph.tensors[op.inputs[1]].quantization.scale, np.float64).reshape(-1, 1, 1, 1)
    bias_tensor = graph.tensors[op.inputs[2]]
    bias = tensor_array(model, bias_tensor, np.int32) * np.asarray(bias_tensor.quantization.scale, np.float64)
    return _Conv(layer=layer, rounded=rounded, scale=scale, bias=bias)


def _round_layer(conv: _Conv, inputs: np.ndarray, target: np.ndarray, low: float, high: float,
                 rng: np.random.Generator, alpha: float | None = None,
                 float_inputs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Learned int8 weights (O x I x kh x kw) and float bias for one layer, from its N x H x W x C real-valued int8
    inputs and float target outputs, compared clipped to [low, high] and then, with `alpha`, through a LeakyReLU;
    the quantizer's weights and bias if learning does not help. With `float_inputs` (the float model's values of
    the same inputs), each training input element is one of those with probability DROP."""
    import torch
    import torch.nn.functional as F

    layer = conv.layer
    kh, kw = layer.weight.shape[2:]
    x = padded(layer, inputs)
    xf = padded(layer, float_inputs) if float_inputs is not None else None

    def seen(z: torch.Tensor) -> torch.Tensor:  # a value as the layer's reader sees it
        z = torch.clamp(z, low, high)
        return z if alpha is None else F.leaky_relu(z, alpha)

    y = seen(torch.from_numpy(np.ascontiguousarray(target.transpose(0, 3, 1, 2), np.float32)))
    scaled = layer.weight / conv.scale
    floor = torch.from_numpy(np.floor(scaled).astype(np.float32))
    scale = torch.from_numpy(conv.scale.astype(np.float32))
    given = conv.rounded.astype(np.float32)
    rest = np.clip((scaled - np.floor(scaled) - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    logits = torch.from_numpy(np.log(rest / (1 - rest)).astype(np.float32)).requires_grad_(True)
    bias = torch.from_numpy(conv.bias.astype(np.float32)).requires_grad_(True)
    optimiser = torch.optim.Adam([{"params": [logits], "lr": 1e-2}, {"params": [bias], "lr": 1e-3}])

    def output(weights: torch.Tensor, window: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return seen(F.conv2d(window, weights * scale, b, stride=layer.stride, dilation=layer.dilation,
                             groups=layer.groups))

    def error(weights: np.ndarray, b: torch.Tensor) -> float:
        with torch.no_grad():
            w = torch.from_numpy(weights)
            return float(np.mean([((output(w, x[n:n + 1], b) - y[n:n + 1]) ** 2).mean() for n in range(len(x))]))

    side = min(WINDOW, y.shape[2], y.shape[3])
    span_h = (side - 1) * layer.stride[0] + (kh - 1) * layer.dilation[0] + 1
    span_w = (side - 1) * layer.stride[1] + (kw - 1) * layer.dilation[1] + 1

    def windows(z: torch.Tensor, picks: list[tuple[int, int, int]]) -> torch.Tensor:  # the inputs of output windows
        return torch.cat([z[n:n + 1, :, i * layer.stride[0]:i * layer.stride[0] + span_h,
                            j * layer.stride[1]:j * layer.stride[1] + span_w] for n, i, j in picks])

    for step in range(ITERATIONS):
        picks = [(int(rng.integers(len(x))), int(rng.integers(y.shape[2] - side + 1)),
                  int(rng.integers(y.shape[3] - side + 1))) for _ in range(BATCH)]
        xb = windows(x, picks)
        if xf is not None and DROP:
            keep = torch.from_numpy(rng.random(tuple(xb.shape)) < DROP)
            xb = torch.where(keep, windows(xf, picks), xb)
        yb = torch.cat([y[n:n + 1, :, i:i + side, j:j + side] for n, i, j in picks])
        soft = torch.clamp(torch.sigmoid(logits) * (ZETA - GAMMA) + GAMMA, 0, 1)
        reconstruction = ((output(torch.clamp(floor + soft, -127, 127), xb, bias) - yb) ** 2).mean()
        progress = step / ITERATIONS
        loss = reconstruction
        if progress >= 0.2:  # AdaRound's warm-up, then the regulariser's exponent anneals from 20 to 2
            beta = 20 + (2 - 20) * (progress - 0.2) / 0.8
            regulariser = (1 - (2 * soft - 1).abs().pow(beta)).mean()
            loss = reconstruction + REGULARISER * regulariser * reconstruction.detach()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    learned = np.clip(floor.numpy() + (logits.detach().numpy() >= 0), -127, 127).astype(np.float32)
    if error(learned, bias.detach()) < error(given, torch.from_numpy(conv.bias.astype(np.float32))):
        return learned, bias.detach().numpy().astype(np.float64)
    return given, conv.bias


def adaround(quantized: bytes, reference: bytes, samples: Callable[[], Iterator[np.ndarray]],
             limit: int = DEFAULT_LIMIT) -> bytes:
    """`quantized` (full-integer int8 TFLite) with every convolution's weights rounded, and its bias refitted, to
    bring its output closest to the same-named tensor of `reference` (the calibrated float model it was quantized
    from) on `limit` of `samples()` spread evenly over them (real-valued batches of 1, as fed to the float model)."""
    import torch
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(quantized)
    float_model = flatbuffer_utils.convert_bytearray_to_object(reference)
    graph, float_graph = model.subgraphs[0], float_model.subgraphs[0]
    op_of = {int(op.outputs[0]): op for op in graph.operators}
    float_op_of = {int(op.outputs[0]): op for op in float_graph.operators}
    layers = [layer for layer in _layers(model, float_model) if op_kind(model, op_of[layer.output]) in CONVOLUTIONS
              and layer.reference in float_op_of]
    if not layers:
        raise ConvertError("AdaRound: no int8 convolution matches a float tensor by name")
    leaky = leaky_inputs(model)
    inputs = spread_samples(samples, limit)
    float_index = {t.name: i for i, t in enumerate(float_graph.tensors)}
    source_of = {layer.output: float_index.get(graph.tensors[op_of[layer.output].inputs[0]].name) for layer in layers}
    floats = float_outputs(reference, inputs, sorted({layer.reference for layer in layers}
                                                     | {i for i in source_of.values() if i is not None}))
    rng = np.random.default_rng(SEED)  # the only randomness: the samples, windows and float elements of each step
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the same sums in the same order on every run (of one machine's kernels)
    try:
        for level in sorted({layer.level for layer in layers}):
            current = [layer for layer in layers if layer.level == level]
            interpreter, input_index, quantization = int8_interpreter(model)
            seen: dict[int, list[np.ndarray]] = {layer.output: [] for layer in current}
            for sample in inputs:
                interpreter.set_tensor(input_index, _int8_input(interpreter, sample))
                interpreter.invoke()
                for layer in current:
                    source = int(op_of[layer.output].inputs[0])
                    scale, zero_point = quantization[source]
                    seen[layer.output].append((interpreter.get_tensor(source).astype(np.float32) - zero_point) * scale)
            del interpreter
            for layer in current:
                op = op_of[layer.output]
                conv = _conv(model, op, float_model, float_op_of[layer.reference])
                low, high = output_range(layer, *quantization[layer.output])
                alpha = leaky[layer.output][0] if layer.output in leaky else None
                source = source_of[layer.output]
                float_input = np.concatenate(floats[source]) if source is not None else None
                weights, bias = _round_layer(conv, np.concatenate(seen[layer.output]),
                                             np.concatenate(floats[layer.reference]), low, high, rng, alpha,
                                             float_input)
                _store(model, op, layer, weights, bias, conv.layer.depthwise)
    finally:
        torch.set_num_threads(threads)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _store(model: Any, op: Any, layer: Layer, weights: np.ndarray, bias: np.ndarray, depthwise: bool) -> None:
    """Write a layer's int8 weights (PyTorch layout) and float bias back into the flatbuffer (object API)."""
    graph = model.subgraphs[0]
    order = tuple(np.argsort(torch_order(depthwise)))  # PyTorch's layout back to TFLite's
    weight_tensor = graph.tensors[op.inputs[1]]
    private_buffer(model, weight_tensor)
    data = np.ascontiguousarray(weights.transpose(order).astype(np.int8))
    model.buffers[weight_tensor.buffer].data = np.frombuffer(data.tobytes(), np.uint8).copy()
    bias_tensor = graph.tensors[layer.bias]
    private_buffer(model, bias_tensor)
    steps = np.round(bias / np.asarray(bias_tensor.quantization.scale, np.float64))
    values = np.clip(steps, -2**31, 2**31 - 1).astype(np.int32)
    model.buffers[bias_tensor.buffer].data = np.frombuffer(values.tobytes(), np.uint8).copy()
