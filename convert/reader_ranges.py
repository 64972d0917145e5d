"""Int8 activation ranges chosen for the error their readers pass on.

A tensor's min/max (or quantile) range minimises nothing: it only avoids clipping. What matters downstream is the
error of the ops that read the tensor, and a convolution can pass rounding noise on far more strongly than it
passes the signal: MobileFaceNet's depthwise filters and its 7 x 7 global depthwise layer lose 10-12 dB of SNR
each, against the 1-2 dB of their own rounding. For every intermediate tensor read only by convolutions (as
their input), ADDs and MULs, this tries ranges narrower than the recorded one, each end a fraction of it, and
keeps the one with the least summed relative error (error power over signal power) at its readers' outputs:
through the convolution and its fused activation in float for a convolution, the tensor's own error for an
element-wise ADD or MUL. Both ends are first scaled together, then the low and the high end each once more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from convert.bias_correction import op_kind, spread_samples, tensor_readers
from convert.convolution import CONVOLUTIONS, apply, convolution

FRACTIONS = np.linspace(0.3, 1.0, 29)  # the fractions of each end of the recorded range tried
ELEMENTWISE = ("ADD", "MUL")
TIED = ("CONCATENATION", "RESHAPE", "SQUEEZE", "TRANSPOSE", "PAD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "STRIDED_SLICE",
        "LOGISTIC", "TANH", "SOFTMAX")
"""Ops whose int8 output range is not their own: it is their input's, or fixed (TFLite's int8 quantization spec)."""
SAMPLES = 24  # calibration samples the errors are measured on, spread over the set


def searched_tensors(model: Any) -> dict[int, list[Any]]:
    """The intermediate tensors with one recorded range of their own (not made by a TIED op) whose readers are all
    convolutions (reading it as their input) or element-wise ADDs and MULs: tensor index -> its readers."""
    graph = model.subgraphs[0]
    ends = {*graph.inputs, *graph.outputs}
    tied = {int(out) for op in graph.operators if op_kind(model, op) in TIED for out in op.outputs}
    chosen = {}
    for index, ops in tensor_readers(graph).items():
        quantization = graph.tensors[index].quantization
        if (index in ends or index in tied or quantization is None or quantization.min is None
                or len(quantization.min) != 1):
            continue
        if all(op_kind(model, op) in ELEMENTWISE
               or (op_kind(model, op) in CONVOLUTIONS and int(op.inputs[0]) == index) for op in ops):
            chosen[index] = ops
    return chosen


def _relative_error(approximate: Any, exact: Any) -> float:
    return float(((approximate - exact) ** 2).mean() / max(float((exact ** 2).mean()), 1e-30))


def _fake_quantize(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:  # a tensor that is zero on every sample: int8 holds it exactly
        return np.clip(values, low, high).astype(np.float32)
    step = (high - low) / 255
    return (np.round((np.clip(values, low, high) - low) / step) * step + low).astype(np.float32)


def best_range(values: np.ndarray, low: float, high: float,
               readers: list[Callable[[np.ndarray], Any] | None]) -> tuple[float, float]:
    """The int8 range [a * low, b * high] (a, b in FRACTIONS) with the least summed relative error at the outputs
    of `readers` (each a function of the tensor's values, None for an element-wise reader) over `values`."""
    exact = [reader(values) if reader is not None else values for reader in readers]

    def cost(a: float, b: float) -> float:
        q = _fake_quantize(values, min(low * a, 0.0), max(high * b, 0.0))
        return sum(_relative_error(reader(q) if reader is not None else q, target)
                   for reader, target in zip(readers, exact))

    _, a, b = min((cost(f, f), f, f) for f in FRACTIONS)
    if low < 0:  # an end at zero stays there, whatever its fraction
        _, a, _ = min((cost(f, b), f, b) for f in FRACTIONS)
    if high > 0:
        _, _, b = min((cost(a, f), a, f) for f in FRACTIONS)
    return low * a, high * b


def reader_ranges(model: Any, calibrated: bytes, samples: Callable[[], Iterator[np.ndarray]]) -> None:
    """Narrow, in `model` (flatbuffer object API of the float model `calibrated`, its ranges as recorded or
    narrowed so far), the range of every tensor `searched_tensors` finds, by `best_range` on SAMPLES of
    `samples()`."""
    import torch
    from ai_edge_litert.interpreter import Interpreter

    graph = model.subgraphs[0]
    searched = searched_tensors(model)
    inputs = spread_samples(samples, SAMPLES)
    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True, num_threads=2)
    interpreter.allocate_tensors()
    values: dict[int, list[np.ndarray]] = {index: [] for index in searched}
    for sample in inputs:
        interpreter.set_tensor(graph.inputs[0], sample.astype(np.float32))
        interpreter.invoke()
        for index in searched:
            values[index].append(interpreter.get_tensor(index).copy())
    del interpreter
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the same sums in the same order on every run (of one machine's kernels)
    try:
        for index, ops in searched.items():
            readers = [None if op_kind(model, op) in ELEMENTWISE else (lambda x, c=convolution(model, op): apply(c, x))
                       for op in ops]
            quantization = graph.tensors[index].quantization
            low, high = best_range(np.concatenate(values.pop(index)).astype(np.float32),
                                   min(float(quantization.min[0]), 0.0), max(float(quantization.max[0]), 0.0),
                                   readers)
            quantization.min, quantization.max = [low], [high]
    finally:
        torch.set_num_threads(threads)
