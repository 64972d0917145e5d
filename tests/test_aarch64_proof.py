"""`make aarch64-proof` within the test run, once it has set up this machine (root, a cached arm64 rootfs): the
rpi4 bundle of these models installs with its install.sh in emulated arm64 Debian, detects there exactly as on
x86-64, and runs `edgeface bench` on its own sample frames. Skipped elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deploy.aarch64_proof import MIRROR, bench_ran, compare, prove
from deploy.bundle import build_bundle
from edgeface.manifest import Manifest, edgeface_home


@pytest.fixture
def rootfs() -> Path:
    """The arm64 rootfs `make aarch64-proof` debootstrapped, when this runs as root."""
    root = edgeface_home() / "aarch64-rootfs"
    if os.geteuid() != 0 or not (root / ".edgeface-rootfs").exists():
        pytest.skip(f"no arm64 rootfs in {root} (or not root): run `make aarch64-proof` as root once")
    return root


def test_bundle_detects_on_emulated_arm64_as_on_x86(manifest: Manifest, rootfs: Path, tmp_path: Path) -> None:
    image = edgeface_home() / "sample_images" / "t1.jpg"
    if not image.is_file():
        pytest.skip(f"{image}: missing (make models fetches it)")
    bundle = build_bundle("rpi4", tmp_path / "dist", platform="aarch64", models=manifest.root)
    x86, arm64 = prove(bundle, image, rootfs, tmp_path / "work", MIRROR)
    assert arm64.runs_on("aarch64") and x86.runs_on("x86_64"), (arm64.probe, x86.probe)
    assert arm64.xnnpack and x86.xnnpack
    assert bench_ran(arm64.bench), arm64.bench
    result = compare(x86.detections, arm64.detections)
    assert result.passes(tolerance=1.0, score_tolerance=0.01), result


def _face(x: float, score: float = 0.9) -> dict:
    return {"box": [x, 10.0, x + 50.0, 70.0], "score": score, "landmarks": [[x + 10.0, 30.0]] * 5}


def test_compare_pairs_faces_by_nearest_box_in_any_order() -> None:
    x86 = {"width": 640, "height": 480, "faces": [_face(0.0), _face(100.0)]}
    arm64 = {"width": 640, "height": 480, "faces": [_face(100.4, 0.905), _face(0.0)]}
    result = compare(x86, arm64)
    assert (result.box_px, result.landmark_px) == pytest.approx((0.4, 0.4))
    assert result.score == pytest.approx(0.005)
    assert result.passes(tolerance=1.0, score_tolerance=0.01)
    assert not result.passes(tolerance=0.3, score_tolerance=0.01)
    assert not compare(x86, {**arm64, "faces": arm64["faces"][:1]}).passes(tolerance=1.0, score_tolerance=0.01)
