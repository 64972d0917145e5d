"""The model manifest: the one place that says how to feed and read every converted model.

The conversion (`convert/`) writes it beside the `.tflite` files; the runtime reads every constant (input layout and
quantisation, output roles, preprocessing, prior settings) from it and hard-codes none of them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeface.errors import ModelError

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"
PRECISIONS = ("int8", "float")
REINSTALL = "reinstall the models (from the board's bundle, or convert them on a workstation: python -m convert)"
"""What a message about missing or damaged models tells the user to do, on the board as on the workstation."""


def edgeface_home() -> Path:
    """edgeface's cache folder (source packages, sample photos, models): $EDGEFACE_HOME, else ~/.cache/edgeface."""
    configured = os.environ.get("EDGEFACE_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "edgeface"


def models_dir() -> Path:
    """Where the converted models live: $EDGEFACE_MODELS, else models/ in `edgeface_home()`."""
    configured = os.environ.get("EDGEFACE_MODELS")
    return Path(configured).expanduser() if configured else edgeface_home() / "models"


@dataclass(frozen=True)
class Quantization:
    """Affine int8 quantisation: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a TFLite model."""

    name: str
    role: str
    shape: tuple[int, ...]
    dtype: str
    quantization: Quantization | None
    meaning: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """Everything the runtime needs to know about one `.tflite` file."""

    key: str
    family: str
    precision: str
    file: str
    sha256: str
    size_bytes: int
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    preprocessing: dict[str, Any]
    source: dict[str, Any]
    converter: dict[str, str]
    calibration: dict[str, Any] | None = None
    decoder: dict[str, Any] = field(default_factory=dict)

    def output(self, role: str) -> TensorSpec:
        """The output tensor with this role (e.g. 'conf_s8')."""
        for spec in self.outputs:
            if spec.role == role:
                return spec
        raise ModelError(f"{self.file}: the manifest lists no output '{role}'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        """Inverse of `to_dict`."""
        def tensor(item: dict[str, Any]) -> TensorSpec:
            quant = item.get("quantization")
            return TensorSpec(
                name=item["name"], role=item["role"], shape=tuple(item["shape"]), dtype=item["dtype"],
                quantization=Quantization(**quant) if quant else None, meaning=item.get("meaning", ""),
            )

        fields = dict(data)
        fields["input"] = tensor(data["input"])
        fields["outputs"] = tuple(tensor(item) for item in data["outputs"])
        return cls(**fields)


def model_key(family: str, size: int | None = None) -> str:
    """The manifest key of a model family at an input size, e.g. 'retinaface-640' or 'mobilefacenet'."""
    return f"{family}-{size}" if size else family


@dataclass(frozen=True)
class Manifest:
    """All converted models, keyed by '<model key>.<precision>'."""

    root: Path
    version: int
    models: dict[str, ModelSpec]

    def get(self, key: str, precision: str) -> ModelSpec:
        """The spec of model `key` at `precision`, or a ModelError saying how to build it."""
        entry = self.models.get(f"{key}.{precision}")
        if entry is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelError(
                f"{self.root / MANIFEST_NAME}: no model '{key}.{precision}' (have: {known}); {REINSTALL}"
            )
        return entry

    def path(self, spec: ModelSpec) -> Path:
        """The `.tflite` file of a spec."""
        return self.root / spec.file

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as written to manifest.json."""
        return {
            "manifest_version": self.version,
            "models": {key: spec.to_dict() for key, spec in sorted(self.models.items())},
        }


def load_manifest(root: Path | None = None) -> Manifest:
    """Read `manifest.json` from `root` (default: `models_dir()`), with a clear error when absent or stale."""
    root = Path(root) if root is not None else models_dir()
    path = root / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        message = f"{path}: no model manifest; set EDGEFACE_MODELS to the models folder or {REINSTALL}"
        raise ModelError(message) from None
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: unreadable manifest ({error}); {REINSTALL}") from None
    version = data.get("manifest_version") if isinstance(data, dict) else None
    if version != MANIFEST_VERSION:
        raise ModelError(f"{path}: manifest version {version}, this edgeface reads {MANIFEST_VERSION}; {REINSTALL}")
    try:
        models = {key: ModelSpec.from_dict(item) for key, item in data["models"].items()}
    except (KeyError, TypeError) as error:
        raise ModelError(f"{path}: malformed manifest entry ({error}); {REINSTALL}") from None
    return Manifest(root=root, version=version, models=models)
