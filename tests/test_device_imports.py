"""The device path (import edgeface, detect, embed) runs with torch, onnx, tensorflow, matplotlib and scipy
unavailable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import subset
from edgeface.manifest import Manifest

BLOCKED = ("torch", "onnx", "onnxruntime", "onnx2tf", "tensorflow", "tf_keras", "keras", "cv2",
           "matplotlib", "scipy")

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked on the device path")

    BLOCKED = set(json.loads(sys.argv[1]))
    sys.meta_path.insert(0, Block())
    from edgeface.cli import main
    code = main(["embed", "--json", sys.argv[2]])
    loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
""")


def test_detect_and_embed_never_import_the_workstation_stack(manifest: Manifest, data: Path) -> None:
    photo = subset(data / "group_photos", 1)[0]
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(BLOCKED), str(photo)],
                            capture_output=True, text=True, timeout=300)
    status = json.loads(result.stderr.strip().splitlines()[-1])
    assert status == {"code": 0, "loaded": []}, result.stderr
    record = json.loads(result.stdout)
    assert record["faces"] and len(record["faces"][0]["embedding"]) == 192
