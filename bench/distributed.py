"""Distributed: candidate scoring on Dask local clusters of 1 and 2 worker processes.

Candidate scoring is what `select` does: each candidate backbone's frozen features of the
training split (written to the feature cache) and its LogME score. Four backbones at 224 px
(Lite0 with its ImageNet weights; MobileNetV3Small, MobileNetV3Large and EfficientNetB0
untrained, which cost the same to run) on `--photos` photos of the scale benchmark's workload,
scored:

- in this process (`runner.kind: local`: TensorFlow on every core);
- on a Dask `LocalCluster` of 1 and of 2 worker processes, 1 thread each (`runner.kind: dask`).

Each run starts from an empty feature cache; runs are interleaved `--repeats` times and the
median wall time is reported; starting a cluster (and TensorFlow in its workers) is timed apart,
since a cluster outlives the runs it serves. Results: bench/results/distributed.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results_io
from bench.scale import make_photos

RESULTS = Path(__file__).parent / "results"
CANDIDATES = [
    {"uri": "lite0:imagenet"},
    {"uri": "keras:MobileNetV3Small", "weights": "none", "image_size": 224},
    {"uri": "keras:MobileNetV3Large", "weights": "none", "image_size": 224},
    {"uri": "keras:EfficientNetB0", "weights": "none", "image_size": 224},
]
RUNNERS = {"local": 0, "dask-1": 1, "dask-2": 2}  # name -> Dask worker processes (0: in process)


def _warm() -> None:
    """TensorFlow and Keras imported on a worker (what its first task would otherwise pay)."""
    import keras  # noqa: F401
    import tensorflow  # noqa: F401


def score_once(data: Any, workers: int, work: Path, started: dict[str, float]) -> dict[str, Any]:
    """One scoring of every candidate from an empty cache; wall time and scores."""
    from tasks.core import runner
    from tasks.core.config import Candidate
    from tasks.selection.candidates import score_candidates

    candidates = tuple(Candidate(**c) for c in CANDIDATES)
    root = work / "shared"  # the project folder: the feature cache, seen by every worker
    root.mkdir()
    on: runner.Runner = runner.Runner()
    if workers:
        on = runner.DaskRunner(None, workers, 1, root)
        start = time.perf_counter()
        on.client().run(_warm)
        started[f"dask-{workers}"] = round(time.perf_counter() - start, 1)
    with runner.using(on):
        start = time.perf_counter()
        chosen = score_candidates(candidates, data.train, 2000, 0, top_k=1, root=root)
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "scores": chosen.scores, "chosen": chosen.uri}


def markdown(report: dict[str, Any]) -> str:
    med = report["median_seconds"]
    lines = [
        f"# Distributed benchmark ({report['date']})",
        "",
        f"`{report['command']}` on {report['machine']}. Candidate scoring: frozen features of "
        f"{report['train_images']} training photos at 224 px and LogME, for {len(CANDIDATES)} backbones "
        f"({', '.join(c['uri'] for c in CANDIDATES)}); median of {report['repeats']} "
        "interleaved runs, each from an empty feature cache.",
        "",
        "| runner | wall (s) | speedup over 1 Dask worker | cluster start + TensorFlow import (s) |",
        "|---|---|---|---|",
    ]
    for name in RUNNERS:
        start = report["cluster_start_seconds"].get(name, "-")
        lines.append(f"| {name} | {med[name]} | {med['dask-1'] / med[name]:.2f}x | {start} |")
    lines += [
        "",
        f"Same scores in every run (to 1e-6): {report['same_scores']}; chosen: {report['chosen']}.",
        f"Speedup, 2 workers over 1: scoring {report['speedup']['scoring']:.2f}x; "
        "search: not yet distributed (null).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "transferops-photos")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from tasks.core.config import SplitParams
    from tasks.data.datasets import load_folder

    folder = make_photos(args.data / f"photos-{args.photos}", args.photos)
    data = load_folder(folder, SplitParams(), 40_000_000)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNNERS}
    started: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="transferops-distributed-") as tmp:
        for repeat in range(args.repeats):
            for name, workers in RUNNERS.items():
                # a fresh shared cache per run: nothing scored before is read back
                work = Path(tmp) / f"{name}-{repeat}"
                work.mkdir()
                runs[name].append(score_once(data, workers, work, started))
                print(name, runs[name][-1], flush=True)
    median = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    first = runs["local"][0]["scores"]
    same = all(
        r["scores"].keys() == first.keys() and all(abs(r["scores"][k] - v) < 1e-6 for k, v in first.items())
        for rs in runs.values()
        for r in rs
    )
    report = {
        **results_io.header("bench.distributed", argv),
        "train_images": len(data.train),
        "repeats": args.repeats,
        "runs": runs,
        "median_seconds": median,
        "cluster_start_seconds": started,
        "same_scores": same,
        "chosen": runs["local"][0]["chosen"],
        "speedup": {"scoring": round(median["dask-1"] / median["dask-2"], 2), "search": None},
    }
    return results_io.write(args.out, "distributed", report, markdown(report))


if __name__ == "__main__":
    main()
