"""Static checks of a `.tflite` file, read from its flatbuffer (the `tflite` package): which ops it uses and whether
it is full-integer; and, by loading it, which ops XNNPACK leaves to TFLite's own kernels."""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import tflite

from edgeface.errors import ModelError
from edgeface.interpreter import make_interpreter

INTEGER_DTYPES = {"bool", "int4", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"}
FLOAT_ONLY_OPS = {"DEQUANTIZE", "CUSTOM"}
"""Ops that mean float arithmetic inside an int8 graph (a custom op is opaque; Flex ops are custom ops)."""
OP_NAMES: dict[int, str] = {code: name for name, code in vars(tflite.BuiltinOperator).items()
                             if not name.startswith("_")}
"""Builtin operator code -> name (CONV_2D, ...), from the schema the `tflite` package carries."""
_DTYPES = {code: name.lower() for name, code in vars(tflite.TensorType).items() if not name.startswith("_")}


@dataclass(frozen=True)
class Tensor:
    """One tensor of the main subgraph."""

    name: str
    dtype: str  # numpy's name: int8, float32, ...
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]  # -1 where a dimension is dynamic


@dataclass(frozen=True)
class Op:
    """One operator of the main subgraph, in graph order."""

    index: int
    name: str  # the builtin operator's name, e.g. CONV_2D
    inputs: tuple[int, ...]  # tensor indices, -1 for an omitted optional input
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """The main subgraph of a `.tflite` file."""

    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def read_graph(path: Path) -> Graph:
    """The main subgraph of `path`, parsed from its flatbuffer (nothing is executed)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ModelError(f"{path}: cannot read ({error.strerror})") from None
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        graph = model.Subgraphs(0)
        tensors = []
        for i in range(graph.TensorsLength()):
            tensor = graph.Tensors(i)
            shape = tuple(int(v) for v in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
            signature = (tuple(int(v) for v in tensor.ShapeSignatureAsNumpy()) if tensor.ShapeSignatureLength()
                         else shape)
            tensors.append(Tensor(tensor.Name().decode(), _DTYPES[tensor.Type()], shape, signature))
        ops = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = OP_NAMES[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
            ops.append(Op(i, name, tuple(int(v) for v in op.InputsAsNumpy()) if op.InputsLength() else (),
                          tuple(int(v) for v in op.OutputsAsNumpy()) if op.OutputsLength() else ()))
        return Graph(tuple(tensors), tuple(ops), tuple(int(v) for v in graph.InputsAsNumpy()),
                     tuple(int(v) for v in graph.OutputsAsNumpy()))
    except (struct.error, IndexError, KeyError, ValueError, TypeError, AttributeError):  # a damaged buffer
        raise ModelError(f"{path}: not a TFLite model ({len(data)} bytes that do not parse as one)") from None


def model_ops(path: Path) -> list[str]:
    """The builtin op names of a model, in graph order."""
    return [op.name for op in read_graph(path).ops]


def float_leftovers(path: Path) -> list[str]:
    """Everything that keeps a model from being full-integer: float tensors, float I/O, float-only ops.

    An empty list means int8 weights and activations, integer input and output, and no float op left.
    """
    graph = read_graph(path)
    problems = [f"tensor '{t.name}' is {t.dtype}" for t in graph.tensors if t.dtype not in INTEGER_DTYPES]
    problems += [f"op {op.name} #{op.index}" for op in graph.ops if op.name in FLOAT_ONLY_OPS]
    for kind, indices in (("input", graph.inputs), ("output", graph.outputs)):
        problems += [f"{kind} '{graph.tensors[i].name}' is {graph.tensors[i].dtype}" for i in indices
                     if graph.tensors[i].dtype not in ("int8", "uint8")]
    return problems


def undelegated_ops(path: Path, threads: int = 2) -> dict[str, int]:
    """Op name -> count of the ops that XNNPACK leaves to TFLite's own kernels.

    Only the loaded interpreter knows which ops its DELEGATE nodes replaced, and it tells that through one
    private method, `_get_ops_details` (LiteRT and TF alike; pinned by the `convert` extra's ai-edge-litert and
    checked by tests/test_bench.py). An original op still runs if its output is needed (by a DELEGATE node, the
    graph's output or another op that runs) and no DELEGATE node produces it.
    """
    interpreter = make_interpreter(path, threads=threads, delegate="xnnpack")
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    produced = {int(t) for op in delegates for t in op["outputs"]}
    needed = {int(t) for op in delegates for t in op["inputs"]} | {d["index"] for d in interpreter.get_output_details()}
    running: set[int] = set()
    grew = True
    while grew:
        grew = False
        for op in ops:
            outputs = {int(t) for t in op["outputs"]}
            runs = op["op_name"] != "DELEGATE" and outputs & needed and not outputs & produced
            if runs and op["index"] not in running:
                running.add(op["index"])
                needed |= {int(t) for t in op["inputs"] if t >= 0}
                grew = True
    return dict(Counter(op["op_name"] for op in ops if op["index"] in running))
