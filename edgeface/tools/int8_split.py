"""Choose an int8 calibration setting on one WIDER event and judge it on the other (issue: tune on Parade, check on
Interview, and the other way round).

`python -m edgeface.tools.int8_split [--size 320|640]` builds RetinaFace's int8 model once per candidate setting
(into `$EDGEFACE_HOME/int8-split/`, reused while its build key holds), measures each event's AP with it and with
the float model, picks the setting with the smallest summed AP loss on one event and prints its loss on the
other, in both directions. Candidates: the shipped method (activation quantile 0.99999, LeakyReLU inputs' low ends
chosen for the error the LeakyReLU passes on, learned weight rounding: convert.tflite, convert.adaround), each of
the last two alone, neither (the model shipped before them, face-logit floor included), and quantile 0.9999
with neither.
Every candidate keeps the shipped face-logit output floor (convert.retinaface.SCORE_FLOOR).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from convert import build
from convert.target import Target
from edgeface.analyzer import FaceAnalyzer
from edgeface.images import list_images
from edgeface.manifest import edgeface_home, models_dir
from edgeface.tools.checkquant import wider_predictions
from edgeface.tools.datasets import data_dir
from edgeface.tools.evaluation.widerface import SETTINGS, evaluate, image_key, load_ground_truth

EVENTS = ("0--Parade", "13--Interview")


def candidates(target: Target) -> dict[str, Target]:
    """The settings compared, by name."""
    return {"LeakyReLU ranges + learned rounding (shipped)": target,
            "learned rounding only": dataclasses.replace(target, leaky_ranges=False),
            "LeakyReLU ranges only": dataclasses.replace(target, learned_rounding=False),
            "neither (nearest rounding, quantile ranges)": dataclasses.replace(target, leaky_ranges=False,
                                                                              learned_rounding=False),
            "quantile 0.9999, neither": dataclasses.replace(target, clip_quantile=0.9999, leaky_ranges=False,
                                                            learned_rounding=False)}


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
    for name, variant in candidates(target).items():
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
