"""Open-set identification: enroll some people, probe with their other photos and with strangers' photos."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OpenSetResult:
    """Rates at one threshold: enrolled probes named correctly (rank-1 and accepted), named wrongly and
    accepted, rejected; stranger probes accepted as somebody."""

    threshold: float
    rank1: float
    correct_accept: float
    wrong_accept: float
    false_reject: float
    stranger_accept: float


def split_people(labels: list[str], per_person: int) -> tuple[dict[str, list[int]], list[int], list[int]]:
    """Every other person (sorted by label) is enrolled with their first `per_person` photos; their other
    photos are genuine probes; the remaining people's photos are stranger probes.

    Returns (enrolled person -> indices, genuine probe indices, stranger probe indices). People with no
    photo left to probe are not enrolled (their photos become strangers).
    """
    people: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        people.setdefault(label, []).append(index)
    enrolled: dict[str, list[int]] = {}
    genuine: list[int] = []
    strangers: list[int] = []
    for order, name in enumerate(sorted(people)):
        photos = people[name]
        if order % 2 == 0 and len(photos) > per_person:
            enrolled[name] = photos[:per_person]
            genuine.extend(photos[per_person:])
        else:
            strangers.extend(photos)
    return enrolled, genuine, strangers


def best_matches(gallery: np.ndarray, owners: np.ndarray, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For unit-vector probes, the best-matching owner and its similarity (a person scores their best photo),
    in float64: thresholds compare exactly (NumPy 1.x would cast a threshold down to float32 embeddings' type)."""
    similarity = np.asarray(probes, np.float64) @ np.asarray(gallery, np.float64).T
    names = np.unique(owners)
    per_person = np.stack([similarity[:, owners == name].max(axis=1) for name in names], axis=1)
    best = per_person.argmax(axis=1)
    return names[best], per_person[np.arange(len(probes)), best]


def open_set(embeddings: np.ndarray, labels: list[str], per_person: int,
             thresholds: np.ndarray) -> list[OpenSetResult]:
    """Open-set rates at each threshold for unit-vector `embeddings` with person `labels`."""
    enrolled, genuine, strangers = split_people(labels, per_person)
    if not enrolled or not genuine:
        raise ValueError("open-set identification needs at least one person with more than "
                         f"{per_person} photos")
    rows = [i for indices in enrolled.values() for i in indices]
    owners = np.array([labels[i] for i in rows])
    truth = np.array([labels[i] for i in genuine])
    named, score = best_matches(embeddings[rows], owners, embeddings[genuine])
    _, stranger_score = best_matches(embeddings[rows], owners, embeddings[strangers]) if strangers else (
        None, np.zeros(0))
    right = named == truth
    results = []
    for threshold in thresholds:
        accepted = score >= threshold
        results.append(OpenSetResult(
            threshold=float(threshold), rank1=float(right.mean()),
            correct_accept=float((right & accepted).mean()), wrong_accept=float((~right & accepted).mean()),
            false_reject=float((~accepted).mean()),
            stranger_accept=float((stranger_score >= threshold).mean()) if strangers else float("nan"),
        ))
    return results


def threshold_for(embeddings: np.ndarray, labels: list[str], per_person: int, target_accept: float) -> float:
    """The lowest threshold at which at most `target_accept` of stranger probes are accepted as somebody."""
    enrolled, _, strangers = split_people(labels, per_person)
    rows = [i for indices in enrolled.values() for i in indices]
    owners = np.array([labels[i] for i in rows])
    _, score = best_matches(embeddings[rows], owners, embeddings[strangers])
    ordered = np.sort(score)[::-1]
    allowed = int(np.floor(target_accept * len(ordered)))
    return float(np.nextafter(ordered[allowed], np.inf)) if allowed < len(ordered) else float(ordered[-1])
