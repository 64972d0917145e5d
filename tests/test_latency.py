"""`edgeface bench` on the device: per-stage latency with only the profile's models, the one-frame figure and the
`[expected]` section it prints for the profile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import subset

from deploy.bundle import _copy_models
from edgeface.cli import main
from edgeface.latency import Stopwatch, expected_section, percentiles
from edgeface.manifest import Manifest
from edgeface.profiles import load_profile


def test_stopwatch_shares_a_call_among_its_faces(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([0.0, 0.006, 1.0, 1.004])
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    watch = Stopwatch()
    watch.recording = True
    assert watch("align", lambda: "aligned", per=3) == "aligned"
    watch.recording = False
    watch("embed", lambda: None)  # not recording: warm-up rounds leave no sample
    assert watch.samples["align"] == pytest.approx([2.0, 2.0, 2.0])
    assert watch.samples["embed"] == []


def _report(one_frame: float) -> dict:
    meta = {"date": "2026-12-02T07:00:00+00:00", "edgeface": "0.1.0", "threads": 4, "delegate": "xnnpack",
            "precision": "int8", "photos": 6, "repeats": 3,
            "machine": {"cpu": 'Cortex-A72 "r0p3"', "cores": 4, "arch": "aarch64"}}
    return {"meta": meta, "one_frame_ms": one_frame}


def test_the_expected_section_replaces_the_profiles_own(tmp_path: Path) -> None:
    profile = load_profile("rpi4")
    text = profile.path.read_text()
    head = text[:text.index("[expected]")]
    (tmp_path / "rpi4.toml").write_text(head + expected_section(_report(87.6)) + "\n")
    measured = load_profile(tmp_path / "rpi4.toml")
    assert measured.expected is not None and measured.expected.latency_ms == 87.6
    assert measured.expected.source.startswith("measured: edgeface 0.1.0 bench on Cortex-A72 \"r0p3\" (4 cores")
    assert tomllib.loads(expected_section(_report(87.6)))["expected"]["latency_ms"] == 87.6


def test_bench_without_photos_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFACE_HOME", str(tmp_path))
    assert main(["bench", "--profile", "rpi4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "sample_images") in err and "--photos" in err
    assert main(["bench", "--against", sys.executable]) == 2
    assert "--against goes with --side-by-side" in capsys.readouterr().err


def test_bench_runs_with_only_the_profiles_int8_models(manifest: Manifest, data: Path, tmp_path: Path) -> None:
    """As on the board: a models folder holding the rpi4 bundle's three int8 models, sample frames in
    $EDGEFACE_HOME/sample_images; the one-frame figure is the detector invoke plus one embedding."""
    profile = load_profile("rpi4")
    _copy_models(profile, manifest, tmp_path / "models")
    (tmp_path / "sample_images").mkdir()
    for photo in subset(data / "group_photos", 2):
        (tmp_path / "sample_images" / photo.name).write_bytes(photo.read_bytes())
    env = {**os.environ, "EDGEFACE_HOME": str(tmp_path), "EDGEFACE_MODELS": str(tmp_path / "models")}
    done = subprocess.run([sys.executable, "-m", "edgeface", "bench", "--profile", "rpi4", "--repeats", "2",
                           "--json", "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["meta"]["precision"] == "int8" and report["meta"]["photos"] == 2
    stages = {row["stage"]: row for row in report["stages"]}
    assert {"decode image", "letterbox", "detector invoke", "decode+NMS", "align", "embed", "liveness",
            "match"} == set(stages)
    assert stages["detector invoke"]["samples"] == 4  # 2 photos x 2 timed rounds; the warm-up round not counted
    assert report["one_frame_ms"] == pytest.approx(
        stages["detector invoke"]["p50_ms"] + stages["embed"]["p50_ms"], abs=0.1)
    assert report["frame"]["p50_ms"] > report["one_frame_ms"]  # a whole frame also decodes, aligns, matches...
    markdown = (tmp_path / "out" / "bench.md").read_text()
    section = markdown[markdown.index("```toml") + 8:markdown.rindex("```")]
    assert tomllib.loads(section)["expected"]["latency_ms"] == report["one_frame_ms"]
    assert json.loads((tmp_path / "out" / "bench.json").read_text()) == report


def test_percentiles_of_the_stage_rows() -> None:
    assert percentiles([4.0, 1.0, 3.0, 2.0]).to_json() == {"p50_ms": 2.5, "p90_ms": 3.7}
