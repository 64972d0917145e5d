"""What one model build is made from (`Target`), defined by each family's graph module and built by convert.build."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from convert import bias_correction, sources
from convert.calibration import CalibrationSet

RAW_RGB = {"layout": "NHWC", "channel_order": "RGB", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
           "range": "raw pixels 0..255"}
"""The input every model takes (normalisation is folded into the graph)."""


@dataclass(frozen=True)
class Target:
    """One model to build: where it comes from, how to make its ONNX, and how to calibrate it."""

    key: str
    family: str
    source: sources.Source
    member: str
    make_onnx: Callable[[bytes], onnx.ModelProto]
    samples: Callable[[CalibrationSet], Iterator[np.ndarray]]
    preprocessing: dict[str, Any]
    meanings: dict[str, str]
    decoder: dict[str, Any]
    equalize: bool = False  # rescale activation channels before onnx2tf (convert.equalize), exact in float
    clip_quantile: float | None = None  # int8 activation ranges from quantiles, not min/max (tflite.full_integer)
    bias_correct: bias_correction.Which | None = None  # fold mean int8 output errors into biases (tflite.full_integer)
    output_floors: dict[str, float] | None = None  # lowest value an int8 output keeps, by output name
    leaky_ranges: bool = False  # LeakyReLU inputs' int8 low ends chosen for the error it passes on (tflite)
    learned_rounding: bool = False  # conv weights rounded for the least output error (convert.adaround)
    reader_aware_ranges: bool = False  # ranges chosen for the error their readers pass on (convert.reader_ranges)
