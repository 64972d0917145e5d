"""The Python API: `FaceAnalyzer(profile="rpi4").detect(image)` -> list of `Face`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeface.detection import Detections
from edgeface.embedder import Embedder
from edgeface.errors import ModelError
from edgeface.gallery import Gallery
from edgeface.images import load_image
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


def _faces(found: Detections) -> list[Face]:
    return [
        Face(box=tuple(float(v) for v in box), score=float(score), landmarks=[(float(x), float(y)) for x, y in points])
        for box, score, points in zip(found.boxes, found.scores, found.landmarks)
    ]


class FaceAnalyzer:
    """Detect, embed and identify faces with the int8 (or float) models, configured by a hardware profile.

    Keyword overrides replace the profile's values: detector ('retinaface' | 'mtcnn'), precision
    ('int8' | 'float'), input_size (detector letterbox side) and score_threshold.
    """

    def __init__(self, profile: str | Path | Profile = "x86", *, detector: str | None = None,
                 precision: str | None = None, input_size: int | None = None,
                 score_threshold: float | None = None, models: Path | None = None) -> None:
        self.profile = profile if isinstance(profile, Profile) else load_profile(profile)
        det = self.profile.detector
        self.detector_name = detector or det.name
        self.precision = precision or self.profile.runtime.precision
        self.input_size = input_size or (det.input_size if self.detector_name == "retinaface"
                                         else self.profile.mtcnn.input_size)
        self.score_threshold = score_threshold if score_threshold is not None else det.score_threshold
        if not 0.0 < self.score_threshold < 1.0:
            raise ModelError(f"score threshold must be between 0 and 1, got {self.score_threshold}")
        self.manifest: Manifest = load_manifest(models)

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
                                 f"{', '.join(map(str, built)) or 'none'} (run 'make models')")
            return RetinaFace(self._model(self.manifest.get(key, self.precision)))
        if self.detector_name == "mtcnn":
            cfg = self.profile.mtcnn
            if self.input_size % 2:
                raise ModelError(f"MTCNN input size {self.input_size}: must be even")
            settings = CascadeSettings(self.input_size, cfg.min_face, cfg.factor, cfg.max_levels,
                                       tuple(cfg.thresholds))
            nets = [self._model(self.manifest.get(name, self.precision)) for name in ("pnet", "rnet", "onet")]
            return Mtcnn(*nets, settings)
        raise ModelError(f"unknown detector '{self.detector_name}' (choose retinaface or mtcnn)")

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

    def detect(self, image: np.ndarray | str | Path) -> list[Face]:
        """Faces in an image (an RGB uint8 array or a path), best score first."""
        pixels = load_image(image) if isinstance(image, (str, Path)) else image
        det = self.profile.detector
        found = self.detector.detect(pixels, self.score_threshold, det.nms_iou, det.max_faces)
        return _faces(found)

    def embed_faces(self, image: np.ndarray, faces: list[Face]) -> list[Face]:
        """Give each of `faces` (found in this RGB image) its L2-normalised embedding, aligned by its landmarks."""
        vectors = self.embedder.embed(image, np.array([f.landmarks for f in faces]).reshape(-1, 5, 2))
        for face, vector in zip(faces, vectors):
            face.embedding = vector
        return faces

    def embed(self, image: np.ndarray | str | Path) -> list[Face]:
        """Detect, then give every face its L2-normalised embedding."""
        pixels = load_image(image) if isinstance(image, (str, Path)) else image
        return self.embed_faces(pixels, self.detect(pixels))

    def track(self, frames: Iterable[np.ndarray], liveness_frames: int = 0) -> Iterator[StreamFrame]:
        """VIDEO mode: per frame, the faces as tracks with a stable `track_id` (edgeface.tracker.FaceStream);
        each track is embedded when it appears and again only on a clearly better view."""
        from edgeface.tracker import FaceStream

        return FaceStream(self, liveness_frames=liveness_frames).run(frames)

    def open_gallery(self, path: str | Path) -> Gallery:
        """The gallery at `path` bound to this analyzer's embedding model (created if missing)."""
        return Gallery(path, self.embedding_model_sha256, self.embedder.dim)

    def identify(self, image: np.ndarray | str | Path, gallery: Gallery) -> list[Face]:
        """Embed every face and name it from the gallery, or 'unknown' below the profile's match threshold."""
        faces = self.embed(image)
        if faces:
            answers = gallery.identify(np.stack([f.embedding for f in faces]),
                                       self.profile.recognition.match_threshold)
            for face, (name, similarity) in zip(faces, answers):
                face.identity, face.similarity = name, similarity
        return faces
