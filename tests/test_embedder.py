"""Embedding several faces in parallel gives what one interpreter gives, and loads its copies only when needed."""

from __future__ import annotations

import numpy as np
import pytest

from edgeface.align import ARCFACE_TEMPLATE
from edgeface.analyzer import FaceAnalyzer
from edgeface.embedder import Embedder
from edgeface.interpreter import TFLiteModel
from edgeface.manifest import Manifest


@pytest.mark.parametrize("precision", ["int8", "float"])
@pytest.mark.parametrize("count", [1, 2, 7])
def test_parallel_embedding_matches_one_interpreter(manifest: Manifest, precision: str, count: int) -> None:
    spec = manifest.get("mobilefacenet", precision)
    faces = np.random.default_rng(count).integers(0, 256, (count, 112, 112, 3), dtype=np.uint8)
    made = []

    def make_worker() -> TFLiteModel:
        made.append(TFLiteModel(manifest, spec, threads=1))
        return made[-1]

    parallel = Embedder(TFLiteModel(manifest, spec, threads=2), workers=3, make_worker=make_worker)
    single = Embedder(TFLiteModel(manifest, spec, threads=1))
    np.testing.assert_allclose(parallel.embed_aligned(faces), single.embed_aligned(faces), atol=1e-6)
    assert len(made) == (3 if count > 1 else 0)  # one face never loads the copies
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    landmarks = ARCFACE_TEMPLATE[None] * 1.5 + np.arange(count)[:, None, None] * [30.0, 10.0]
    np.testing.assert_allclose(parallel.embed(image, landmarks), single.embed(image, landmarks), atol=1e-6)
    assert parallel.embed(image, np.zeros((0, 5, 2))).shape == (0, single.dim)


def test_analyzer_embeds_in_parallel_on_the_cpu_only(manifest: Manifest) -> None:
    assert FaceAnalyzer("x86", models=manifest.root).embedder._workers == 2
    assert FaceAnalyzer("coral-usb", models=manifest.root).embedder._make_worker is None
