"""Activation equalization: per-channel rescaling that is exact in float and evens out int8 activation ranges.

Int8 activations have one scale per tensor, so a channel whose values span a small part of the tensor's range keeps
only a few levels. Where a channel space is written only by convolutions and read only by convolutions, with
channel-wise positively homogeneous ops in between (PRelu, LeakyRelu, Relu, Resize, Add, a channel Concat of
convolutions), multiplying channel i by s_i at the writers (weights and bias) and dividing the readers' input
channel i by s_i leaves the float network unchanged. a_i is the channel's activation range (measured on the
calibration inputs, relative to its tensor's range) and w_i the readers' relative weight range for that input
channel. Scaling the writers' output channels is free with per-channel weight quantization, and so is scaling
a depthwise reader's channels: when every reader is depthwise, s_i = 1 / a_i evens the activations out fully.
Otherwise, as in Nagel et al. 2019 (data-free quantization, there for weight ranges), s_i = sqrt(w_i / a_i) meets
in the middle between the activation and the readers' weight ranges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from convert import ConvertError
from convert.onnx_graph import Graph, int_attribute

PASS_THROUGH = ("PRelu", "LeakyRelu", "Relu", "Resize", "Add")
MAX_SCALE = 64.0  # bound on s_i (after centring their geometric mean on 1), for near-dead channels


def _depthwise(conv: onnx.NodeProto) -> bool:
    """True for a grouped convolution (RetinaFace's are all depthwise)."""
    return int_attribute(conv, "group", 1) > 1


@dataclass
class Group:
    """Tensors whose channels scale together, the convolutions that write them (with channel offsets) and read them."""

    tensors: list[str]
    producers: list[tuple[onnx.NodeProto, int]]
    consumers: list[onnx.NodeProto]


def _groups(g: Graph) -> list[Group]:
    """The equalizable channel spaces of the graph.

    A space is a set of tensors joined by channel-wise homogeneous ops (PASS_THROUGH), written only
    by convolutions (directly or through a channel Concat of convolutions read by nothing else) and read only by
    convolutions or those ops; graph outputs are excluded.
    """
    producer, readers, outputs, inits = g.producer, g.readers, g.outputs, g.inits

    def data_inputs(node: onnx.NodeProto) -> list[str]:
        return list(node.input) if node.op_type == "Add" else [node.input[0]]

    def concat_parts(node: onnx.NodeProto) -> list[tuple[onnx.NodeProto, int]] | None:
        parts, offset = [], 0
        for part in node.input:
            source = producer.get(part)
            if source is None or source.op_type != "Conv" or part in outputs or len(readers[part]) != 1:
                return None
            parts.append((source, offset))
            offset += inits[source.input[1]].dims[0]
        return parts

    def explore(seed: str) -> tuple[list[str], Group | None]:
        tensors, queue, valid = [seed], [seed], True
        producers: list[tuple[onnx.NodeProto, int]] = []
        consumers: list[onnx.NodeProto] = []
        while queue:
            name = queue.pop()
            linked: list[str] = []
            node = producer.get(name)
            if name in outputs or node is None:
                valid = False
            elif node.op_type == "Conv":
                producers.append((node, 0))
            elif node.op_type == "Concat" and int_attribute(node, "axis", 0) == 1 and (parts := concat_parts(node)):
                producers.extend(parts)
            elif node.op_type in PASS_THROUGH:
                linked.extend(data_inputs(node))
            else:
                valid = False
            for reader in readers.get(name, []):
                if reader.op_type == "Conv" and reader.input[0] == name:
                    consumers.append(reader)
                elif reader.op_type in PASS_THROUGH and name in data_inputs(reader):
                    linked.extend([*data_inputs(reader), reader.output[0]])
                else:
                    valid = False
            for other in linked:
                if other not in tensors:
                    tensors.append(other)
                    queue.append(other)
        group = Group(tensors, producers, consumers) if valid and consumers else None
        return tensors, group

    seen: set[str] = set()
    groups = []
    for node in g.graph.node:
        if node.op_type == "Conv" and node.input[0] not in seen:
            tensors, group = explore(node.input[0])
            seen.update(tensors)
            if group is not None:
                groups.append(group)
    return groups


def _relative_weight_range(consumer: onnx.NodeProto, weights: np.ndarray) -> np.ndarray:
    """Per input channel: max |w| relative to each output channel's max |w| (1 for depthwise, which is per channel)."""
    group = int_attribute(consumer, "group", 1)
    if group == 1:
        row_max = np.abs(weights).reshape(weights.shape[0], -1).max(axis=1)
        relative = np.abs(weights).max(axis=(2, 3)) / np.maximum(row_max, 1e-12)[:, None]
        return relative.max(axis=0)
    if group == weights.shape[0] and weights.shape[1] == 1:
        return np.ones(weights.shape[0], np.float32)
    raise ConvertError(f"{consumer.name}: grouped convolution (group={group}) is not supported by equalization")


def equalize(model: onnx.ModelProto, ranges: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Rescale the channels of every equalizable space of `model` in place (and return it).

    `ranges` maps tensor name -> per-channel max |value| on the calibration inputs (`channel_ranges`).
    """
    g = Graph(model)
    arrays = {name: numpy_helper.to_array(g.inits[name]).astype(np.float32)
              for node in g.graph.node if node.op_type == "Conv" for name in node.input[1:]}
    for group in _groups(g):
        activation = np.max([ranges[name] / max(ranges[name].max(), 1e-12) for name in group.tensors], axis=0)
        activation = np.maximum(activation, 1e-6)
        weight = np.max([_relative_weight_range(c, arrays[c.input[1]]) for c in group.consumers], axis=0)
        if all(_depthwise(c) for c in group.consumers):
            scale = 1 / activation  # per-channel weights: evening the activations out fully costs nothing
        else:
            scale = np.sqrt(weight / activation)
        scale = np.clip(scale / np.exp(np.log(scale).mean()), 1 / MAX_SCALE, MAX_SCALE).astype(np.float32)
        for conv, offset in group.producers:
            part = scale[offset:offset + arrays[conv.input[1]].shape[0]]
            arrays[conv.input[1]] *= part[:, None, None, None]
            if len(conv.input) > 2:
                arrays[conv.input[2]] *= part
        for conv in group.consumers:
            shape = (-1, 1, 1, 1) if _depthwise(conv) else (1, -1, 1, 1)
            arrays[conv.input[1]] /= scale.reshape(shape)
    for name, array in arrays.items():
        g.inits[name].CopyFrom(numpy_helper.from_array(array, name))
    return model


def channel_ranges(model: onnx.ModelProto, samples: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-channel max |value| of every equalizable tensor over `samples` (NHWC float batches of 1), by onnxruntime."""
    import onnxruntime

    names = [name for group in _groups(Graph(model)) for name in group.tensors]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    ranges = {name: np.zeros(0, np.float32) for name in names}
    for sample in samples:
        values = session.run(names, {input_name: sample.transpose(0, 3, 1, 2).astype(np.float32)})
        for name, value in zip(names, values):
            peak = np.abs(value).max(axis=(0, 2, 3))
            ranges[name] = peak if ranges[name].size == 0 else np.maximum(ranges[name], peak)
    return ranges
