"""MobileFaceNet embeddings of aligned faces, L2-normalised."""

from __future__ import annotations

import numpy as np

from edgeface.align import align_faces
from edgeface.interpreter import TFLiteModel


class Embedder:
    """Embeds faces with one MobileFaceNet model of the manifest (int8 or float)."""

    def __init__(self, model: TFLiteModel) -> None:
        self.model = model
        self.size = model.spec.input.shape[1]
        self.dim = model.spec.output("embedding").shape[-1]

    def embed_aligned(self, faces: np.ndarray) -> np.ndarray:
        """N x size x size x 3 uint8 aligned faces -> N x D unit vectors (one invoke per face: batch-1 model)."""
        vectors = np.empty((len(faces), self.dim), np.float32)
        for i, face in enumerate(faces):
            vectors[i] = self.model.run(face[None])["embedding"][0]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def embed(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Embeddings of the faces with these landmarks (N x 5 x 2, original pixels) in an RGB image."""
        if len(landmarks) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_aligned(align_faces(image, landmarks, self.size))
