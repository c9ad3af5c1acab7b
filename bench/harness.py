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


INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")  # what int8 kernels use


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform says."""
    return _cpuinfo()[0]


def machine() -> str:
    """The machine a table was measured on: CPU model and its int8
    instructions (int8 speed depends on VNNI), cores, Python."""
    model, flags = _cpuinfo()
    int8 = ", ".join(f for f in INT8_FLAGS if f in flags) or "none of " + "/".join(INT8_FLAGS)
    return (f"{model} ({platform.machine()}, int8 instructions: {int8}), "
            f"{os.cpu_count()} cores, Python {platform.python_version()}")


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
