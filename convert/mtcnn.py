"""MTCNN P/R/O-Net (facenet-pytorch 2.6.0 weights) as plain torch modules, exported to ONNX ready for int8 TFLite.

`PNet`, `RNet` and `ONet` are faithful float references: normalised NCHW input ((RGB - 127.5) * 0.0078125),
ceil-mode max pools, two-way softmax, and facenet-pytorch's output order (box regression, [landmarks,] probability).

`export_onnx` builds the same weights into a graph that onnx2tf and the int8 converter handle exactly. Each
change is exact in float:
- the input `image` is raw RGB (0..255): the normalisation is folded into conv1 (it has no padding, so every
  output sees only real pixels): w' = w * s, b' = b - 127.5 * s * sum(w);
- the classifier emits one `face_logit` (l1 - l0, folded into its weights and bias) instead of a softmax:
  softmax([l0, l1])[1] == sigmoid(l1 - l0), and a logit keeps its resolution in int8;
- a ceil-mode max pool becomes an explicit right/bottom pad and a floor-mode pool, only where the static shape
  needs it (RNet and ONet pool1: one row and column). onnx2tf lowers a ceil-mode pool to a zero pad, which is
  wrong after a PReLU (negative activations). The pad replicates the edge: a ceil-mode window starts inside
  the input, so the copied last row/column is already in it and the maximum is unchanged. A very negative
  constant is exact in float too, but int8 calibration gives the pad its input's scale and the constant blows
  that scale up (tried: step 39 on RNet's PReLU1 output). The edge copy is a Slice and a Concat, which keep
  the input's scale and run in XNNPACK (an edge-mode Pad becomes MIRROR_PAD, which XNNPACK and the Edge TPU
  lack). PNet's 2x2 pool needs no pad at even heights and widths, so PNet is exported pad-free and stays
  resizable to any even size.
onnxsim then folds the exporter's shape arithmetic into constants (onnx2tf's own onnxsim pass is skipped when
the `onnxsim` CLI is not on PATH).
"""

from __future__ import annotations

import io

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from convert import ConvertError, calibration, sources
from convert.target import RAW_RGB, Target
from convert.tflite import simplify

MEAN, SCALE = 127.5, 0.0078125
PNET_EXPORT = 160  # the P-Net graph's input side for calibration (the runtime resizes it per pyramid level)
MTCNN_CALIBRATION = {"input_size": 640, "min_face": 20, "factor": 0.709}  # the pyramid P-Net is calibrated on
NETS: dict[str, dict] = {
    "pnet": {"size": None, "outputs": ("face_logit", "box_reg")},  # fully convolutional, even sizes
    "rnet": {"size": 24, "outputs": ("face_logit", "box_reg")},
    "onet": {"size": 48, "outputs": ("face_logit", "box_reg", "landmarks")},
}


class _Mtcnn(nn.Module):
    """A trunk of conv/PReLU/pool/dense layers in registration order, then the heads named by `heads`."""

    heads: tuple[str, ...]  # classifier, box regression[, landmarks]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk: every layer before the heads."""
        for name, layer in self.named_children():
            if name in self.heads:
                break
            if isinstance(layer, nn.Linear) and x.dim() == 4:
                x = x.permute(0, 3, 2, 1).flatten(1)  # facenet-pytorch flattens in (w, h, c) order
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.features(x)
        prob = torch.softmax(getattr(self, self.heads[0])(x), dim=1)
        return (*(getattr(self, head)(x) for head in self.heads[1:]), prob)


class PNet(_Mtcnn):
    """Proposal net: returns (box_reg [N,4,h,w], prob [N,2,h,w]) for any input of at least 12 x 12."""

    heads = ("conv4_1", "conv4_2")

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)


class RNet(_Mtcnn):
    """Refinement net: returns (box_reg [N,4], prob [N,2]) for 24 x 24 crops."""

    heads = ("dense5_1", "dense5_2")

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)


class ONet(_Mtcnn):
    """Output net: returns (box_reg [N,4], landmarks [N,10] (5 x then 5 y), prob [N,2]) for 48 x 48 crops."""

    heads = ("dense6_1", "dense6_2", "dense6_3")

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)


CLASSES: dict[str, type[_Mtcnn]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}


def load(net_name: str, state_dict_bytes: bytes) -> _Mtcnn:
    """The reference module `net_name` in eval mode, with weights from a facenet-pytorch `.pt` state dict."""
    net = CLASSES[net_name]().eval()
    try:
        state = torch.load(io.BytesIO(state_dict_bytes), map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights-only errors have no common base
        raise ConvertError(f"{net_name}.pt: not a torch state dict ({error})") from None
    expected = net.state_dict()
    if not isinstance(state, dict):
        raise ConvertError(f"{net_name}.pt: holds a {type(state).__name__}, not a state dict")
    if state.keys() != expected.keys():
        raise ConvertError(f"{net_name}.pt: unexpected state dict keys {sorted(state.keys() - expected.keys())}, "
                           f"missing {sorted(expected.keys() - state.keys())}")
    wrong = [k for k, v in state.items() if not isinstance(v, torch.Tensor) or v.shape != expected[k].shape]
    if wrong:
        raise ConvertError(f"{net_name}.pt: unexpected shapes for {wrong}")
    net.load_state_dict(state)
    return net


class _PaddedPool(nn.Module):
    """A ceil-mode max pool at a static input size: right/bottom edge replication (if needed), floor-mode pool."""

    def __init__(self, kernel: int, stride: int, pad_h: int, pad_w: int) -> None:
        super().__init__()
        self.kernel, self.stride, self.pad_h, self.pad_w = kernel, stride, pad_h, pad_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, *[x[:, :, -1:]] * self.pad_h], dim=2)
        x = torch.cat([x, *[x[:, :, :, -1:]] * self.pad_w], dim=3)
        return F.max_pool2d(x, self.kernel, self.stride)


class _Exportable(nn.Module):
    """A reference net with folded weights and padded pools (see the module docstring), outputs in NETS order."""

    def __init__(self, net: _Mtcnn, height: int, width: int) -> None:
        super().__init__()
        with torch.no_grad():
            net.conv1.bias -= MEAN * SCALE * net.conv1.weight.sum((1, 2, 3))
            net.conv1.weight *= SCALE
            classifier = getattr(net, net.heads[0])
            classifier.weight = nn.Parameter(classifier.weight[1:] - classifier.weight[:1])
            classifier.bias = nn.Parameter(classifier.bias[1:] - classifier.bias[:1])
        sides = [height, width]  # spatial size through the trunk: unpadded stride-1 convs, ceil-mode pools
        for name, layer in list(net.named_children()):
            if isinstance(layer, nn.Conv2d):
                sides = [n - layer.kernel_size[0] + 1 for n in sides]
            elif isinstance(layer, nn.MaxPool2d):
                k, s = layer.kernel_size, layer.stride
                outs = [-(-(n - k) // s) + 1 for n in sides]
                setattr(net, name, _PaddedPool(k, s, *((o - 1) * s + k - n for o, n in zip(outs, sides))))
                sides = outs
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.net.features(image)
        return tuple(getattr(self.net, head)(x) for head in self.net.heads)


def export_onnx(net_name: str, state_dict_bytes: bytes, height: int, width: int) -> bytes:
    """Simplified ONNX (opset 13) of `net_name`: input `image` [1,3,height,width] of raw RGB, NETS' named outputs."""
    size = NETS[net_name]["size"]
    if size is None and (height % 2 or width % 2 or min(height, width) < 12):
        raise ValueError(f"pnet: input {height}x{width} must have even sides of at least 12")
    if size is not None and (height, width) != (size, size):
        raise ValueError(f"{net_name}: input must be {size}x{size}, not {height}x{width}")
    module = _Exportable(load(net_name, state_dict_bytes), height, width).eval()
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.zeros(1, 3, height, width),), buffer, dynamo=False, opset_version=13,
                      input_names=["image"], output_names=list(NETS[net_name]["outputs"]))
    return simplify(onnx.load_from_string(buffer.getvalue()), net_name).SerializeToString()


def target(net: str) -> Target:
    """P-, R- or O-Net (`net`): its graph and calibration (plain min/max int8)."""
    size = NETS[net]["size"] or PNET_EXPORT
    fill = [128, 128, 128]
    if net == "pnet":
        samples = lambda calib: calibration.pyramid_crops(calib, PNET_EXPORT, fill=tuple(fill), **MTCNN_CALIBRATION)
    else:
        samples = lambda calib: calibration.face_crops(calib, size)
    return Target(
        key=net, family=net, source=sources.FACENET_PYTORCH, member=f"facenet_pytorch/data/{net}.pt",
        make_onnx=lambda data: onnx.load_from_string(export_onnx(net, data, size, size)),
        samples=samples,
        preprocessing={**RAW_RGB, "letterbox_fill": fill, "size_multiple": 2 if net == "pnet" else None,
                       "resizable": net == "pnet",
                       "folded": "(x - 127.5) / 128 is folded into conv1"},
        meanings={"face_logit": "face logit (probability = sigmoid)",
                  "box_reg": "box offsets (dx1, dy1, dx2, dy2) relative to width/height",
                  "landmarks": "5 x then 5 y, relative to the box"},
        decoder={"cell": 12, "stride": 2} if net == "pnet" else {},
    )
