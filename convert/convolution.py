"""A TFLite flatbuffer's convolutions as PyTorch computes them: weights as O x I x kh x kw, TensorFlow's padding,
groups (a CONV_2D whose filters see fewer channels than its input has is a grouped convolution)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from convert import ConvertError
from convert.bias_correction import op_kind

CONVOLUTIONS = ("CONV_2D", "DEPTHWISE_CONV_2D")
RELU, RELU6 = 1, 3  # ActivationFunctionType


@dataclass(frozen=True)
class Convolution:
    """One convolution op of a float model."""

    weight: np.ndarray  # float64, O x I x kh x kw (I: input channels per group; 1 for depthwise)
    bias: np.ndarray | None  # float64, O
    stride: tuple[int, int]
    dilation: tuple[int, int]
    same: bool
    groups: int
    depthwise: bool
    activation: int  # the fused activation (ActivationFunctionType)


def tensor_array(model: Any, tensor: Any, dtype: Any) -> np.ndarray:
    """A constant tensor's values (flatbuffer object API), in its own shape."""
    data = np.asarray(model.buffers[tensor.buffer].data, np.uint8).tobytes()
    return np.frombuffer(data, dtype).reshape([int(v) for v in tensor.shape])


def torch_order(depthwise: bool) -> tuple[int, int, int, int]:
    """The axes that turn TFLite's weight layout (1HWO depthwise, OHWI otherwise) into O x I x kh x kw."""
    return (3, 0, 1, 2) if depthwise else (0, 3, 1, 2)


def convolution(model: Any, op: Any) -> Convolution:
    """A float model's CONV_2D or DEPTHWISE_CONV_2D op, in PyTorch's layouts."""
    graph = model.subgraphs[0]
    depthwise = op_kind(model, op) == "DEPTHWISE_CONV_2D"
    weight = np.transpose(tensor_array(model, graph.tensors[op.inputs[1]], np.float32), torch_order(depthwise))
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    bias = tensor_array(model, graph.tensors[op.inputs[2]], np.float32).astype(np.float64) if has_bias else None
    options = op.builtinOptions
    channels = int(graph.tensors[op.inputs[0]].shape[-1])
    return Convolution(weight=weight.astype(np.float64), bias=bias, stride=(options.strideH, options.strideW),
                       dilation=(max(1, options.dilationHFactor), max(1, options.dilationWFactor)),
                       same=options.padding == 0, groups=channels // weight.shape[1], depthwise=depthwise,
                       activation=options.fusedActivationFunction)


def pads(size: int, kernel: int, stride: int, dilation: int, same: bool) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) along one axis; none for VALID."""
    if not same:
        return 0, 0
    span = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def padded(conv: Convolution, inputs: np.ndarray) -> Any:
    """N x H x W x C float inputs as the N x C x H x W torch tensor the convolution reads, TensorFlow's padding added
    (so that a VALID torch convolution of it gives TensorFlow's output)."""
    import torch
    import torch.nn.functional as F

    kh, kw = conv.weight.shape[2:]
    pad_h = pads(inputs.shape[1], kh, conv.stride[0], conv.dilation[0], conv.same)
    pad_w = pads(inputs.shape[2], kw, conv.stride[1], conv.dilation[1], conv.same)
    return F.pad(torch.from_numpy(np.ascontiguousarray(inputs.transpose(0, 3, 1, 2), np.float32)), (*pad_w, *pad_h))


def apply(conv: Convolution, inputs: np.ndarray) -> Any:
    """The convolution, with its fused activation, of N x H x W x C float inputs: an N x O x H' x W' torch tensor."""
    import torch
    import torch.nn.functional as F

    x = padded(conv, inputs)
    bias = None if conv.bias is None else torch.from_numpy(conv.bias.astype(np.float32))
    y = F.conv2d(x, torch.from_numpy(conv.weight.astype(np.float32)), bias, stride=conv.stride,
                 dilation=conv.dilation, groups=conv.groups)
    if conv.activation == RELU:
        return torch.relu(y)
    if conv.activation == RELU6:
        return torch.clamp(y, 0, 6)
    if conv.activation != 0:
        raise ConvertError(f"a convolution with fused activation {conv.activation} is not handled here")
    return y
