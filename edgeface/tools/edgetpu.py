"""A static check that a `.tflite` can map to the Edge TPU, naming everything that cannot.

The rules are those of Coral's "TensorFlow models on the Edge TPU" page (https://coral.ai/docs/edgetpu/models-intro/,
model requirements and supported operations, Edge TPU compiler 16): full-integer, static tensor sizes, tensors
whose dimensions beyond the innermost three are 1, and only the operations listed below. Passing this check means
edgetpu_compiler can place every op; its own limits (memory, op sizes) are checked only by running it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgeface.tools.inspection import float_leftovers, read_graph

EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD",
    "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE",
    "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})
"""Coral's table of operations supported by the Edge TPU, as TFLite builtin op names (LEAKY_RELU, MIRROR_PAD,
HARD_SWISH, DEQUANTIZE and others are absent: they run on the CPU)."""


def edgetpu_problems(path: Path) -> list[str]:
    """Why `path` cannot fully map to the Edge TPU; an empty list means every requirement holds."""
    graph = read_graph(path)
    leftovers = float_leftovers(path)
    problems = [f"not full-integer: {len(leftovers)} float tensors or ops, first {leftovers[0]}"] if leftovers else []
    activations = {i for op in graph.ops for i in op.outputs} | set(graph.inputs)
    for index in sorted(activations):
        tensor = graph.tensors[index]
        if any(size < 0 for size in tensor.shape_signature):
            problems.append(f"tensor '{tensor.name}' has a dynamic shape {list(tensor.shape_signature)}")
        elif any(size > 1 for size in tensor.shape[:-3]):
            problems.append(f"tensor '{tensor.name}' {list(tensor.shape)}: only the innermost 3 dimensions "
                            f"may exceed 1")
    for op in graph.ops:
        if op.name == "PRELU" and any(size > 1 for size in graph.tensors[op.inputs[1]].shape[:-1]):
            problems.append(f"op PRELU #{op.index}: alpha must vary along the channels only")
    unsupported = Counter(op.name for op in graph.ops if op.name not in EDGETPU_OPS)
    problems += [f"op {name} x{count} is not supported by the Edge TPU" for name, count in sorted(unsupported.items())]
    return problems
