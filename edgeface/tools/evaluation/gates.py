"""Quantisation gates: each metric of a check-quant report against its limit in a TOML file (gates.toml)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeface.errors import EdgefaceError

GATES_FILE = Path(__file__).with_name("gates.toml")
ROUNDING = 1e-9
"""Slack for float rounding in a metric's difference: 1.0 - 0.99 must meet a limit of 0.01."""


@dataclass(frozen=True)
class Gate:
    """One metric against its limit. `stage` names the model whose quantisation it judges (None for an absolute
    quality bar); `at_most` says whether the value must stay at or below the limit, else at or above it."""

    name: str
    stage: str | None
    value: float
    limit: float
    at_most: bool

    @property
    def passed(self) -> bool:
        """Within the limit (a NaN value, from no data, fails)."""
        if not math.isfinite(self.value):
            return False
        return self.value <= self.limit + ROUNDING if self.at_most else self.value >= self.limit - ROUNDING

    @property
    def usage(self) -> float:
        """The share of its allowance the loss uses (above 1 fails): value / limit for a largest drop, and
        (1 - value) / (1 - limit) for a smallest value of a metric whose best is 1."""
        if not math.isfinite(self.value):
            return math.inf
        loss, allowed = (self.value, self.limit) if self.at_most else (1.0 - self.value, 1.0 - self.limit)
        return loss / allowed if allowed > 0 else (math.inf if loss > 0 else 0.0)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "stage": self.stage, "value": self.value, "limit": self.limit,
                "rule": "<=" if self.at_most else ">=", "passed": self.passed}


def load_limits(path: Path = GATES_FILE, quick: bool = False) -> dict[str, Any]:
    """The limits of a gates file; with `quick`, its [quick] table's values replace the ones they name."""
    try:
        with Path(path).open("rb") as handle:
            limits = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise EdgefaceError(f"{path}: cannot read the gates ({error})") from None
    overrides = limits.pop("quick", {})
    return _merged(limits, overrides) if quick else limits


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with the values `overrides` names replaced, table by table."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def _limit(limits: dict[str, Any], *keys: str) -> float:
    value: Any = limits
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise EdgefaceError(f"gates: missing limit {'.'.join(keys)}")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EdgefaceError(f"gates: {'.'.join(keys)} must be a number, got {value!r}")
    return float(value)


def check(report: dict[str, Any], limits: dict[str, Any]) -> list[Gate]:
    """Every gate of a check-quant report (its 'detection', 'landmarks' and 'recognition' sections)."""
    gates = [Gate(f"{row['model']} AP drop ({setting})", row["model"], drop,
                  _limit(limits, "detection", row["detector"], setting), True)
             for row in report["detection"] for setting, drop in row["drop"].items()]
    gates += [Gate(f"{row['model']} NME increase", row["model"], row["increase"],
                   _limit(limits, "landmarks", "nme_increase"), True) for row in report["landmarks"]]
    lfw, cosine = report["recognition"]["lfw"], report["recognition"]["cosine"]
    gates += [
        Gate("LFW accuracy (int8)", None, lfw["int8"]["accuracy"],
             _limit(limits, "recognition", "lfw_accuracy_min"), False),
        Gate("LFW accuracy drop", "mobilefacenet", lfw["accuracy_drop"],
             _limit(limits, "recognition", "lfw_accuracy_drop"), True),
        Gate("mean cos(int8, float)", "mobilefacenet", cosine["mean"],
             _limit(limits, "recognition", "cosine_mean_min"), False),
    ]
    return gates


def worst_stage(gates: list[Gate]) -> Gate:
    """The quantisation gate (one with a stage) that uses the largest share of its allowance."""
    return max((gate for gate in gates if gate.stage is not None), key=lambda gate: gate.usage)
