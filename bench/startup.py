"""Benchmark: start-up time of the command line, with the bytecode `scripts/setup.sh` compiles
and without it (as an install that skipped it behaves where PYTHONDONTWRITEBYTECODE is set:
here emulated with PYTHONPYCACHEPREFIX pointing at an empty folder, so no .pyc is found).

    .venv/bin/python -m bench.startup [--repeats 3]

Writes bench/results/startup.{json,md}: median wall seconds per command and arm, interleaved.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results_io

RESULTS = Path(__file__).parent / "results"
BIN = Path(sys.executable).parent


def commands(project: Path) -> dict[str, list[str]]:
    return {
        "python -c 'import tensorflow'": [sys.executable, "-c", "import tensorflow"],
        "transferops --help": [str(BIN / "transferops"), "--help"],
        "transferops status": [str(BIN / "transferops"), "--root", str(project), "status"],
    }


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        base = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        base.pop("MLFLOW_TRACKING_URI", None)
        arms = {
            "compiled bytecode": base,
            "no bytecode": {**base, "PYTHONPYCACHEPREFIX": str(Path(tmp) / "empty-pycache")},
        }
        times: dict[str, dict[str, list[float]]] = {c: {a: [] for a in arms} for c in commands(project)}
        subprocess.run(commands(project)["transferops status"], env=base, capture_output=True)  # store made
        for _ in range(args.repeats):
            for name, command in commands(project).items():
                for arm, env in arms.items():
                    times[name][arm].append(timed(command, env))
                    print(f"{name:<32} {arm:<18} {times[name][arm][-1]:.2f}s", flush=True)
    summary = {
        name: {arm: statistics.median(values) for arm, values in by_arm.items()}
        for name, by_arm in times.items()
    }
    report = {
        **results_io.header("bench.startup", argv, f"Python {platform.python_version()}"),
        "repeats": args.repeats,
        "summary": summary,
        "times": times,
    }
    lines = [
        f"# Start-up benchmark ({report['date']})",
        "",
        f"`{report['command']}` on {report['machine']}, PYTHONDONTWRITEBYTECODE=1; median of "
        f"{args.repeats} interleaved runs.",
        "",
        "| command | compiled bytecode (s) | no bytecode (s) | ratio |",
        "|---|---|---|---|",
    ]
    for name, by_arm in summary.items():
        with_pyc, without = by_arm["compiled bytecode"], by_arm["no bytecode"]
        lines.append(f"| `{name}` | {with_pyc:.2f} | {without:.2f} | {without / with_pyc:.1f}x |")
    return results_io.write(args.out, "startup", report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
