"""Fit edgeface.liveness's regression on NUAA dev and measure it leave-one-person-out (workstation only).

    python -m edgeface.tools.fit_liveness [--data DIR]

For each precision: the faces are found by the float RetinaFace (largest face per frame) and described by
`Liveness.features`; every person in turn is held out, the standardisation, weights and threshold are fitted on
the others, and the held-out person's frames and 8-frame windows are scored. Prints the per-person table and the
`WEIGHTS` literal fitted on all people, to paste into edgeface/liveness.py. Deterministic: no sampling anywhere.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeface.detection import logit_of, sigmoid
from edgeface.liveness import LivenessWeights

LIVE_REJECT = 0.025
"""The share of the training people's live frames the threshold rejects."""
L2 = 1.0
"""Ridge penalty on the standardised coefficients (not the bias), in units of one frame's log-likelihood."""
WINDOW = 8
"""Frames per simulated door-lock track."""


@dataclass(frozen=True)
class Sample:
    """One labelled frame of the data set."""

    file: str
    subject: str
    live: bool


def frame_order(file: str) -> tuple[object, ...]:
    """Sort key of a file name with its numbers compared as numbers (frame 5 before frame 47)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", file))


def read_samples(folder: Path) -> list[Sample]:
    """The frames of `folder/labels.csv`, ordered by subject, label and frame."""
    with (folder / "labels.csv").open() as handle:
        samples = [Sample(row["file"], row["subject"], row["label"] == "live") for row in csv.DictReader(handle)]
    return sorted(samples, key=lambda s: (s.subject, not s.live, frame_order(Path(s.file).name)))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[np.ndarray, float]:
    """(coef, bias) of the ridge-penalised logistic regression of y (0/1) on x, by Newton's method (IRLS)."""
    design = np.hstack([x, np.ones((len(x), 1))])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    w = np.zeros(design.shape[1])
    for _ in range(100):
        p = sigmoid(design @ w)
        gradient = design.T @ (p - y) + penalty * w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return w[:-1], float(w[-1])


def fit_weights(x: np.ndarray, live: np.ndarray, names: Sequence[str], fitted_on: str) -> LivenessWeights:
    """Standardise `x`, fit the regression, and put the threshold where it rejects LIVE_REJECT of the live rows."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    coef, bias = fit_logistic((x - mean) / std, live.astype(np.float64))
    logits = ((x[live] - mean) / std) @ coef + bias
    threshold = float(sigmoid(np.quantile(logits, LIVE_REJECT)))
    return LivenessWeights(tuple(names), tuple(mean), tuple(std), tuple(coef), bias, threshold, fitted_on)


def held_out_folds(subjects: Sequence[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(person, training mask, held-out mask) for every person: the held-out person is never in training."""
    subjects = np.asarray(subjects)
    for person in sorted(set(subjects.tolist())):
        held = subjects == person
        yield person, ~held, held


def windows(samples: Sequence[Sample], length: int = WINDOW) -> list[np.ndarray]:
    """Index arrays of every run of `length` consecutive frames of one person and label (samples in read order)."""
    runs: dict[tuple[str, bool], list[int]] = {}
    for index, sample in enumerate(samples):
        runs.setdefault((sample.subject, sample.live), []).append(index)
    return [np.array(run[start:start + length]) for run in runs.values() for start in range(len(run) - length + 1)]


def error_rates(logits: np.ndarray, live: np.ndarray, threshold_logit: float) -> tuple[float, float]:
    """(BPCER, APCER): the share of live rows below the threshold and of attack rows at or above it."""
    accepted = logits >= threshold_logit
    return float(np.mean(~accepted[live])), float(np.mean(accepted[~live]))


def roc_auc(scores: np.ndarray, live: np.ndarray) -> float:
    """P(a live row outscores an attack row), ties counted half."""
    a, b = scores[live][:, None], scores[~live][None, :]
    return float(np.mean((a > b) + 0.5 * (a == b)))


@dataclass(frozen=True)
class HeldOut:
    """One held-out person's figures at the threshold fitted on the others (windows: mean logit of WINDOW frames)."""

    person: str
    bpcer: float
    apcer: float
    auc: float
    window_bpcer: float
    window_apcer: float


def leave_one_person_out(x: np.ndarray, samples: Sequence[Sample], names: Sequence[str]) -> list[HeldOut]:
    """Fit on all people but one, score the one; for every person."""
    live = np.array([s.live for s in samples])
    tracks = windows(samples)
    results = []
    for person, train, held in held_out_folds([s.subject for s in samples]):
        weights = fit_weights(x[train], live[train], names, "")
        logits = weights.logits(x)
        cut = logit_of(weights.threshold)
        own = [t for t in tracks if held[t[0]]]
        track_logits = np.array([logits[t].mean() for t in own])
        track_live = np.array([live[t[0]] for t in own])
        results.append(HeldOut(person, *error_rates(logits[held], live[held], cut),
                               roc_auc(logits[held], live[held]), *error_rates(track_logits, track_live, cut)))
    return results


def extract(folder: Path, samples: Sequence[Sample],
            precisions: Sequence[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per precision: (feature names, a row of `Liveness.features` per sample), on the float RetinaFace's largest
    face of each frame."""
    from edgeface.analyzer import FaceAnalyzer
    from edgeface.images import load_image
    from edgeface.liveness import Liveness

    analyzer = FaceAnalyzer("x86", precision="float")
    scorers = {p: Liveness.load(analyzer.manifest, p) for p in precisions}
    rows: dict[str, list[dict[str, float]]] = {p: [] for p in precisions}
    for sample in samples:
        image = load_image(folder / sample.file)
        faces = analyzer.detect(image)
        if not faces:
            raise ValueError(f"{sample.file}: no face found")
        box = max(faces, key=lambda f: f.area).box
        for precision, scorer in scorers.items():
            rows[precision].append(scorer.features(image, box))
    names = {p: list(rows[p][0]) for p in precisions}
    return {p: (names[p], np.array([[row[n] for n in names[p]] for row in rows[p]])) for p in precisions}


def weights_literal(precision: str, weights: LivenessWeights) -> str:
    """One `WEIGHTS` entry as Python source."""
    def items(values: Sequence[object]) -> str:
        text = [f'"{v}"' if isinstance(v, str) else f"{v:.6g}" for v in values]
        return "(" + ", ".join(text) + ("," if len(text) == 1 else "") + ")"

    return (f'    "{precision}": LivenessWeights({items(weights.features)}, {items(weights.mean)}, '
            f"{items(weights.std)},\n        {items(weights.coef)}, {weights.bias:.6g}, {weights.threshold:.6g}, "
            "_FITTED_ON),")


def report(precision: str, held_out: Sequence[HeldOut]) -> str:
    """The per-person table of one precision and its mean over people."""
    lines = [f"{precision}: held-out person | frames BPCER APCER AUC | {WINDOW}-frame windows BPCER APCER"]
    rows = [(h.person, h.bpcer, h.apcer, h.auc, h.window_bpcer, h.window_apcer) for h in held_out]
    rows.append(("mean", *np.mean([row[1:] for row in rows], axis=0)))
    for person, bpcer, apcer, auc, window_bpcer, window_apcer in rows:
        lines.append(f"  {person:<10} | {bpcer:6.1%} {apcer:6.1%} {auc:.3f} | {window_bpcer:6.1%} {window_apcer:6.1%}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print each precision's leave-one-person-out table and the WEIGHTS fitted on everyone."""
    from edgeface.tools.datasets import data_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="the nuaa_dev folder (default: nuaa_dev in ../shared/data or $EDGEFACE_DATA)")
    args = parser.parse_args(argv)
    root = data_dir()
    if args.data is None and root is None:
        parser.error("labelled photos not found: pass --data or set EDGEFACE_DATA")
    folder = args.data or root / "nuaa_dev"
    samples = read_samples(folder)
    live = np.array([s.live for s in samples])
    fitted_on = (f"nuaa_dev, {len({s.subject for s in samples})} subjects, {int(live.sum())} live / "
                 f"{int((~live).sum())} print; measured leave-one-person-out (LOPO)")
    literals = []
    for precision, (names, x) in extract(folder, samples, ("float", "int8")).items():
        print(report(precision, leave_one_person_out(x, samples, names)))
        literals.append(weights_literal(precision, fit_weights(x, live, names, fitted_on)))
    print(f"\n_FITTED_ON = {fitted_on!r}\nWEIGHTS = {{\n" + "\n".join(literals) + "\n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
