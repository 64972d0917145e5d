"""The TFLite interpreter behind every model: runtime discovery, delegates, (de)quantisation by the manifest."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgeface.errors import ModelError
from edgeface.manifest import Manifest, ModelSpec, TensorSpec

EDGETPU_LIBRARY = "libedgetpu.so.1"
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


def make_interpreter(path: Path, threads: int = 2, delegate: str = "xnnpack") -> Any:
    """An interpreter for `path`. 'none' disables XNNPACK; 'edgetpu' falls back to the CPU with a warning."""
    module = _runtime()
    if delegate not in DELEGATES:
        raise ModelError(f"unknown delegate '{delegate}' (choose from {', '.join(DELEGATES)})")
    options: dict[str, Any] = {"model_path": str(path), "num_threads": threads}
    if delegate == "none":
        options["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    elif delegate == "edgetpu":
        try:
            options["experimental_delegates"] = [module.load_delegate(EDGETPU_LIBRARY)]
        except (ValueError, OSError, RuntimeError) as error:
            print(f"edgeface: warning: Edge TPU delegate unavailable ({error}); running {path.name} on the CPU",
                  file=sys.stderr)
    try:
        return module.Interpreter(**options)
    except (ValueError, RuntimeError) as error:
        raise ModelError(f"{path}: not a loadable TFLite model ({error}); rerun 'make models'") from None


def quantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Real values to the tensor's storage dtype (identity cast for float tensors)."""
    if spec.quantization is None:
        return values.astype(np.float32, copy=False)
    info = np.iinfo(np.dtype(spec.dtype))
    q = spec.quantization
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
            raise ModelError(f"{path}: model file missing; run 'make models'")
        if verify and hashlib.sha256(path.read_bytes()).hexdigest() != spec.sha256:
            raise ModelError(f"{path}: sha256 differs from the manifest (corrupt or replaced); rerun 'make models'")
        self.path = path
        self._interpreter = make_interpreter(path, threads, delegate)
        self._input_index = self._interpreter.get_input_details()[0]["index"]
        by_name = {d["name"]: d["index"] for d in self._interpreter.get_output_details()}
        missing = [o.name for o in spec.outputs if o.name not in by_name]
        if missing:
            raise ModelError(f"{path}: outputs {missing} named in the manifest are not in the model; rerun 'make models'")
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
