"""What check-quant measured: the report and the curves its plots draw (shared by checkquant and report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeface.tools.evaluation.widerface import SubsetResult


@dataclass
class Results:
    """report.json and the curves the plots draw, keyed '<stage> <precision>' (ROC by precision)."""

    report: dict[str, Any] = field(default_factory=dict)
    pr: dict[str, dict[str, SubsetResult]] = field(default_factory=dict)
    nme: dict[str, np.ndarray] = field(default_factory=dict)
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    cosine: np.ndarray = field(default_factory=lambda: np.zeros(0))
