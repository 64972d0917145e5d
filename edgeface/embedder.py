"""MobileFaceNet embeddings of aligned faces, L2-normalised."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgeface.align import align_faces
from edgeface.interpreter import TFLiteModel


class Embedder:
    """Embeds faces with one MobileFaceNet model of the manifest (int8 or float).

    One face runs on `model` with the profile's threads. Several faces run in parallel on `workers` single-threaded
    copies of it, made on first need by `make_worker`: a 112 x 112 model keeps one core busy far better than it
    splits over several, so a crowd is embedded about 1.5x faster on 2 cores (interleaved measurement).
    """

    def __init__(self, model: TFLiteModel, workers: int = 1,
                 make_worker: Callable[[], TFLiteModel] | None = None) -> None:
        self.model = model
        self.size = model.spec.input.shape[1]
        self.dim = model.spec.output("embedding").shape[-1]
        self._workers = workers
        self._make_worker = make_worker if workers > 1 else None
        self._pool: list[TFLiteModel] = []
        self._executor: ThreadPoolExecutor | None = None

    def _run(self, model: TFLiteModel, faces: np.ndarray) -> np.ndarray:
        """Raw embeddings of `faces`, one invoke per face (the model has batch 1)."""
        vectors = np.empty((len(faces), self.dim), np.float32)
        for i, face in enumerate(faces):
            vectors[i] = model.run(face[None])["embedding"][0]
        return vectors

    def embed_aligned(self, faces: np.ndarray) -> np.ndarray:
        """N x size x size x 3 uint8 aligned faces -> N x D unit vectors."""
        if len(faces) < 2 or self._make_worker is None:
            vectors = self._run(self.model, faces)
        else:
            if self._executor is None:
                self._pool = [self._make_worker() for _ in range(self._workers)]
                self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="embed")
            shares = [faces[i::self._workers] for i in range(self._workers)]  # one worker per model at a time
            parts = list(self._executor.map(self._run, self._pool, shares))
            vectors = np.empty((len(faces), self.dim), np.float32)
            for i, part in enumerate(parts):
                vectors[i::self._workers] = part
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def embed(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Embeddings of the faces with these landmarks (N x 5 x 2, original pixels) in an RGB image."""
        if len(landmarks) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_aligned(align_faces(image, landmarks, self.size))
