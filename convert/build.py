"""`make models`: build every float and int8 model and the manifest, incrementally and atomically.

The targets (convert.target.Target) come from each family's graph module (`retinaface.target(size)`, ...).

Each model key (e.g. 'retinaface-640') is rebuilt only when its build key changes: the source archive's
sha256, the converter versions, the conversion code it depends on (`convert/` but the other families' graph
modules, docstrings and comments left out) and the digest of the calibration tensors themselves, as the
runtime's preprocessing makes them. The runtime's source text is not in the key: a refactor
of `edgeface/` that leaves every calibration tensor byte-identical rebuilds nothing, one that changes a tensor
rebuilds the models fed by it. Outputs are written through temporary files; a model's stamp (its manifest
entries and build key) is written last, so an interrupted build is simply redone.
"""

from __future__ import annotations

import ast
import hashlib
import json
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from convert import ConvertError, antispoofing, calibration, mobilefacenet, mtcnn, retinaface, rewrite, sources
from convert.equalize import channel_ranges, equalize
from convert.target import Target
from convert.tflite import atomic_write, full_integer, run_onnx2tf
from edgeface.interpreter import TFLiteModel, make_interpreter
from edgeface.manifest import MANIFEST_NAME, MANIFEST_VERSION, Manifest, ModelSpec, Quantization, TensorSpec
from edgeface.retinaface import RetinaFace
from edgeface.tools.inspection import float_leftovers

CONVERTER_PACKAGES = ("onnx2tf", "tensorflow", "onnx", "onnxsim", "torch")
OPSET = 13
RETINAFACE_SIZES = (320, 640)
FACE_FINDER = "retinaface-640"
FACE_FED = ("rnet", "onet", "mobilefacenet", "antispoofing")  # calibrated on faces the float FACE_FINDER finds


TARGETS = [*(retinaface.target(s) for s in RETINAFACE_SIZES), *(mtcnn.target(n) for n in mtcnn.NETS),
           mobilefacenet.target(), antispoofing.target()]


def pinned_versions() -> dict[str, str]:
    """The `==` pins of pyproject's `convert` extra, as the installed edgeface metadata records them."""
    pins = {}
    for requirement in metadata.requires("edgeface") or []:
        spec, _, marker = requirement.partition(";")
        if 'extra == "convert"' in marker and "==" in spec:
            name, version = (part.strip() for part in spec.split("=="))
            pins[name] = version
    return pins


def converter_versions() -> dict[str, str]:
    """Installed versions of the conversion stack (part of every build key), checked against the pins."""
    try:
        installed = {name: metadata.version(name) for name in CONVERTER_PACKAGES}
        pins = pinned_versions()
    except metadata.PackageNotFoundError as error:
        raise ConvertError(f"{error.name} is not installed; run 'make install'") from None
    for name, version in installed.items():
        pin = pins.get(name)
        if pin is not None and version.split("+")[0] != pin:
            raise ConvertError(f"{name} {version} is installed, but the conversion is validated with {name}=={pin}; "
                               "run 'make install'")
    return installed


def writable_folder(folder: Path, what: str) -> None:
    """Create `folder` and prove it takes a file, or say which folder and why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise ConvertError(f"{folder}: cannot write {what} here ({error.strerror}); "
                           "choose another folder or fix its permissions") from None


FAMILY_MODULES = {target.family: target.make_onnx.__module__.rsplit(".", 1)[-1] for target in TARGETS}
"""The convert module that makes each family's ONNX graph: the other families' models do not depend on its code
(those calibrated on the float RetinaFace-640's faces depend on that model's output, through the tensor digest)."""


def _code(tree: ast.Module) -> str:
    """A parsed module without its comments and bare string statements (docstrings): what it does, not says."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            kept = [statement for statement in body if not (isinstance(statement, ast.Expr)
                    and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str))]
            node.body = kept or [ast.Pass()]
    return ast.dump(tree)


def convert_imports(tree: ast.Module) -> set[str]:
    """The convert modules a parsed module imports ('from convert.tflite import ...', 'from convert import mtcnn')."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "convert":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("convert."):
            found.add(node.module.split(".")[1])
    return found


def code_digests() -> dict[str, str]:
    """Per family, sha256 over the conversion code its models depend on, docstrings and comments left out: every
    convert module but the other families' graph modules (FAMILY_MODULES) that its own does not import. The
    runtime code it calls is covered by the tensor digest instead."""
    parsed = {path.stem: ast.parse(path.read_text(), str(path))
              for path in sorted(Path(__file__).resolve().parent.glob("*.py"))}
    imports = {name: convert_imports(tree) for name, tree in parsed.items()}
    trees = {name: _code(tree) for name, tree in parsed.items()}
    graph_modules = set(FAMILY_MODULES.values())
    digests = {}
    for family, module in FAMILY_MODULES.items():
        needed, pending = set(), [module]
        while pending:
            name = pending.pop()
            needed.add(name)
            pending += [other for other in imports[name] & graph_modules - needed]
        digest = hashlib.sha256()
        for name, tree in trees.items():
            if name in needed or name not in graph_modules:
                digest.update(name.encode() + tree.encode())
        digests[family] = digest.hexdigest()
    return digests


def _tensor(detail: dict[str, Any], role: str, meaning: str) -> TensorSpec:
    scale, zero_point = detail["quantization"]
    return TensorSpec(
        name=detail["name"], role=role, shape=tuple(int(v) for v in detail["shape"]),
        dtype=np.dtype(detail["dtype"]).name,
        quantization=Quantization(float(scale), int(zero_point)) if scale else None, meaning=meaning,
    )


def _nhwc(shape: list[int]) -> tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1]) if len(shape) == 4 else tuple(shape)


def output_shapes(model: onnx.ModelProto, what: Path) -> dict[str, tuple[int, ...]]:
    """Each ONNX output's NHWC shape, by name: what identifies it in the TFLite models (onnx2tf renames them)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for output in model.graph.output:
        shape = _nhwc([d.dim_value for d in output.type.tensor_type.shape.dim])
        if shape in shapes.values():
            raise ConvertError(f"{what}: two outputs share the shape {shape}; cannot tell them apart")
        shapes[output.name] = shape
    return shapes


def describe_model(target: Target, model: onnx.ModelProto, path: Path, precision: str,
                   common: dict[str, Any]) -> ModelSpec:
    """The manifest entry of a built `.tflite`, outputs identified by shape (onnx2tf renames and reorders them)."""
    interpreter = make_interpreter(path, threads=1, delegate="none")
    roles = {shape: name for name, shape in output_shapes(model, path).items()}
    outputs = []
    for detail in interpreter.get_output_details():
        role = roles.get(tuple(int(v) for v in detail["shape"]))
        if role is None:
            raise ConvertError(f"{path}: output {detail['name']} {detail['shape']} matches no ONNX output")
        outputs.append(_tensor(detail, role, target.meanings.get(role.split("_s")[0], "")))
    data = path.read_bytes()
    return ModelSpec(
        key=target.key, family=target.family, precision=precision, file=path.name,
        sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
        input=_tensor(interpreter.get_input_details()[0], "image", "raw RGB pixels"),
        outputs=tuple(sorted(outputs, key=lambda o: o.role)),
        preprocessing=target.preprocessing, decoder=target.decoder,
        source={**target.source.describe(), "member": target.member},
        converter=common["converter"], calibration=common["calibration"] if precision == "int8" else None,
    )


def _onnx2tf(model: onnx.ModelProto, onnx_path: Path, sample: np.ndarray) -> tuple[Path, Path]:
    """Save `model` at `onnx_path` and convert it with onnx2tf beside it: (SavedModel folder, float .tflite)."""
    onnx.save(model, onnx_path)
    return run_onnx2tf(onnx_path, onnx_path.parent, sample)


class Builder:
    """Builds the targets into `out`, reusing what is up to date."""

    def __init__(self, out: Path, cache: Path) -> None:
        self.out, self.cache = out, cache
        self.archives: dict[str, Path] = {}
        self.versions = converter_versions()
        self.code = code_digests()  # as the build started
        insightface = sources.fetch(sources.INSIGHTFACE, cache / "sources")
        self.sample_folder = cache / "sample_images"
        for name, data in sources.sample_images(insightface).items():
            if not (self.sample_folder / name).exists():
                atomic_write(self.sample_folder / name, data)
        self.calib = calibration.calibration_set(self.sample_folder)
        self._tensor_digests: dict[str, str] = {}

    def tensor_digest(self, target: Target) -> str:
        """sha256 over every calibration tensor of `target` (and onnx2tf's sample), made by the runtime code."""
        if target.key not in self._tensor_digests:
            if target.family in FACE_FED:
                self._ensure_faces()
            digest = hashlib.sha256()
            for tensor in (calibration.onnx2tf_sample(self.calib), *target.samples(self.calib)):
                digest.update(f"{tensor.dtype}{tensor.shape}".encode())
                digest.update(np.ascontiguousarray(tensor).tobytes())
            self._tensor_digests[target.key] = digest.hexdigest()
        return self._tensor_digests[target.key]

    def build_key(self, target: Target) -> str:
        """Everything a target's outputs depend on, hashed."""
        record = {"source": target.source.sha256, "member": target.member, "converter": self.versions,
                  "code": self.code[target.family], "tensors": self.tensor_digest(target), "opset": OPSET,
                  "manifest": MANIFEST_VERSION}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    def stamp_path(self, target: Target) -> Path:
        return self.out / f".{target.key}.stamp.json"

    def up_to_date(self, target: Target) -> bool:
        """True when the stamp matches the build key and the files it lists are intact."""
        try:
            stamp = json.loads(self.stamp_path(target).read_text())
        except (OSError, ValueError):
            return False
        if stamp.get("build_key") != self.build_key(target):
            return False
        for entry in stamp["models"].values():
            path = self.out / entry["file"]
            if not path.is_file() or sources.sha256_file(path) != entry["sha256"]:
                return False
        return True

    def _ensure_faces(self) -> None:
        """Run the float RetinaFace-640 over the calibration photos once (for R/O-Net and MobileFaceNet)."""
        if self.calib.faces:
            return
        reference = next(t for t in TARGETS if t.key == FACE_FINDER)
        manifest = Manifest(self.out, MANIFEST_VERSION, self._entries([reference]))
        detector = RetinaFace(TFLiteModel(manifest, manifest.get(FACE_FINDER, "float"), threads=2))
        self.calib.faces = {i: detector.detect(photo, 0.5, 0.4) for i, photo in enumerate(self.calib.photos())}

    def build(self, target: Target, log: Callable[[str], None]) -> None:
        """Build one target's float and int8 models and its stamp."""
        archive = sources.fetch(target.source, self.cache / "sources")
        model = target.make_onnx(sources.read_member(archive, target.member))
        if target.family in FACE_FED:
            self._ensure_faces()
        if target.equalize:
            log(f"{target.key}: activation equalization on {self.calib.name}")
            model = equalize(model, channel_ranges(model, target.samples(self.calib)))
        rewritten = rewrite.for_xnnpack(model)
        int8_graph, split = rewrite.for_int8(model)
        with tempfile.TemporaryDirectory(dir=self.cache, prefix=f"work-{target.key}-") as work_dir:
            work = Path(work_dir)
            sample = calibration.onnx2tf_sample(self.calib)
            log(f"{target.key}: onnx2tf")
            saved_model, float_path = _onnx2tf(model, work / f"{target.key}.onnx", sample)
            if split:
                log(f"{target.key}: {split} PReLUs split for int8 XNNPACK kernels (convert.rewrite), onnx2tf again")
                saved_model, _ = _onnx2tf(int8_graph, work / f"{target.key}-int8.onnx", sample)
            log(f"{target.key}: int8 calibration on {self.calib.name}")
            count = sum(1 for _ in target.samples(self.calib))
            shapes = output_shapes(model, work / f"{target.key}.onnx")
            unknown = sorted(set(target.output_floors or {}) - set(shapes))
            if unknown:
                raise ConvertError(f"{target.key}: output_floors names {unknown}, not outputs ({sorted(shapes)})")
            floors = {shapes[name]: floor for name, floor in (target.output_floors or {}).items()}
            int8 = full_integer(saved_model, lambda: target.samples(self.calib), target.clip_quantile,
                                target.bias_correct, floors, target.leaky_ranges, target.learned_rounding,
                                target.reader_aware_ranges)
            int8_path = work / f"{target.key}.int8.tflite"
            int8_path.write_bytes(int8)
            leftovers = float_leftovers(int8_path)
            if leftovers:
                raise ConvertError(f"{target.key}: int8 model is not full-integer: {', '.join(leftovers[:5])}")
            method = {"activation_equalization": target.equalize, "clip_quantile": target.clip_quantile,
                      "bias_correction": target.bias_correct, "output_floors": target.output_floors,
                      "leaky_relu_input_ranges": target.leaky_ranges, "learned_rounding": target.learned_rounding,
                      "reader_aware_ranges": target.reader_aware_ranges,
                      "ops_rewritten_for_xnnpack": rewritten + split}
            common = {"converter": self.versions, "calibration": {**self.calib.describe(count), **method}}
            entries = {}
            for precision, path in (("float", float_path), ("int8", int8_path)):
                final = self.out / f"{target.key}.{precision}.tflite"
                atomic_write(final, path.read_bytes())
                entries[f"{target.key}.{precision}"] = describe_model(target, model, final, precision, common)
        stamp = {"build_key": self.build_key(target),
                 "models": {key: spec.to_dict() for key, spec in entries.items()}}
        atomic_write(self.stamp_path(target), json.dumps(stamp, indent=1).encode())

    def _entries(self, targets: list[Target]) -> dict[str, ModelSpec]:
        entries: dict[str, ModelSpec] = {}
        for target in targets:
            stamp = json.loads(self.stamp_path(target).read_text())
            entries.update({key: ModelSpec.from_dict(item) for key, item in stamp["models"].items()})
        return entries

    def write_manifest(self) -> Path:
        """Assemble manifest.json from the stamps of every target built so far."""
        built = [target for target in TARGETS if self.stamp_path(target).is_file()]
        manifest = Manifest(self.out, MANIFEST_VERSION, self._entries(built))
        path = self.out / MANIFEST_NAME
        atomic_write(path, json.dumps(manifest.to_dict(), indent=1).encode())
        return path


def build_all(out: Path, cache: Path, only: list[str] | None, log: Callable[[str], None],
              check: bool = False) -> Path | list[str]:
    """Build (or reuse) every target, then write the manifest and return its path; with `check`, build nothing
    and return the keys that would be rebuilt."""
    writable_folder(out, "models")
    writable_folder(cache, "the conversion cache")
    builder = Builder(out, cache)
    stale = []
    for target in TARGETS:
        if only and target.key not in only:
            continue
        if builder.up_to_date(target):
            if check and target.family in FACE_FED and FACE_FINDER in stale:  # its faces may move with that model
                log(f"{target.key}: may rebuild (calibrated on the faces the float {FACE_FINDER} finds, which would)")
                stale.append(target.key)
            else:
                log(f"{target.key}: up to date")
            continue
        stale.append(target.key)
        if check:
            log(f"{target.key}: would rebuild")
        else:
            builder.build(target, log)
    return stale if check else builder.write_manifest()

