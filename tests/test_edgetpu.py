"""`edgeface check-edgetpu`: the verdict on the project's models follows Coral's op list; a float model fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeface.cli import main
from edgeface.edgetpu import EDGETPU_OPS, edgetpu_problems
from edgeface.inspection import model_ops
from edgeface.manifest import Manifest


def int8_models(manifest: Manifest) -> dict[str, Path]:
    return {key: manifest.path(spec) for key, spec in sorted(manifest.models.items()) if spec.precision == "int8"}


def test_int8_verdicts_follow_the_supported_op_list(manifest: Manifest) -> None:
    verdicts = {}
    for key, path in int8_models(manifest).items():
        unsupported = sorted(set(model_ops(path)) - EDGETPU_OPS)
        problems = edgetpu_problems(path)
        assert problems == [f"op {op} x{model_ops(path).count(op)} is not supported by the Edge TPU"
                            for op in unsupported], key
        verdicts[key] = unsupported
    # What the current conversions give (LEAKY_RELU and MIRROR_PAD are not on Coral's list; PRELU is).
    if "LEAKY_RELU" in model_ops(manifest.path(manifest.get("retinaface-640", "int8"))):
        assert "LEAKY_RELU" in verdicts["retinaface-640.int8"]
    assert verdicts["mobilefacenet.int8"] == [] and verdicts["pnet.int8"] == []
    assert "PRELU" in EDGETPU_OPS and "LEAKY_RELU" not in EDGETPU_OPS


def test_float_model_fails(manifest: Manifest) -> None:
    problems = edgetpu_problems(manifest.path(manifest.get("mobilefacenet", "float")))
    assert problems and problems[0].startswith("not full-integer: ")


def test_cli_exit_codes_and_names_what_cannot_map(manifest: Manifest, capsys: pytest.CaptureFixture[str]) -> None:
    passing = manifest.path(manifest.get("mobilefacenet", "int8"))
    assert main(["check-edgetpu", str(passing)]) == 0
    assert capsys.readouterr().out == f"{passing}: maps to the Edge TPU\n"
    failing = manifest.path(manifest.get("mobilefacenet", "float"))
    assert main(["check-edgetpu", str(passing), str(failing)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1:3] == [f"{failing}: cannot fully map to the Edge TPU", "  " + edgetpu_problems(failing)[0]]
