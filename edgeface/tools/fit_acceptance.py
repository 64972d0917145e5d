"""Fit the door's impostor model (edgeface.evidence.IMPOSTORS) on CelebA strangers, and check it on other people.

`python -m edgeface.tools.fit_acceptance [--data DIR]`: embeds the largest face of every `celeba_dev` photo with
each precision's pipeline, splits the identities in two halves (even / odd ids), fits a normal to the upper tail of
one half's impostor scores (a photo of one person against another person's 3 enrolment photos, best of 3: each
photo's own offset, then a normal matched at the residuals' 99th and 99.99th percentiles), and on the other half
measures how often strangers pass the threshold `accept_threshold(N)` for N people enrolled, against the target,
and how often enrolled people pass; then the other way round. It prints both directions and the model fitted on
all identities (the one to ship, as edgeface.evidence.IMPOSTORS holds it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import NormalDist

import numpy as np

from edgeface.analyzer import FaceAnalyzer
from edgeface.evidence import ImpostorModel, accept_threshold
from edgeface.tools.datasets import data_dir

ENROLL = 3
TAIL = (0.99, 0.9999)
OFFSETS = 20
GALLERY_SIZES = (5, 10, 20, 35)
TARGETS = (0.01, 0.001)
DRAWS = 20
SEED = 20261201


def embed_celeba(root: Path, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """(unit embeddings of each photo's largest face, identity per row); photos without a face are left out."""
    analyzer = FaceAnalyzer("x86", precision=precision)
    rows = [line.split() for line in (root / "identity.txt").read_text().splitlines() if line.strip()]
    vectors, labels = [], []
    for name, label in rows:
        faces = analyzer.embed(root / "images" / name)
        if faces:
            vectors.append(max(faces, key=lambda f: f.area).embedding)
            labels.append(int(label))
    return np.array(vectors), np.array(labels)


def enrolment(labels: np.ndarray, people: np.ndarray) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Each person's first ENROLL rows, and the rows left over as their probes (people with none left dropped)."""
    enrolled, probes = {}, []
    for person in people:
        rows = np.flatnonzero(labels == person)
        if len(rows) > ENROLL:
            enrolled[int(person)] = rows[:ENROLL]
            probes.extend(rows[ENROLL:])
    return enrolled, np.array(probes, np.int64)


def per_person_scores(vectors: np.ndarray, enrolled: dict[int, np.ndarray], probes: np.ndarray) -> np.ndarray:
    """Probes x people: each probe's best similarity to each person's enrolment photos."""
    return np.stack([(vectors[probes] @ vectors[rows].T).max(axis=1) for rows in enrolled.values()], axis=1)


def fit(vectors: np.ndarray, labels: np.ndarray, people: np.ndarray, name: str) -> ImpostorModel:
    """The impostor model of the scores of every photo against the enrolled `people` who are not in it: each
    photo's mean score is its offset (OFFSETS quantiles kept), and a normal matched to the residuals' TAIL
    percentiles (shifting the offsets by its centre) is the spread."""
    enrolled, _ = enrolment(labels, people)
    owners = np.array(list(enrolled))
    scores = per_person_scores(vectors, enrolled, np.arange(len(labels)))
    offsets, residuals = [], []
    for row, label in zip(scores, labels):
        others = row[owners != label]
        offsets.append(others.mean())
        residuals.append(others - others.mean())
    low, high = np.quantile(np.concatenate(residuals), TAIL)
    z_low, z_high = (NormalDist().inv_cdf(p) for p in TAIL)
    spread = (high - low) / (z_high - z_low)
    centre = low - spread * z_low
    quantiles = np.quantile(np.array(offsets) + centre, (np.arange(OFFSETS) + 0.5) / OFFSETS)
    return ImpostorModel(tuple(round(float(q), 4) for q in quantiles), round(float(spread), 4),
                         f"{name}: {len(labels)} photos x {len(enrolled)} people enrolled with {ENROLL} photos")


def check(vectors: np.ndarray, labels: np.ndarray, people: np.ndarray, model: ImpostorModel,
          floor: float) -> list[dict[str, float]]:
    """For N of `people` enrolled (random draws): strangers (everyone not enrolled, either half) passing t(N), and
    enrolled people's other photos passing t(N) as themselves."""
    rng = np.random.default_rng(SEED)
    rows = []
    for size in GALLERY_SIZES:
        for target in TARGETS:
            passed, tried, genuine, genuine_tried = 0, 0, 0, 0
            threshold = accept_threshold(size, target, model, floor)
            for _ in range(DRAWS):
                chosen = rng.choice(people, size=min(size, len(people)), replace=False)
                enrolled, probes = enrolment(labels, chosen)
                strangers = np.flatnonzero(~np.isin(labels, list(enrolled)))
                best = per_person_scores(vectors, enrolled, strangers).max(axis=1)
                passed, tried = passed + int((best >= threshold).sum()), tried + len(best)
                own = per_person_scores(vectors, enrolled, probes)
                owners = np.array(list(enrolled))
                right = owners[own.argmax(axis=1)] == labels[probes]
                genuine += int((right & (own.max(axis=1) >= threshold)).sum())
                genuine_tried += len(probes)
            rows.append({"enrolled": size, "target": target, "threshold": threshold,
                         "strangers_passed": passed / tried, "enrolled_passed": genuine / genuine_tried})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeface.tools.fit_acceptance", description=__doc__)
    parser.add_argument("--data", type=Path, default=data_dir(), help="labelled data (default: ../shared/data)")
    parser.add_argument("--floor", type=float, default=0.5, help="the profile's match_threshold")
    args = parser.parse_args(argv)
    if args.data is None or not (args.data / "celeba_dev").is_dir():
        parser.error("celeba_dev not found: pass --data DIR")
    for precision in ("int8", "float"):
        vectors, labels = embed_celeba(args.data / "celeba_dev", precision)
        ids = np.unique(labels)
        halves = {"even ids": ids[ids % 2 == 0], "odd ids": ids[ids % 2 == 1]}
        for (tune, tuned), (judge, judged) in ((a, b) for a in halves.items() for b in halves.items() if a != b):
            model = fit(vectors, labels, tuned, tune)
            print(f"{precision}: fitted on {tune} (spread {model.spread}), judged on {judge}:")
            print("  enrolled  target  threshold  strangers passed  enrolled passed")
            for row in check(vectors, labels, judged, model, args.floor):
                print(f"  {row['enrolled']:8d}  {row['target']:6.3f}  {row['threshold']:9.3f}  "
                      f"{row['strangers_passed']:16.4f}  {row['enrolled_passed']:15.3f}")
        print(f"{precision}: ship {fit(vectors, labels, ids, f'celeba_dev, all {len(ids)} identities')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
