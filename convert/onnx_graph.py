"""Lookups over an ONNX graph shared by the graph passes (`convert.rewrite`, `convert.equalize`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    """An integer attribute of `node`, or `default`."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


class Graph:
    """Producers, readers and initializers of an ONNX graph, and helpers to add constants and swap nodes.

    The maps are built once, from the graph as it is when constructed.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph: onnx.GraphProto = model.graph
        self.inits: dict[str, onnx.TensorProto] = {init.name: init for init in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {output: node for node in self.graph.node for output in node.output}
        self.position: dict[str, int] = {output: i for i, node in enumerate(self.graph.node) for output in node.output}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.outputs: set[str] = {output.name for output in self.graph.output}

    def array(self, name: str) -> np.ndarray | None:
        """The value of initializer `name`, or None when `name` is computed."""
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def constant(self, name: str, value: np.ndarray) -> str:
        """Add a float32 initializer and return its name."""
        self.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def sole_reader(self, tensor: str, node: onnx.NodeProto) -> bool:
        """True when `node` is the only reader of `tensor` and `tensor` is not a graph output."""
        return tensor not in self.outputs and self.readers.get(tensor) == [node]

    def replace_nodes(self, replacements: dict[int, list[onnx.NodeProto]]) -> None:
        """Swap node i for `replacements[i]` (topological order is kept when they go in node i's place)."""
        nodes = [new for i, node in enumerate(self.graph.node) for new in replacements.get(i, [node])]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
