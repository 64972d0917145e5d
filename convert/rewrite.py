"""Exact ONNX rewrites that leave the models only ops with an XNNPACK kernel.

XNNPACK (LiteRT's CPU delegate) has no int8 PRELU, no int8 standalone RELU and no nearest-neighbour resize;
TFLite's own kernels run instead, several times slower, and split the delegated graph into pieces. The
rewrites are exact in float:
- `split_prelu`: with y = Wx + b the output of the convolution or dense layer that only the PReLU reads,
  PReLU_a(y) = relu(y) - sign(a) * relu(-|a| y), and -|a| y is the same layer with its output channels scaled
  by -|a|. Both layers get a fused RELU; a Mul by the per-channel sign (left out when all signs agree) and an
  Add remain. The extra layer costs its MACs once more; measured on MobileFaceNet this is as fast as the other
  exact forms tried (e.g. c * y + d * LeakyReLU(y)) and the most accurate: no term cancels another, so
  no int8 range is wider than the activation itself.
- `relu_into_concat`: relu(concat(parts)) = concat(relu(part) for part in parts); each part's convolution
  fuses its RELU (RetinaFace's SSH context module).
- `nearest_upsample`: RetinaFace's FPN upsampling as a Concat and a DepthToSpace.
The float twin is built without `split_prelu`: float PReLU runs in XNNPACK already.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from convert.onnx_graph import Graph, int_attribute


def _output_axis(layer: onnx.NodeProto) -> int:
    """The axis of a Conv / Gemm weight that indexes output channels."""
    return 1 if layer.op_type == "Gemm" and not int_attribute(layer, "transB", 0) else 0


def _scaled_copy(g: Graph, layer: onnx.NodeProto, scale: np.ndarray, name: str) -> onnx.NodeProto | None:
    """A copy of Conv/Gemm `layer` whose output channels are multiplied by `scale`, or None if it cannot be."""
    weight = g.array(layer.input[1])
    bias = g.array(layer.input[2]) if len(layer.input) > 2 else None
    if weight is None or (len(layer.input) > 2 and bias is None):
        return None
    shape = [1] * weight.ndim
    shape[_output_axis(layer)] = -1
    inputs = [layer.input[0], g.constant(f"{name}/weight", weight * scale.reshape(shape))]
    if bias is not None:
        inputs.append(g.constant(f"{name}/bias", bias * scale.reshape(bias.shape)))
    copy = helper.make_node(layer.op_type, inputs, [f"{name}/y"], name=name)
    copy.attribute.extend(layer.attribute)
    return copy


def split_prelu(model: onnx.ModelProto) -> int:
    """Rewrite every PReLU whose input comes from a Conv or Gemm it alone reads (in place); returns the count."""
    g = Graph(model)
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for index, node in enumerate(g.graph.node):
        if node.op_type != "PRelu":
            continue
        y, slope_name = node.input
        layer, slope = g.producer.get(y), g.array(slope_name)
        if layer is None or layer.op_type not in ("Conv", "Gemm") or slope is None or not g.sole_reader(y, node):
            continue
        name = node.name or node.output[0]
        slope_flat = slope.astype(np.float64).ravel()
        negative = _scaled_copy(g, layer, -np.abs(slope_flat), f"{name}/negative")
        if negative is None:
            continue
        positive_part, negative_part = f"{name}/relu_y", f"{name}/relu_negative"
        nodes = [negative, helper.make_node("Relu", [y], [positive_part], name=positive_part),
                 helper.make_node("Relu", negative.output, [negative_part], name=negative_part)]
        signs = np.sign(slope_flat)
        if (signs >= 0).all():
            nodes.append(helper.make_node("Sub", [positive_part, negative_part], node.output, name=name))
        elif (signs <= 0).all():
            nodes.append(helper.make_node("Add", [positive_part, negative_part], node.output, name=name))
        else:
            sign = g.constant(f"{name}/minus_sign", -signs.reshape(slope.shape))
            nodes += [helper.make_node("Mul", [negative_part, sign], [f"{name}/signed"], name=f"{name}/signed"),
                      helper.make_node("Add", [positive_part, f"{name}/signed"], node.output, name=name)]
        replacements[index] = nodes
    g.replace_nodes(replacements)
    return len(replacements)


def relu_into_concat(model: onnx.ModelProto) -> int:
    """Move each Relu that reads a Concat of convolutions onto the convolutions (in place); returns the count."""
    g = Graph(model)
    replacements: dict[int, list[onnx.NodeProto]] = {}
    moved = 0
    for index, node in enumerate(g.graph.node):
        concat = g.producer.get(node.input[0]) if node.op_type == "Relu" else None
        if concat is None or concat.op_type != "Concat" or not g.sole_reader(concat.output[0], node):
            continue
        parts = [g.producer.get(part) for part in concat.input]
        if not all(p is not None and p.op_type == "Conv" and g.sole_reader(p.output[0], concat) for p in parts):
            continue
        relus = [helper.make_node("Relu", [part], [f"{part}/relu"], name=f"{part}/relu") for part in concat.input]
        merged = helper.make_node("Concat", [r.output[0] for r in relus], node.output, name=concat.name)
        merged.attribute.extend(concat.attribute)
        replacements[index] = [*relus, merged]
        replacements[g.position[concat.output[0]]] = []
        moved += 1
    g.replace_nodes(replacements)
    return moved


def nearest_upsample(model: onnx.ModelProto) -> int:
    """Rewrite each nearest Resize by an integer factor k as DepthToSpace(k) of k * k copies (in place).

    With asymmetric coordinates and floor rounding, output (k*i + a, k*j + b) is input (i, j): exactly what
    DepthToSpace makes of the channel block a * k + b when every block is a copy. Returns the count.
    """
    g = Graph(model)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {info.name: [d.dim_value for d in info.type.tensor_type.shape.dim]
              for info in [*inferred.input, *inferred.value_info]}
    replacements: dict[int, list[onnx.NodeProto]] = {}
    for index, node in enumerate(g.graph.node):
        if node.op_type != "Resize" or len(node.input) < 4:
            continue
        settings = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        sizes, shape = g.array(node.input[3]), shapes.get(node.input[0])
        if (settings.get("mode") != b"nearest" or settings.get("coordinate_transformation_mode") != b"asymmetric"
                or settings.get("nearest_mode") != b"floor" or sizes is None or not shape or len(shape) != 4
                or list(sizes[:2]) != shape[:2] or sizes[2] % shape[2] or sizes[2] // shape[2] != sizes[3] / shape[3]):
            continue
        factor = int(sizes[2] // shape[2])
        name = node.name or node.output[0]
        copies = helper.make_node("Concat", [node.input[0]] * factor ** 2, [f"{name}/copies"], name=f"{name}/copies",
                                  axis=1)
        spread = helper.make_node("DepthToSpace", copies.output, node.output, name=name, blocksize=factor, mode="DCR")
        replacements[index] = [copies, spread]
    g.replace_nodes(replacements)
    return len(replacements)


def for_xnnpack(model: onnx.ModelProto) -> int:
    """The rewrites that help float and int8 alike, in place (`relu_into_concat`, `nearest_upsample`); the count."""
    return relu_into_concat(model) + nearest_upsample(model)


def for_int8(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of `model` with `split_prelu` applied (extra MACs that only int8 needs), and the count."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, split_prelu(copy)
