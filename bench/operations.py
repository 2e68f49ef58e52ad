"""Benchmark: what a user waits for, run by run, on the demo data (Fashion-MNIST, params.yaml).

    .venv/bin/python -m bench.operations [--repeats 3]

In a fresh temporary project: `data fashion-mnist`, `pretrain`, a first `train` (and one
rerun, which evaluates against the champion the first made), then the same `train` unchanged
(reused stages), with a change in `finetune` only, and with `--force`
(every stage recomputed: what every run did before stages were cached), and `status`. Each
through the installed command line, as a user runs it; wall time next to the stage times the
run reports. The unchanged rerun and `--force` repeat `--repeats` times, interleaved (this
machine is shared: compare them as a ratio). `import flows.train` is timed on its own, to show
how much of a short run is start-up.

Writes bench/results/operations.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results_io

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
TRANSFEROPS = str(Path(sys.executable).parent / "transferops")


def timed(project: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    """One command; its wall time and, for a flow, the stage times and reuse it reported."""
    start = time.perf_counter()
    done = subprocess.run(
        [TRANSFEROPS, "--root", str(project), *args], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench.operations: `transferops {' '.join(args)}` failed:\n{done.stderr[-3000:]}")
    out: dict[str, Any] = {"command": f"transferops {' '.join(args)}", "wall_s": round(wall, 2)}
    report = project / "reports" / f"{args[0]}.json"
    if args[0] in ("pretrain", "train") and report.exists():
        summary = json.loads(report.read_text())
        out["stage_seconds"] = summary["stage_seconds"]
        out["reused"] = summary.get("reused", [])
        out["registered_version"] = (summary.get("registered") or {}).get("version")
    print(f"{out['command']:<52} {wall:7.1f}s  {out.get('stage_seconds', '')}", flush=True)
    return out


def import_seconds(env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import flows.train"], env=env, check=True, cwd=REPO)
    return round(time.perf_counter() - start, 2)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    env = {**os.environ, "TRANSFEROPS_PROGRESS": "0"}
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL"):
        env.pop(variable, None)
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        project.mkdir()
        shutil.copy(REPO / "params.yaml", project / "params.yaml")
        env["PREFECT_HOME"] = str(Path(tmp) / "prefect")
        steps = {
            "data": timed(project, env, "data", "fashion-mnist", "--no-dvc"),
            "pretrain": timed(project, env, "pretrain"),
            "first train": timed(project, env, "train"),
            # the first train made a champion: this rerun compares with it (evaluate reruns)
            "rerun after the first promotion": timed(project, env, "train"),
        }
        reruns: dict[str, list[dict[str, Any]]] = {"unchanged rerun": [], "rerun with --force": []}
        for _ in range(args.repeats):
            reruns["unchanged rerun"].append(timed(project, env, "train"))
            reruns["rerun with --force"].append(timed(project, env, "train", "--force"))
        steps["finetune params changed"] = timed(project, env, "train", "--set", "finetune.head_epochs=30")
        steps["status"] = timed(project, env, "status")
        imports = import_seconds(env)
    for name, runs in reruns.items():
        median = statistics.median(r["wall_s"] for r in runs)
        typical = min(runs, key=lambda r: abs(r["wall_s"] - median))
        steps[name] = {**typical, "wall_s_all": [r["wall_s"] for r in runs]}
    report = {
        **results_io.header("bench.operations", argv),
        "repeats": args.repeats,
        "import_flows_train_s": imports,
        "steps": steps,
    }
    return results_io.write(args.out, "operations", report, markdown(report))


def markdown(report: dict[str, Any]) -> str:
    steps = report["steps"]
    lines = [
        f"# Operations benchmark ({report['date']})",
        "",
        f"`{report['command']}` on {report['machine']}: the demo data and `params.yaml`, each step "
        "through the installed `transferops` in a fresh project. Reruns: median of "
        f"{report['repeats']}, interleaved.",
        "",
        "| step | wall (s) | stages (s) | reused |",
        "|---|---|---|---|",
    ]
    for name, step in steps.items():
        stages = "  ".join(f"{k} {v:.1f}" for k, v in step.get("stage_seconds", {}).items())
        reused = ", ".join(step.get("reused", [])) or ("none" if "stage_seconds" in step else "")
        lines.append(f"| {name} (`{step['command']}`) | {step['wall_s']:.1f} | {stages} | {reused} |")
    unchanged, forced = steps["unchanged rerun"]["wall_s"], steps["rerun with --force"]["wall_s"]
    in_stages = sum(steps["unchanged rerun"]["stage_seconds"].values())
    lines += [
        "",
        f"An unchanged rerun takes {unchanged:.1f} s, {forced / unchanged:.1f}x less than recomputing "
        f"every stage ({forced:.1f} s). Of it, {in_stages:.1f} s are stages (reading the cached "
        f"results and logging them to the new MLflow run); `import flows.train` alone takes "
        f"{report['import_flows_train_s']:.1f} s; the rest is the temporary Prefect server (started "
        "while TensorFlow imports), the MLflow parent run and the process exit.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
