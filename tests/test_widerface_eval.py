"""WIDER FACE easy/medium/hard evaluation: a hand-computed case and sanity checks on the val subset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeface.tools.evaluation.widerface import (
    SETTINGS,
    GroundTruth,
    ImageGT,
    drop_interval,
    evaluate,
    image_key,
    iou_plus1,
    load_ground_truth,
    parse_bbx_gt,
    voc_ap,
)


@pytest.fixture(scope="module")
def wider_dir(data: Path) -> Path:
    """The WIDER FACE val subset of the shared data."""
    folder = data / "wider_val_dev"
    if not (folder / "ground_truth" / "wider_face_val.mat").is_file():
        pytest.skip(f"WIDER FACE val subset not found under {data}")
    return folder


@pytest.fixture(scope="module")
def wider(wider_dir: Path) -> tuple[GroundTruth, list[str]]:
    pytest.importorskip("scipy")
    present = sorted(p.relative_to(wider_dir / "images").as_posix() for p in (wider_dir / "images").rglob("*.jpg"))
    return load_ground_truth(wider_dir / "ground_truth"), present


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]], axis=1)


def _perfect(gt: GroundTruth, present: list[str], seed: int = 0, keep_fraction: float = 1.0) -> dict:
    """Ground-truth boxes as detections with random distinct scores (keys keep the .jpg extension)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in present:
        boxes = gt.images[image_key(name)].boxes
        boxes = boxes[rng.random(len(boxes)) < keep_fraction]
        out[name] = np.concatenate([_xyxy(boxes), rng.random((len(boxes), 1))], axis=1)
    return out


def test_hand_computed_case() -> None:
    # Image a: faces g1 [0,0,10,10], g2 [100,100,10,10], g3 [200,200,10,10] (x,y,w,h); g3 is not kept.
    # Image b: face [0,0,20,20], kept. So 3 faces count.
    keep_a, keep_b = np.array([1, 2]), np.array([1])
    gt = GroundTruth({
        "ev/a": ImageGT(np.array([[0, 0, 10, 10], [100, 100, 10, 10], [200, 200, 10, 10]], float),
                        {s: keep_a for s in SETTINGS}),
        "ev/b": ImageGT(np.array([[0, 0, 20, 20]], float), {s: keep_b for s in SETTINGS}),
    })
    # Scores include 1 and 0, so normalisation (seeds max=0, min=1) leaves them as they are; all lie
    # off the 0.001 threshold grid except 0, which only passes the last threshold (exactly 0.0).
    # In score order (proposals, recalled):
    #   1.0    a hits g1          TP          (1, 1)  P=1    R=1/3
    #   0.8555 a hits g3 (ignored) skipped    (1, 1)
    #   0.7555 b, no overlap      FP          (2, 1)  P=1/2
    #   0.6555 a, no overlap      FP          (3, 1)  P=1/3
    #   0.3555 a hits g2          TP          (4, 2)  P=1/2  R=2/3
    #   0.2555 a hits g1 again    FP (dup)    (5, 2)  P=2/5
    #   0.0    b [0,0,20,41]      TP          (6, 3)  P=1/2  R=1
    # The last box has IoU 21*21/(21*42) = 0.5 with the +1 pixel convention (continuous: 400/820 < 0.5).
    # Interpolated precision: 1 on recall (0, 1/3], max(1/2, 2/5, 1/2) = 1/2 on (1/3, 1].
    # AP = 1/3 * 1 + 2/3 * 1/2 = 2/3 (it would be 1/2 without the +1 convention).
    preds = {
        "ev/a.jpg": np.array([[0, 0, 10, 10, 1.0], [200, 200, 210, 210, 0.8555], [500, 500, 510, 510, 0.6555],
                              [100, 100, 110, 110, 0.3555], [0, 0, 10, 10, 0.2555]]),
        "ev/b": np.array([[50, 50, 70, 70, 0.7555], [0, 0, 20, 41, 0.0]]),
    }
    res = evaluate(preds, gt)
    for s in SETTINGS:
        assert res[s].ap == pytest.approx(2 / 3, abs=1e-12)
        assert res[s].precision.shape == res[s].recall.shape == (1000,)
        assert res[s].recall[-1] == pytest.approx(1.0) and res[s].precision[-1] == pytest.approx(0.5)
        assert res[s].precision[0] == 1.0 and res[s].recall[0] == pytest.approx(1 / 3)
    # Scaling all scores keeps the ranking, and min-max normalisation undoes it (0 and 0.5 stay the ends).
    assert evaluate({k: v * [1, 1, 1, 1, 0.5] for k, v in preds.items()}, gt)["hard"].ap == pytest.approx(2 / 3)


def test_iou_and_voc_ap_conventions() -> None:
    assert iou_plus1(np.array([[0.0, 0, 20, 41]]), np.array([[0.0, 0, 20, 20]]))[0, 0] == 0.5
    assert iou_plus1(np.array([[0.0, 0, 5, 5]]), np.array([[6.0, 0, 9, 9]]))[0, 0] == 0.0
    # two recall steps: precision 1 up to 0.5 recall, then 0.5 up to 1.0 -> 0.75
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 0.5])) == pytest.approx(0.75)


def test_ground_truth_matches_text_annotations(wider, wider_dir: Path) -> None:
    gt, present = wider
    assert len(present) == 257
    text = parse_bbx_gt(wider_dir / "wider_face_val_bbx_gt.txt")
    for name in present:
        assert np.array_equal(text[image_key(name)], gt.images[image_key(name)].boxes)


def test_perfect_detector(wider) -> None:
    gt, present = wider
    res = evaluate(_perfect(gt, present), gt)
    for s in SETTINGS:
        # Precision is 1 at every threshold, so AP equals the final recall; it is exactly 1 unless a
        # kept face duplicates an earlier box of its image (argmax then always picks the earlier one).
        assert np.nanmin(res[s].precision) == 1.0
        assert res[s].ap == pytest.approx(res[s].recall[-1])
        assert res[s].ap >= 0.99, (s, res[s].ap)
    # Constant scores (all 1) carry no ranking: the same AP (all detections pass every threshold).
    flat = {k: np.concatenate([v[:, :4], np.ones((len(v), 1))], axis=1) for k, v in _perfect(gt, present).items()}
    assert evaluate(flat, gt)["hard"].ap == pytest.approx(res["hard"].ap)


def test_misplaced_detections_score_low(wider) -> None:
    gt, present = wider
    perfect = _perfect(gt, present)
    rolled = dict(zip(present, [perfect[n] for n in present[1:] + present[:1]]))  # boxes of the next image
    shifted = {k: v + [5000, 5000, 5000, 5000, 0] for k, v in perfect.items()}
    for preds in (rolled, shifted):
        res = evaluate(preds, gt)
        for s in SETTINGS:
            assert res[s].ap < 0.1, (s, res[s].ap)
    assert all(r.ap == 0.0 for r in evaluate(shifted, gt).values())


def test_half_the_faces_gives_half_the_ap(wider) -> None:
    gt, present = wider
    res = evaluate(_perfect(gt, present, seed=1, keep_fraction=0.5), gt)
    for s in SETTINGS:
        assert 0.4 < res[s].ap < 0.6, (s, res[s].ap)
        assert res[s].ap == pytest.approx(res[s].recall[-1])


def test_unknown_image_is_rejected(wider) -> None:
    gt, _ = wider
    with pytest.raises(KeyError):
        evaluate({"0--Parade/not_an_image.jpg": np.zeros((0, 5))}, gt)


def test_drop_interval_is_a_paired_bootstrap_over_images(wider) -> None:
    """The same predictions lose nothing on any draw; dropping a tenth of the detections loses AP on every draw,
    and the loss measured on all images lies inside its interval."""
    gt, present = wider
    perfect = _perfect(gt, present)
    assert all(interval == (0.0, 0.0) for interval in drop_interval(perfect, perfect, gt, resamples=50).values())
    rng = np.random.default_rng(3)
    thinned = {name: boxes[rng.random(len(boxes)) < 0.9] for name, boxes in perfect.items()}
    measured = {s: evaluate(perfect, gt)[s].ap - evaluate(thinned, gt)[s].ap for s in SETTINGS}
    for setting, (low, high) in drop_interval(perfect, thinned, gt, resamples=200).items():
        assert 0.0 < low <= measured[setting] <= high < 0.5, (setting, low, measured[setting], high)
    with pytest.raises(ValueError, match="different images"):
        drop_interval(perfect, {present[0]: perfect[present[0]]}, gt)
