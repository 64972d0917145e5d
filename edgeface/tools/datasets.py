"""Where the labelled evaluation photos live: $EDGEFACE_DATA, else ../shared/data beside the source checkout."""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
"""The source checkout these tools run from (edgeface/tools/ is not in the wheel)."""


def data_dir() -> Path | None:
    """The data folder if it exists (None otherwise: callers skip or explain)."""
    configured = os.environ.get("EDGEFACE_DATA")
    candidate = Path(configured) if configured else CHECKOUT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None
