"""The XNNPACK rewrites must leave the float network unchanged and replace exactly the ops they target."""

from collections import Counter

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from convert.rewrite import nearest_upsample, relu_into_concat, split_prelu  # noqa: E402

RNG = np.random.default_rng(7)


def _model(nodes: list, inputs: dict[str, list[int]], outputs: dict[str, list[int]],
           constants: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def _check_exact(model: onnx.ModelProto, rewrite, shape: list[int]) -> tuple[onnx.ModelProto, int]:
    """Apply `rewrite` to a copy; assert every output is unchanged on random input; return the copy and count."""
    x = RNG.normal(size=shape).astype(np.float32) * 3
    reference = _run(model, x)
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    count = rewrite(changed)
    onnx.checker.check_model(changed)
    for got, want in zip(_run(changed, x), reference):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    return changed, count


def _conv_prelu(slopes: np.ndarray, extra_reader: bool = False) -> onnx.ModelProto:
    channels = len(slopes)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["y", "a"], ["z"])]
    outputs = {"z": [1, channels, 6, 6]}
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["y"], ["other"]))
        outputs["other"] = [1, channels, 6, 6]
    return _model(nodes, {"x": [1, 3, 6, 6]}, outputs,
                  {"w": RNG.normal(size=(channels, 3, 3, 3)), "b": RNG.normal(size=channels),
                   "a": slopes.reshape(-1, 1, 1)})


def test_split_prelu_mixed_signs_is_exact_with_fused_relus() -> None:
    changed, count = _check_exact(_conv_prelu(np.array([-9.0, -0.5, 0.0, 0.25, 4.0])), split_prelu, [1, 3, 6, 6])
    assert count == 1
    assert _ops(changed) == Counter({"Conv": 2, "Relu": 2, "Mul": 1, "Add": 1})


@pytest.mark.parametrize(("slopes", "combine"), [(np.array([0.1, 2.0, 0.0]), "Sub"), (np.array([-0.3, -5.0]), "Add")])
def test_split_prelu_one_sign_needs_no_mul(slopes: np.ndarray, combine: str) -> None:
    changed, _ = _check_exact(_conv_prelu(slopes), split_prelu, [1, 3, 6, 6])
    assert _ops(changed) == Counter({"Conv": 2, "Relu": 2, combine: 1})


@pytest.mark.parametrize("trans_b", [0, 1])
def test_split_prelu_after_a_dense_layer(trans_b: int) -> None:
    weight = RNG.normal(size=(4, 8))
    model = _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=trans_b),
                    helper.make_node("PRelu", ["y", "a"], ["z"])],
                   {"x": [2, 8]}, {"z": [2, 4]},
                   {"w": weight if trans_b else weight.T, "b": RNG.normal(size=4), "a": [0.5, -1.5, 3.0, -0.1]})
    changed, count = _check_exact(model, split_prelu, [2, 8])
    assert count == 1 and _ops(changed)["Gemm"] == 2 and "PRelu" not in _ops(changed)


def test_split_prelu_leaves_a_shared_input_alone() -> None:
    changed, count = _check_exact(_conv_prelu(np.array([0.5, -0.5]), extra_reader=True), split_prelu, [1, 3, 6, 6])
    assert count == 0 and _ops(changed)["PRelu"] == 1


def _concat_relu(extra_reader: bool) -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["c2"]),
             helper.make_node("Concat", ["c1", "c2"], ["cat"], axis=1),
             helper.make_node("Relu", ["cat"], ["z"])]
    outputs = {"z": [1, 5, 4, 4]}
    if extra_reader:
        nodes.append(helper.make_node("Sigmoid", ["c2"], ["other"]))
        outputs["other"] = [1, 3, 4, 4]
    return _model(nodes, {"x": [1, 2, 4, 4]}, outputs,
                  {"w1": RNG.normal(size=(2, 2, 3, 3)), "w2": RNG.normal(size=(3, 2, 1, 1))})


def test_relu_moves_onto_the_concatenated_convolutions() -> None:
    changed, count = _check_exact(_concat_relu(False), relu_into_concat, [1, 2, 4, 4])
    assert count == 1
    relus = [node for node in changed.graph.node if node.op_type == "Relu"]
    assert [node.input[0] for node in relus] == ["c1", "c2"]
    assert changed.graph.node[-1].op_type == "Concat" and changed.graph.node[-1].output[0] == "z"


def test_relu_stays_when_a_part_is_read_elsewhere() -> None:
    _, count = _check_exact(_concat_relu(True), relu_into_concat, [1, 2, 4, 4])
    assert count == 0


def _resize(factor: int, mode: str = "asymmetric") -> onnx.ModelProto:
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["z"], mode="nearest",
                            coordinate_transformation_mode=mode, nearest_mode="floor")
    sizes = np.array([1, 3, 5 * factor, 4 * factor], np.int64)
    graph = helper.make_graph([node], "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, sizes.tolist())],
                              [numpy_helper.from_array(sizes, "sizes")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("factor", [2, 3])
def test_nearest_upsample_becomes_depth_to_space(factor: int) -> None:
    changed, count = _check_exact(_resize(factor), nearest_upsample, [1, 3, 5, 4])
    assert count == 1 and _ops(changed) == Counter({"Concat": 1, "DepthToSpace": 1})


def test_other_resize_modes_are_left_alone() -> None:
    _, count = _check_exact(_resize(2, "half_pixel"), nearest_upsample, [1, 3, 5, 4])
    assert count == 0
