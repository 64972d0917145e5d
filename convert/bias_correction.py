"""Empirical per-channel bias correction of a full-integer int8 TFLite model (Nagel et al. 2019, section 4.2;
AIMET's "empirical bias correction").

Quantizing weights and activations shifts each output channel's mean: E[y_int8 - y_float] != 0 per channel. For
every convolution, depthwise convolution and fully-connected layer, that shift is measured on calibration inputs,
by comparing the int8 layer's dequantized output with the same-named tensor of the calibrated float model (the
converter's calibrate-only output, whose tensor names the quantizer keeps), and folded back into the layer's int32
bias: bias_q[c] -= round(err[c] / bias_scale[c]), where bias_scale[c] = s_in * s_w[c]. The correction is sequential:
layers are corrected one dependency level at a time, so a layer's error is measured with every layer it reads
from already corrected. Only bias values change: the ops, their quantization parameters and so the kernels a
delegate picks stay the same.

Where the int8 layer has a fused ReLU/ReLU6, its output is clipped; the shift of the pre-activation is estimated
on the elements whose float value lies a few output steps inside both the activation's clip and the int8 range, where
neither precision clips and a bias change moves the output one for one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from convert import ConvertError
from edgeface.tools.inspection import OP_NAMES

BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
INT32 = 2  # TensorType
CLIPPING = {1: (0.0, np.inf), 3: (0.0, 6.0), 2: (-1.0, 1.0)}
"""Fused activation enum -> its float clip (RELU, RELU6, RELU_N1_TO_1)."""
MARGIN = 4  # output steps kept clear of a clip when measuring the error (int8 errors are a few steps at most)
DEFAULT_LIMIT = 64  # calibration samples the errors are measured on, spread over the set
Which = Literal["layers", "outputs"]
"""Which biases absorb their layer's mean int8 error: every conv/depthwise/FC layer's, or the output layers' only."""


@dataclass
class Layer:
    """One int8 layer whose bias is corrected."""

    name: str
    output: int  # tensor index in the int8 model
    reference: int  # tensor index of the same-named tensor in the float model
    bias: int  # int32 bias tensor index
    clip: tuple[float, float] | None  # the fused activation's float clip, None when linear
    level: int  # dependency level: 1 + the highest level of the corrected layers it depends on


def op_kind(model: Any, op: Any) -> str:
    """An operator's builtin name (flatbuffer object API), e.g. 'CONV_2D'; '' for a custom op."""
    code = model.operatorCodes[op.opcodeIndex]
    return OP_NAMES.get(max(code.builtinCode, code.deprecatedBuiltinCode), "")


def tensor_readers(graph: Any) -> dict[int, list[Any]]:
    """Tensor index -> the ops that read it (flatbuffer object API), each op once even if it reads it twice."""
    found: dict[int, list[Any]] = {}
    for op in graph.operators:
        for index in dict.fromkeys(int(i) for i in op.inputs if i >= 0):
            found.setdefault(index, []).append(op)
    return found


def leaky_inputs(model: Any) -> dict[int, tuple[float, int]]:
    """The tensors that only a LEAKY_RELU reads: tensor index -> (its alpha, its output's index)."""
    graph = model.subgraphs[0]
    found = {}
    for index, ops in tensor_readers(graph).items():
        if len(ops) == 1 and index not in graph.outputs and op_kind(model, ops[0]) == "LEAKY_RELU":
            found[index] = (float(ops[0].builtinOptions.alpha), int(ops[0].outputs[0]))
    return found


def _layers(model: Any, reference: Any) -> list[Layer]:
    """The biased layers of `model` (int8) that have a same-named float tensor of the same shape in `reference`."""
    graph = model.subgraphs[0]
    float_graph = reference.subgraphs[0]
    float_index = {tensor.name: index for index, tensor in enumerate(float_graph.tensors)}
    producer_level: dict[int, int] = {}  # tensor -> dependency level of the corrected layers upstream of it
    layers = []
    for op in graph.operators:
        kind = op_kind(model, op)
        upstream = max((producer_level.get(int(i), 0) for i in op.inputs if i >= 0), default=0)
        level = upstream
        output = int(op.outputs[0])
        name = graph.tensors[output].name  # bytes in the flatbuffer object API, in both models
        match = float_index.get(name)
        activation = getattr(op.builtinOptions, "fusedActivationFunction", 0)
        if (kind in BIASED_OPS and len(op.inputs) > 2 and op.inputs[2] >= 0 and match is not None
                and (activation == 0 or activation in CLIPPING)):
            bias = graph.tensors[op.inputs[2]]
            if (bias.type == INT32 and model.buffers[bias.buffer].data is not None
                    and list(float_graph.tensors[match].shape) == list(graph.tensors[output].shape)):
                level = upstream + 1
                text = name.decode() if isinstance(name, bytes) else str(name)
                layers.append(Layer(text, output, int(match), int(op.inputs[2]), CLIPPING.get(activation), level))
        for out in op.outputs:
            producer_level[int(out)] = level
    return layers


def output_range(layer: Layer, scale: float, zero_point: int) -> tuple[float, float]:
    """The float values a layer's int8 output can hold: its int8 range, within its fused activation's clip."""
    low, high = (-128 - zero_point) * scale, (127 - zero_point) * scale
    if layer.clip is not None:
        low, high = max(low, layer.clip[0]), min(high, layer.clip[1])
    return low, high


def private_buffer(model: Any, tensor: Any) -> None:
    """Give `tensor` (flatbuffer object API) a buffer of its own if another tensor shares it, so that editing its
    values never edits the other's."""
    if sum(other.buffer == tensor.buffer for other in model.subgraphs[0].tensors) > 1:
        copy = type(model.buffers[tensor.buffer])()
        copy.data = np.array(model.buffers[tensor.buffer].data, np.uint8)
        model.buffers.append(copy)
        tensor.buffer = len(model.buffers) - 1


def spread_samples(samples: Callable[[], Iterator[np.ndarray]], limit: int) -> list[np.ndarray]:
    """`limit` of `samples()` spread evenly over them, as float32."""
    total = sum(1 for _ in samples())
    chosen = set(np.linspace(0, total - 1, min(limit, total)).round().astype(int).tolist())
    return [sample.astype(np.float32) for index, sample in enumerate(samples()) if index in chosen]


def float_outputs(reference: bytes, inputs: list[np.ndarray], tensors: list[int]) -> dict[int, list[np.ndarray]]:
    """Each of `tensors` of the float model `reference`, per input."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=reference, experimental_preserve_all_tensors=True, num_threads=2)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    outputs: dict[int, list[np.ndarray]] = {tensor: [] for tensor in tensors}
    for sample in inputs:
        interpreter.set_tensor(index, sample)
        interpreter.invoke()
        for tensor in tensors:
            outputs[tensor].append(interpreter.get_tensor(tensor).copy())
    return outputs


def int8_interpreter(model: Any) -> tuple[Any, int, dict[int, tuple[float, int]]]:
    """An interpreter of `model` (flatbuffer object API, as edited so far) that keeps every tensor, its input's
    index and every tensor's (scale, zero point)."""
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.lite.tools import flatbuffer_utils

    interpreter = Interpreter(model_content=bytes(flatbuffer_utils.convert_object_to_bytearray(model)),
                              experimental_preserve_all_tensors=True, num_threads=2)
    interpreter.allocate_tensors()
    quantization = {detail["index"]: detail["quantization"] for detail in interpreter.get_tensor_details()}
    return interpreter, interpreter.get_input_details()[0]["index"], quantization


def _int8_input(interpreter: Any, sample: np.ndarray) -> np.ndarray:
    detail = interpreter.get_input_details()[0]
    scale, zero_point = detail["quantization"]
    if not scale:
        return sample.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(sample / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def _shift(quantized: np.ndarray, floating: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel sums of (int8 - float) and counts, over the elements whose float value lies in [low, high].

    Only the float value selects: selecting on the int8 value too would keep the elements rounded up near a clip
    and drop those rounded down, and bias the estimate."""
    channels = quantized.shape[-1]
    keep = ((floating >= low) & (floating <= high)).reshape(-1, channels)
    error = (quantized - floating).reshape(-1, channels)
    return np.where(keep, error, 0.0).sum(axis=0, dtype=np.float64), keep.sum(axis=0)


def bias_correct(quantized: bytes, reference: bytes, samples: Callable[[], Iterator[np.ndarray]],
                 which: Which = "layers", limit: int = DEFAULT_LIMIT) -> bytes:
    """`quantized` (full-integer int8 TFLite) with every conv/depthwise/FC bias (with `which` "outputs", only those
    of the layers writing a model output) corrected for the mean output error against `reference` (the float model
    it was quantized from, same tensor names), measured on `limit` of `samples()` spread evenly over them
    (real-valued batches of 1, as fed to the float model)."""
    from tensorflow.lite.tools import flatbuffer_utils

    if which not in get_args(Which):
        raise ConvertError(f"bias correction: {which!r} is not one of {get_args(Which)}")
    model = flatbuffer_utils.convert_bytearray_to_object(quantized)
    float_model = flatbuffer_utils.convert_bytearray_to_object(reference)
    graph = model.subgraphs[0]
    layers = [layer for layer in _layers(model, float_model) if which == "layers" or layer.output in graph.outputs]
    if not layers:
        raise ConvertError("bias correction: no int8 layer matches a float tensor by name")
    inputs = spread_samples(samples, limit)
    references = float_outputs(reference, inputs, [layer.reference for layer in layers])
    for level in sorted({layer.level for layer in layers}):
        current = [layer for layer in layers if layer.level == level]
        interpreter, input_index, quantization = int8_interpreter(model)
        sums = {layer.output: 0.0 for layer in current}
        counts = {layer.output: 0 for layer in current}
        for number, sample in enumerate(inputs):
            interpreter.set_tensor(input_index, _int8_input(interpreter, sample))
            interpreter.invoke()
            for layer in current:
                scale, zero_point = quantization[layer.output]
                low, high = output_range(layer, scale, zero_point)
                margin = MARGIN * scale  # away from either clip, int8 rounding never reaches it
                values = (interpreter.get_tensor(layer.output).astype(np.float32) - zero_point) * scale
                error_sum, kept = _shift(values, references[layer.reference][number], low + margin, high - margin)
                sums[layer.output] = sums[layer.output] + error_sum
                counts[layer.output] = counts[layer.output] + kept
        for layer in current:
            error = sums[layer.output] / np.maximum(counts[layer.output], 1)
            bias = graph.tensors[layer.bias]
            scales = np.asarray(bias.quantization.scale, np.float64)
            private_buffer(model, bias)
            values = np.frombuffer(np.asarray(model.buffers[bias.buffer].data, np.uint8).tobytes(), np.int32)
            shift = np.round(error / scales).astype(np.int64)
            corrected = np.clip(values.astype(np.int64) - shift, -2**31, 2**31 - 1).astype(np.int32)
            model.buffers[bias.buffer].data = np.frombuffer(corrected.tobytes(), np.uint8).copy()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
