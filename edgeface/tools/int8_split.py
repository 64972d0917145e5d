"""Choose an int8 calibration setting on one WIDER event and judge it on the other (issue: tune on Parade, check on
Interview, and the other way round).

`python -m edgeface.tools.int8_split [--size 320|640]` builds RetinaFace's int8 model once per candidate setting
(into `$EDGEFACE_HOME/int8-split/`, reused while its build key holds), measures each event's AP with it and with
the float model, picks the setting with the smallest summed AP loss on one event and prints its loss on the
other, in both directions. Candidates: the activation quantile (0.99999, as shipped; 0.9999; plain min/max), the shipped
quantile with every calibration photo also seen at 0.6x scale (more small faces), and the shipped quantile with
each layer's bias corrected for its mean int8 error on the calibration photos (convert.bias_correction).
Every candidate keeps the shipped face-logit output floor (convert.retinaface.SCORE_FLOOR).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from convert import build, calibration
from edgeface.analyzer import FaceAnalyzer
from edgeface.images import letterbox, list_images, resize
from edgeface.manifest import edgeface_home, models_dir
from edgeface.tools.checkquant import wider_predictions
from edgeface.tools.datasets import data_dir
from edgeface.tools.evaluation.widerface import SETTINGS, evaluate, image_key, load_ground_truth

EVENTS = ("0--Parade", "13--Interview")
SMALLER = 0.6


def _with_smaller(size: int) -> Callable[[calibration.CalibrationSet], Iterator[np.ndarray]]:
    """The detector's calibration view, each photo also at SMALLER scale."""
    fill = tuple(int(v) for v in build.retinaface.BGR_MEAN[::-1])

    def samples(calib: calibration.CalibrationSet) -> Iterator[np.ndarray]:
        for photo in calib.photos():
            height, width = photo.shape[:2]
            small = np.asarray(resize(photo, max(1, int(width * SMALLER)), max(1, int(height * SMALLER))))
            for image in (photo, small):
                yield letterbox(image, size, size, fill)[0][None].astype(np.float32)
    return samples


def candidates(target: build.Target, size: int) -> dict[str, build.Target]:
    """The settings compared, by name."""
    return {"quantile 0.99999 (shipped)": target,
            "quantile 0.9999": dataclasses.replace(target, clip_quantile=0.9999),
            "min/max": dataclasses.replace(target, clip_quantile=None),
            "quantile 0.99999, photos also at 0.6x": dataclasses.replace(target, samples=_with_smaller(size)),
            "quantile 0.99999, bias corrected": dataclasses.replace(target, bias_correct=True)}


def event_ap(models: Path, precision: str, size: int, root: Path) -> dict[str, list[float]]:
    """AP (easy, medium, hard) per event of wider_val_dev."""
    truth = load_ground_truth(root / "ground_truth")
    analyzer = FaceAnalyzer("x86", input_size=size, score_threshold=0.02, precision=precision, models=models)
    photos = {image_key(p.relative_to(root / "images").as_posix()): p for p in list_images(root / "images")}
    predictions = wider_predictions({key: analyzer.detect(path) for key, path in photos.items()})
    result = {}
    for event in EVENTS:
        part = evaluate({k: v for k, v in predictions.items() if k.startswith(f"{event}/")}, truth)
        result[event] = [part[setting].ap for setting in SETTINGS]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeface.tools.int8_split", description=__doc__)
    parser.add_argument("--size", type=int, choices=build.RETINAFACE_SIZES, default=320)
    args = parser.parse_args(argv)
    data = data_dir()
    if data is None or not (data / "wider_val_dev").is_dir():
        parser.error("wider_val_dev not found (../shared/data or $EDGEFACE_DATA)")
    root = data / "wider_val_dev"
    target = next(t for t in build.TARGETS if t.key == f"retinaface-{args.size}")
    floating = event_ap(models_dir(), "float", args.size, root)
    losses: dict[str, dict[str, list[float]]] = {}
    for name, variant in candidates(target, args.size).items():
        out = edgeface_home() / "int8-split" / f"{args.size}-{name.replace(' ', '_').replace('/', '')}"
        builder = build.Builder(out, edgeface_home())
        if not builder.up_to_date(variant):  # the build key: a candidate built by older conversion code is redone
            builder.build(variant, lambda text: print(text, file=sys.stderr, flush=True))
            builder.write_manifest()
        ap = event_ap(out, "int8", args.size, root)
        losses[name] = {e: [100 * (f - q) for f, q in zip(floating[e], ap[e])] for e in EVENTS}
        print(f"{name}: AP points lost, " + "; ".join(f"{e} {' / '.join(f'{v:.2f}' for v in losses[name][e])}"
                                                     for e in EVENTS), flush=True)
    for tune, judge in (EVENTS, EVENTS[::-1]):
        chosen = min(losses, key=lambda name: sum(losses[name][tune]))
        print(f"chosen on {tune}: {chosen}; on {judge} it loses "
              f"{' / '.join(f'{v:.2f}' for v in losses[chosen][judge])} (easy / medium / hard)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
