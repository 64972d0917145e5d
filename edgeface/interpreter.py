"""The TFLite interpreter behind every model: runtime discovery, delegates, (de)quantisation by the manifest."""

from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.errors import ModelError
from edgeface.manifest import REINSTALL, Manifest, ModelSpec, TensorSpec

EDGETPU_LIBRARY = "libedgetpu.so.1"
EDGETPU_FOLDER = "edgetpu"
"""The folder of the models folder holding the Edge TPU compiles (edgetpu_compiler, on a workstation: README,
"Coral"): `<model>_edgetpu.tflite` and the sha256 of the int8 file each was compiled from."""
DELEGATES = ("xnnpack", "edgetpu", "none")


def _runtime() -> Any:
    """The interpreter module: tflite_runtime, else ai_edge_litert, else tensorflow.lite."""
    try:
        from tflite_runtime import interpreter as module
    except ImportError:
        try:
            from ai_edge_litert import interpreter as module
        except ImportError:
            try:
                from tensorflow.lite.python import interpreter as module
            except ImportError:
                raise ModelError(
                    "no TFLite runtime found: pip install tflite-runtime (or ai-edge-litert)"
                ) from None
    return module


def runtime_name() -> str:
    """The TFLite runtime in use, by package: tflite_runtime, ai_edge_litert or tensorflow."""
    return _runtime().__name__.split(".")[0]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """Print a warning to stderr the first time it comes up in this process."""
    if message not in _warned:
        _warned.add(message)
        print(f"edgeface: warning: {message}", file=sys.stderr)


def edgetpu_delegate() -> Any | None:
    """A fresh Edge TPU delegate, or None (with one warning per process) when libedgetpu or the device is missing."""
    try:
        return _runtime().load_delegate(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as error:
        _warn_once(f"Edge TPU delegate unavailable ({error}); the models run on the CPU")
        return None


def edgetpu_compiled(manifest: Manifest, spec: ModelSpec) -> Path | None:
    """The Edge TPU compile of `spec`'s file in the models folder, or None (with one warning) if there is none.

    None for a resizable model (P-Net changes shape per pyramid level; a compiled model has fixed shapes). A
    compile of other bytes than the manifest's (the models were rebuilt since) is an error, not a fallback.
    """
    if spec.preprocessing.get("resizable"):
        return None
    compiled = manifest.root / EDGETPU_FOLDER / f"{Path(spec.file).stem}_edgetpu.tflite"
    if not compiled.is_file():
        _warn_once(f"no Edge TPU compile of {spec.file} in {compiled.parent}; compile it with edgetpu_compiler "
                   f"on a workstation (README, 'Coral'); running it on the CPU")
        return None
    source = compiled.with_suffix(".source-sha256")
    if not source.is_file() or source.read_text().split()[:1] != [spec.sha256]:
        raise ModelError(f"{compiled}: not compiled from the current {spec.file} ({source.name} differs or is "
                         "missing); compile it again with edgetpu_compiler")
    return compiled


def make_interpreter(path: Path, threads: int = 2, delegate: str = "xnnpack", edgetpu: Any | None = None,
                     keep_tensors: bool = False) -> Any:
    """An interpreter for `path` on the CPU ('xnnpack', or 'none' for TFLite's own kernels only); with an
    `edgetpu` delegate (`edgetpu_delegate()`), a compiled model's Edge TPU ops run there. `keep_tensors` keeps
    every intermediate tensor readable after `invoke` (TFLite's own kernels only: no delegate)."""
    module = _runtime()
    if delegate not in ("xnnpack", "none"):
        raise ModelError(f"unknown CPU delegate '{delegate}' (choose from xnnpack, none)")
    options: dict[str, Any] = {"model_path": str(path), "num_threads": threads}
    if keep_tensors:
        options["experimental_preserve_all_tensors"] = True
    if delegate == "none":
        options["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if edgetpu is not None:
        options["experimental_delegates"] = [edgetpu]
    try:
        with warnings.catch_warnings():  # LiteRT warns that keeping every tensor is for debugging: it is here
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            return module.Interpreter(**options)
    except (ValueError, RuntimeError) as error:
        raise ModelError(f"{path}: not a loadable TFLite model ({error}); {REINSTALL}") from None


def quantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Real values to the tensor's storage dtype (identity cast for float tensors)."""
    if spec.quantization is None:
        return values.astype(np.float32, copy=False)
    info = np.iinfo(np.dtype(spec.dtype))
    q = spec.quantization
    if q.scale == 1.0 and q.zero_point == -128 and values.dtype == np.uint8 and spec.dtype == "int8":
        return (values ^ np.uint8(0x80)).view(np.int8)  # v - 128 in one pass: every int8 model's raw-pixel input
    if q.scale == 1.0 and values.dtype == np.uint8:
        return np.clip(values.astype(np.int16) + q.zero_point, info.min, info.max).astype(spec.dtype)
    return np.clip(np.round(values / q.scale) + q.zero_point, info.min, info.max).astype(spec.dtype)


def dequantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Stored tensor values to float32 real values."""
    if spec.quantization is None:
        return values.astype(np.float32, copy=False)
    q = spec.quantization
    return (values.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)


class TFLiteModel:
    """One model from the manifest: feed real-valued NHWC input, get real-valued outputs by role."""

    def __init__(self, manifest: Manifest, spec: ModelSpec, threads: int = 2, delegate: str = "xnnpack",
                 verify: bool = True) -> None:
        self.spec = spec
        path = manifest.path(spec)
        if not path.is_file():
            raise ModelError(f"{path}: model file missing; {REINSTALL}")
        if verify and hashlib.sha256(path.read_bytes()).hexdigest() != spec.sha256:
            raise ModelError(f"{path}: sha256 differs from the manifest (corrupt or replaced); {REINSTALL}")
        if delegate not in DELEGATES:
            raise ModelError(f"unknown delegate '{delegate}' (choose from {', '.join(DELEGATES)})")
        edgetpu = None
        if delegate == "edgetpu":
            compiled = edgetpu_compiled(manifest, spec)
            edgetpu = edgetpu_delegate() if compiled else None
            path = compiled if compiled and edgetpu else path
            delegate = "xnnpack"  # on the CPU: the ops the Edge TPU does not take, or the whole model
        self.path = path
        self._interpreter = make_interpreter(path, threads, delegate, edgetpu)
        self._input_index = self._interpreter.get_input_details()[0]["index"]
        by_name = {d["name"]: d["index"] for d in self._interpreter.get_output_details()}
        missing = [o.name for o in spec.outputs if o.name not in by_name]
        if missing:
            raise ModelError(f"{path}: outputs {missing} named in the manifest are not in the model; {REINSTALL}")
        self._outputs = [(o, by_name[o.name]) for o in spec.outputs]
        self._shape: tuple[int, ...] = ()
        self._allocate(tuple(spec.input.shape))

    def _allocate(self, shape: tuple[int, ...]) -> None:
        if shape != self._shape:
            if shape != tuple(self.spec.input.shape) or self._shape:
                self._interpreter.resize_tensor_input(self._input_index, list(shape), strict=False)
            self._interpreter.allocate_tensors()
            self._shape = shape

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The NHWC input shape currently allocated."""
        return self._shape

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Invoke on an N x H x W x C batch of real values (raw pixels); outputs are dequantised, keyed by role."""
        self._allocate(tuple(batch.shape))
        self._interpreter.set_tensor(self._input_index, quantize(batch, self.spec.input))
        self._interpreter.invoke()
        return {spec.role: dequantize(self._interpreter.get_tensor(index), spec) for spec, index in self._outputs}
