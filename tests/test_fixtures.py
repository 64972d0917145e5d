"""The shared fixtures cannot hide a missing input under CI, and the CLI tests that need no face need no data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def test_missing_data_fails_under_ci(tmp_path: Path) -> None:
    test = "tests/test_images.py::test_box_drawn_on_a_real_photo_lands_where_mapped"
    done = _pytest(test, CI="true", EDGEFACE_DATA=str(tmp_path / "absent"))
    assert done.returncode == 1 and "data missing under CI" in done.stdout, done.stdout
    done = _pytest(test, CI="false", EDGEFACE_DATA=str(tmp_path / "absent"))
    assert done.returncode == 0 and "skipped" in done.stdout, done.stdout


def test_faceless_cli_tests_run_without_data_or_models(tmp_path: Path) -> None:
    done = _pytest("tests/test_cli.py", "-k", "bad_option or unknown_profile or missing_models", CI="true",
                   EDGEFACE_DATA=str(tmp_path / "absent"), EDGEFACE_MODELS=str(tmp_path / "no-models"))
    assert done.returncode == 0 and "5 passed" in done.stdout and "skipped" not in done.stdout, done.stdout
