"""`make bundle PROFILE=rpi4`: one tarball that installs edgeface on a Raspberry Pi with no network.

It holds the edgeface wheel, a wheelhouse of the pinned runtime for the device, the profile's models with a
manifest of only them, the profile, a few sample frames for `edgeface bench` on the board, `install.sh` and the
systemd unit beside this file.

    python -m deploy.bundle --profile rpi4 [--out dist] [--platform aarch64|native] [--models DIR] [--fleet]

With --fleet the wheelhouse also holds the `fleet` extra (paho-mqtt, cryptography) for `edgeface doorlock --fleet`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

from edgeface.errors import EdgefaceError, ModelError
from edgeface.images import list_images, load_image
from edgeface.interpreter import EDGETPU_FOLDER, edgetpu_compiled
from edgeface.manifest import MANIFEST_NAME, Manifest, ModelSpec, edgeface_home, load_manifest, model_key
from edgeface.profiles import Profile, load_profile

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TEMPLATES = ("install.sh", "edgeface-doorlock.service")
SOURCES = ("pyproject.toml", "README.md", "edgeface", "firmware_configs")
"""What the wheel is built from (copied out first, so no stale build/ folder of the checkout leaks in)."""

REQUIREMENTS = (
    "numpy==1.26.4",  # numpy 1.x: Raspberry Pi OS's python3-picamera2 stack (seen through the venv) is built on it
    "Pillow==12.2.0",
    # ai-edge-litert, not tflite-runtime 2.14: that wheel leaves int8 models to TFLite's reference kernels (no
    # XNNPACK delegate); RetinaFace-640 int8 measured 335 ms there against 27 ms here, 2 threads on x86-64.
    "ai-edge-litert==2.1.0",
    "backports.strenum==1.2.8",  # this and the next four: ai-edge-litert's dependencies
    "flatbuffers==25.12.19",
    "protobuf==7.36.2",
    "tqdm==4.70.1",
    "typing-extensions==4.16.0",
    "gpiozero==2.0.1.post3",
    "colorzero==2.0",  # gpiozero's dependency
    "setuptools==84.2.1",  # colorzero's dependency
)
"""The device runtime, pinned to what resolves for CPython 3.11 on aarch64 (Raspberry Pi OS bookworm 64-bit)."""

FLEET_REQUIREMENTS = (
    "paho-mqtt==2.2.0",
    "cryptography==50.0.2",  # a cp311-abi3 manylinux_2_28 aarch64 wheel
    "cffi==2.1.1",  # this and the next: cryptography's dependencies
    "pycparser==3.12",
)
"""The `fleet` extra, pinned the same way (added by --fleet)."""

PLATFORMS = {
    # pip takes --platform tags literally (no older glibc implied): name every tag the pinned wheels carry.
    "aarch64": ["--platform", "manylinux_2_27_aarch64", "--platform", "manylinux_2_28_aarch64",
                "--platform", "manylinux2014_aarch64", "--python-version", "3.11", "--implementation", "cp"],
    "native": [],  # this machine's interpreter: a bundle that installs here (tests)
}


def profile_models(profile: Profile, manifest: Manifest) -> dict[str, ModelSpec]:
    """The manifest entries a profile runs, by manifest key: its detector at its input size, MobileFaceNet, and the
    anti-spoofing net when the profile requires liveness (the door lock would otherwise stay locked)."""
    detector = profile.detector
    keys = [model_key("retinaface", detector.input_size)] if detector.name == "retinaface" else ["pnet", "rnet", "onet"]
    keys += ["mobilefacenet", *(["antispoofing"] if profile.liveness.required else [])]
    precision = profile.runtime.precision
    return {f"{key}.{precision}": manifest.get(key, precision) for key in keys}


def _copy_models(profile: Profile, manifest: Manifest, folder: Path) -> None:
    """The profile's model files (each checked against its sha256) and a manifest listing only them."""
    folder.mkdir()
    specs = profile_models(profile, manifest)
    for spec in specs.values():
        data = manifest.path(spec).read_bytes()
        if hashlib.sha256(data).hexdigest() != spec.sha256:
            raise ModelError(f"{manifest.path(spec)}: sha256 differs from the manifest (rebuilt meanwhile?); rerun")
        (folder / spec.file).write_bytes(data)
        compiled = edgetpu_compiled(manifest, spec) if profile.runtime.delegate == "edgetpu" else None
        if compiled is not None:  # `make edgetpu` output, checked against this very model file
            (folder / EDGETPU_FOLDER).mkdir(exist_ok=True)
            for path in (compiled, compiled.with_suffix(".source-sha256")):
                shutil.copy2(path, folder / EDGETPU_FOLDER / path.name)
    listing = Manifest(folder, manifest.version, specs).to_dict()
    (folder / MANIFEST_NAME).write_text(json.dumps(listing, indent=1) + "\n")


def _copy_samples(profile: Profile, source: Path, folder: Path) -> None:
    """The sample photos the conversion fetched (insightface's), each shrunk to fit the profile's camera frame, as
    JPEGs in `folder`: what `edgeface bench` times on the board when no folder is given."""
    photos = list_images(source) if source.is_dir() else []
    if not photos:
        raise EdgefaceError(f"{source}: no sample photos for the bundle (the model conversion fetches them)")
    stems = [path.stem for path in photos]
    shared = sorted({stem for stem in stems if stems.count(stem) > 1})
    if shared:
        raise EdgefaceError(f"{source}: sample photos share a name ({', '.join(shared)}); each becomes <name>.jpg "
                            "in the bundle")
    folder.mkdir()
    for path in photos:
        frame = Image.fromarray(load_image(path))
        frame.thumbnail((profile.camera.width, profile.camera.height))
        frame.save(folder / f"{path.stem}.jpg", quality=90)


def _pip(*args: str) -> None:
    """Run this interpreter's pip; its output is shown only when it fails."""
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise EdgefaceError(f"pip {args[0]} failed ({done.returncode}):\n{done.stderr.strip()}")


def _build_wheel(folder: Path, scratch: Path) -> None:
    """edgeface's wheel, built from a clean copy of the sources."""
    source = scratch / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    _pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(folder), str(source))


def build_bundle(profile_name: str, out: Path, platform: str = "aarch64", models: Path | None = None,
                 fleet: bool = False, samples: Path | None = None) -> Path:
    """Write `<out>/edgeface-<profile>-<platform>.tar.gz` and return its path; `fleet` adds the fleet extra's wheels.
    The sample frames come from `samples` (default: `$EDGEFACE_HOME/sample_images`)."""
    if platform not in PLATFORMS:
        raise EdgefaceError(f"unknown platform '{platform}' (choose from {', '.join(PLATFORMS)})")
    profile = load_profile(profile_name)
    manifest = load_manifest(models)
    name = f"edgeface-{profile.name}-{platform}"
    python = "3.11" if platform == "aarch64" else "%d.%d" % sys.version_info[:2]
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        root = scratch / name
        root.mkdir()
        _copy_models(profile, manifest, root / "models")
        _copy_samples(profile, samples or edgeface_home() / "sample_images", root / "sample_images")
        shutil.copy2(profile.path, root / f"{profile.name}.toml")
        _build_wheel(root, scratch)
        requirements = REQUIREMENTS + (FLEET_REQUIREMENTS if fleet else ())
        (root / "requirements.txt").write_text("\n".join(requirements) + "\n")
        _pip("download", "--quiet", "--only-binary=:all:", "--dest", str(root / "wheels"), *PLATFORMS[platform],
             "-r", str(root / "requirements.txt"))
        for template in TEMPLATES:
            shutil.copy2(HERE / template, root / template)
        (root / "install.sh").chmod(0o755)
        (root / "bundle.json").write_text(json.dumps(
            {"profile": profile.name, "python": python, "platform": platform, "fleet": fleet}, indent=1) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{name}.tar.gz"
        with tarfile.open(target, "w:gz") as tar:
            tar.add(root, arcname=name)
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line entry: build one bundle, print its path."""
    parser = argparse.ArgumentParser(prog="python -m deploy.bundle", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True, help="hardware profile name or .toml path")
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    parser.add_argument("--platform", choices=sorted(PLATFORMS), default="aarch64",
                        help="wheels for the Pi (aarch64, CPython 3.11) or for this machine (native)")
    parser.add_argument("--models", type=Path, help="models folder (default: $EDGEFACE_MODELS)")
    parser.add_argument("--fleet", action="store_true", help="also the fleet extra (doorlock --fleet over MQTT)")
    args = parser.parse_args(argv)
    try:
        print(build_bundle(args.profile, args.out, args.platform, args.models, args.fleet))
    except EdgefaceError as error:
        print(f"bundle: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
