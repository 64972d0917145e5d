"""Benchmarks measured side by side in one run: every model's int8 and float twin on the same input."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgeface.interpreter import TFLiteModel
from edgeface.manifest import Manifest


@dataclass(frozen=True)
class Timing:
    """Invoke latency percentiles in milliseconds."""

    p50: float
    p90: float

    def to_json(self) -> dict[str, float]:
        return {"p50_ms": round(self.p50, 3), "p90_ms": round(self.p90, 3)}


def percentiles(samples_ms: list[float]) -> Timing:
    """p50/p90 of a list of durations."""
    return Timing(float(np.percentile(samples_ms, 50)), float(np.percentile(samples_ms, 90)))


def model_latency(manifest: Manifest, threads: int, delegate: str, repeats: int,
                  batch: np.ndarray | None = None) -> list[dict[str, object]]:
    """For each model key: int8 and float invoke latency, interleaved run by run so both see the same machine."""
    rng = np.random.default_rng(0)
    rows = []
    for key in sorted({spec.key for spec in manifest.models.values()}):
        models = {p: TFLiteModel(manifest, manifest.get(key, p), threads=threads, delegate=delegate)
                  for p in ("int8", "float")}
        shape = models["float"].input_shape
        image = batch if batch is not None and batch.shape == shape else rng.integers(0, 256, shape, np.uint8)
        samples: dict[str, list[float]] = {p: [] for p in models}
        for p, model in models.items():
            model.run(image)  # warm-up: allocation and XNNPACK packing
        for _ in range(repeats):
            for p, model in models.items():
                started = time.perf_counter()
                model.run(image)
                samples[p].append((time.perf_counter() - started) * 1000)
        timing = {p: percentiles(values) for p, values in samples.items()}
        rows.append({
            "model": key,
            "int8": {**timing["int8"].to_json(), "size_kb": round(models["int8"].spec.size_bytes / 1024)},
            "float": {**timing["float"].to_json(), "size_kb": round(models["float"].spec.size_bytes / 1024)},
            "float_over_int8": round(timing["float"].p50 / timing["int8"].p50, 2),
        })
    return rows


def markdown_table(rows: list[dict[str, object]]) -> str:
    """The model latency rows as a Markdown table."""
    lines = ["| model | int8 p50 ms | float p50 ms | float / int8 | int8 kB | float kB |", "|---|---|---|---|---|---|"]
    for row in rows:
        q, f = row["int8"], row["float"]
        lines.append(f"| {row['model']} | {q['p50_ms']:.2f} | {f['p50_ms']:.2f} | {row['float_over_int8']:.2f}x "
                     f"| {q['size_kb']} | {f['size_kb']} |")
    return "\n".join(lines)
