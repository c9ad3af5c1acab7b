"""The benchmark table: figures with a target, printed and saved as JSON so
runs can be compared by a script."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One measured number. `higher_is_better` says which side of `target`
    meets it."""

    name: str
    value: float
    unit: str
    target: float
    higher_is_better: bool

    @property
    def meets_target(self) -> bool:
        if self.higher_is_better:
            return self.value >= self.target
        return self.value <= self.target


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def table(figures: list[Figure]) -> str:
    rows = [("figure", "value", "unit", "target", "meets")]
    for f in figures:
        op = ">=" if f.higher_is_better else "<="
        rows.append((f.name, f"{f.value:,.2f}", f.unit, f"{op} {f.target:,g}",
                     "yes" if f.meets_target else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for i, r in enumerate(rows):
        lines.append(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def save(figures: list[Figure], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "time": time.time(),
        "machine": machine(),
        "figures": [
            {**asdict(f), "meets_target": f.meets_target} for f in figures
        ],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
