"""Fuzzing with hypothesis: random and truncated image bytes, random SQLite bytes as a gallery, random CLI values.

Whatever the input, the answer is pixels or an ImageError, a gallery or a GalleryError, and the CLI ends with
exit code 0, 1 or 2 and only `edgeface...` lines on stderr, never a traceback. A few seconds in all.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgeface.cli import main
from edgeface.errors import GalleryError, ImageError
from edgeface.gallery import Gallery
from edgeface.images import load_image

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
MODEL, DIM = "d4" * 32, 8


def _encoded(kind: str) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, kind)
    return buffer.getvalue()


ENCODED = {kind: _encoded(kind) for kind in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")}


def _decodes_or_refuses(content: bytes, max_pixels: int = 1_000_000) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning would be a stray stderr line
            pixels = load_image(content, max_pixels=max_pixels)
    except ImageError as error:
        assert str(error).startswith("image bytes: ") and "\n" not in str(error)
    else:
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert pixels.shape[0] * pixels.shape[1] <= max_pixels


@FUZZ
@given(st.binary(min_size=1, max_size=600))
def test_random_bytes(content: bytes) -> None:
    _decodes_or_refuses(content)


@FUZZ
@example("TIFF", 8)  # the sweep's find: Pillow warned about corrupt EXIF data on stderr
@given(st.sampled_from(sorted(ENCODED)), st.integers(1, 4000))
def test_truncated_images(kind: str, length: int) -> None:
    _decodes_or_refuses(ENCODED[kind][:length])


@FUZZ
@given(st.sampled_from(sorted(ENCODED)), st.data())
def test_truncated_and_flipped_images(kind: str, data: st.DataObject) -> None:
    content = bytearray(ENCODED[kind])
    content = content[: data.draw(st.integers(1, len(content)), label="length")]
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    _decodes_or_refuses(bytes(content), max_pixels=data.draw(st.sampled_from([1_000_000, 300])))


@pytest.fixture(scope="module")
def gallery_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small gallery as one file's bytes (made once: the fuzzing rewrites copies of it)."""
    path = tmp_path_factory.mktemp("seed") / "seed.db"
    with Gallery(path, MODEL, DIM) as gallery:
        gallery.add("Alice", np.eye(DIM)[:2], ["a.jpg", "b.jpg"])
    with sqlite3.connect(path) as raw:  # one file, no WAL beside it
        raw.execute("PRAGMA journal_mode = DELETE")
    return path.read_bytes()


@FUZZ
@given(st.data())
def test_damaged_gallery_files(tmp_path_factory: pytest.TempPathFactory, gallery_bytes: bytes,
                               data: st.DataObject) -> None:
    folder = tmp_path_factory.mktemp("gallery")
    content = bytearray(gallery_bytes)
    for _ in range(data.draw(st.integers(1, 12), label="writes")):
        at = data.draw(st.integers(0, len(content) - 1))
        content[at:at + 4] = data.draw(st.binary(min_size=1, max_size=4))
    path = folder / "fuzzed.db"
    path.write_bytes(bytes(content[: data.draw(st.integers(1, len(content)), label="length")]))
    try:
        with Gallery(path, MODEL, DIM) as gallery:
            gallery.people()
            gallery.identify(np.eye(DIM)[:1], 0.5)
            gallery.add("Bob", np.eye(DIM)[2:3])
            gallery.remove("Bob")
    except GalleryError as error:
        assert str(error).startswith(str(path)) and "\n" not in str(error)


TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
OPTIONS = st.one_of(
    st.tuples(st.just("--input-size"), st.one_of(st.integers(-5, 100_000).map(str), TEXT)),
    st.tuples(st.just("--score-threshold"), st.one_of(st.floats(allow_nan=True).map(str), TEXT)),
    st.tuples(st.just("--detector"), st.sampled_from(["mtcnn", "retinaface", "haar", ""])),
    st.tuples(st.just("--precision"), st.sampled_from(["int8", "float", "fp16"])),
    st.tuples(st.just("--profile"), st.one_of(st.sampled_from(["rpi4", "rpi9", "x.toml", "/"]), TEXT)),
)


@settings(FUZZ, max_examples=40)
@given(st.sampled_from(["detect", "enroll", "identify", "gallery"]), st.lists(OPTIONS, max_size=3),
       st.one_of(TEXT, st.sampled_from(["largest", "LARGEST", "0", "-1", "x"])), TEXT)
def test_cli_values(tmp_path_factory: pytest.TempPathFactory, command: str, options: list[tuple[str, str]],
                    face: str, name: str) -> None:
    folder = tmp_path_factory.mktemp("cli")
    image = folder / "image.jpg"
    image.write_bytes(ENCODED["JPEG"][:200])  # truncated: rejected before any model runs
    argv = {"detect": ["detect", str(image)],
            "enroll": ["enroll", str(image), "--gallery", str(folder / "g.db"), "--face", face, "--name", name],
            "identify": ["identify", str(image), "--gallery", str(folder / "missing.db")],
            "gallery": ["gallery", "remove", name, "--gallery", str(folder / "missing.db")]}[command]
    for option, value in options:
        argv += [option, value]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse refused a value: its usage block, then 'edgeface ...: error: ...'
            assert stop.code == 2
            assert err.getvalue().splitlines()[-1].startswith("edgeface")
            return
    assert code in (0, 1, 2)
    lines = err.getvalue().splitlines()
    assert all(line.startswith("edgeface: ") for line in lines if not line.startswith("INFO: ")), lines


@pytest.fixture(scope="module")
def analyzers(manifest: object) -> dict[str, object]:
    from edgeface.analyzer import FaceAnalyzer

    return {name: FaceAnalyzer("x86", detector=name) for name in ("retinaface", "mtcnn")}


@settings(FUZZ, max_examples=20)
@given(st.sampled_from(["retinaface", "mtcnn"]), st.integers(1, 3000), st.integers(1, 40), st.booleans())
def test_any_array_shape_through_the_models(analyzers: dict, detector: str, long: int, short: int,
                                            tall: bool) -> None:
    shape = (long, short, 3) if tall else (short, long, 3)
    pixels = np.random.default_rng(long * short).integers(0, 256, shape, dtype=np.uint8)
    for face in analyzers[detector].embed(pixels):
        assert face.embedding.shape == (192,) and np.isfinite(face.embedding).all()
