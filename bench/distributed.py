"""Distributed: candidate scoring and the strategy search on Dask local clusters of 1 and 2 workers.

Candidate scoring is what `select` does: each candidate backbone's frozen features of the
training split (written to the feature cache) and its LogME score. Four backbones at 224 px
(Lite0 with its ImageNet weights; MobileNetV3Small, MobileNetV3Large and EfficientNetB0
untrained, which cost the same to run) on `--photos` photos of the scale benchmark's workload,
scored:

- in this process (`runner.kind: local`: TensorFlow on every core);
- on a Dask `LocalCluster` of 1 and of 2 worker processes, 1 thread each (`runner.kind: dask`).

The strategy search (the defaults of `search:`: head trials, the fine-tune bracket and the scratch
baseline) on the same photos at 32 px with MobileNetV3Small (untrained: its cost is what counts),
on the same three runners. On a Dask runner every trial runs on the workers and the flow's process
only coordinates (tasks/search/strategy.py): the scratch baseline and the fine-tune bracket are a
task each, the head trials go to Keras Tuner workers (one per Dask worker) against the chief
oracle the flow serves.

A train against servers on a real database: `transferops train` (search off, a few epochs: the
share of tracking and orchestration is what counts) against an `mlflow server` and a `prefect
server` on SQLite files, then on PostgreSQL (bench/servers.py).

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
    {"uri": "keras:MobileNetV3Small", "weights": "none", "size": 224},
    {"uri": "keras:MobileNetV3Large", "weights": "none", "size": 224},
    {"uri": "keras:EfficientNetB0", "weights": "none", "size": 224},
]
SEARCH_CANDIDATE = {"uri": "keras:MobileNetV3Small", "weights": "none", "size": 32}
RUNNERS = {"local": 0, "dask-1": 1, "dask-2": 2}  # name -> Dask worker processes (0: in process)
DATABASES = ("sqlite", "postgresql")


def _warm() -> None:
    """TensorFlow and Keras imported on a worker (what its first task would otherwise pay)."""
    import keras  # noqa: F401
    import tensorflow  # noqa: F401


CEILING_WORK = {"features": (224, 100), "training": (32, 300)}  # kind -> (pixels, batches of 32)


def _busy(kind: str, ready: Any, seconds: Any) -> None:
    """One process's share of `ceiling`: a fixed amount of single-threaded TensorFlow work like a
    worker's ("features": forward passes at 224 px, as scoring runs; "training": train steps at
    32 px, as the search runs), timed from when every copy is ready; its seconds into `seconds`."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    size, batches = CEILING_WORK[kind]
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(size, size, 3), classes=8)
    x, y = tf.zeros((32, size, size, 3)), tf.zeros((32,), "int32")
    if kind == "features":
        forward = tf.function(lambda: model(x, training=False))
        step: Any = forward
    else:
        model.compile("adam", "sparse_categorical_crossentropy")
        step = lambda: model.train_on_batch(x, y)  # noqa: E731
    step()  # traced before the clock
    ready.wait()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    seconds.put(time.perf_counter() - start)


def ceiling(kind: str) -> dict[str, Any]:
    """The most 2 single-threaded worker processes can give on this machine: the same fixed work
    in one process alone, then in two at once (cores, caches and memory bandwidth shared);
    throughput of 2 over 1 = 2 x alone / the slower of the two."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")

    def run(copies: int) -> list[float]:
        ready, seconds = context.Barrier(copies), context.Queue()
        processes = [context.Process(target=_busy, args=(kind, ready, seconds)) for _ in range(copies)]
        for process in processes:
            process.start()
        out = [seconds.get() for _ in processes]
        for process in processes:
            process.join()
        return out

    alone, together = run(1)[0], run(2)
    return {
        "alone_seconds": round(alone, 2),
        "together_seconds": [round(t, 2) for t in together],
        "throughput_2_over_1": round(2 * alone / max(together), 2),
    }


def score_once(
    data: Any, workers: int, work: Path, started: dict[str, float], costs: str | None
) -> dict[str, Any]:
    """One scoring of every candidate from an empty feature cache; wall time, scores, the order
    the candidates started in and the seconds an image each took (`costs`: those of the run
    before, as a project that scored them before has them: the slowest start first)."""
    from tasks.core import runner
    from tasks.core.config import Candidate
    from tasks.modality.pixels import Images
    from tasks.selection.candidates import COSTS, longest_first, score_candidates

    candidates = tuple(Candidate(**c) for c in CANDIDATES)
    root = work / "shared"  # the project folder: the feature cache, seen by every worker
    root.mkdir()
    if costs is not None:
        (root / COSTS).parent.mkdir(parents=True, exist_ok=True)
        (root / COSTS).write_text(costs)
    order = [CANDIDATES[i]["uri"] for i in longest_first(candidates, root)]
    with runner.using(runner_for(workers, root, started, f"dask-{workers}")):
        start = time.perf_counter()
        chosen = score_candidates(candidates, data.train, 2000, 0, Images(), top_k=1, root=root)
        seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 1),
        "scores": chosen.scores,
        "chosen": chosen.uri,
        "order": order,
        "costs": (root / COSTS).read_text(),
    }


def runner_for(workers: int, root: Path, started: dict[str, float], key: str) -> Any:
    """In process (0 workers) or a started local cluster (its start timed into `started`)."""
    from tasks.core import runner

    if not workers:
        return runner.Runner()
    on = runner.DaskRunner(None, workers, 1, root)
    start = time.perf_counter()
    on.client().run(_warm)
    started[key] = round(time.perf_counter() - start, 1)
    return on


def search_once(data: Any, workers: int, work: Path, started: dict[str, float]) -> dict[str, Any]:
    """One strategy search (frozen features computed before the clock starts); wall time and
    what it chose."""
    from tasks.core import runner
    from tasks.core.config import Candidate, FinetuneParams, SearchParams
    from tasks.modality.pixels import Augment, Pixels
    from tasks.models import features
    from tasks.search import strategy
    from tasks.search.records import SearchBackbone
    from tasks.selection.families import load_candidate

    root = work / "shared"
    root.mkdir(exist_ok=True)
    model, pixels = load_candidate(Candidate(**SEARCH_CANDIDATE), 0), Pixels(32)
    x = [features.features(model, "mnv3s", split, pixels, root) for split in (data.train, data.val)]
    backbone = SearchBackbone("mnv3s", model, pixels, *x)
    on = runner_for(workers, root, started, f"search dask-{workers}")
    with runner.using(on), task_stream(on, workers) as stream:
        start = time.perf_counter()
        found = strategy.search(
            [backbone],
            data.train,
            data.val,
            len(data.class_names),
            SearchParams(),
            FinetuneParams(),
            Augment(),
            checkpoints=root / "checkpoints",
        )
        seconds = time.perf_counter() - start
    scratch = next((t for t in found.trials if t.trial_id == "scratch"), None)
    return {
        "seconds": round(seconds, 1),
        "trials": len(found.trials),
        "chosen": found.best.words(),
        "val_accuracy": round(found.val_accuracy, 4),
        "scratch_epochs": scratch.epochs if scratch else None,
        "task_seconds": task_seconds(stream.data) if stream is not None else {},
    }


def task_stream(on: Any, workers: int) -> Any:
    """Dask's record of the tasks the workers ran (None in process)."""
    import contextlib

    if not workers:
        return contextlib.nullcontext()
    from distributed import get_task_stream

    return get_task_stream(client=on.client())


def task_seconds(stream: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Compute seconds of each task the workers ran, by function (task keys are named after it)."""
    seconds: dict[str, list[float]] = {}
    for task in stream:
        spent = sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute")
        seconds.setdefault(str(task["key"]).rsplit("-", 1)[0], []).append(round(spent, 1))
    return seconds


TRAIN_SETS = {
    "images.candidates": "[{uri: 'keras:MobileNetV3Small', weights: none, size: 32}]",
    "finetune.head_epochs": 5,
    "finetune.finetune_epochs": 2,
    "search.enabled": "false",
}


def train_once(folder: Path, database: str, work: Path) -> dict[str, Any]:
    """`transferops train` as a user runs it against an `mlflow server` and a `prefect server`
    on `database` ("sqlite": each its own SQLite file; "postgresql": a fresh PostgreSQL cluster);
    the CLI's wall time (servers started before the clock)."""
    import contextlib
    import os
    import shutil
    import subprocess
    import sys

    from bench import servers

    root = work / f"train-{database}"
    shutil.copytree(folder, root / "data" / "raw")
    with contextlib.ExitStack() as stack:
        start = time.perf_counter()
        url = stack.enter_context(servers.postgres()) if database == "postgresql" else None
        tracking, api = stack.enter_context(servers.tracking_and_orchestration(work / database, url))
        started = time.perf_counter() - start
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PREFECT_API_URL": api}
        options = [arg for key, value in TRAIN_SETS.items() for arg in ("--set", f"{key}={value}")]
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "flows.cli", "--root", str(root), *options, "train"],
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"train against {database} failed: {done.stderr.strip().splitlines()[-1:]}")
    return {"seconds": round(seconds, 1), "servers_start_seconds": round(started, 1)}


def shares(report: dict[str, Any]) -> dict[str, float]:
    """Each 2-worker speedup as a share of what this machine can give: scoring against the
    features ceiling; the search against the lower of the training ceiling and its own bound
    (its tasks' seconds over its longest)."""
    ceilings, speedup = report["ceiling"], report["speedup"]
    found = {"scoring": round(speedup["scoring"] / ceilings["features"]["throughput_2_over_1"], 2)}
    bound = ceilings["training"]["throughput_2_over_1"]
    if report.get("search_bound"):
        bound = min(bound, report["search_bound"])
    found["search"] = round(speedup["search"] / bound, 2)
    return found


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose throughput ratio is the median (the lower middle of an even count)."""
    ordered = sorted(runs, key=lambda r: r["throughput_2_over_1"])
    return ordered[(len(ordered) - 1) // 2]


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
        lines.append(f"| {name} | {med[name]:.1f} | {med['dask-1'] / med[name]:.2f}x | {start} |")
    lines += [
        "",
        f"Same scores in every run (to 1e-6): {report['same_scores']}; chosen: {report['chosen']}.",
    ]
    searched = report.get("search_median_seconds")
    if searched:
        lines += [
            "",
            f"Strategy search (search: defaults) on the same {report['train_images']} training photos at "
            f"32 px, {SEARCH_CANDIDATE['uri']} untrained; median of {report['repeats']} interleaved runs:",
            "",
            "| runner | wall (s) | over in process | trials | scratch epochs | chosen (val accuracy) "
            "| seconds of each task on the workers (last run) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in RUNNERS:
            last, ratio = report["search_runs"][name][-1], searched["local"] / searched[name]
            tasks = ", ".join(f"{k} {v}" for k, v in last.get("task_seconds", {}).items()) or "-"
            lines.append(
                f"| {name} | {searched[name]:.1f} | {ratio:.2f}x | {last['trials']} "
                f"| {last['scratch_epochs']} | {last['chosen']} ({last['val_accuracy']}) | {tasks} |"
            )
        lines += [
            "",
            "On a Dask runner every trial runs on a worker (the scratch baseline and the fine-tune "
            "bracket as a task each, head trials on the Keras Tuner workers); the flow's process "
            "serves the oracle, fits the raw-pixel baseline (a logistic regression) and waits. "
            "No number of workers ends the search before its longest task (the scratch baseline's "
            "training, one process): with 2 workers the search takes at least that long, so 2 over "
            "1 is at most (all tasks' seconds) / (the longest); on this 2-core machine two "
            "single-threaded workers also slow each other (compare run_scratch on 1 and 2 workers).",
        ]
    trained = report.get("train_median_seconds")
    if trained:
        lines += [
            "",
            f"`transferops train` ({', '.join(f'{k}={v}' for k, v in TRAIN_SETS.items())}) on the same "
            f"{report['photos']} photos, against an `mlflow server` and a `prefect server` on SQLite files "
            "or on PostgreSQL (a fresh cluster each run, servers started before the clock); median of "
            f"{report['repeats']} interleaved runs:",
            "",
            "| database | train wall (s) | over SQLite | servers start (s) |",
            "|---|---|---|---|",
        ]
        for name in DATABASES:
            last = report["train_runs"][name][-1]
            lines.append(
                f"| {name} | {trained[name]:.1f} | {trained[name] / trained['sqlite']:.2f}x "
                f"| {last['servers_start_seconds']} |"
            )
    ceilings = report.get("ceiling")
    if ceilings:
        lines += [
            "",
            "What 2 workers can give on this machine at most (`ceiling`): the same fixed single-threaded "
            "TensorFlow work (MobileNetV3Small, batches of 32) in one process alone, then in two at once "
            "(median of the repeats):",
            "",
            "| work | alone (s) | two at once (s) | throughput, 2 over 1 |",
            "|---|---|---|---|",
        ]
        for kind, (size, batches) in CEILING_WORK.items():
            c = ceilings[kind]
            work = f"{kind}: {batches} batches at {size} px"
            together = " / ".join(f"{t:.2f}" for t in c["together_seconds"])
            lines.append(
                f"| {work} | {c['alone_seconds']:.2f} | {together} | {c['throughput_2_over_1']:.2f}x |"
            )
    bound = report.get("search_bound")
    if bound:
        lines += [
            "",
            f"The search's own bound on 2 workers: its tasks' seconds on 1 worker, summed, over its longest "
            f"task = {bound:.2f}x (before any slowdown of two processes sharing 2 cores).",
        ]
    search, share = report["speedup"]["search"], report.get("share_of_ceiling", {})
    lines += [
        "",
        f"Speedup, 2 workers over 1: scoring {report['speedup']['scoring']:.2f}x"
        + (f" ({share['scoring']:.0%} of the features ceiling)" if "scoring" in share else "")
        + "; search "
        + (f"{search:.2f}x" if search is not None else "not measured (null)")
        + (f" ({share['search']:.0%} of min(training ceiling, its own bound))" if "search" in share else "")
        + ".",
        "",
        "Candidates start slowest first (`selection.candidates.longest_first`, from the seconds an image "
        "the last scoring measured; the first run of a project goes in params' order): "
        + "; ".join(f"{name}: {', '.join(runs[-1]['order'])}" for name, runs in report["runs"].items()),
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
    from tasks.modality.pixels import Images

    folder = make_photos(args.data / f"photos-{args.photos}", args.photos)
    data = load_folder(folder, SplitParams(), Images(max_pixels=40_000_000))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNNERS}
    searched: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNNERS}
    trained: dict[str, list[dict[str, Any]]] = {name: [] for name in DATABASES}
    started: dict[str, float] = {}
    ceilings: dict[str, list[dict[str, Any]]] = {kind: [] for kind in CEILING_WORK}
    costs = None  # the seconds an image of each candidate, as the last scoring measured them
    with tempfile.TemporaryDirectory(prefix="transferops-distributed-") as tmp:
        for repeat in range(args.repeats):
            for kind in CEILING_WORK:
                ceilings[kind].append(ceiling(kind))
                print("ceiling", kind, ceilings[kind][-1], flush=True)
            for name, workers in RUNNERS.items():
                # a fresh shared cache per run: nothing scored before is read back
                work = Path(tmp) / f"{name}-{repeat}"
                work.mkdir()
                runs[name].append(score_once(data, workers, work, started, costs))
                costs = runs[name][-1].pop("costs")
                print(name, runs[name][-1], flush=True)
                searched[name].append(search_once(data, workers, work, started))
                print("search", name, searched[name][-1], flush=True)
            for database in DATABASES:
                work = Path(tmp) / f"{database}-{repeat}"
                work.mkdir()
                trained[database].append(train_once(folder, database, work))
                print("train", database, trained[database][-1], flush=True)
    median = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    search_median = {name: statistics.median(r["seconds"] for r in rs) for name, rs in searched.items()}
    train_median = {name: statistics.median(r["seconds"] for r in rs) for name, rs in trained.items()}
    first = runs["local"][0]["scores"]
    same = all(
        r["scores"].keys() == first.keys() and all(abs(r["scores"][k] - v) < 1e-6 for k, v in first.items())
        for rs in runs.values()
        for r in rs
    )
    one_worker = searched["dask-1"][-1].get("task_seconds", {})
    spent = [seconds for task in one_worker.values() for seconds in task]
    report = {
        **results_io.header("bench.distributed", argv),
        "photos": args.photos,
        "train_images": len(data.train),
        "repeats": args.repeats,
        "runs": runs,
        "median_seconds": median,
        "cluster_start_seconds": started,
        "same_scores": same,
        "chosen": runs["local"][0]["chosen"],
        "search_runs": searched,
        "search_median_seconds": search_median,
        "train_runs": trained,
        "train_median_seconds": train_median,
        "postgresql_over_sqlite": round(train_median["postgresql"] / train_median["sqlite"], 2),
        "ceiling": {kind: median_run(runs) for kind, runs in ceilings.items()},
        "search_bound": round(sum(spent) / max(spent), 2) if spent else None,
        "speedup": {
            "scoring": round(median["dask-1"] / median["dask-2"], 2),
            "search": round(search_median["dask-1"] / search_median["dask-2"], 2),
        },
    }
    report["share_of_ceiling"] = shares(report)
    return results_io.write(args.out, "distributed", report, markdown(report))


if __name__ == "__main__":
    main()
