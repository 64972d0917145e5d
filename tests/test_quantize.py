"""Model input quantisation: the raw-pixel fast path equals the general rule, and both clip."""

from __future__ import annotations

import numpy as np
import pytest

from edgeface.interpreter import dequantize, quantize
from edgeface.manifest import Quantization, TensorSpec

PIXELS = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)


def _spec(scale: float, zero_point: int, dtype: str = "int8") -> TensorSpec:
    return TensorSpec("image", "image", (1, 16, 16, 1), dtype, Quantization(scale, zero_point))


def _rule(values: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """round(v / scale) + zero point, clipped to the storage type."""
    info = np.iinfo(dtype)
    return np.clip(np.round(values.astype(np.float64) / scale) + zero_point, info.min, info.max).astype(dtype)


@pytest.mark.parametrize(("scale", "zero_point", "dtype"),
                         [(1.0, -128, "int8"), (1.0, -100, "int8"), (1.0, 0, "uint8"), (0.5, -3, "int8")])
def test_pixels_quantize_by_the_rule(scale: float, zero_point: int, dtype: str) -> None:
    got = quantize(PIXELS, _spec(scale, zero_point, dtype))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, _rule(PIXELS, scale, zero_point, dtype))


def test_raw_pixel_input_round_trips() -> None:
    spec = _spec(1.0, -128)
    np.testing.assert_array_equal(dequantize(quantize(PIXELS, spec), spec), PIXELS.astype(np.float32))
    assert quantize(PIXELS.astype(np.float32), TensorSpec("x", "x", (1,), "float32", None)).dtype == np.float32
