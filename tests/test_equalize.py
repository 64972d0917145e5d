"""Activation equalization must leave the float network unchanged and even out per-channel ranges."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from convert.equalize import channel_ranges, equalize  # noqa: E402


def _toy_model() -> onnx.ModelProto:
    """conv -> LeakyRelu -> depthwise conv -> Relu -> (conv, conv) -> Add -> conv: two equalizable spaces and more."""
    rng = np.random.default_rng(0)
    spread = np.array([0.05, 1.0, 0.2, 3.0], np.float32)[:, None, None, None]
    weights = {
        "w0": rng.normal(size=(4, 3, 3, 3)).astype(np.float32) * spread, "b0": rng.normal(size=4).astype(np.float32),
        "w1": rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "b1": rng.normal(size=4).astype(np.float32),
        "w2": rng.normal(size=(6, 4, 1, 1)).astype(np.float32), "w3": rng.normal(size=(6, 4, 1, 1)).astype(np.float32),
        "w4": rng.normal(size=(2, 6, 1, 1)).astype(np.float32),
    }
    conv = helper.make_node
    nodes = [
        conv("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1]),
        conv("LeakyRelu", ["c0"], ["a0"], alpha=0.1),
        conv("Conv", ["a0", "w1", "b1"], ["c1"], group=4, pads=[1, 1, 1, 1]),
        conv("Relu", ["c1"], ["a1"]),
        conv("Conv", ["a1", "w2"], ["c2"]),
        conv("Conv", ["a1", "w3"], ["c3"]),
        conv("Add", ["c2", "c3"], ["s"]),
        conv("Conv", ["s", "w4"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.transpose(0, 3, 1, 2)})[0]


def test_equalize_is_exact_and_evens_ranges() -> None:
    samples = [np.random.default_rng(i).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32) for i in range(4)]
    model = _toy_model()
    before = channel_ranges(model, samples)
    reference = _run(model, samples[0])
    equalized = equalize(_toy_model(), before)
    after = channel_ranges(equalized, samples)

    np.testing.assert_allclose(_run(equalized, samples[0]), reference, rtol=1e-4, atol=1e-4)
    assert set(before) == {"c0", "a0", "c1", "a1", "c2", "c3", "s"}
    assert after["a0"].min() / after["a0"].max() > before["a0"].min() / before["a0"].max()
