"""Bias correction (convert.bias_correction) judged per WIDER event: RetinaFace int8 as shipped and bias-corrected,
each event's AP loss against float.

`python -m edgeface.tools.bias_split [--size 320|640]` builds RetinaFace's float and int8 models as shipped and with
`bias_correct=True` (into `$EDGEFACE_HOME/bias-split/`, reused when present), measures the AP (easy / medium / hard)
of 0--Parade and 13--Interview of wider_val_dev with each int8 model and with the float one, and prints the AP points
lost. The correction is calibrated on the calibration photos only (wider_train_calib), never on wider_val_dev.
`--tag` names a new folder for the corrected build (e.g. after a change to convert.bias_correction).

Measured 2026-12-02 (AP points lost, easy / medium / hard; Parade; Interview): 320 shipped -0.45/0.14/0.16;
0.86/1.19/1.25, corrected -0.58/1.47/0.41; -0.06/1.04/0.70. 640 shipped 0.21/0.74/1.03; 0.06/0.17/0.73,
corrected 1.14/1.30/1.08; 0.85/0.41/0.27. Not an improvement on both events: no target enables it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from convert import build
from edgeface.datasets import data_dir
from edgeface.manifest import edgeface_home
from edgeface.tools.int8_split import EVENTS, event_ap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeface.tools.bias_split", description=__doc__)
    parser.add_argument("--size", type=int, choices=build.RETINAFACE_SIZES, default=320)
    parser.add_argument("--tag", default="", help="suffix of the bias-corrected build's folder (a new build)")
    args = parser.parse_args(argv)
    data = data_dir()
    if data is None or not (data / "wider_val_dev").is_dir():
        parser.error("wider_val_dev not found (../shared/data or $EDGEFACE_DATA)")
    root = data / "wider_val_dev"
    target = next(t for t in build.TARGETS if t.key == f"retinaface-{args.size}")
    variants = {"shipped": target, f"bias corrected{args.tag}": dataclasses.replace(target, bias_correct=True)}
    folders = {}
    for name, variant in variants.items():
        out = folders[name] = edgeface_home() / "bias-split" / f"{args.size}-{name.replace(' ', '_')}"
        if not (out / f"{target.key}.int8.tflite").is_file():
            start = time.monotonic()
            builder = build.Builder(out, edgeface_home())
            builder.build(variant, lambda text: print(text, file=sys.stderr, flush=True))
            builder.write_manifest()
            print(f"{name}: built in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    floating = event_ap(folders["shipped"], "float", args.size, root)
    print("float AP: " + "; ".join(f"{e} {' / '.join(f'{100 * v:.2f}' for v in floating[e])}" for e in EVENTS))
    for name, out in folders.items():
        ap = event_ap(out, "int8", args.size, root)
        loss = {e: [100 * (f - q) for f, q in zip(floating[e], ap[e])] for e in EVENTS}
        print(f"{args.size} {name}: AP points lost (easy / medium / hard), "
              + "; ".join(f"{e} {' / '.join(f'{v:.2f}' for v in loss[e])}" for e in EVENTS), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
