"""The device path (import edgeface, detect, embed) runs with torch, onnx, tensorflow, matplotlib, scipy and the
workstation tools (edgeface.tools) unavailable, and `detect` imports exactly the device modules listed here."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import subset

from edgeface.manifest import Manifest

BLOCKED = ("torch", "onnx", "onnxruntime", "onnx2tf", "tensorflow", "tf_keras", "keras", "cv2",
           "matplotlib", "scipy", "tflite", "edgeface.tools")
DETECT_MODULES = {
    "edgeface", "edgeface.access", "edgeface.align", "edgeface.analyzer", "edgeface.cli", "edgeface.detection",
    "edgeface.draw", "edgeface.embedder", "edgeface.errors", "edgeface.gallery", "edgeface.images",
    "edgeface.interpreter", "edgeface.liveness", "edgeface.manifest", "edgeface.mtcnn", "edgeface.nms",
    "edgeface.profiles", "edgeface.retinaface", "firmware_configs",
}
"""Every edgeface module `edgeface detect` loads: a new import on the device path shows up here first."""

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == blocked or name.startswith(blocked + ".") for blocked in BLOCKED):
                raise ImportError(f"{name} is blocked on the device path")

    BLOCKED = json.loads(sys.argv[1])
    sys.meta_path.insert(0, Block())
    from edgeface.cli import main
    code = main([sys.argv[2], "--json", sys.argv[3]])
    ours = sorted(m for m in sys.modules if m.split(".")[0] in ("edgeface", "firmware_configs"))
    loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
    print(json.dumps({"code": code, "loaded": loaded, "ours": ours}), file=sys.stderr)
""")


def _run(command: str, photo: Path) -> tuple[dict, dict]:
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(BLOCKED), command, str(photo)],
                            capture_output=True, text=True, timeout=300)
    return json.loads(result.stderr.strip().splitlines()[-1]), json.loads(result.stdout)


@pytest.mark.parametrize("command", ["detect", "embed"])
def test_the_device_commands_never_import_the_workstation_stack(manifest: Manifest, data: Path,
                                                                command: str) -> None:
    status, record = _run(command, subset(data / "group_photos", 1)[0])
    assert status["code"] == 0 and status["loaded"] == [], status
    assert record["faces"]
    if command == "embed":
        assert len(record["faces"][0]["embedding"]) == 192


def test_detect_imports_exactly_the_device_modules(manifest: Manifest, data: Path) -> None:
    status, _ = _run("detect", subset(data / "group_photos", 1)[0])
    assert set(status["ours"]) == DETECT_MODULES


MAKE_TARGET = re.compile(r"\bmake\s+(models|demo|edgetpu|install|bench|bundle|test|check-quant|aarch64-proof)\b")


def test_no_device_message_sends_the_user_to_make() -> None:
    """The board has no checkout and no Makefile: no string in the device package (docstrings aside) names a
    make target."""
    package = Path(__file__).resolve().parents[1] / "edgeface"
    found = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
                      and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
        found += [f"{path.name}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and MAKE_TARGET.search(node.value)]
    assert found == []
