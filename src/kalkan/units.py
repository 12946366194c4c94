"""Units in configuration and policy files: durations (`10s`, `500ms`, `6h`), shared by the
config tree and the policy compiler so neither imports the other."""

from __future__ import annotations

import math
import re
from typing import Any

_DURATION_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """`10s`, `500ms`, `6h`, or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 10s, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):  # YAML's .nan / .inf: a timeout that never fires, or NaN
            raise ValueError(f"a duration must be a finite number, got {value!r}")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a duration like 500ms, 10s, 5m, 6h or 1d, got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
