"""The Python API: `FaceAnalyzer(profile="rpi4").detect(image)` -> list of `Face`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from edgeface.detection import Detections
from edgeface.embedder import Embedder
from edgeface.errors import ImageError, ModelError
from edgeface.gallery import Gallery
from edgeface.images import ImageInput, content_sha256, load_image
from edgeface.interpreter import TFLiteModel
from edgeface.liveness import Liveness
from edgeface.manifest import Manifest, ModelSpec, load_manifest, model_key
from edgeface.mtcnn import CascadeSettings, Mtcnn
from edgeface.profiles import Profile, load_profile
from edgeface.retinaface import RetinaFace

if TYPE_CHECKING:
    from edgeface.tracker import StreamFrame


@dataclass
class Face:
    """One detected face in original-image pixels; embedding and identity are filled in on request."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: list[tuple[float, float]]
    embedding: np.ndarray | None = None
    identity: str | None = None
    similarity: float | None = None
    liveness: float | None = None
    live: bool | None = None

    @property
    def area(self) -> float:
        """Box area in pixels (used to pick the largest face)."""
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def to_json(self) -> dict[str, object]:
        """The CLI's JSON object for this face."""
        data: dict[str, object] = {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 5),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }
        if self.embedding is not None:
            data["embedding"] = [round(float(v), 6) for v in self.embedding]
        if self.identity is not None:
            data["identity"] = self.identity
            data["similarity"] = round(float(self.similarity), 5)
        if self.liveness is not None:
            data["liveness"] = round(float(self.liveness), 5)
            data["live"] = bool(self.live)
        return data


@dataclass(frozen=True)
class Verification:
    """The cosine similarity of two faces and the verdict at the profile's match threshold."""

    similarity: float
    threshold: float

    @property
    def same(self) -> bool:
        """True when the two faces are taken for the same person."""
        return self.similarity >= self.threshold


@dataclass(frozen=True)
class Enrolment:
    """What `FaceAnalyzer.enroll` did: photos added, and photos already enrolled for that person (left alone)."""

    added: int
    unchanged: int


FaceChoice = str | int | None
"""Which face of a photo to take: None (the photo must hold exactly one), 'largest', or an index."""


def choose_face(faces: list[Face], choice: FaceChoice) -> Face:
    """The face `choice` picks; ImageError when there is none, or several and no choice."""
    if len(faces) == 1 and choice is None:
        return faces[0]
    if not faces:
        raise ImageError("no face found")
    if choice is None:
        raise ImageError(f"{len(faces)} faces found; pass --face largest (or an index 0..{len(faces) - 1})")
    if isinstance(choice, str) and choice.lower() == "largest":
        return max(faces, key=lambda face: face.area)
    if isinstance(choice, bool) or not isinstance(choice, int):
        raise ImageError(f"face choice must be 'largest' or an index, got {choice!r}")
    if not 0 <= choice < len(faces):
        raise ImageError(f"face {choice}: only {len(faces)} face(s) found")
    return faces[choice]


def _faces(found: Detections) -> list[Face]:
    return [
        Face(box=tuple(float(v) for v in box), score=float(score), landmarks=[(float(x), float(y)) for x, y in points])
        for box, score, points in zip(found.boxes, found.scores, found.landmarks)
    ]


class FaceAnalyzer:
    """Detect, embed and identify faces with the int8 (or float) models, configured by a hardware profile.

    Keyword overrides replace the profile's values and are validated like the profile file (ProfileError):
    detector ('retinaface' | 'mtcnn'), precision ('int8' | 'float'), input_size (detector letterbox side) and
    score_threshold. Images are paths, file bytes, PIL images or H x W x 3 uint8 RGB arrays (`bgr=True`: arrays
    are in OpenCV's B, G, R order). Use it as a context manager, or `close()` it, to stop its worker threads.
    """

    def __init__(self, profile: str | Path | Profile = "x86", *, detector: str | None = None,
                 precision: str | None = None, input_size: int | None = None,
                 score_threshold: float | None = None, models: Path | None = None, bgr: bool = False) -> None:
        base = profile if isinstance(profile, Profile) else load_profile(profile)
        self.profile = base.with_overrides(detector=detector, precision=precision, input_size=input_size,
                                           score_threshold=score_threshold)
        det = self.profile.detector
        self.detector_name = det.name
        self.precision = self.profile.runtime.precision
        self.input_size = det.input_size if det.name == "retinaface" else self.profile.mtcnn.input_size
        self.score_threshold = det.score_threshold
        self.bgr = bgr
        self.manifest: Manifest = load_manifest(models)

    def close(self) -> None:
        """Stop the embedding worker threads (the analyzer starts them again if used afterwards)."""
        if "embedder" in self.__dict__:
            self.embedder.close()

    def __enter__(self) -> FaceAnalyzer:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def load(self, image: ImageInput) -> np.ndarray:
        """The RGB pixels of an image, decoded within the profile's `max_image_pixels`."""
        return load_image(image, bgr=self.bgr, max_pixels=self.profile.runtime.max_image_pixels)

    def _model(self, spec: ModelSpec) -> TFLiteModel:
        runtime = self.profile.runtime
        return TFLiteModel(self.manifest, spec, threads=runtime.threads, delegate=runtime.delegate)

    @cached_property
    def detector(self) -> RetinaFace | Mtcnn:
        """The RetinaFace or MTCNN detector at this analyzer's precision and input size (loaded on first use)."""
        if self.detector_name == "retinaface":
            key = model_key("retinaface", self.input_size)
            if f"{key}.{self.precision}" not in self.manifest.models:
                built = sorted(int(spec.key.split("-")[1]) for spec in self.manifest.models.values()
                               if spec.family == "retinaface" and spec.precision == self.precision)
                raise ModelError(f"RetinaFace input size {self.input_size}: no such model; built sizes are "
                                 f"{', '.join(map(str, built)) or 'none'}")
            return RetinaFace(self._model(self.manifest.get(key, self.precision)))
        cfg = self.profile.mtcnn  # the profile allows no third detector
        settings = CascadeSettings(self.input_size, cfg.min_face, cfg.factor, cfg.max_levels, tuple(cfg.thresholds))
        nets = [self._model(self.manifest.get(name, self.precision)) for name in ("pnet", "rnet", "onet")]
        return Mtcnn(*nets, settings)

    @cached_property
    def embedder(self) -> Embedder:
        """The MobileFaceNet embedder at this analyzer's precision (loaded on first use). On the CPU, several faces
        are embedded in parallel, one single-threaded copy per profile thread (the Edge TPU takes one at a time)."""
        spec = self.manifest.get("mobilefacenet", self.precision)
        runtime = self.profile.runtime
        if runtime.threads < 2 or runtime.delegate == "edgetpu":
            return Embedder(self._model(spec))
        return Embedder(self._model(spec), runtime.threads,
                        lambda: TFLiteModel(self.manifest, spec, threads=1, delegate=runtime.delegate))

    @cached_property
    def liveness_scorer(self) -> Liveness:
        """The anti-spoofing scorer at this analyzer's precision, at the profile's threshold when it sets one."""
        runtime = self.profile.runtime
        return Liveness.load(self.manifest, self.precision, runtime.threads, runtime.delegate,
                             threshold=self.profile.liveness.threshold)

    def score_liveness(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        """Give each face of an RGB image its P(live) and the verdict at the liveness threshold."""
        for face in faces:
            face.liveness = self.liveness_scorer.score(image, face.box)
            face.live = self.liveness_scorer.is_live(face.liveness)
        return faces

    @property
    def embedding_model_sha256(self) -> str:
        """Identifies the embedding model: a gallery is only valid with the model it was enrolled with."""
        return self.manifest.get("mobilefacenet", self.precision).sha256

    def detect(self, image: ImageInput) -> list[Face]:
        """Faces in an image, best score first."""
        return self._detect(self.load(image))

    def _detect(self, pixels: np.ndarray) -> list[Face]:
        """Faces in RGB pixels (already loaded: a BGR array is flipped once only)."""
        det = self.profile.detector
        found = self.detector.detect(pixels, self.score_threshold, det.nms_iou, det.max_faces)
        return _faces(found)

    def embed_faces(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        """Give each of `faces` (found in this RGB image) its L2-normalised embedding, aligned by its landmarks."""
        vectors = self.embedder.embed(image, np.array([f.landmarks for f in faces]).reshape(-1, 5, 2))
        for face, vector in zip(faces, vectors):
            face.embedding = vector
        return faces

    def embed(self, image: ImageInput) -> list[Face]:
        """Detect, then give every face its L2-normalised embedding."""
        pixels = self.load(image)
        return self.embed_faces(pixels, self._detect(pixels))

    def track(self, frames: Iterable[np.ndarray], liveness_frames: int = 0) -> Iterator[StreamFrame]:
        """VIDEO mode: per frame, the faces as tracks with a stable `track_id` (edgeface.tracker.FaceStream);
        each track is embedded when it appears and again only on a clearly better view."""
        from edgeface.tracker import FaceStream

        return FaceStream(self, liveness_frames=liveness_frames).run(frames)

    def open_gallery(self, path: str | Path, *, create: bool = True) -> Gallery:
        """The gallery at `path` bound to this analyzer's embedding model (created if missing, unless `create`
        is False: then a missing or empty file is a GalleryError)."""
        return Gallery(path, self.embedding_model_sha256, self.embedder.dim, create=create)

    def identify(self, image: ImageInput, gallery: Gallery) -> list[Face]:
        """Embed every face and name it from the gallery, or 'unknown' below the profile's match threshold."""
        faces = self.embed(image)
        if faces:
            answers = gallery.identify(np.stack([f.embedding for f in faces]),
                                       self.profile.recognition.match_threshold)
            for face, (name, similarity) in zip(faces, answers):
                face.identity, face.similarity = name, similarity
        return faces

    def verify(self, a: ImageInput, b: ImageInput) -> Verification:
        """Compare the largest face of each image; ImageError (naming the image) when one holds no face."""
        vectors = []
        for label, image in (("image A", a), ("image B", b)):
            faces = self.embed(image)
            if not faces:
                raise ImageError(f"{image if isinstance(image, (str, Path)) else label}: no face found")
            vectors.append(max(faces, key=lambda face: face.area).embedding)
        return Verification(float(np.dot(vectors[0], vectors[1])), self.profile.recognition.match_threshold)

    def enroll(self, gallery: Gallery, name: str, images: ImageInput | Iterable[ImageInput], *,
               face: FaceChoice = None, replace: bool = False,
               on_image: Callable[[ImageInput, ImageError | None], None] | None = None) -> Enrolment:
        """Enroll one face of the image, or of each image, as `name`. Each photo commits on its own, and one whose
        content (SHA-256) is already enrolled for `name` is left alone; with `replace`, the person's embeddings are
        swapped for the new ones in one transaction (kept when no photo gives a face). `on_image(image, error)`
        hears of every image, and a bad one (ImageError) is skipped; without it, the first bad image raises."""
        name = gallery.valid_name(name)
        if isinstance(images, (str, Path, bytes, bytearray, memoryview, np.ndarray, Image.Image)):
            images = [images]
        added = unchanged = 0
        pending: list[tuple[np.ndarray, str | None, str]] = []  # with replace: committed together at the end
        for image in images:
            try:
                digest = content_sha256(image)
                if not replace and gallery.has(name, digest):
                    unchanged += 1
                else:
                    vector = choose_face(self.embed(image), face).embedding
                    source = str(image) if isinstance(image, (str, Path)) else None
                    if replace:
                        pending.append((vector, source, digest))
                    else:
                        gallery.add(name, vector[None], [source], [digest])
                    added += 1
            except ImageError as error:
                if isinstance(image, (str, Path)) and not str(error).startswith(str(image)):
                    error = ImageError(f"{image}: {error}")
                if on_image is None:
                    raise error from None
                on_image(image, error)
                continue
            if on_image is not None:
                on_image(image, None)
        if pending:
            vectors, sources, digests = zip(*pending)
            gallery.add(name, np.stack(vectors), list(sources), list(digests), replace=True)
        return Enrolment(added, unchanged)
