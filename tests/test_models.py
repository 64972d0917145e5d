"""The converted models on real photos: each float model matches its source graph, each int8 model is
full-integer and agrees with its float twin, and the manifest describes the files exactly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import subset

from edgeface.align import align_face
from edgeface.images import letterbox, load_image
from edgeface.interpreter import TFLiteModel
from edgeface.manifest import Manifest, edgeface_home
from edgeface.mtcnn import crop_square_resized
from edgeface.nms import iou_matrix
from edgeface.retinaface import RetinaFace
from edgeface.tools.inspection import float_leftovers, undelegated_ops

FAMILIES = ("retinaface-320", "retinaface-640", "pnet", "rnet", "onet", "mobilefacenet")


def _model(manifest: Manifest, key: str, precision: str) -> TFLiteModel:
    return TFLiteModel(manifest, manifest.get(key, precision), threads=2)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


def test_manifest_describes_every_file(manifest: Manifest) -> None:
    assert {f"{key}.{p}" for key in FAMILIES for p in ("float", "int8")} <= set(manifest.models)
    for spec in manifest.models.values():
        data = manifest.path(spec).read_bytes()
        assert hashlib.sha256(data).hexdigest() == spec.sha256 and len(data) == spec.size_bytes
        assert spec.source["sha256"] and spec.converter["onnx2tf"]
        if spec.precision == "int8":
            assert spec.input.dtype in ("int8", "uint8") and spec.input.quantization is not None
            assert all(o.quantization is not None for o in spec.outputs)
            assert spec.calibration and spec.calibration["samples"] > 0
        else:
            assert spec.input.dtype == "float32" and spec.input.quantization is None


@pytest.mark.parametrize("key", FAMILIES)
def test_int8_model_is_full_integer(manifest: Manifest, key: str) -> None:
    assert float_leftovers(manifest.path(manifest.get(key, "int8"))) == []


# The anti-spoofing net ends in an 8-way CONCATENATION of 1 x 1 leaf logits, more inputs than XNNPACK's concat
# takes; it costs nothing measurable, so it is left to TFLite's kernel.
OUTSIDE_XNNPACK = {"antispoofing": {"CONCATENATION": 1}}


@pytest.mark.parametrize("key", [*FAMILIES, "antispoofing"])
@pytest.mark.parametrize("precision", ["int8", "float"])
def test_every_op_runs_in_xnnpack(manifest: Manifest, key: str, precision: str) -> None:
    """convert.rewrite leaves no PRELU, standalone int8 RELU, nearest resize or MIRROR_PAD to slow kernels."""
    assert undelegated_ops(manifest.path(manifest.get(key, precision))) == OUTSIDE_XNNPACK.get(key, {})


def test_full_integer_check_rejects_a_float_model(manifest: Manifest) -> None:
    problems = float_leftovers(manifest.path(manifest.get("rnet", "float")))
    assert any("float32" in problem for problem in problems)


def _source_archive(manifest: Manifest, key: str) -> bytes:
    """The pinned source member of a model, read from the conversion cache (skips when not cached)."""
    pytest.importorskip("convert.sources")
    from convert import sources

    spec = manifest.get(key, "float")
    archive = edgeface_home() / "sources" / spec.source["file"]
    if not archive.is_file():
        pytest.skip(f"{archive}: source package not cached (run make models)")
    return sources.read_member(archive, spec.source["member"])


def test_float_retinaface_matches_the_package_onnx(manifest: Manifest, data: Path) -> None:
    """Decoding our float TFLite (raw RGB in, per-level logit heads) gives the package's ONNX outputs."""
    ort = pytest.importorskip("onnxruntime")
    from convert import sources
    from convert.retinaface import BGR_MEAN

    session = ort.InferenceSession(sources.retinaface_onnx_bytes(_source_archive(manifest, "retinaface-640")))
    model = _model(manifest, "retinaface-640", "float")
    detector = RetinaFace(model)
    for path in subset(data / "wider_val_dev" / "images", 3):
        boxed = letterbox(load_image(path), 640, 640, detector.fill)[0]
        bgr = (boxed[..., ::-1].astype(np.float32) - np.float32(BGR_MEAN)).transpose(2, 0, 1)[None]
        loc, conf, landmarks = session.run(None, {session.get_inputs()[0].name: bgr})
        ours = model.run(boxed[None])
        steps = detector.model.spec.decoder["steps"]
        mine_loc = np.concatenate([ours[f"loc_s{s}"].reshape(-1, 4) for s in steps])
        mine_score = _sigmoid(np.concatenate([ours[f"conf_s{s}"].reshape(-1) for s in steps]))
        mine_marks = np.concatenate([ours[f"landmarks_s{s}"].reshape(-1, 10) for s in steps])
        np.testing.assert_allclose(mine_loc, loc[0], atol=2e-3)
        np.testing.assert_allclose(mine_score, conf[0, :, 1], atol=2e-4)
        np.testing.assert_allclose(mine_marks, landmarks[0], atol=2e-3)


def _face_crops(manifest: Manifest, data: Path, size: int) -> np.ndarray:
    """size x size crops around faces the float RetinaFace finds, and as many background squares."""
    detector = RetinaFace(_model(manifest, "retinaface-320", "float"))
    rng = np.random.default_rng(7)
    crops = []
    for path in subset(data / "wider_val_dev" / "images", 12):
        image = load_image(path)
        found = detector.detect(image, 0.6, 0.4)
        boxes = list(found.boxes[:10])
        height, width = image.shape[:2]
        for _ in range(len(boxes)):
            side = rng.uniform(20, min(width, height) / 3)
            x, y = rng.uniform(0, width - side), rng.uniform(0, height - side)
            boxes.append(np.array([x, y, x + side, y + side]))
        crops.append(crop_square_resized(image, np.array(boxes).reshape(-1, 4), size))
    return np.concatenate(crops)


@pytest.mark.parametrize("net", ["rnet", "onet"])
def test_float_and_int8_mtcnn_stages_match_torch(manifest: Manifest, data: Path, net: str) -> None:
    """R/O-Net: float TFLite equals facenet-pytorch's weights in torch; int8 makes the same face decisions."""
    torch = pytest.importorskip("torch")
    from convert.mtcnn import MEAN, SCALE, load

    reference = load(net, _source_archive(manifest, net))
    size = manifest.get(net, "float").input.shape[1]
    crops = _face_crops(manifest, data, size)
    with torch.no_grad():
        expected = reference(torch.from_numpy((crops.astype(np.float32) - MEAN) * SCALE).permute(0, 3, 1, 2))
    probability = expected[-1][:, 1].numpy()
    outputs = {p: _model(manifest, net, p).run(crops) for p in ("float", "int8")}
    np.testing.assert_allclose(_sigmoid(outputs["float"]["face_logit"][:, 0]), probability, atol=1e-4)
    np.testing.assert_allclose(outputs["float"]["box_reg"], expected[0].numpy(), atol=1e-4)
    assert 0.2 < (probability > 0.7).mean() < 0.8  # both faces and non-faces are in the test set
    agreement = ((_sigmoid(outputs["int8"]["face_logit"][:, 0]) > 0.7) == (probability > 0.7)).mean()
    assert agreement >= 0.97, f"{net} int8 agrees with float on {agreement:.1%} of face decisions"


def test_float_and_int8_pnet_match_torch(manifest: Manifest, data: Path) -> None:
    """PNet at a pyramid size other than its export size: float equals torch, int8 agrees cell by cell."""
    torch = pytest.importorskip("torch")
    from convert.mtcnn import MEAN, SCALE, load

    reference = load("pnet", _source_archive(manifest, "pnet"))
    image = letterbox(load_image(subset(data / "wider_val_dev" / "images", 1)[0]), 226, 226, (128, 128, 128))[0]
    with torch.no_grad():
        box_reg, prob = reference(torch.from_numpy((image[None].astype(np.float32) - MEAN) * SCALE).permute(0, 3, 1, 2))
    expected = prob[0, 1].numpy()
    outputs = {p: _model(manifest, "pnet", p).run(image[None]) for p in ("float", "int8")}
    np.testing.assert_allclose(_sigmoid(outputs["float"]["face_logit"][0, ..., 0]), expected, atol=1e-4)
    np.testing.assert_allclose(outputs["float"]["box_reg"][0], box_reg[0].permute(1, 2, 0).numpy(), atol=1e-4)
    agreement = ((_sigmoid(outputs["int8"]["face_logit"][0, ..., 0]) > 0.6) == (expected > 0.6)).mean()
    assert agreement >= 0.97, f"pnet int8 agrees with float on {agreement:.1%} of cells"


@pytest.fixture(scope="module")
def aligned_faces(manifest: Manifest, data: Path) -> np.ndarray:
    """Up to 600 real faces from LFW fold 1, found by the float RetinaFace and aligned to 112 x 112."""
    detector = RetinaFace(_model(manifest, "retinaface-320", "float"))
    faces = []
    for path in subset(data / "lfw_fold1" / "images", 600):
        image = load_image(path)
        found = detector.detect(image, 0.8, 0.4, max_faces=1)
        if len(found):
            faces.append(align_face(image, found.landmarks[0]))
    return np.stack(faces)


def test_float_mobilefacenet_matches_the_package_tflite(manifest: Manifest, aligned_faces: np.ndarray) -> None:
    """Our batch-1, raw-RGB rebuild gives the package's embeddings ((x - 127.5) / 128, batch 2)."""
    from edgeface.interpreter import make_interpreter

    source = _source_archive(manifest, "mobilefacenet")
    path = Path(pytest.importorskip("tempfile").mkdtemp()) / "MobileFaceNet.tflite"
    path.write_bytes(source)
    reference = make_interpreter(path, threads=2)
    reference.allocate_tensors()
    ours = _model(manifest, "mobilefacenet", "float")
    for pair in aligned_faces[:40].reshape(-1, 2, 112, 112, 3):
        reference.set_tensor(reference.get_input_details()[0]["index"], (pair.astype(np.float32) - 127.5) / 128)
        reference.invoke()
        expected = reference.get_tensor(reference.get_output_details()[0]["index"])
        for face, vector in zip(pair, expected):
            np.testing.assert_allclose(ours.run(face[None])["embedding"][0], vector, atol=1e-3 * np.abs(vector).max())


def test_int8_mobilefacenet_agrees_with_float(manifest: Manifest, aligned_faces: np.ndarray) -> None:
    assert len(aligned_faces) >= 500
    embeddings = {}
    for precision in ("float", "int8"):
        model = _model(manifest, "mobilefacenet", precision)
        vectors = np.concatenate([model.run(face[None])["embedding"] for face in aligned_faces])
        embeddings[precision] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = (embeddings["float"] * embeddings["int8"]).sum(axis=1)
    assert cosine.mean() >= 0.98, f"mean cos(int8, float) {cosine.mean():.4f}, min {cosine.min():.4f}"
    assert cosine.min() >= 0.90, f"worst cos(int8, float) {cosine.min():.4f}"


@pytest.mark.parametrize("size", [320, 640])
def test_int8_retinaface_finds_the_float_faces(manifest: Manifest, data: Path, size: int) -> None:
    """Faces the float model is sure of (score >= 0.8, at least 16 px) are found by int8 at IoU >= 0.7."""
    detectors = {p: RetinaFace(_model(manifest, f"retinaface-{size}", p)) for p in ("float", "int8")}
    matched, total, score_gaps = 0, 0, []
    for path in subset(data / "wider_val_dev" / "images", 40):
        image = load_image(path)
        ref = detectors["float"].detect(image, 0.8, 0.4)
        found = detectors["int8"].detect(image, 0.3, 0.4)
        sure = np.minimum(ref.boxes[:, 2] - ref.boxes[:, 0], ref.boxes[:, 3] - ref.boxes[:, 1]) >= 16
        if not sure.any():
            continue
        total += int(sure.sum())
        if len(found):
            overlap = iou_matrix(ref.boxes[sure], found.boxes)
            best = overlap.argmax(axis=1)
            hit = overlap.max(axis=1) >= 0.7
            matched += int(hit.sum())
            score_gaps.extend(np.abs(ref.scores[sure][hit] - found.scores[best[hit]]))
    assert total >= 30
    assert matched / total >= 0.95, f"int8 found {matched}/{total} of the float faces"
    assert np.median(score_gaps) <= 0.05, f"median |score(int8) - score(float)| {np.median(score_gaps):.3f}"
