"""Per-tensor SNR (edgeface.tools.tensor_snr): its outputs' figures agree with the runtime's own, and its summary
picks the first tensor, the largest drops and the outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import subset

from edgeface.images import letterbox, load_image
from edgeface.interpreter import TFLiteModel
from edgeface.manifest import Manifest
from edgeface.tools.checkquant import snr_db
from edgeface.tools.tensor_snr import TensorSNR, tensor_snr, where_it_enters


def test_the_output_rows_match_the_runtime_and_error_grows_along_the_chain(manifest: Manifest, data: Path) -> None:
    specs = {p: manifest.get("retinaface-320", p) for p in ("float", "int8")}
    fill = tuple(specs["int8"].preprocessing["letterbox_fill"])
    batches = [letterbox(load_image(path), 320, 320, fill)[0][None].astype(np.float32)
               for path in subset(data / "wider_val_dev" / "images", 2)]
    rows = tensor_snr(manifest, "retinaface-320", batches)
    outputs = {row.name: row for row in rows if row.output}
    assert len(outputs) == 9 and len(rows) > 50  # the nine heads and the backbone, FPN and SSH tensors before them
    models = {p: TFLiteModel(manifest, spec, delegate="none") for p, spec in specs.items()}
    runs = {p: [model.run(b) for b in batches] for p, model in models.items()}
    for spec in specs["int8"].outputs:
        expected = snr_db([r[spec.role] for r in runs["float"]], [r[spec.role] for r in runs["int8"]])
        assert outputs[spec.role].snr_db == pytest.approx(expected, abs=0.01), spec.role
    assert rows[0].op == "SUB" and rows[0].drop_db is None and rows[0].snr_db > 30  # the mean: one rounding
    assert max(row.snr_db for row in outputs.values()) < rows[0].snr_db - 10  # measured 48 dB, then 8-15 dB
    assert all(row.drop_db is not None for row in rows[1:])
    # the int8 value lies on the same grid, so the float value's nearest grid point is never farther from it
    assert all(row.grid_db >= row.snr_db - 1e-9 for row in rows)


def _row(name: str, drop: float | None, output: bool = False) -> TensorSNR:
    return TensorSNR(name, "CONV_2D", (1, 4, 4, 8), 20.0, 30.0, drop, output)


def test_the_summary_keeps_graph_order() -> None:
    rows = [_row("first", None), _row("small", 0.1), _row("big", 5.0), _row("gain", -2.0), _row("mid", 1.0),
            _row("head", 0.5, output=True)]
    assert [r.name for r in where_it_enters(rows, largest=2)] == ["first", "big", "mid", "head"]
    assert where_it_enters([]) == []
