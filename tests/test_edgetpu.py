"""`edgeface check-edgetpu`: the verdict on the project's models follows Coral's op list; a float model fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deploy.bundle import _copy_models, profile_models
from edgeface import interpreter
from edgeface.cli import main
from edgeface.errors import ModelError
from edgeface.interpreter import EDGETPU_FOLDER, TFLiteModel
from edgeface.manifest import MANIFEST_NAME, Manifest, load_manifest
from edgeface.profiles import load_profile
from edgeface.tools import edgetpu
from edgeface.tools.edgetpu import EDGETPU_OPS, edgetpu_problems
from edgeface.tools.inspection import model_ops


def int8_models(manifest: Manifest) -> dict[str, Path]:
    return {key: manifest.path(spec) for key, spec in sorted(manifest.models.items()) if spec.precision == "int8"}


def test_int8_verdicts_follow_the_supported_op_list(manifest: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    verdicts = {key: edgetpu_problems(path) for key, path in int8_models(manifest).items()}
    # What the current conversions give: RetinaFace's LEAKY_RELU and DEPTH_TO_SPACE are not on Coral's list.
    named = {problem.split()[1] for problem in verdicts["retinaface-640.int8"] if problem.startswith("op ")}
    assert {"LEAKY_RELU", "DEPTH_TO_SPACE"} <= named
    assert all(verdicts[f"{key}.int8"] == [] for key in ("mobilefacenet", "pnet", "rnet", "onet"))
    # Strike an op the model uses off the list: the verdict names it, counted as the flatbuffer reader counts it.
    path = int8_models(manifest)["mobilefacenet.int8"]
    monkeypatch.setattr(edgetpu, "EDGETPU_OPS", EDGETPU_OPS - {"CONV_2D"})
    assert edgetpu_problems(path) == [f"op CONV_2D x{model_ops(path).count('CONV_2D')} is not supported by the "
                                      "Edge TPU"]


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


def _copy(manifest: Manifest, keys: list[str], folder: Path) -> Manifest:
    """A models folder holding only these manifest entries, where a test can add Edge TPU compiles."""
    folder.mkdir(exist_ok=True)
    keep = {key: manifest.models[key] for key in keys}
    for spec in keep.values():
        shutil.copy2(manifest.path(spec), folder / spec.file)
    (folder / MANIFEST_NAME).write_text(json.dumps(Manifest(folder, manifest.version, keep).to_dict()))
    return load_manifest(folder)


@pytest.fixture
def models_copy(manifest: Manifest, tmp_path: Path) -> Manifest:
    return _copy(manifest, ["mobilefacenet.int8", "pnet.int8"], tmp_path / "models")


def _compile(models: Manifest, key: str, source_sha256: str) -> Path:
    """Stand in for `make edgetpu`: a copy of the int8 file as its compile, and the sidecar naming its source."""
    spec = models.get(key, "int8")
    compiled = models.root / EDGETPU_FOLDER / f"{Path(spec.file).stem}_edgetpu.tflite"
    compiled.parent.mkdir(exist_ok=True)
    shutil.copy2(models.path(spec), compiled)
    compiled.with_suffix(".source-sha256").write_text(f"{source_sha256}  {spec.file}\n")
    return compiled


real_make_interpreter = interpreter.make_interpreter
real_runtime = interpreter._runtime


def _runtime_without_edgetpu() -> object:
    """The real runtime module, except that load_delegate fails as it does without libedgetpu."""
    module = real_runtime()

    class NoEdgeTpu:
        def __getattr__(self, name: str) -> object:
            return getattr(module, name)

        @staticmethod
        def load_delegate(library: str) -> None:
            raise ValueError(f"Failed to load delegate from {library}")

    return NoEdgeTpu()


def test_edgetpu_without_a_compile_runs_on_the_cpu_with_one_warning(
        models_copy: Manifest, capsys: pytest.CaptureFixture[str]) -> None:
    spec = models_copy.get("mobilefacenet", "int8")
    faces = np.random.default_rng(0).integers(0, 256, (1, 112, 112, 3)).astype(np.float32)
    cpu = TFLiteModel(models_copy, spec, delegate="xnnpack").run(faces)["embedding"]
    interpreter._warned.clear()
    on_tpu = [TFLiteModel(models_copy, spec, delegate="edgetpu") for _ in range(2)]
    assert all(model.path == models_copy.path(spec) for model in on_tpu)
    np.testing.assert_array_equal(on_tpu[0].run(faces)["embedding"], cpu)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgeface: warning")]
    assert len(warnings) == 1 and "compile it with edgetpu_compiler" in warnings[0]


def test_edgetpu_runs_the_compiled_model_with_the_delegate(models_copy: Manifest,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = _compile(models_copy, "mobilefacenet", models_copy.get("mobilefacenet", "int8").sha256)
    delegate = object()
    calls = []
    monkeypatch.setattr(interpreter, "edgetpu_delegate", lambda: delegate)
    monkeypatch.setattr(interpreter, "make_interpreter",
                        lambda path, threads, cpu, edgetpu: calls.append((path, cpu, edgetpu)) or
                        real_make_interpreter(path, threads, cpu))
    model = TFLiteModel(models_copy, models_copy.get("mobilefacenet", "int8"), delegate="edgetpu")
    assert model.path == compiled and calls == [(compiled, "xnnpack", delegate)]
    # P-Net is resized per pyramid level, which a compiled model cannot be: it stays on the CPU.
    _compile(models_copy, "pnet", models_copy.get("pnet", "int8").sha256)
    calls.clear()
    pnet = TFLiteModel(models_copy, models_copy.get("pnet", "int8"), delegate="edgetpu")
    assert pnet.path == models_copy.path(models_copy.get("pnet", "int8")) and calls[0][2] is None


def test_edgetpu_compiled_without_the_device_falls_back_to_the_int8_file(
        models_copy: Manifest, monkeypatch: pytest.MonkeyPatch) -> None:
    _compile(models_copy, "mobilefacenet", models_copy.get("mobilefacenet", "int8").sha256)
    monkeypatch.setattr(interpreter, "_runtime", _runtime_without_edgetpu)
    spec = models_copy.get("mobilefacenet", "int8")
    assert TFLiteModel(models_copy, spec, delegate="edgetpu").path == models_copy.path(spec)


def test_a_stale_edgetpu_compile_is_an_error_naming_it(models_copy: Manifest) -> None:
    compiled = _compile(models_copy, "mobilefacenet", "0" * 64)
    with pytest.raises(ModelError, match=f"{compiled}: not compiled from the current .*compile it again with edgetpu_compiler"):
        TFLiteModel(models_copy, models_copy.get("mobilefacenet", "int8"), delegate="edgetpu")


def test_coral_bundle_carries_the_compiles(manifest: Manifest, tmp_path: Path) -> None:
    profile = load_profile("coral-usb")
    models = _copy(manifest, list(profile_models(profile, manifest)), tmp_path / "models")
    compiled = [_compile(models, spec.key, spec.sha256) for spec in models.models.values()]
    _copy_models(profile, models, tmp_path / "bundle")
    carried = sorted(path.name for path in (tmp_path / "bundle" / EDGETPU_FOLDER).iterdir())
    assert carried == sorted([p.name for p in compiled] + [p.with_suffix(".source-sha256").name for p in compiled])
