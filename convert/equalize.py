"""Cross-layer equalisation of an ONNX graph before int8 calibration (exact in float).

int8 activations have one scale per tensor. When a convolution's output channels span very different
ranges (BatchNorm folding makes this common in MobileNet-style networks), the small channels drown in
the rounding noise set by the large ones, and a following depthwise filter with large weights amplifies
that noise. For a convolution A whose output reaches exactly one convolution B, directly or through a
positively homogeneous per-channel activation (PRelu, LeakyRelu, Relu: f(s x) = s f(x) for s > 0),
dividing A's output channel c by s_c and multiplying B's input channel c by s_c changes nothing in float.
With s_c = sqrt(r_A[c] / r_B[c]) (r: the largest absolute weight of that channel in A and in B), both
weight ranges become sqrt(r_A r_B) and the activation channels come out far more even (Nagel et al.,
"Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019). Sweeps repeat
until the scales settle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

HOMOGENEOUS = ("PRelu", "LeakyRelu", "Relu")
SWEEPS = 20
MIN_RANGE = 1e-8


@dataclass(frozen=True)
class _Pair:
    """Convolution A feeding convolution B (group 1 or depthwise) through at most one homogeneous activation."""

    first: onnx.NodeProto
    second: onnx.NodeProto


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _pairs(graph: onnx.GraphProto, weights: dict[str, np.ndarray]) -> list[_Pair]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    uses = {name: len(nodes) for name, nodes in consumers.items()}

    def only_user(tensor: str) -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in outputs else None

    pairs = []
    for node in graph.node:
        if node.op_type != "Conv" or any(uses.get(name, 0) != 1 for name in node.input[1:]):
            continue
        if not all(name in weights for name in node.input[1:]):
            continue
        user = only_user(node.output[0])
        if user is not None and user.op_type in HOMOGENEOUS and user.input[0] == node.output[0]:
            user = only_user(user.output[0])
        if user is None or user.op_type != "Conv" or user.input[1] not in weights or uses[user.input[1]] != 1:
            continue
        channels = weights[node.input[1]].shape[0]
        group = _attribute(user, "group", 1)
        if group == 1 or (group == channels and weights[user.input[1]].shape[1] == 1):
            pairs.append(_Pair(node, user))
    return pairs


def _input_channel_view(weight: np.ndarray, group: int, channels: int) -> np.ndarray:
    """B's weights as [input channel, ...]: group 1 is [O, I, kh, kw]; depthwise is [I * m, 1, kh, kw]."""
    if group == 1:
        return np.moveaxis(weight, 1, 0)
    return weight.reshape(channels, -1)


def equalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with every eligible convolution pair equalised; returns it and the number of pairs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    weights = {init.name: numpy_helper.to_array(init).astype(np.float64) for init in graph.initializer}
    pairs = _pairs(graph, weights)
    for _ in range(SWEEPS):
        largest_change = 0.0
        for pair in pairs:
            w_a = weights[pair.first.input[1]]
            channels = w_a.shape[0]
            group = _attribute(pair.second, "group", 1)
            w_b = _input_channel_view(weights[pair.second.input[1]], group, channels)
            range_a = np.abs(w_a).reshape(channels, -1).max(axis=1)
            range_b = np.abs(w_b).reshape(channels, -1).max(axis=1)
            valid = (range_a > MIN_RANGE) & (range_b > MIN_RANGE)
            scale = np.ones(channels)
            scale[valid] = np.sqrt(range_a[valid] / range_b[valid])
            shape_a = (channels,) + (1,) * (w_a.ndim - 1)
            weights[pair.first.input[1]] = w_a / scale.reshape(shape_a)
            if len(pair.first.input) > 2:
                weights[pair.first.input[2]] = weights[pair.first.input[2]] / scale
            b = w_b * scale.reshape((channels,) + (1,) * (w_b.ndim - 1))
            original = weights[pair.second.input[1]]
            weights[pair.second.input[1]] = np.moveaxis(b, 0, 1) if group == 1 else b.reshape(original.shape)
            largest_change = max(largest_change, float(np.abs(np.log(scale)).max()))
        if largest_change < 1e-3:
            break
    for init in graph.initializer:
        if init.name in weights:
            original = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(weights[init.name].astype(original.dtype), init.name))
    return model, len(pairs)
