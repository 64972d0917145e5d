"""Annotated copies of photos: face boxes, the five landmarks and the identity, drawn with Pillow."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from edgeface.analyzer import Face
from edgeface.gallery import UNKNOWN

KNOWN_COLOUR = (40, 200, 80)
OTHER_COLOUR = (230, 60, 50)


def annotate(image: np.ndarray, faces: Sequence[Face]) -> Image.Image:
    """A copy of an RGB image with each face's box, landmarks and label (identity and similarity, or score)."""
    canvas = Image.fromarray(image)
    pen = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 400))
    for face in faces:
        known = face.identity is not None and face.identity != UNKNOWN
        colour = KNOWN_COLOUR if known else OTHER_COLOUR
        pen.rectangle(face.box, outline=colour, width=width)
        for x, y in face.landmarks:
            pen.ellipse((x - width, y - width, x + width, y + width), fill=colour)
        label = f"{face.identity} {face.similarity:.2f}" if face.identity is not None else f"{face.score:.2f}"
        left, top = face.box[0], max(0.0, face.box[1] - 12 * width)
        pen.text((left, top), label, fill=colour, font_size=10 * width)
    return canvas
