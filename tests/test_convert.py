"""`make models` plumbing: bad sources, converter versions, unwritable folders, atomic and incremental builds."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("onnx2tf")
from convert import ConvertError, build, sources  # noqa: E402
from convert.tflite import atomic_write  # noqa: E402
from edgeface.manifest import Manifest, edgeface_home  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _convert(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "convert", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


def test_checksum_mismatch_names_the_file(tmp_path: Path) -> None:
    (tmp_path / sources.FACENET_PYTORCH.filename).write_bytes(b"not the wheel")
    with pytest.raises(ConvertError, match=f"{sources.FACENET_PYTORCH.filename}: sha256 .* does not match"):
        sources.fetch(sources.FACENET_PYTORCH, tmp_path)


def test_corrupt_and_incomplete_archives(tmp_path: Path) -> None:
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ConvertError, match="broken.whl: corrupt archive"):
        sources.read_member(broken, "facenet_pytorch/data/pnet.pt")
    empty = tmp_path / "empty.whl"
    with zipfile.ZipFile(empty, "w") as wheel:
        wheel.writestr("other.txt", "x")
    with pytest.raises(ConvertError, match="empty.whl: has no member facenet_pytorch/data/pnet.pt"):
        sources.read_member(empty, "facenet_pytorch/data/pnet.pt")


def test_unsupported_converter_version(monkeypatch: pytest.MonkeyPatch) -> None:
    real = build.metadata.version
    monkeypatch.setattr(build.metadata, "version", lambda name: "9.9.9" if name == "onnx2tf" else real(name))
    with pytest.raises(ConvertError, match=r"onnx2tf 9\.9\.9 is installed.*onnx2tf==1\.29\.24.*make install"):
        build.converter_versions()


def test_unwritable_output_folder_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = _convert("--out", str(blocker / "models"), "--cache", str(tmp_path / "cache"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"convert: error: {blocker / 'models'}: cannot write models here (Not a directory); "
        "choose another folder or fix its permissions"]


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.tflite"
    atomic_write(target, b"old")

    def crash(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new and half written")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_rebuilds_only_what_changed(manifest: Manifest, tmp_path: Path) -> None:
    """A copy of the built PNet is reused as is; once its file is tampered with, it is rebuilt identically."""
    out = tmp_path / "models"
    out.mkdir()
    for name in (".pnet.stamp.json", "pnet.float.tflite", "pnet.int8.tflite"):
        shutil.copy(manifest.root / name, out / name)
    cache = ["--cache", str(edgeface_home())]
    reused = _convert("--out", str(out), "--only", "pnet", *cache)
    assert "pnet: up to date" in reused.stderr, reused.stderr[-2000:]
    original = (out / "pnet.int8.tflite").read_bytes()
    (out / "pnet.int8.tflite").write_bytes(original[:-10])
    rebuilt = _convert("--out", str(out), "--only", "pnet", *cache)
    assert "pnet: onnx2tf" in rebuilt.stderr, rebuilt.stderr[-2000:]
    assert (out / "pnet.int8.tflite").read_bytes() == original


def _tree_with(tmp_path: Path, path: str, old: str, new: str) -> Path:
    """A copy of the checkout's code with one edit in `path` (the edit must apply)."""
    tree = tmp_path / "tree"
    for folder in ("edgeface", "convert", "firmware_configs"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    source = (tree / path).read_text()
    assert old in source
    (tree / path).write_text(source.replace(old, new))
    return tree


def _check(tree: Path, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "convert", "--check", "--cache", str(edgeface_home())], cwd=tree,
                          capture_output=True, text=True, env={**os.environ, "EDGEFACE_DATA": str(data)}, timeout=900)


def test_a_rename_in_a_runtime_file_rebuilds_nothing(manifest: Manifest, data: Path, tmp_path: Path) -> None:
    """The build key follows the calibration tensors, not the runtime's source text (issue 15.1)."""
    tree = _tree_with(tmp_path, "edgeface/align.py", "_points(", "_checked_points(")
    done = _check(tree, data)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count(": up to date") == len(build.TARGETS)


def test_a_runtime_change_that_moves_the_tensors_rebuilds_what_they_feed(manifest: Manifest, data: Path,
                                                                         tmp_path: Path) -> None:
    tree = _tree_with(tmp_path, "edgeface/align.py", "[38.2946, 51.6963]", "[38.7946, 51.6963]")  # one eye 0.5 px
    done = _check(tree, data)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "mobilefacenet: would rebuild" in done.stderr
    assert {"retinaface-640: up to date", "pnet: up to date", "antispoofing: up to date"} <= set(
        line.split("] ", 1)[-1] for line in done.stderr.splitlines())


def test_a_graph_module_change_rebuilds_only_the_families_that_use_it(manifest: Manifest, data: Path,
                                                                      tmp_path: Path) -> None:
    """convert/mobilefacenet.py makes MobileFaceNet's graph and lends its builder to the anti-spoofing net's:
    an edit there rebuilds those two and no detector."""
    tree = _tree_with(tmp_path, "convert/mobilefacenet.py", "CLIP_QUANTILE = ", "CLIP_QUANTILE = 0.0 + ")
    done = _check(tree, data)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = set(line.split("] ", 1)[-1] for line in done.stderr.splitlines())
    assert {"mobilefacenet: would rebuild", "antispoofing: would rebuild"} <= lines
    assert {"retinaface-320: up to date", "retinaface-640: up to date", "pnet: up to date", "rnet: up to date",
            "onet: up to date"} <= lines


def test_a_retinaface_change_may_move_the_faces_the_face_fed_models_are_calibrated_on(manifest: Manifest,
                                                                                     data: Path,
                                                                                     tmp_path: Path) -> None:
    """`--check` cannot tell whether the float RetinaFace-640's faces will move before it is rebuilt: the models
    calibrated on them say they may rebuild (a build rebuilds them only if they do); P-Net is untouched."""
    tree = _tree_with(tmp_path, "convert/retinaface.py", "SCORE_FLOOR = ", "SCORE_FLOOR = 0.0 + ")
    done = _check(tree, data)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line.split("] ", 1)[-1] for line in done.stderr.splitlines()]
    assert {"retinaface-320: would rebuild", "retinaface-640: would rebuild", "pnet: up to date"} <= set(lines)
    assert sum(line.startswith(tuple(f"{key}: may rebuild" for key in build.FACE_FED)) for line in lines) == 4


def test_the_code_key_ignores_docstrings_and_comments() -> None:
    plain = 'def f(x):\n    return x + 1\n'
    reworded = '"""Module."""\n# a comment\ndef f(x):\n    """Add one."""\n    return x + 1  # why\n'
    assert build._code(ast.parse(plain)) == build._code(ast.parse(reworded))
    assert build._code(ast.parse(plain)) != build._code(ast.parse(plain.replace("1", "2")))
