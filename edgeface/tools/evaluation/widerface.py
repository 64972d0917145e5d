"""WIDER FACE easy/medium/hard evaluation, following the official protocol (Matlab kit / its Python port).

Protocol, per setting (easy, medium, hard):
  * scores are min-max normalised over *all* given predictions, with the official seeds
    ``max = 0`` and ``min = 1`` (so scores already in [0, 1] that reach 0 and 1 stay unchanged);
  * per image, predictions are taken in descending score order (stable; the Matlab reader sorts) and
    each one is matched to the ground-truth face of highest IoU (first on ties); if that IoU >= 0.5
    and the face is not in the setting's keep list, the prediction is ignored (neither TP nor FP),
    otherwise a kept face is recalled the first time it is hit (later hits are false positives);
  * images without any ground-truth box or without predictions add no proposals, but their kept
    faces still count in the recall denominator (official quirk, kept);
  * 1000 score thresholds ``1 - (t + 1) / 1000``; the dataset curve sums (proposals, recalled) over
    images; precision = recalled / proposals (NaN when there are none), recall = recalled / faces;
  * AP is the all-point interpolated VOC AP (official ``voc_ap``).

Box convention: predictions are [x1, y1, x2, y2, score] with x2 = x1 + w (the official files store
x, y, w, h and the kit adds w to x); ground truth x, y, w, h becomes x, y, x + w, y + h. The IoU then
uses the official inclusive-pixel (+1) convention: area = (x2 - x1 + 1) * (y2 - y1 + 1) and
intersection width = min(x2) - max(x1) + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SETTINGS: tuple[str, ...] = ("easy", "medium", "hard")
THRESH_NUM = 1000
_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ImageGT:
    """Ground truth of one image: boxes (N x 4, x, y, w, h) and per setting the 1-based kept faces."""

    boxes: np.ndarray
    keep: dict[str, np.ndarray]


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth keyed by 'event/name' (no extension)."""

    images: dict[str, ImageGT]


@dataclass(frozen=True)
class SubsetResult:
    """AP and the PR curve (one point per threshold, highest threshold first) of one setting."""

    ap: float
    precision: np.ndarray
    recall: np.ndarray


def image_key(path: str) -> str:
    """Normalise '0--Parade/0_Parade_x.jpg' (or without extension, or with backslashes) to 'event/name'."""
    key = path.replace("\\", "/").strip().removeprefix("./")
    for ext in _EXTENSIONS:
        if key.lower().endswith(ext):
            return key[: -len(ext)]
    return key


def load_ground_truth(folder: Path) -> GroundTruth:
    """Read wider_face_val.mat and wider_{easy,medium,hard}_val.mat from folder (or folder/ground_truth)."""
    from scipy.io import loadmat  # workstation-only dependency

    folder = Path(folder)
    if not (folder / "wider_face_val.mat").is_file():
        folder = folder / "ground_truth"
    face = loadmat(str(folder / "wider_face_val.mat"))
    lists = {s: loadmat(str(folder / f"wider_{s}_val.mat"))["gt_list"] for s in SETTINGS}
    images: dict[str, ImageGT] = {}
    for i, event_cell in enumerate(face["event_list"][:, 0]):
        event = str(event_cell[0])
        for j, file_cell in enumerate(face["file_list"][i, 0][:, 0]):
            boxes = np.asarray(face["face_bbx_list"][i, 0][j, 0], dtype=np.float64).reshape(-1, 4)
            keep = {s: np.asarray(lists[s][i, 0][j, 0], dtype=np.int64).reshape(-1) for s in SETTINGS}
            images[f"{event}/{file_cell[0]}"] = ImageGT(boxes, keep)
    return GroundTruth(images)


def parse_bbx_gt(path: Path) -> dict[str, np.ndarray]:
    """Parse wider_face_*_bbx_gt.txt into {'event/name': N x 4 x, y, w, h} (zero-face images give 0 x 4)."""
    lines = Path(path).read_text().split("\n")
    out: dict[str, np.ndarray] = {}
    i = 0
    while i < len(lines) and lines[i].strip():
        name, count = image_key(lines[i]), int(lines[i + 1])
        rows = lines[i + 2: i + 2 + max(count, 1)]  # a zero-face image still has one all-zero row
        boxes = np.array([r.split()[:4] for r in rows], dtype=np.float64).reshape(-1, 4)
        out[name] = boxes[:count]
        i += 2 + max(count, 1)
    return out


def iou_plus1(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Pairwise IoU (N x M) of x1, y1, x2, y2 boxes with the official inclusive (+1 pixel) areas."""
    iw = np.minimum(pred[:, None, 2], gt[None, :, 2]) - np.maximum(pred[:, None, 0], gt[None, :, 0]) + 1
    ih = np.minimum(pred[:, None, 3], gt[None, :, 3]) - np.maximum(pred[:, None, 1], gt[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_p = (pred[:, 2] - pred[:, 0] + 1) * (pred[:, 3] - pred[:, 1] + 1)
    area_g = (gt[:, 2] - gt[:, 0] + 1) * (gt[:, 3] - gt[:, 1] + 1)
    union = area_p[:, None] + area_g[None, :] - inter
    return np.where(inter > 0, inter / np.where(union > 0, union, 1), 0.0)


def _image_pr(pred: np.ndarray, gt_xywh: np.ndarray, keep: np.ndarray, thresholds: np.ndarray,
              iou_threshold: float) -> np.ndarray:
    """(proposals, recalled faces) per threshold for one image; pred sorted by descending score."""
    gt = np.concatenate([gt_xywh[:, :2], gt_xywh[:, :2] + gt_xywh[:, 2:4]], axis=1)
    kept = np.zeros(len(gt), dtype=bool)
    if keep.size:
        kept[keep - 1] = True
    overlaps = iou_plus1(pred[:, :4], gt)
    best = overlaps.argmax(axis=1)
    matched = overlaps[np.arange(len(pred)), best] >= iou_threshold
    proposal = ~(matched & ~kept[best])          # a hit on an ignored face is not a proposal
    hits = np.flatnonzero(matched & kept[best])
    first_hit = np.zeros(len(pred), dtype=bool)  # first prediction recalling each kept face
    first_hit[hits[np.unique(best[hits], return_index=True)[1]]] = True
    cum = np.stack([np.cumsum(proposal), np.cumsum(first_hit)], axis=1).astype(np.float64)
    # number of predictions with score >= threshold (scores descending, so negatives ascending)
    count = np.searchsorted(-pred[:, 4], -thresholds, side="right")
    return np.where((count > 0)[:, None], cum[np.maximum(count - 1, 0)], 0.0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP (the official voc_ap, NaN propagation included)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _normalise(predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys normalised, arrays N x 5 sorted by descending score, scores min-max normalised (official seeds)."""
    preds = {image_key(k): np.asarray(v, dtype=np.float64).reshape(-1, 5) for k, v in predictions.items()}
    scores = np.concatenate([p[:, 4] for p in preds.values()] + [np.empty(0)])
    hi = max(0.0, float(scores.max())) if scores.size else 0.0
    lo = min(1.0, float(scores.min())) if scores.size else 1.0
    out = {}
    for key, p in preds.items():
        p = p[np.argsort(-p[:, 4], kind="stable")].copy()
        # the official kit divides by zero when hi == lo; here all scores then become 1
        p[:, 4] = (p[:, 4] - lo) / (hi - lo) if hi > lo else 1.0
        out[key] = p
    return out


def _curves(preds: dict[str, np.ndarray], gt: GroundTruth, setting: str,
            iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per image of `preds` (normalised): (proposals, recalled faces) per threshold (images x THRESH_NUM x 2),
    and its kept faces."""
    thresholds = 1 - (np.arange(THRESH_NUM) + 1) / THRESH_NUM
    curves, faces = np.zeros((len(preds), THRESH_NUM, 2)), np.zeros(len(preds))
    for i, (key, pred) in enumerate(preds.items()):
        image = gt.images[key]
        faces[i] = len(image.keep[setting])
        if len(image.boxes) and len(pred):
            curves[i] = _image_pr(pred, image.boxes, image.keep[setting], thresholds, iou_threshold)
    return curves, faces


def _result(curve: np.ndarray, faces: float) -> SubsetResult:
    """AP and PR curve from summed (proposals, recalled) counts per threshold and the faces that count."""
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = curve[:, 1] / curve[:, 0]
        recall = curve[:, 1] / faces
    return SubsetResult(voc_ap(recall, precision), precision, recall)


def _checked(predictions: dict[str, np.ndarray], gt: GroundTruth) -> dict[str, np.ndarray]:
    """`_normalise`d predictions, every image known to the ground truth (a KeyError names those that are not)."""
    preds = _normalise(predictions)
    missing = [k for k in preds if k not in gt.images]
    if missing:
        raise KeyError(f"predictions for images not in the ground truth: {missing[:3]}")
    return preds


def evaluate(predictions: dict[str, np.ndarray], gt: GroundTruth, iou_threshold: float = 0.5,
             settings: tuple[str, ...] = SETTINGS) -> dict[str, SubsetResult]:
    """AP and PR curve per setting over the images present in predictions ([x1, y1, x2, y2, score] rows)."""
    preds = _checked(predictions, gt)
    results: dict[str, SubsetResult] = {}
    for setting in settings:
        curves, faces = _curves(preds, gt, setting, iou_threshold)
        results[setting] = _result(curves.sum(axis=0), faces.sum())
    return results


def drop_interval(reference: dict[str, np.ndarray], test: dict[str, np.ndarray], gt: GroundTruth,
                  resamples: int = 1000, level: float = 0.9, seed: int = 0,
                  iou_threshold: float = 0.5) -> dict[str, tuple[float, float]]:
    """Per setting, the `level` interval of AP(reference) - AP(test) over images resampled with replacement
    (a paired bootstrap: both detectors' predictions for the same draw of images). How far the loss measured on
    these images can move on others like them. Both must cover the same images."""
    if set(reference) != set(test):
        raise ValueError("the two sets of predictions cover different images")
    keys = sorted(reference)
    pair = [_checked({key: side[key] for key in keys}, gt) for side in (reference, test)]
    draws = np.random.default_rng(seed).multinomial(len(keys), np.full(len(keys), 1 / len(keys)), size=resamples)
    intervals = {}
    for setting in SETTINGS:
        (first, faces), (second, _) = (_curves(preds, gt, setting, iou_threshold) for preds in pair)
        sums = [np.tensordot(draws, curves, axes=1) for curves in (first, second)]
        face_sums = draws @ faces
        drops = [_result(sums[0][r], face_sums[r]).ap - _result(sums[1][r], face_sums[r]).ap
                 for r in range(resamples)]
        low, high = np.nanquantile(drops, [(1 - level) / 2, (1 + level) / 2])  # NaN: a draw with no such face
        intervals[setting] = (float(low), float(high))
    return intervals
