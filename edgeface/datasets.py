"""Where the labelled evaluation photos live: $EDGEFACE_DATA, else ../shared/data beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path | None:
    """The data folder if it exists (None otherwise: callers skip or explain)."""
    configured = os.environ.get("EDGEFACE_DATA")
    candidate = Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared" / "data"
    return candidate if candidate.is_dir() else None
