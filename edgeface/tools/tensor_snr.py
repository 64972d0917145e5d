"""Per-tensor SNR of an int8 model against its float twin on the same real inputs: where along the graph the int8
error enters and where it grows.

Each int8 tensor that an op writes and that has a same-named float tensor of the same shape (onnx2tf names both
models' tensors alike; the outputs are paired by the manifest's roles) is compared, dequantised, with its float
value, both models run by TFLite's own kernels with every tensor kept (no delegate: a delegate's intermediate
tensors cannot be read). Three figures per tensor:
- its SNR in the int8 model (every upstream error included);
- its grid's SNR: the float value put on the tensor's own int8 grid (scale, zero point, clipped to -128..127), the
  best the int8 model could hold there were everything upstream exact;
- its op's drop: how far its SNR falls below the lowest SNR of its compared inputs.
Where the SNR sits near the grid's, the grid (the tensor's range) is the limit; where it sits far below, the
error was carried in, and a chain of drops is error that the network amplifies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeface.interpreter import make_interpreter
from edgeface.manifest import Manifest
from edgeface.tools.inspection import Graph, read_graph


@dataclass(frozen=True)
class TensorSNR:
    """One compared tensor, in graph order."""

    name: str  # an output's role ('conf_s8')
    op: str  # the op that writes it, e.g. CONV_2D
    shape: tuple[int, ...]
    snr_db: float  # 10 log10(float power / (int8 - float) power), over every input; inf: identical
    grid_db: float  # the same for the float values put on the tensor's own int8 grid
    drop_db: float | None  # lowest compared input's SNR minus this one's; None: no compared input
    output: bool  # one of the model's outputs

    def to_json(self) -> dict[str, object]:
        """The row as report.json holds it."""
        return {"name": self.name, "op": self.op, "shape": list(self.shape), "snr_db": self.snr_db,
                "grid_db": self.grid_db, "drop_db": self.drop_db, "output": self.output}


def _run(interpreter: Any, batch: np.ndarray, indices: list[int]) -> dict[int, np.ndarray]:
    """`indices`' stored values after one invoke on `batch` (real-valued NHWC, quantised to an integer input)."""
    detail = interpreter.get_input_details()[0]
    if tuple(detail["shape"]) != batch.shape:
        interpreter.resize_tensor_input(detail["index"], list(batch.shape), strict=False)
        interpreter.allocate_tensors()
    scale, zero_point = detail["quantization"]
    if scale:
        info = np.iinfo(detail["dtype"])
        batch = np.clip(np.round(batch / scale) + zero_point, info.min, info.max)
    interpreter.set_tensor(detail["index"], batch.astype(detail["dtype"]))
    interpreter.invoke()
    return {index: interpreter.get_tensor(index).astype(np.float64) for index in indices}


def _db(signal: float, noise: float) -> float:
    """10 log10(signal / noise), inf without noise."""
    return float("inf") if noise == 0 else 10 * float(np.log10(signal / noise))


def _pairs(int8_graph: Graph, float_graph: Graph, outputs: dict[str, str]) -> dict[int, int]:
    """int8 tensor index -> float tensor index: the outputs by `outputs` (int8 name -> float name: the converters
    name them 'PartitionedCall:3' and number them differently), every other int8 tensor an op writes by its name;
    only where the shapes agree."""
    float_inner = {t.name: i for i, t in enumerate(float_graph.tensors) if i not in float_graph.outputs}
    float_outputs = {float_graph.tensors[i].name: i for i in float_graph.outputs}
    pairs = {}
    for op in int8_graph.ops:
        for index in op.outputs:
            tensor = int8_graph.tensors[index]
            match = (float_outputs.get(outputs.get(tensor.name, "")) if index in int8_graph.outputs
                     else float_inner.get(tensor.name))
            if match is not None and tensor.dtype == "int8" and float_graph.tensors[match].shape == tensor.shape:
                pairs[index] = match
    return pairs


def tensor_snr(manifest: Manifest, key: str, batches: list[np.ndarray], threads: int = 2) -> list[TensorSNR]:
    """Every compared tensor of model `key`'s int8 file against its float file over `batches` (as the runtime
    feeds the models: real-valued N x H x W x C), in the int8 graph's op order."""
    specs = {p: manifest.get(key, p) for p in ("float", "int8")}
    int8_path, float_path = manifest.path(specs["int8"]), manifest.path(specs["float"])
    int8_graph, float_graph = read_graph(int8_path), read_graph(float_path)
    float_names = {o.role: o.name for o in specs["float"].outputs}
    pairs = _pairs(int8_graph, float_graph, {o.name: float_names[o.role] for o in specs["int8"].outputs})
    roles = {o.name: o.role for o in specs["int8"].outputs}
    int8_run = make_interpreter(int8_path, threads, delegate="none", keep_tensors=True)
    float_run = make_interpreter(float_path, threads, delegate="none", keep_tensors=True)
    int8_run.allocate_tensors()
    float_run.allocate_tensors()
    grids = {d["index"]: d["quantization"] for d in int8_run.get_tensor_details() if d["index"] in pairs}
    sums = {index: np.zeros(3) for index in pairs}  # float power, int8 error power, grid error power
    for batch in batches:
        stored = _run(int8_run, batch.astype(np.float32), list(pairs))
        floats = _run(float_run, batch.astype(np.float32), list(pairs.values()))
        for index, match in pairs.items():
            scale, zero_point = grids[index]
            reference = floats[match]
            error = (stored[index] - zero_point) * scale - reference
            grid = np.clip(np.round(reference / scale) + zero_point, -128, 127)
            grid_error = (grid - zero_point) * scale - reference
            sums[index] += [np.sum(reference ** 2), np.sum(error ** 2), np.sum(grid_error ** 2)]
    snr = {index: _db(total[0], total[1]) for index, total in sums.items()}
    rows = []
    for op in int8_graph.ops:
        upstream = [snr[i] for i in op.inputs if i in snr]
        for index in op.outputs:
            if index in snr:
                drop = min(upstream) - snr[index] if upstream and np.isfinite(min(upstream)) else None
                tensor = int8_graph.tensors[index]
                rows.append(TensorSNR(roles.get(tensor.name, tensor.name), op.name, tensor.shape, snr[index],
                                      _db(sums[index][0], sums[index][2]), drop, index in int8_graph.outputs))
    return rows


def where_it_enters(rows: list[TensorSNR], largest: int = 8) -> list[TensorSNR]:
    """The rows a reader needs first, in graph order: the first compared tensor, the `largest` drops and the
    model's outputs."""
    drops = sorted((r for r in rows if r.drop_db is not None), key=lambda r: r.drop_db, reverse=True)[:largest]
    chosen = {id(r) for r in (*rows[:1], *drops)}
    return [r for r in rows if id(r) in chosen or r.output]
