"""`make aarch64-proof`: a Pi bundle installs and detects in an emulated arm64 Debian bookworm as on x86-64.

The arm64 userland is a cached debootstrap rootfs run in a chroot through qemu-user-static, registered with
binfmt_misc, so the bundle's install.sh runs unmodified (with --venv-only: no systemd there). The x86-64 side is
a fresh venv with the bundle's wheel and its pinned requirements from PyPI. Both run `edgeface detect --json` on
the same photo with the bundle's own models and profile; the faces must match. The arm64 side then runs `edgeface bench`
on the bundle's sample frames with only the profile's int8 models (emulated: that it runs is the point, its figures
are not the board's). Needs root (apt-get, debootstrap, binfmt_misc, chroot).

    python -m deploy.aarch64_proof --bundle dist/edgeface-rpi4-aarch64.tar.gz --image PHOTO
        [--rootfs DIR] [--work DIR] [--mirror URL] [--tolerance PX] [--score-tolerance S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from edgeface.errors import EdgefaceError
from edgeface.manifest import edgeface_home

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv")
"""Added to debootstrap's minbase: what Raspberry Pi OS bookworm has and install.sh needs."""
QEMU = Path("/usr/bin/qemu-aarch64-static")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_RULE = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
"""Debian's rule for qemu-user-static; its F flag opens the interpreter now, so it also runs inside a chroot."""
PREFIX = "/opt/edgeface"
STAGE = "/root/aarch64-proof"
"""Where the bundle and the photo go inside the rootfs."""
CHROOT_ENV = ("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/root", "LANG=C.UTF-8")
PROBE = """
import importlib.metadata, json, platform
wheel = importlib.metadata.distribution("ai-edge-litert").read_text("WHEEL")
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                  "litert": [line[5:] for line in wheel.splitlines() if line.startswith("Tag: ")]}))
"""
"""Printed by each side's venv: the interpreter's machine and the tags of the ai-edge-litert wheel it installed."""


def _run(command: list[str], what: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; on failure raise with the end of that output."""
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise EdgefaceError(f"{what} failed ({done.returncode}): {' '.join(command)}\n{tail}")
    return done


def _timed(started: float) -> str:
    """Seconds since `started`, for the report."""
    return f"{time.monotonic() - started:.1f} s"


def ensure_tools() -> list[str]:
    """Check this is root on x86-64, install qemu-user-static and debootstrap with apt-get when missing; return
    what was installed."""
    if platform.machine() != "x86_64":
        raise EdgefaceError(f"this compares arm64 with x86-64, so it runs on x86-64, not {platform.machine()}")
    if os.geteuid() != 0:
        raise EdgefaceError("run as root: apt-get, debootstrap, binfmt_misc and chroot need it")
    missing = [package for package, path in (("qemu-user-static", QEMU), ("debootstrap", "debootstrap"))
               if not shutil.which(path)]
    if missing:
        if not shutil.which("apt-get"):
            raise EdgefaceError(f"install {' and '.join(missing)} (no apt-get here)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-q"], "apt-get update", env)
        _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], "apt-get install", env)
    return missing


def ensure_binfmt() -> str:
    """Register qemu-aarch64 with binfmt_misc (mounting it first if needed); return its interpreter and flags."""
    if not (BINFMT / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], "mounting binfmt_misc")
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        if not BINFMT_RULE.is_file():
            raise EdgefaceError(f"{BINFMT_RULE} is missing: this expects Debian's qemu-user-static")
        (BINFMT / "register").write_text(BINFMT_RULE.read_text().strip())
    fields = dict(line.split(" ", 1) for line in entry.read_text().splitlines() if " " in line)
    if "F" not in fields.get("flags:", ""):
        raise EdgefaceError(f"{entry} lacks the F (fix binary) flag, so it cannot run inside a chroot; "
                            f"echo -1 > {entry} and rerun")
    return f"{fields['interpreter']} (flags {fields['flags:']})"


def ensure_rootfs(rootfs: Path, mirror: str, log: Path) -> bool:
    """Debootstrap an arm64 Debian minbase with PACKAGES into `rootfs` unless a complete one is there.

    Returns whether it was built. A marker written last records the recipe, so an interrupted or different
    rootfs is rebuilt from scratch."""
    recipe = f"{SUITE} arm64 minbase {','.join(PACKAGES)} {mirror}\n"
    marker = rootfs / ".edgeface-rootfs"
    if marker.exists() and marker.read_text() == recipe:
        return False
    if rootfs.exists():
        shutil.rmtree(rootfs)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        done = subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                               SUITE, str(rootfs), mirror], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise EdgefaceError(f"debootstrap failed ({done.returncode}); see {log}")
    marker.write_text(recipe)
    return True


def in_chroot(rootfs: Path, command: list[str], what: str) -> subprocess.CompletedProcess[str]:
    """Run an arm64 command in `rootfs`, with /proc, /sys and /dev mounted in a private mount namespace (the
    mounts vanish with it)."""
    setup = ('mount -t proc proc "$0/proc" && mount -t sysfs sysfs "$0/sys" && mount --rbind /dev "$0/dev" && '
             'exec chroot "$0" /usr/bin/env -i "$@"')
    return _run(["unshare", "--mount", "--fork", "sh", "-c", setup, str(rootfs), *CHROOT_ENV, *command], what)


def unpack(bundle: Path, rootfs: Path, image: Path) -> Path:
    """Empty the rootfs's PREFIX and STAGE, unpack the bundle and copy the photo into STAGE; return the bundle
    folder as seen from the host."""
    for folder in (PREFIX, STAGE):
        shutil.rmtree(rootfs / folder.lstrip("/"), ignore_errors=True)
    stage = rootfs / STAGE.lstrip("/")
    stage.mkdir(parents=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(stage, filter="data")
    shutil.copy2(image, stage / image.name)
    folders = [path for path in stage.iterdir() if (path / "install.sh").is_file()]
    if len(folders) != 1:
        raise EdgefaceError(f"{bundle}: expected one folder holding install.sh, found {len(folders)}")
    return folders[0]


def x86_venv(venv: Path, bundle_dir: Path) -> None:
    """A fresh venv with the bundle's edgeface wheel and its pinned requirements (this machine's wheels)."""
    _run([sys.executable, "-m", "venv", "--clear", str(venv)], "creating the x86-64 venv")
    wheels = [str(path) for path in bundle_dir.glob("edgeface-*.whl")]
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    _run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
          "-r", str(bundle_dir / "requirements.txt"), *wheels], "pip install (x86-64)", env)


@dataclass(frozen=True)
class Comparison:
    """How far the arm64 detections are from the x86-64 ones, face by face (nearest box, one to one)."""

    faces_x86: int
    faces_arm64: int
    size_equal: bool
    box_px: float
    landmark_px: float
    score: float

    def passes(self, tolerance: float, score_tolerance: float) -> bool:
        """Same image size and face count, boxes and landmarks within `tolerance` px, scores within theirs."""
        return (self.size_equal and self.faces_x86 == self.faces_arm64 > 0 and self.box_px <= tolerance
                and self.landmark_px <= tolerance and self.score <= score_tolerance)


def compare(x86: dict, arm64: dict) -> Comparison:
    """Pair each face with the nearest unpaired one on the other side (by largest box-coordinate difference)
    and return the largest box, landmark and score differences over the pairs."""

    def box_gap(a: dict, b: dict) -> float:
        return max(abs(p - q) for p, q in zip(a["box"], b["box"]))

    pairs = sorted(((box_gap(a, b), i, j) for i, a in enumerate(x86["faces"]) for j, b in enumerate(arm64["faces"])))
    used_x86: set[int] = set()
    used_arm64: set[int] = set()
    box_px = landmark_px = score = 0.0
    for gap, i, j in pairs:
        if i in used_x86 or j in used_arm64:
            continue
        used_x86.add(i)
        used_arm64.add(j)
        a, b = x86["faces"][i], arm64["faces"][j]
        box_px = max(box_px, gap)
        landmark_px = max([landmark_px, *(abs(p - q) for pa, pb in zip(a["landmarks"], b["landmarks"])
                                          for p, q in zip(pa, pb))])
        score = max(score, abs(a["score"] - b["score"]))
    return Comparison(len(x86["faces"]), len(arm64["faces"]),
                      (x86["width"], x86["height"]) == (arm64["width"], arm64["height"]), box_px, landmark_px, score)


@dataclass(frozen=True)
class Side:
    """One side's result: its venv's probe (machine, Python, ai-edge-litert wheel tags) and its detections."""

    probe: dict
    detections: dict
    xnnpack: bool
    """Whether LiteRT logged creating the XNNPACK delegate (the fast int8 path the profile asks for)."""
    bench: dict | None = None
    """`edgeface bench --json` from the bundle (arm64 only)."""

    def runs_on(self, machine: str) -> bool:
        """Whether the venv's interpreter reports `machine` and its ai-edge-litert wheel was built for it."""
        return self.probe["machine"] == machine and all(tag.endswith(machine) for tag in self.probe["litert"])


def bench_ran(report: dict | None) -> bool:
    """Whether a `bench --json` report timed the detector and the embedder on the profile's int8 models."""
    if not report:
        return False
    stages = {row["stage"] for row in report["stages"]}
    return report["meta"]["precision"] == "int8" and {"detector invoke", "embed"} <= stages \
        and report["one_frame_ms"] > 0


def _side(probe: subprocess.CompletedProcess[str], detect: subprocess.CompletedProcess[str]) -> Side:
    """A Side from the outputs of PROBE and `edgeface detect --json`."""
    return Side(json.loads(probe.stdout), json.loads(detect.stdout), "XNNPACK delegate" in detect.stderr)


def prove(bundle: Path, image: Path, rootfs: Path, work: Path, mirror: str) -> tuple[Side, Side]:
    """Set up, install and detect on both sides, printing each step's time; return (x86-64, arm64)."""
    started = time.monotonic()
    installed = ensure_tools()
    print(f"tools: {'apt-get installed ' + ', '.join(installed) if installed else 'present'} ({_timed(started)})")
    print(f"binfmt_misc qemu-aarch64: {ensure_binfmt()}")
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    built = ensure_rootfs(rootfs, mirror, work / "debootstrap.log")
    print(f"rootfs {rootfs}: {'debootstrapped' if built else 'cached'} ({_timed(started)})")
    userland = in_chroot(rootfs, ["sh", "-c", "echo $(uname -m), Debian $(cat /etc/debian_version)"], "uname")
    print(f"chroot: {userland.stdout.strip()}")

    bundle_dir = unpack(bundle, rootfs, image)
    profile = json.loads((bundle_dir / "bundle.json").read_text())["profile"]
    started = time.monotonic()
    in_chroot(rootfs, [f"{STAGE}/{bundle_dir.name}/install.sh", "--prefix", PREFIX, "--venv-only"],
              "install.sh (arm64)")
    print(f"arm64: install.sh --venv-only {_timed(started)}")
    started = time.monotonic()
    detect = in_chroot(rootfs, [f"{PREFIX}/bin/edgeface", "detect", "--json", "--profile", f"{PREFIX}/{profile}.toml",
                                f"{STAGE}/{image.name}"], "edgeface detect (arm64)")
    print(f"arm64: detect {_timed(started)}")
    started = time.monotonic()
    bench = in_chroot(rootfs, [f"{PREFIX}/bin/edgeface", "bench", "--json", "--repeats", "1", "--profile",
                               f"{PREFIX}/{profile}.toml"], "edgeface bench (arm64)")
    print(f"arm64: bench on the bundle's sample frames {_timed(started)} (emulated: not the board's speed)")
    arm64 = replace(_side(in_chroot(rootfs, [f"{PREFIX}/venv/bin/python", "-c", PROBE], "probe (arm64)"), detect),
                    bench=json.loads(bench.stdout))

    venv = work / "x86-venv"
    started = time.monotonic()
    x86_venv(venv, bundle_dir)
    print(f"x86-64: venv {_timed(started)}")
    started = time.monotonic()
    detect = _run([str(venv / "bin" / "edgeface"), "detect", "--json", "--profile", str(bundle_dir / f"{profile}.toml"),
                   str(image)], "edgeface detect (x86-64)", {**os.environ, "EDGEFACE_MODELS": str(bundle_dir / "models")})
    print(f"x86-64: detect {_timed(started)}")
    x86 = _side(_run([str(venv / "bin" / "python"), "-c", PROBE], "probe (x86-64)"), detect)
    for name, side in (("x86-64", x86), ("arm64", arm64)):
        print(f"{name}: {json.dumps(side.probe)}, XNNPACK delegate {side.xnnpack}")
        (work / f"{name}.json").write_text(json.dumps(side.detections) + "\n")
    (work / "arm64-bench.json").write_text(json.dumps(arm64.bench, indent=1) + "\n")
    return x86, arm64


def main(argv: list[str] | None = None) -> int:
    """Command line entry: run the proof, print a verdict; 0 on a match, 1 on a mismatch, 2 on a setup error."""
    parser = argparse.ArgumentParser(prog="python -m deploy.aarch64_proof", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="an aarch64 bundle from `make bundle`")
    parser.add_argument("--image", type=Path, required=True, help="a photo with faces")
    parser.add_argument("--rootfs", type=Path, default=edgeface_home() / "aarch64-rootfs",
                        help="the cached arm64 rootfs (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=edgeface_home() / "aarch64-proof",
                        help="x86-64 venv, logs and both JSON results (default: %(default)s)")
    parser.add_argument("--mirror", default=MIRROR, help="Debian mirror for debootstrap (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="max box/landmark difference, image px")
    parser.add_argument("--score-tolerance", type=float, default=0.01, help="max score difference")
    args = parser.parse_args(argv)
    for path in (args.bundle, args.image):
        if not path.is_file():
            parser.error(f"{path}: no such file")
    try:
        x86, arm64 = prove(args.bundle.resolve(), args.image.resolve(), args.rootfs.resolve(), args.work.resolve(),
                           args.mirror)
    except EdgefaceError as error:
        print(f"aarch64-proof: error: {error}", file=sys.stderr)
        return 2
    result = compare(x86.detections, arm64.detections)
    # XNNPACK on both sides: without it (no /sys in the chroot) arm64 fell back to other kernels, boxes 2.6 px off.
    native = arm64.runs_on("aarch64") and x86.runs_on("x86_64") and arm64.xnnpack and x86.xnnpack
    benched = bench_ran(arm64.bench)
    verdict = "PASS" if native and benched and result.passes(args.tolerance, args.score_tolerance) else "FAIL"
    print(f"aarch64-proof: {verdict}: aarch64 interpreter and wheel {arm64.runs_on('aarch64')}, "
          f"x86_64 {x86.runs_on('x86_64')}, XNNPACK both {arm64.xnnpack and x86.xnnpack}; "
          f"faces x86-64 {result.faces_x86}, arm64 {result.faces_arm64}; "
          f"same size {result.size_equal}; max box diff {result.box_px:.3f} px, landmark {result.landmark_px:.3f} px "
          f"(limit {args.tolerance}), score {result.score:.5f} (limit {args.score_tolerance}); "
          f"bench on arm64 {'ran' if benched else 'FAILED'}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
