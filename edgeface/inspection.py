"""Static checks of a `.tflite` file: which ops it uses and whether it is full-integer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from edgeface.interpreter import make_interpreter

INTEGER_DTYPES = (np.int8, np.uint8, np.int16, np.int32, np.int64, np.bool_)
FLOAT_ONLY_OPS = {"DEQUANTIZE", "QUANTIZE_FLOAT", "CUSTOM", "FLEX", "DELEGATE"}


def model_ops(path: Path) -> list[str]:
    """The builtin op names of a model, in graph order (no delegate applied)."""
    interpreter = make_interpreter(path, threads=1, delegate="none")
    return [op["op_name"] for op in interpreter._get_ops_details()]


def float_leftovers(path: Path) -> list[str]:
    """Everything that keeps a model from being full-integer: float tensors, float I/O, float-only ops.

    An empty list means int8 weights and activations, integer input and output, and no float op left.
    """
    interpreter = make_interpreter(path, threads=1, delegate="none")
    problems = [
        f"tensor '{t['name']}' is {np.dtype(t['dtype']).name}"
        for t in interpreter.get_tensor_details()
        if not np.issubdtype(t["dtype"], np.integer) and t["dtype"] not in INTEGER_DTYPES
    ]
    problems += [f"op {op['op_name']} #{op['index']}" for op in interpreter._get_ops_details()
                 if op["op_name"] in FLOAT_ONLY_OPS]
    for kind, details in (("input", interpreter.get_input_details()), ("output", interpreter.get_output_details())):
        problems += [f"{kind} '{d['name']}' is {np.dtype(d['dtype']).name}" for d in details
                     if d["dtype"] not in (np.int8, np.uint8)]
    return problems


def undelegated_ops(path: Path, threads: int = 2) -> dict[str, int]:
    """Op name -> count of the ops that XNNPACK leaves to TFLite's own kernels.

    The interpreter lists the original ops and the DELEGATE nodes that replaced some of them: an original op
    still runs if its output is needed (by a DELEGATE node, the graph's output or another op that runs) and no
    DELEGATE node produces it.
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
