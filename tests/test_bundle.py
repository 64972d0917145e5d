"""`make bundle`: the tarball holds what a Pi needs, installs offline into a clean venv, and that install detects
the same faces as this checkout."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import subset
from PIL import Image

from deploy.aarch64_proof import compare
from deploy.bundle import REQUIREMENTS, build_bundle, profile_models
from edgeface.manifest import Manifest
from edgeface.profiles import load_profile

PROFILE = "rpi4"


@pytest.fixture(scope="module")
def installed(manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rpi4 bundle built with this machine's wheels, unpacked and installed by its install.sh --venv-only."""
    root = tmp_path_factory.mktemp("bundle")
    tarball = build_bundle(PROFILE, root / "dist", platform="native", models=manifest.root)
    assert tarball.name == f"edgeface-{PROFILE}-native.tar.gz"
    with tarfile.open(tarball) as tar:
        tar.extractall(root / "unpacked", filter="data")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "EDGEFACE_"))}
    done = subprocess.run([str(root / "unpacked" / tarball.name.removesuffix(".tar.gz") / "install.sh"),
                           "--prefix", str(root / "opt"), "--venv-only", "--python", sys.executable],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    return root


def test_bundle_holds_the_profiles_models_only(installed: Path, manifest: Manifest) -> None:
    bundle = installed / "unpacked" / f"edgeface-{PROFILE}-native"
    expected = profile_models(load_profile(PROFILE), manifest)
    listing = json.loads((bundle / "models" / "manifest.json").read_text())
    assert sorted(listing["models"]) == sorted(expected) == [
        "antispoofing.int8", "mobilefacenet.int8", "retinaface-640.int8"]  # rpi4 requires liveness
    for entry in listing["models"].values():
        assert hashlib.sha256((bundle / "models" / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert sorted(p.name for p in (bundle / "models").iterdir()) == sorted(
        [*(e["file"] for e in listing["models"].values()), "manifest.json"])
    assert json.loads((bundle / "bundle.json").read_text())["profile"] == PROFILE
    assert (bundle / f"{PROFILE}.toml").read_text() == load_profile(PROFILE).path.read_text()
    assert (bundle / "requirements.txt").read_text().split() == list(REQUIREMENTS)
    assert len(list((bundle / "wheels").glob("*.whl"))) == len(REQUIREMENTS)
    assert len(list(bundle.glob("edgeface-*.whl"))) == 1
    camera = load_profile(PROFILE).camera
    frames = sorted((bundle / "sample_images").iterdir())
    assert 1 <= len(frames) <= 8 and sum(f.stat().st_size for f in frames) < 2_000_000
    for frame in frames:
        with Image.open(frame) as image:
            assert image.format == "JPEG" and image.width <= camera.width and image.height <= camera.height
    unit = (bundle / "edgeface-doorlock.service").read_text()
    for line in ("Restart=always", "User=edgeface", "SupplementaryGroups=video gpio",
                 "ExecStart=@PREFIX@/bin/edgeface doorlock --profile @PREFIX@/@PROFILE@.toml"):
        assert line in unit


def test_the_installed_wheel_is_the_device_and_benches_from_the_bundle(installed: Path) -> None:
    """No workstation tool in the installed package; `edgeface bench` runs on the bundle's sample frames with only
    the profile's int8 models; a workstation command is refused in one line."""
    opt = installed / "opt"
    packages = list((opt / "venv" / "lib").glob("python3*/site-packages/edgeface"))
    assert len(packages) == 1
    device = Path(__file__).resolve().parents[1] / "edgeface"
    assert {p.name for p in packages[0].iterdir() if p.name != "__pycache__"} == {p.name for p in device.glob("*.py")}
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDGEFACE_")}
    bench = subprocess.run([str(opt / "bin" / "edgeface"), "bench", "--json", "--repeats", "1", "--profile",
                            str(opt / f"{PROFILE}.toml")], capture_output=True, text=True, timeout=600, env=env,
                           cwd=installed)
    assert bench.returncode == 0, bench.stderr
    report = json.loads(bench.stdout)
    assert report["meta"]["precision"] == "int8" and report["meta"]["folder"] == str(opt / "sample_images")
    assert report["one_frame_ms"] > 0 and {"detector invoke", "embed", "liveness"} <= {
        row["stage"] for row in report["stages"]}
    for command in (["check-quant"], ["check-edgetpu", "x.tflite"], ["bench", "--side-by-side"]):
        refused = subprocess.run([str(opt / "bin" / "edgeface"), *command], capture_output=True, text=True,
                                 timeout=120, env=env)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "make" not in refused.stderr and "Traceback" not in refused.stderr


def test_offline_install_detects_like_this_checkout(installed: Path, data: Path) -> None:
    opt = installed / "opt"
    packages = subprocess.run([str(opt / "venv" / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                              capture_output=True, text=True, check=True).stdout
    names = {p["name"].lower() for p in json.loads(packages)}
    assert {"edgeface", "numpy", "pillow", "ai-edge-litert", "gpiozero"} <= names
    assert not names & {"tensorflow", "tflite-runtime", "torch", "onnx", "opencv-python"}
    photo = subset(data / "group_photos", 1)[0]
    env = {key: value for key, value in os.environ.items() if not key.startswith("EDGEFACE_")}
    command = ["detect", "--json", "--profile"]
    there = subprocess.run([str(opt / "bin" / "edgeface"), *command, str(opt / f"{PROFILE}.toml"), str(photo)],
                           capture_output=True, text=True, timeout=300, env=env)
    here = subprocess.run([sys.executable, "-m", "edgeface.cli", *command, PROFILE, str(photo)],
                          capture_output=True, text=True, timeout=300)
    assert there.returncode == 0 and here.returncode == 0, there.stderr + here.stderr
    ours, theirs = json.loads(here.stdout), json.loads(there.stdout)
    # The same faces (paired one to one), boxes and landmarks within one detector-input pixel (the Pillow and
    # TFLite builds may differ); scores are not compared.
    pixel = max(ours["width"], ours["height"]) / load_profile(PROFILE).detector.input_size
    result = compare(ours, theirs)
    assert result.passes(tolerance=pixel + 0.01, score_tolerance=1.0), result
    # The door lock's liveness stage runs from the bundle too.
    live = subprocess.run([str(opt / "bin" / "edgeface"), "liveness", "--json", "--profile", str(opt / f"{PROFILE}.toml"),
                           str(photo)], capture_output=True, text=True, timeout=300, env=env)
    assert live.returncode == 0, live.stderr
    assert all(isinstance(face["live"], bool) for face in json.loads(live.stdout)["faces"])
