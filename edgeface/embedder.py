"""MobileFaceNet embeddings of aligned faces, L2-normalised."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgeface.align import align_faces
from edgeface.interpreter import TFLiteModel


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class Embedder:
    """Embeds faces with one MobileFaceNet model of the manifest (int8 or float).

    One face runs on `model` with the profile's threads. Several faces are embedded in parallel on `workers`
    single-threaded copies of it, made on first need by `make_worker`: a 112 x 112 model keeps one core busier than
    it splits over several, and the interpreter releases the GIL while it runs.
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
        """Raw embeddings of aligned `faces`, one invoke per face (the model has batch 1)."""
        vectors = np.empty((len(faces), self.dim), np.float32)
        for i, face in enumerate(faces):
            vectors[i] = model.run(face[None])["embedding"][0]
        return vectors

    def embed_aligned(self, faces: np.ndarray) -> np.ndarray:
        """N x size x size x 3 uint8 aligned faces -> N x D unit vectors: fewer than two on `model` alone, more split
        evenly over the workers (each with its own copy), in the order given."""
        if len(faces) < 2 or self._make_worker is None:
            return _unit(self._run(self.model, faces))
        if self._executor is None:
            self._pool = [self._make_worker() for _ in range(self._workers)]
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="embed")
        shares = [faces[i::self._workers] for i in range(self._workers)]
        vectors = np.empty((len(faces), self.dim), np.float32)
        for i, part in enumerate(self._executor.map(self._run, self._pool, shares)):
            vectors[i::self._workers] = part
        return _unit(vectors)

    def close(self) -> None:
        """Stop the worker threads and drop their interpreters (made again on the next parallel embedding)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor, self._pool = None, []

    def embed(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Embeddings of the faces with these landmarks (N x 5 x 2, original pixels) in an RGB image. They are all
        aligned first, on this thread: alignment holds the GIL most of its time, and interleaved with the workers'
        invokes it made both slower."""
        return self.embed_aligned(align_faces(image, landmarks, self.size))
