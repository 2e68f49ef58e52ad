"""What every benchmark writes: bench/results/<name>.json (everything) and <name>.md (a table)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name (oneDNN picks kernels by instruction set: figures differ by CPU kind)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_flags() -> str:
    """The vector instruction sets the CPU has (one model name covers machines with and without
    AVX-512, and oneDNN's kernels differ between them)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(flag for flag in VECTOR_FLAGS if flag in have)
    except OSError:
        pass
    return "flags unknown"


def header(module: str, argv: list[str] | None, machine_extra: str = "") -> dict[str, Any]:
    """Date, the exact command, and the machine, for the top of a report."""
    args = sys.argv[1:] if argv is None else argv
    machine = f"{cpu_model()} ({cpu_flags()}), {platform.machine()}, {os.cpu_count()} cores" + (
        f", {machine_extra}" if machine_extra else ""
    )
    return {
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([f"python -m {module}", *args]),
        "machine": machine,
    }


def write(out: Path, name: str, report: dict[str, Any], markdown: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
    return report
