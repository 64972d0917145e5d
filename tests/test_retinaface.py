"""RetinaFace decoding against a plain per-prior loop of the paper's formulas, and the float model on a photo."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import subset
from edgeface.detection import logit_of
from edgeface.errors import ModelError
from edgeface.images import letterbox, load_image
from edgeface.interpreter import TFLiteModel
from edgeface.manifest import Manifest
from edgeface.retinaface import RetinaFace, decode

STEPS = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)


def reference_priors(width: int, height: int) -> list[tuple[int, int, int, int, float, float, float]]:
    """(step, row, column, anchor, cx, cy, size) for each level step, each cell row-major, each min size."""
    priors = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        for row in range(math.ceil(height / step)):
            for column in range(math.ceil(width / step)):
                for anchor, size in enumerate(sizes):
                    priors.append((step, row, column, anchor, (column + 0.5) * step, (row + 0.5) * step, float(size)))
    return priors


def reference_decode(loc: list[float], marks: list[float], cx: float, cy: float,
                     size: float) -> tuple[list[float], list[float]]:
    """One prior: centre offsets scaled by variance 0.1 and the prior size, log sizes by variance 0.2."""
    x = cx + loc[0] * VARIANCES[0] * size
    y = cy + loc[1] * VARIANCES[0] * size
    w = size * math.exp(loc[2] * VARIANCES[1])
    h = size * math.exp(loc[3] * VARIANCES[1])
    points = []
    for k in range(5):
        points += [cx + marks[2 * k] * VARIANCES[0] * size, cy + marks[2 * k + 1] * VARIANCES[0] * size]
    return [x - w / 2, y - h / 2, x + w / 2, y + h / 2], points


def naive_nms(boxes: list[list[float]], scores: list[float], threshold: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep: list[int] = []
    for i in order:
        a = boxes[i]
        for j in keep:
            b = boxes[j]
            inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if inter / union > threshold:
                break
        else:
            keep.append(i)
    return keep


def reference_detect(outputs: dict[str, np.ndarray], width: int, height: int, threshold: float,
                     nms_iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes, scores, landmarks (input pixels) from raw outputs, one prior at a time."""
    boxes, scores, points = [], [], []
    for step, row, column, anchor, cx, cy, size in reference_priors(width, height):
        score = 1.0 / (1.0 + math.exp(-float(outputs[f"conf_s{step}"][0, row, column, anchor])))
        if score <= threshold:
            continue
        loc = [float(v) for v in outputs[f"loc_s{step}"][0, row, column, 4 * anchor:4 * anchor + 4]]
        marks = [float(v) for v in outputs[f"landmarks_s{step}"][0, row, column, 10 * anchor:10 * anchor + 10]]
        box, landmark = reference_decode(loc, marks, cx, cy, size)
        boxes.append(box)
        scores.append(score)
        points.append(landmark)
    keep = naive_nms(boxes, scores, nms_iou)
    return (np.array([boxes[i] for i in keep]).reshape(-1, 4), np.array([scores[i] for i in keep]),
            np.array([points[i] for i in keep]).reshape(-1, 5, 2))


def test_decode_matches_per_prior_loop() -> None:
    priors = reference_priors(96, 64)
    rng = np.random.default_rng(0)
    loc = rng.normal(0, 1.5, size=(len(priors), 4)).astype(np.float32)
    marks = rng.normal(0, 2, size=(len(priors), 10)).astype(np.float32)
    boxes, points = decode(loc, marks, np.array([p[4:] for p in priors]), VARIANCES)
    assert boxes.shape == (len(priors), 4) and points.shape == (len(priors), 10)
    for i, (*_, cx, cy, size) in enumerate(priors):
        box, landmark = reference_decode(loc[i].tolist(), marks[i].tolist(), cx, cy, size)
        np.testing.assert_allclose(boxes[i], box, rtol=0, atol=1e-9)
        np.testing.assert_allclose(points[i], landmark, rtol=0, atol=1e-9)


class FakeModel:
    """A stand-in TFLite model with a non-square input and chosen raw outputs."""

    def __init__(self, width: int, height: int, outputs: dict[str, np.ndarray], **decoder: object) -> None:
        self.spec = SimpleNamespace(
            key="retinaface-fake", input=SimpleNamespace(shape=(1, height, width, 3)), outputs=(),
            preprocessing={"letterbox_fill": [127, 117, 104]},
            decoder={"steps": list(STEPS), "min_sizes": [list(s) for s in MIN_SIZES], "variances": list(VARIANCES),
                     **decoder},
        )
        self.outputs = outputs
        self.batches: list[np.ndarray] = []

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(batch)
        return self.outputs


def _fake_outputs(width: int, height: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    outputs = {}
    for step, sizes in zip(STEPS, MIN_SIZES):
        rows, cols, anchors = math.ceil(height / step), math.ceil(width / step), len(sizes)
        conf = rng.normal(-6, 1, size=(1, rows, cols, anchors))
        hot = rng.random(conf.shape) < 0.15
        conf[hot] = rng.normal(2, 2, size=hot.sum())
        outputs[f"conf_s{step}"] = conf.astype(np.float32)
        outputs[f"loc_s{step}"] = rng.normal(0, 1, size=(1, rows, cols, 4 * anchors)).astype(np.float32)
        outputs[f"landmarks_s{step}"] = rng.normal(0, 1, size=(1, rows, cols, 10 * anchors)).astype(np.float32)
    return outputs


@pytest.mark.parametrize("seed", [1, 2])
def test_detect_matches_reference_on_a_non_square_input(seed: int) -> None:
    width, height = 96, 64  # 12 x 8 cells at stride 8, 3 x 2 at stride 32: a row/column mix-up shows
    outputs = _fake_outputs(width, height, seed)
    model = FakeModel(width, height, outputs)
    detector = RetinaFace(model)  # type: ignore[arg-type]
    image = np.full((2 * height, 2 * width, 3), 90, np.uint8)  # letterbox scale 1/2: results double
    found = detector.detect(image, score_threshold=0.5, nms_iou=0.4)
    assert model.batches[0].shape == (1, height, width, 3)
    boxes, scores, points = reference_detect(outputs, width, height, 0.5, 0.4)
    assert len(found) == len(scores) > 3
    np.testing.assert_allclose(found.scores, scores, rtol=0, atol=1e-12)
    np.testing.assert_allclose(found.boxes, boxes * 2, rtol=0, atol=1e-9)
    np.testing.assert_allclose(found.landmarks, points * 2, rtol=0, atol=1e-9)

    capped = detector.detect(image, score_threshold=0.5, nms_iou=0.4, max_faces=2)
    np.testing.assert_allclose(capped.boxes, boxes[:2] * 2, rtol=0, atol=1e-9)


def test_a_threshold_below_the_models_lowest_score_is_refused() -> None:
    width, height = 96, 64
    model = FakeModel(width, height, _fake_outputs(width, height, 1), min_score_threshold=0.01)
    detector = RetinaFace(model)  # type: ignore[arg-type]
    image = np.full((height, width, 3), 90, np.uint8)
    assert len(detector.detect(image, score_threshold=0.01, nms_iou=0.4)) > 0
    with pytest.raises(ModelError, match=r"score threshold 0.005 is below 0.01, the lowest RetinaFace accepts"):
        detector.detect(image, score_threshold=0.005, nms_iou=0.4)


@pytest.mark.parametrize("size", [320, 640])
def test_int8_face_logits_start_at_the_lowest_threshold(manifest: Manifest, size: int) -> None:
    """The int8 conf outputs' lowest value is the logit of the lowest accepted threshold (convert.retinaface's
    floor); the box and landmark outputs keep their calibrated range."""
    key = f"retinaface-{size}"
    floor = manifest.get(key, "float").decoder["min_score_threshold"]
    assert manifest.get(key, "int8").decoder["min_score_threshold"] == floor > 0
    conf = []
    for output in manifest.get(key, "int8").outputs:
        quantization = output.quantization
        lowest = (-128 - quantization.zero_point) * quantization.scale
        if output.role.startswith("conf"):
            conf.append(output.role)
            assert abs(lowest - logit_of(floor)) <= quantization.scale, output.role
        else:
            assert lowest < -3, output.role  # regressions span both signs, far past a score's floor
    assert sorted(conf) == ["conf_s16", "conf_s32", "conf_s8"]


@pytest.mark.parametrize("size", [320, 640])
def test_int8_finds_real_faces_at_the_lowest_threshold(manifest: Manifest, data: Path, size: int) -> None:
    """At the lowest accepted threshold int8 finds about what float finds: the logits clipped onto the bottom of
    the int8 range (every background prior) are not faces, even where that step lies just above the threshold."""
    image = load_image(data / "group_photos" / "dlib_bald_guys.jpg")
    spec = manifest.get(f"retinaface-{size}", "int8")
    threshold = spec.decoder["min_score_threshold"]
    found = {precision: RetinaFace(TFLiteModel(manifest, manifest.get(spec.key, precision), threads=2))
             .detect(image, threshold, 0.4) for precision in ("float", "int8")}
    assert 20 < len(found["float"]) < 200
    assert abs(len(found["int8"]) - len(found["float"])) <= 0.2 * len(found["float"]), \
        {p: len(f) for p, f in found.items()}


@pytest.fixture(scope="module")
def float_detector(manifest: Manifest) -> RetinaFace:
    return RetinaFace(TFLiteModel(manifest, manifest.get("retinaface-640", "float"), threads=2))


class Recorder:
    """Wraps a model and keeps its last raw outputs."""

    def __init__(self, model: TFLiteModel) -> None:
        self.spec, self.model = model.spec, model
        self.last: dict[str, np.ndarray] = {}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.last = self.model.run(batch)
        return self.last


def test_float_model_on_a_real_photo(float_detector: RetinaFace, data: Path) -> None:
    assert float_detector.variances == VARIANCES
    assert [(step, tuple(sizes)) for step, sizes in zip(float_detector.model.spec.decoder["steps"],
                                                        float_detector.model.spec.decoder["min_sizes"])] \
        == list(zip(STEPS, MIN_SIZES))
    image = load_image(subset(data / "group_photos", 1)[0])
    height, width = image.shape[:2]
    recorder = Recorder(float_detector.model)
    detector = RetinaFace(recorder)  # type: ignore[arg-type]
    found = detector.detect(image, score_threshold=0.5, nms_iou=0.4)
    assert len(found) >= 3

    # The runtime's vectorised decoding equals the per-prior loop on the model's real outputs.
    _, mapping = letterbox(image, 640, 640, float_detector.fill)
    boxes, scores, points = reference_detect(recorder.last, 640, 640, 0.5, 0.4)
    np.testing.assert_allclose(found.scores, scores, rtol=0, atol=1e-9)
    np.testing.assert_allclose(found.boxes, mapping.to_original(boxes), rtol=0, atol=1e-6)
    np.testing.assert_allclose(found.landmarks.reshape(-1, 10), mapping.to_original(points.reshape(-1, 10)),
                               rtol=0, atol=1e-6)

    b, marks = found.boxes, found.landmarks
    assert (found.scores > 0.5).all() and (np.diff(found.scores) <= 0).all()
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= width).all() and (b[:, 3] <= height).all()
    assert (b[:, 2] - b[:, 0] > 8).all() and (b[:, 3] - b[:, 1] > 8).all()
    margin = 0.1 * (b[:, 2:] - b[:, :2])[:, None, :]
    assert (marks >= b[:, None, :2] - margin).all() and (marks <= b[:, None, 2:] + margin).all()
    left_eye, right_eye, nose, mouth_left, mouth_right = (marks[:, k] for k in range(5))
    assert (left_eye[:, 0] < right_eye[:, 0]).all() and (mouth_left[:, 0] < mouth_right[:, 0]).all()
    assert (np.minimum(mouth_left[:, 1], mouth_right[:, 1]) > np.maximum(left_eye[:, 1], right_eye[:, 1])).all()
    assert ((nose[:, 1] > np.minimum(left_eye[:, 1], right_eye[:, 1]))
            & (nose[:, 1] < np.maximum(mouth_left[:, 1], mouth_right[:, 1]))).all()
    frontal = (right_eye[:, 0] - left_eye[:, 0]) > 0.25 * (b[:, 2] - b[:, 0])
    assert frontal.sum() >= len(found) // 2
    assert ((nose[frontal, 0] > left_eye[frontal, 0]) & (nose[frontal, 0] < right_eye[frontal, 0])).all()


def test_mirrored_photo_gives_mirrored_faces(float_detector: RetinaFace, data: Path) -> None:
    image = load_image(subset(data / "group_photos", 1)[0])
    width = image.shape[1]
    found = float_detector.detect(image, score_threshold=0.5, nms_iou=0.4)
    mirrored = float_detector.detect(np.ascontiguousarray(image[:, ::-1]), score_threshold=0.5, nms_iou=0.4)
    flipped = np.column_stack([width - mirrored.boxes[:, 2], mirrored.boxes[:, 1],
                               width - mirrored.boxes[:, 0], mirrored.boxes[:, 3]])
    matched = 0
    for box, marks in zip(found.boxes, found.landmarks):
        distance = np.abs(flipped - box).max(axis=1)
        j = int(distance.argmin())
        if distance[j] < 0.15 * (box[2] - box[0]):
            matched += 1
            # Still image-left first: the mirror's left eye is the original's right eye, mirrored.
            other = mirrored.landmarks[j]
            assert other[0, 0] < other[1, 0]
            assert abs((width - other[0, 0]) - marks[1, 0]) < 0.15 * (box[2] - box[0])
    assert matched >= 0.8 * len(found)
