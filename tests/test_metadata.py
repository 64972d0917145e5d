"""The package metadata and README claim what the code needs: tomllib (Python 3.11) and Pillow's font_size=."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_python_and_pillow_floors() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"  # edgeface.profiles reads TOML with tomllib
    [pillow] = [d for d in project["dependencies"] if d.startswith("Pillow")]
    floor = tuple(int(v) for v in re.fullmatch(r"Pillow>=(\d+)\.(\d+)", pillow).groups())
    assert floor >= (10, 1)  # ImageDraw.text(font_size=) in edgeface.draw
    readme = (ROOT / "README.md").read_text()
    assert "Python 3.11+" in readme and "3.10" not in readme
