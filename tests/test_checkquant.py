"""check-quant: its glue on hand-computed cases, the gates, the SNR, and one `check-quant --quick` run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import subset

from edgeface.analyzer import Face, FaceAnalyzer
from edgeface.cli import main
from edgeface.errors import EdgefaceError
from edgeface.images import letterbox, load_image
from edgeface.manifest import Manifest
from edgeface.tools.checkquant import (
    OutputErrors,
    OutputSwaps,
    largest,
    nearest_centre,
    snr_db,
    stage_models,
    wider_event,
    wider_predictions,
)
from edgeface.tools.evaluation.gates import GATES_FILE, Gate, check, load_limits, worst_stage
from edgeface.tools.evaluation.verification import protocol_folds
from edgeface.tools.evaluation.widerface import SETTINGS, evaluate, image_key, load_ground_truth


def _face(x1: float, y1: float, x2: float, y2: float, score: float = 0.9) -> Face:
    return Face(box=(x1, y1, x2, y2), score=score, landmarks=[(x1, y1)] * 5)


def test_pickers() -> None:
    faces = [_face(0, 0, 40, 40), _face(45, 45, 55, 55), _face(60, 0, 100, 60)]
    assert nearest_centre(faces, (100, 100, 3)) is faces[1]  # box centre (50, 50): the image centre
    assert largest(faces, (100, 100, 3)) is faces[2]


def test_wider_predictions_perfect_and_shuffled(data: Path) -> None:
    """Ground-truth boxes as Faces score AP 1 through the check-quant path; another image's faces score low."""
    pytest.importorskip("scipy")
    root = data / "wider_val_dev"
    truth = load_ground_truth(root / "ground_truth")
    names = sorted(image_key(p.relative_to(root / "images").as_posix()) for p in (root / "images").rglob("*.jpg"))
    rng = np.random.default_rng(0)
    perfect = {name: [_face(x, y, x + w, y + h, float(s)) for (x, y, w, h), s in
                      zip(truth.images[name].boxes, rng.random(len(truth.images[name].boxes)))] for name in names}
    rows = wider_predictions(perfect)
    assert rows[names[0]].shape == (len(truth.images[names[0]].boxes), 5)
    result = evaluate(rows, truth)
    assert all(result[s].ap >= 0.99 for s in SETTINGS), {s: result[s].ap for s in SETTINGS}
    shuffled = evaluate(wider_predictions(dict(zip(names, [perfect[n] for n in names[1:] + names[:1]]))), truth)
    assert all(shuffled[s].ap < 0.1 for s in SETTINGS), {s: shuffled[s].ap for s in SETTINGS}


def test_protocol_folds(tmp_path: Path) -> None:
    single = tmp_path / "single.txt"
    single.write_text("1\t300\n")
    folds, how = protocol_folds(single, np.array([0, 6, 12, 18, 594, 599]))
    np.testing.assert_array_equal(folds, [0, 1, 2, 3, 4, 5])  # position among the chosen pairs, % 10
    assert "10 interleaved sub-folds" in how
    official = tmp_path / "official.txt"
    official.write_text("10\t300\n")
    folds, how = protocol_folds(official, np.array([0, 599, 600, 5999]))
    np.testing.assert_array_equal(folds, [0, 0, 1, 9])
    assert how == "the 10 official folds"


def test_snr_by_hand() -> None:
    reference = [np.ones((2, 3)), np.ones(4)]
    assert snr_db(reference, [r + 0.1 for r in reference]) == pytest.approx(20.0)  # power 1 vs 0.01
    assert snr_db(reference, [r - 0.01 for r in reference]) == pytest.approx(40.0)
    assert snr_db(reference, reference) == math.inf
    assert stage_models("mtcnn-640") == ("pnet", "rnet", "onet")
    assert stage_models("retinaface-320") == ("retinaface-320",)


def test_output_errors_by_hand() -> None:
    """Two priors in one cell: only the one either precision scores >= 0.02 counts, in every output kind."""
    floating = {"conf_s8": np.array([[[[2.0, -9.0]]]]), "loc_s8": np.zeros((1, 1, 1, 8)),
                "landmarks_s8": np.zeros((1, 1, 1, 20))}
    int8 = {"conf_s8": np.array([[[[2.5, -4.0]]]]), "loc_s8": np.full((1, 1, 1, 8), 0.2),
            "landmarks_s8": np.concatenate([np.full(10, 0.3), np.full(10, 5.0)]).reshape(1, 1, 1, 20)}
    errors = OutputErrors(wider_event)
    errors.add("retinaface-320", "0--Parade/a.jpg", floating, int8)
    errors.add("retinaface-320", "13--Interview/b.jpg", floating, {**int8, "conf_s8": np.array([[[[1.0, -3.0]]]])})
    table = errors.rms("retinaface-320")
    assert set(table) == {"all", "0--Parade", "13--Interview"} and errors.rms("retinaface-640") == {}
    assert table["0--Parade"] == pytest.approx({"conf": 0.5, "loc": 0.2, "landmarks": 0.3})
    # logit -3 is above logit(0.02) = -3.89: the second prior counts too (error 6, and 5.0 on its landmarks)
    assert table["13--Interview"]["conf"] == pytest.approx(math.sqrt((1.0 + 36.0) / 2))
    assert table["13--Interview"]["landmarks"] == pytest.approx(math.sqrt((10 * 0.09 + 10 * 25.0) / 20))
    assert table["all"]["conf"] == pytest.approx(math.sqrt((0.25 + 1.0 + 36.0) / 3))


def _report(drop: float = 0.0, nme_increase: float = 0.0, accuracy: float = 0.995, cosine: float = 0.99) -> dict:
    return {
        "detection": [{"model": "retinaface-640", "detector": "retinaface",
                       "drop": {"easy": drop, "medium": 0.0, "hard": 0.0}},
                      {"model": "mtcnn-640", "detector": "mtcnn", "drop": {s: 0.0 for s in SETTINGS}}],
        "landmarks": [{"model": "retinaface-640", "increase": nme_increase}],
        "recognition": {"lfw": {"int8": {"accuracy": accuracy}, "accuracy_drop": 0.996 - accuracy},
                        "cosine": {"mean": cosine}},
    }


LIMITS = {"detection": {"retinaface": {"easy": 0.01, "medium": 0.01, "hard": 0.02},
                        "mtcnn": {"easy": 0.02, "medium": 0.02, "hard": 0.02}},
          "landmarks": {"nme_increase": 0.02},
          "recognition": {"lfw_accuracy_min": 0.99, "lfw_accuracy_drop": 0.003, "cosine_mean_min": 0.98}}


def test_gates_pass_and_fail() -> None:
    gates = {g.name: g for g in check(_report(), LIMITS)}
    assert len(gates) == 6 + 1 + 3 and all(g.passed for g in gates.values())
    failing = {g.name: g for g in check(_report(drop=0.011, nme_increase=0.02, accuracy=0.985, cosine=0.97), LIMITS)}
    assert {name for name, g in failing.items() if not g.passed} == {
        "retinaface-640 AP drop (easy)", "LFW accuracy (int8)", "LFW accuracy drop", "mean cos(int8, float)"}
    assert failing["retinaface-640 NME increase"].passed  # at the limit passes
    assert failing["retinaface-640 AP drop (easy)"].usage == pytest.approx(1.1)
    assert failing["mean cos(int8, float)"].usage == pytest.approx(1.5)  # 0.03 of 1 - 0.98 = 0.02 allowed
    assert failing["LFW accuracy drop"].usage == pytest.approx(0.011 / 0.003)
    # the worst quantisation gate; the absolute LFW bar has no stage and never counts
    assert failing["LFW accuracy (int8)"].stage is None
    worst = worst_stage(list(failing.values()))
    assert (worst.name, worst.stage) == ("LFW accuracy drop", "mobilefacenet")
    assert worst_stage(check(_report(drop=0.005), LIMITS)).stage == "retinaface-640"
    assert not Gate("no data", "x", float("nan"), 1.0, True).passed
    assert Gate("one LFW pair of 100", "x", 1.0 - 0.99, 0.01, True).passed  # 0.010000000000000009
    assert Gate("at the bar", None, 1.13 - 0.15, 0.98, False).passed  # 0.9799999999999999


def test_gates_file() -> None:
    limits, quick = load_limits(), load_limits(quick=True)
    assert GATES_FILE.name == "gates.toml" and "quick" not in limits
    assert len(check(_report(), limits)) == 10
    assert limits["detection"]["retinaface"] == {"easy": 0.01, "medium": 0.01, "hard": 0.02}
    # --quick's 100 LFW pairs resolve 0.01: one pair may flip there; every other limit is the full run's
    assert (limits["recognition"]["lfw_accuracy_drop"], quick["recognition"]["lfw_accuracy_drop"]) == (0.003, 0.01)
    quick["recognition"]["lfw_accuracy_drop"] = limits["recognition"]["lfw_accuracy_drop"]
    assert quick == limits
    with pytest.raises(EdgefaceError, match="missing limit landmarks.nme_increase"):
        check(_report(), {**LIMITS, "landmarks": {}})
    with pytest.raises(EdgefaceError, match="must be a number"):
        check(_report(), {**LIMITS, "landmarks": {"nme_increase": "small"}})


def test_missing_data_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-quant", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"edgeface: error: {tmp_path / 'absent'}: labelled data folder not found "
                   "(pass --data DIR or set EDGEFACE_DATA)"]
    (tmp_path / "partial").mkdir()
    assert main(["check-quant", "--data", str(tmp_path / "partial")]) == 2
    assert "missing wider_val_dev, dlib_landmarks, lfw_fold1, celeba_dev" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_check_quant_quick(manifest: Manifest, data: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    out = tmp_path / "report"
    code = main(["check-quant", "--quick", "--json", "--data", str(data), "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((out / "report.json").read_text())
    assert printed == report
    assert code == (0 if report["passed"] else 1)
    assert {"meta", "detection", "landmarks", "recognition", "snr", "gates", "passed"} <= set(report)
    assert report["meta"]["quick"] is True
    assert {row["model"] for row in report["detection"]} == {"retinaface-320", "retinaface-640", "mtcnn-640"}
    for row in report["detection"]:
        assert set(row["ap"]["int8"]) == set(SETTINGS) and 0.85 <= row["ap"]["float"]["easy"] <= 1  # quick: 0.97-1.0
        for part in (row, *row["events"].values()):  # every drop with its bootstrap interval
            assert set(part["drop_interval"]) == set(SETTINGS)
            assert all(-1 < low <= high < 1 for low, high in part["drop_interval"].values())
        errors = row["output_rms_error"]
        if row["detector"] == "retinaface":  # 'all' and each event; measured 0.1-0.4 on the full set
            assert set(errors) == {"all", *row["events"]}
            assert set(row["drop_with_float"]) == {"conf", "loc", "landmarks", "s8", "s16", "s32"}
            assert all(-1 < drop < 1 for drops in row["drop_with_float"].values() for drop in drops.values())
            assert all(set(kinds) == {"conf", "loc", "landmarks"} and all(0 < v < 1 for v in kinds.values())
                       for kinds in errors.values())
        else:  # MTCNN's stages see different proposals at each precision: nothing to compare value by value
            assert errors == {}
    assert {row["detector"] for row in report["landmarks"]} == {"retinaface", "mtcnn"}
    recognition = report["recognition"]
    assert recognition["lfw"]["pairs"] == 100 and "interleaved" in recognition["lfw"]["folds"]
    assert set(recognition["lfw"]["int8"]["tar_at_far"]) == {"0.01", "0.001"}
    assert 0.95 <= recognition["cosine"]["mean"] <= 1  # measured 0.990 on the full set
    identification = recognition["identification"]
    assert 200 <= identification["photos"] < 260 and identification["enrolled_people"] > 0
    assert "recommended_threshold" in identification["int8"]
    assert report["snr"]["models"] and all(report["snr"]["models"].values())
    for key in report["snr"]["models"]:  # every tensor in the JSON, the summary's rows among them
        names = [row["name"] for row in report["snr"]["tensors"][key]]
        assert names and set(report["snr"]["tensors_shown"][key]) <= set(names)
    assert len(report["gates"]) == 3 * 3 + 2 + 3
    assert report["passed"] == all(g["passed"] for g in report["gates"])
    for name in ("report.md", "pr_easy.png", "pr_medium.png", "pr_hard.png", "nme_cdf.png", "lfw_roc.png",
                 "cosine_hist.png"):
        assert (out / name).stat().st_size > 0, name
    text = (out / "report.md").read_text()
    assert "## Gates" in text and "10 interleaved sub-folds" in text and "![ROC](lfw_roc.png)" in text
    assert "| retinaface-640 | all |" in text  # the output error table
    assert "| retinaface-320 | 0--Parade | " in text and "] |" in text  # drops with intervals
    assert "| retinaface-640 | s8 |" in text  # the drop left with float stride-8 outputs
    assert "| grid SNR dB | drop dB |" in text  # where the error enters, tensor by tensor


def test_pairing_takes_the_best_overlaps_first_and_no_face_twice() -> None:
    from edgeface.tools.evaluation.agreement import pair_faces

    def face(x: float) -> Face:
        return Face(box=(x, 0.0, x + 10.0, 10.0), score=0.9, landmarks=[(x, 0.0)] * 5)

    first, second = [face(0), face(4), face(50)], [face(3), face(1), face(200)]
    pairs = pair_faces(first, second)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 1), (1, 0)]  # 0-1 and 1-0 overlap 0.82, 0-0 only 0.54
    assert all(iou >= 0.5 for _, _, iou in pairs) and pair_faces([], second) == []


def test_the_int8_threshold_keeps_float_accept_rate() -> None:
    from edgeface.tools.evaluation.agreement import same_accept_threshold

    pairs = [(0.9, 0.85), (0.6, 0.52), (0.55, 0.49), (0.3, 0.35), (0.1, 0.12)]
    threshold = same_accept_threshold(pairs, 0.5)  # float accepts 3 of 5
    assert threshold == 0.49 and sum(q >= threshold for _, q in pairs) == 3
    assert same_accept_threshold(pairs, 0.95) is None


def test_check_quant_on_unlabelled_photos_with_a_gallery(data: Path, manifest: Manifest, tmp_path: Path) -> None:
    from edgeface.analyzer import FaceAnalyzer
    from edgeface.tools.checkquant import run_photos

    photos = tmp_path / "photos"
    photos.mkdir()
    for path in subset(data / "group_photos", 3):
        (photos / path.name).symlink_to(path)
    (photos / "broken.jpg").write_bytes(b"not a photo")
    analyzer = FaceAnalyzer("x86")
    with analyzer.open_gallery(tmp_path / "home.db") as gallery:
        for index, path in enumerate(sorted(photos.glob("*.jp*g"))[:2]):
            if path.name != "broken.jpg" and (faces := analyzer.embed(path)):
                gallery.add(f"person{index}", faces[0].embedding[None])
    assert run_photos(photos, tmp_path / "home.db", "x86", tmp_path / "out", True) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["photos"] == 3 and len(report["unreadable"]) == 1 and "broken.jpg" in report["unreadable"][0]
    matched = report["matched_faces"]
    assert matched > 0 and report["found_by_one_only"] == {p: report["faces"][p] - matched for p in ("float", "int8")}
    assert 0.9 < report["cosine_int8_float"]["median"] <= 1.0 and report["box_iou"]["min"] >= 0.5
    assert report["gallery"]["faces"] == matched and 0 <= report["gallery"]["identity_differs"] <= 1
    assert report["gallery"]["named_by_int8"] >= 1  # the enrolled faces themselves
    assert (tmp_path / "out" / "cosine_hist.png").is_file() and "Against the gallery" in (
        tmp_path / "out" / "report.md").read_text()


def test_output_swaps_take_each_group_from_float(manifest: Manifest, data: Path) -> None:
    """With every face logit pushed down, the faces come back only where the face logits are taken from float."""
    analyzer = FaceAnalyzer("x86", input_size=640, precision="float", score_threshold=0.02)
    pixels = load_image(subset(data / "wider_val_dev" / "images", 1)[0])
    detector, settings = analyzer.detector, analyzer.profile.detector
    boxed, mapping = letterbox(pixels, detector.width, detector.height, detector.fill)
    reference = detector.model.run(boxed[None])
    test = {role: value - 20.0 if role.startswith("conf") else value for role, value in reference.items()}
    swaps = OutputSwaps()
    swaps.add("retinaface-640", "photo", analyzer, pixels, reference, test)
    faces = detector.postprocess(reference, mapping, 0.02, settings.nms_iou, settings.max_faces)
    assert len(faces.scores) > 0
    np.testing.assert_allclose(swaps.found["retinaface-640", "conf"]["photo"],
                               np.column_stack([faces.boxes, faces.scores]))
    assert all(len(swaps.found["retinaface-640", group]["photo"]) == 0 for group in ("loc", "landmarks"))
    strides = [len(swaps.found["retinaface-640", f"s{step}"]["photo"]) for step in (8, 16, 32)]
    assert any(strides) and all(count <= len(faces.scores) for count in strides)  # each stride gives back its own
