"""Benchmark: what determinism costs. Pretraining + fine-tuning on the demo data with
`reproducibility.deterministic` on and off, each run in a fresh process (TensorFlow's op
determinism cannot be turned off inside a process), interleaved so machine noise hits both.

    .venv/bin/python -m bench.determinism [--repeats 2]

Reports wall time per arm (ratio to deterministic) and whether repeated runs of an arm gave
bit-identical weights and metrics. Writes bench/results/determinism.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import results_io

RESULTS = Path(__file__).parent / "results"


def child(deterministic: bool) -> dict[str, Any]:
    """One run in this process: pretrain on data/source, fine-tune on data/raw."""
    from flows.runtime import apply_env_defaults

    apply_env_defaults()
    import numpy as np

    from tasks import modality
    from tasks.core.config import Paths, load_params
    from tasks.data.datasets import load_folder
    from tasks.evaluation import evaluate
    from tasks.modality.pixels import Pixels
    from tasks.models import determinism
    from tasks.models.finetune import finetune
    from tasks.models.pretraining import pretrain

    paths = Paths.from_root(Path.cwd())
    params = load_params(paths.root / "params.yaml")
    determinism.configure(deterministic)
    load = {"params": params.split, "modality": modality.from_params(params)}
    source = load_folder(paths.resolve(params.data.source), **load)
    raw = load_folder(paths.resolve(params.data.raw), **load)
    pixels = Pixels(params.images.size, params.images.resize)
    start = time.perf_counter()
    backbone = pretrain(source, params.pretrain, Pixels(params.images.size)).backbone
    pretrain_seconds = time.perf_counter() - start
    start = time.perf_counter()
    result = finetune(backbone, raw.train, raw.val, 5, params.finetune, pixels)
    finetune_seconds = time.perf_counter() - start
    weights = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in result.model.get_weights()))
    scores = evaluate.metrics(raw.test.y, evaluate.predict(result.model, raw.test.examples(pixels)))
    return {
        "pretrain_seconds": pretrain_seconds,
        "finetune_seconds": finetune_seconds,
        "weights_sha256": weights.hexdigest(),
        **scores,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Determinism benchmark ({report['date']})",
        "",
        f"`{report['command']}` on {report['machine']}: pretrain (params.yaml `pretrain`) + fine-tune "
        f"(`finetune`) on the demo data, each run a fresh process; {report['repeats']} runs per arm, "
        "interleaved; mean wall time.",
        "",
        "| arm | pretrain (s) | fine-tune (s) | total vs deterministic | test accuracy per run "
        "| identical weights across runs |",
        "|---|---|---|---|---|---|",
    ]
    base = report["summary"]["deterministic"]["total_mean"]
    for arm, row in report["summary"].items():
        lines.append(
            f"| {arm} | {row['pretrain_mean']:.1f} | {row['finetune_mean']:.1f} "
            f"| {row['total_mean'] / base:.2f}x | {', '.join(f'{a:.4f}' for a in row['accuracies'])} "
            f"| {'yes' if row['identical'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child == "on")))
        return {}

    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for arm in ("on", "off"):
            out = (
                subprocess.run(
                    [sys.executable, "-m", "bench.determinism", "--child", arm],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            run = {"arm": "deterministic" if arm == "on" else "fast", "repeat": repeat, **json.loads(out)}
            runs.append(run)
            print(run, flush=True)
    summary = {}
    for arm in ("deterministic", "fast"):
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {
            "pretrain_mean": statistics.mean(r["pretrain_seconds"] for r in mine),
            "finetune_mean": statistics.mean(r["finetune_seconds"] for r in mine),
            "total_mean": statistics.mean(r["pretrain_seconds"] + r["finetune_seconds"] for r in mine),
            "accuracies": [r["accuracy"] for r in mine],
            "identical": len({r["weights_sha256"] for r in mine}) == 1,
        }
    report = {
        **results_io.header("bench.determinism", argv),
        "repeats": args.repeats,
        "summary": summary,
        "runs": runs,
    }
    return results_io.write(args.out, "determinism", report, markdown(report))


if __name__ == "__main__":
    main()
