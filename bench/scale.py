"""Scale: transferops on a folder of photos against plain Keras on the same folder and model.

The photo workload (made here): 8 classes of 640x480 JPEGs, 1% at 3000x2000, 5% greyscale and
5% PNG, at each `--sizes` count. For each count and input side (`--pixels`: 224 with the
ImageNet backbone `lite0:imagenet`, 32 with an untrained `keras:MobileNetV3Small` at 32 px):

- `transferops train` as a user runs it (its own process; peak RSS of that process and of its
  whole tree, stage times -> images per second), then the unchanged rerun (wall time, the
  largest cached stage result), then `transferops predict FOLDER --out labels.parquet`;
- the pipelines alone, in one fresh process each, same files and model: a fine-tune epoch
  (the top layers unfrozen) and frozen-feature extraction through `Split.batches` (ours)
  against `keras.utils.image_dataset_from_directory` + `fit` / `predict` (plain Keras); with
  `--pil` also our stream with every file decoded by PIL (what it did before ordinary JPEG/PNG
  were decoded in C++).

Results: bench/results/scale.json and scale.md (ratios side by side from the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from bench import results_io

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
CLASSES = ["apple", "boat", "cloud", "door", "egg", "fern", "grape", "house"]
MODELS = {
    224: "[{uri: 'lite0:imagenet'}]",
    32: "[{uri: 'keras:MobileNetV3Small', weights: none, size: 32}]",
}
EPOCH_SETTINGS = {  # one head pass over features, one fine-tune epoch: what the timings need
    "finetune.head_epochs": 3,
    "finetune.finetune_epochs": 1,
    "finetune.unfreeze_layers": 4,
    "finetune.batch_size": 32,
    "search.enabled": "false",
}


def make_photo(args: tuple[Path, int, int]) -> None:
    """One photo of class k: a class-coloured sky, a class-shaped object at a random place."""
    import numpy as np
    from PIL import Image, ImageDraw

    path, k, seed = args
    rng = np.random.default_rng(seed)
    big = rng.random() < 0.01
    size = (3000, 2000) if big else (640, 480)
    hue = np.array([(k * 37) % 256, (k * 91) % 256, (k * 53) % 256])
    image = Image.new("RGB", size, tuple(int(v) for v in (hue * 0.6 + rng.integers(0, 60, 3))))
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(6):  # clutter every class shares
        x, y = rng.integers(0, w), rng.integers(0, h)
        draw.rectangle((x, y, x + w // 8, y + h // 10), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    x, y, r = rng.integers(w // 5, 4 * w // 5), rng.integers(h // 5, 4 * h // 5), w // (6 + k % 3)
    shape = draw.ellipse if k % 2 else draw.rectangle
    shape((x - r, y - r // (1 + k % 4), x + r, y + r), fill=tuple(int(v) for v in 255 - hue))
    roll = rng.random()
    if roll < 0.05:
        image.convert("L").save(path.with_suffix(".jpg"), quality=85)
    elif roll < 0.10:
        image.save(path.with_suffix(".png"))
    else:
        image.save(path.with_suffix(".jpg"), quality=85)


def make_photos(folder: Path, n: int) -> Path:
    """`n` photos under folder/<class>/, made once (kept between runs of the benchmark)."""
    from concurrent.futures import ProcessPoolExecutor

    done = folder / f".complete-{n}"
    if done.exists():
        return folder
    jobs = []
    for i in range(n):
        k = i % len(CLASSES)
        (folder / CLASSES[k]).mkdir(parents=True, exist_ok=True)
        jobs.append((folder / CLASSES[k] / f"{i:06d}", k, i))
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(make_photo, jobs, chunksize=64))
    done.touch()
    return folder


def run_measured(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `command`; wall time, peak RSS of the process and of its whole tree (psutil, 0.2 s),
    and at the process's peak: when (seconds from the start) and how much of it was file-backed
    (psutil's `shared`: mapped files, such as a memory-mapped cache, and shared libraries)."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    peak = {"main": 0, "tree": 0}
    at_peak = {"s": 0.0, "file": 0}
    out: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda s=s, k=k: out.__setitem__(k, s.read()))
        for k, s in (("stdout", process.stdout), ("stderr", process.stderr))
    ]
    for reader in readers:
        reader.start()
    watched = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            info = watched.memory_info()
            main = info.rss
            tree = main + sum(c.memory_info().rss for c in watched.children(recursive=True))
            if main > peak["main"]:
                at_peak = {"s": time.perf_counter() - start, "file": info.shared}
            peak = {"main": max(peak["main"], main), "tree": max(peak["tree"], tree)}
        except psutil.Error:
            pass
        time.sleep(0.2)
    for reader in readers:
        reader.join()
    stderr = out["stderr"].decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}... exit {process.returncode}: {stderr[-3000:]}")
    return {
        "wall_s": time.perf_counter() - start,
        "peak_rss_mb": peak["main"] / 2**20,
        "peak_tree_rss_mb": peak["tree"] / 2**20,
        "peak_at_s": at_peak["s"],
        "peak_file_backed_mb": at_peak["file"] / 2**20,
        "stdout": out["stdout"].decode(errors="replace"),
        "stderr": stderr,
    }


def transferops(folder: Path, n: int, side: int, work: Path, predict: bool = True) -> dict[str, Any]:
    """`transferops train`, the unchanged rerun and (with `predict`) `predict` in a fresh
    project folder."""
    root = work / f"project-{n}-{side}"
    settings = {"data.raw": str(folder), "images.candidates": MODELS[side], **EPOCH_SETTINGS}
    args = [sys.executable, "-m", "flows.cli", "--root", str(root)]
    args += [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    env = {"TRANSFEROPS_PROGRESS": "1"}
    first = run_measured([*args, "train"], env)
    report = json.loads((root / "reports" / "train.json").read_text())
    rerun = run_measured([*args, "train"], env)
    results = root / ".transferops" / "results"
    largest = max((p.stat().st_size for p in results.rglob("*") if p.is_file()), default=0)
    predicted = (
        run_measured([*args, "predict", str(folder), "--out", str(work / "labels.parquet")])
        if predict
        else {"wall_s": None, "peak_rss_mb": None}
    )
    epoch = [line for line in first["stderr"].splitlines() if line.startswith("finetune epoch 1/1")]
    images = report["examples"]
    seconds = report["stage_seconds"]
    return {
        "train_wall_s": first["wall_s"],
        "train_peak_rss_mb": first["peak_rss_mb"],
        "train_peak_tree_rss_mb": first["peak_tree_rss_mb"],
        "stage_seconds": seconds,
        "images": images,
        "validate_img_s": n / seconds["validate"],
        "finetune_epoch_s": float(epoch[0].rsplit(" ", 1)[-1].rstrip("s")) if epoch else None,
        "rerun_wall_s": rerun["wall_s"],
        "rerun_reused": json.loads((root / "reports" / "train.json").read_text())["reused"],
        "largest_cached_result_mb": largest / 2**20,
        "predict_wall_s": predicted["wall_s"],
        "predict_peak_rss_mb": predicted["peak_rss_mb"],
        "predict_img_s": n / predicted["wall_s"] if predicted["wall_s"] else None,
        "test_accuracy": report["test"]["accuracy"],
    }


PIPELINES = textwrap.dedent(
    """
    import json, resource, sys, time
    from pathlib import Path
    import keras, numpy as np
    from tasks.core.config import Candidate, SplitParams
    from tasks.data.datasets import Split, load_folder
    from tasks.modality.pixels import Images, Pixels
    from tasks.models import features
    from tasks.modality.pixels import input_size
    from tasks.selection.families import load_candidate
    from tasks.models.finetune import unfreeze_top

    folder, side, which, uri = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    spec = {"uri": uri} if uri.startswith("lite0") else {"uri": uri, "weights": "none", "size": side}
    backbone = load_candidate(Candidate(**spec), 0, Path(sys.argv[5]))
    splits = SplitParams(val_fraction=0.0001, test_fraction=0.0001)
    data = load_folder(folder, splits, Images(max_pixels=40_000_000))
    files = data.train
    if which == "pil":  # ours without the manifest's decoders: every file through PIL
        files, which = Split(files.root, files.files, files.y, files.sha256), "ours"
    if which == "ours":
        images = files.batches(Pixels(side), 32)
        unlabelled = files.batches(Pixels(side), 32, labels=False)
    else:
        images = keras.utils.image_dataset_from_directory(
            folder, image_size=(side, side), batch_size=32, shuffle=True, seed=0, follow_links=False
        )
        unlabelled = keras.utils.image_dataset_from_directory(
            folder, labels=None, image_size=(side, side), batch_size=32, shuffle=False
        )
    n = len(files) if which == "ours" else len(unlabelled.file_paths)
    kinds = Pixels(side).routes(files.root, files.files, files.decoders, files.parts)[0]
    native = float((kinds > 0).mean()) if which == "ours" else None
    start = time.perf_counter()
    if which == "ours":
        features.features(backbone, "", files, Pixels(side), None)
    else:
        backbone.predict(unlabelled, verbose=0)
    extract = time.perf_counter() - start
    unfreeze_top(backbone, 4)
    inputs = keras.Input((side, side, 3))
    model = keras.Model(inputs, keras.layers.Dense(8, activation="softmax")(backbone(inputs, training=False)))
    model.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    model.fit(images.take(2), epochs=1, verbose=0)  # trace once, outside the timing
    start = time.perf_counter()
    model.fit(images, epochs=1, verbose=0, shuffle=False)
    epoch = time.perf_counter() - start
    print(json.dumps({"images": n, "extract_img_s": n / extract, "epoch_img_s": n / epoch, "native": native,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)


def pipelines(folder: Path, side: int, work: Path, repeats: int = 1, pil: bool = False) -> dict[str, Any]:
    """Our stream and plain Keras (and with `pil` our stream with every file decoded by PIL) on
    the same files and model, each in a fresh process, `repeats` times, interleaved (ours
    first, then Keras first, ...): img/s is the median of the repeats (one measurement each
    swung 0.6x-1.6x on this shared machine), peak RSS the largest."""
    uri = "lite0:imagenet" if side == 224 else "keras:MobileNetV3Small"
    arms = ("ours", "keras", "pil") if pil else ("ours", "keras")
    found: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    for repeat in range(repeats):
        for which in arms if repeat % 2 == 0 else arms[::-1]:
            done = run_measured(
                [sys.executable, "-c", PIPELINES, str(folder), str(side), which, uri, str(work / "backbones")]
            )
            found[which].append(json.loads(done["stdout"].strip().splitlines()[-1]))
    return {
        which: {
            "images": runs[0]["images"],
            "native_share": runs[0].get("native"),  # of our files decoded in the graph (C++)
            "extract_img_s": statistics.median(r["extract_img_s"] for r in runs),
            "epoch_img_s": statistics.median(r["epoch_img_s"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "repeats": [{k: r[k] for k in ("extract_img_s", "epoch_img_s")} for r in runs],
        }
        for which, runs in found.items()
    }


def commands(report: dict[str, Any]) -> str:
    """The command(s) behind a report: a benchmark in parts (`--keep`) lists each one."""
    return ", then ".join(f"`{c}`" for c in report.get("commands", [report["command"]]))


def figure(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def pil_figures(pil: dict[str, Any] | None, keras: dict[str, Any]) -> str:
    if pil is None:
        return "-"
    epoch, extract = pil["epoch_img_s"], pil["extract_img_s"]
    ratios = epoch / keras["epoch_img_s"], extract / keras["extract_img_s"]
    return f"{epoch:.1f} ({ratios[0]:.2f}x) / {extract:.1f} ({ratios[1]:.2f}x)"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Scale benchmark ({report['date']})",
        "",
        f"{commands(report)} on {report['machine']}. Photos: 8 classes of 640x480 JPEG "
        "(1% 3000x2000, 5% greyscale, 5% PNG). transferops: `transferops train` (1 fine-tune epoch, top 4 "
        "layers), its own process; pipelines: the same files and model in one fresh process each.",
        "",
        "| photos | px | train peak RSS (MB) | tree (MB) | validate img/s | train wall (s) | rerun (s) "
        "| largest cached result (MB) | predict peak RSS (MB) | predict img/s | test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        t = r["transferops"]
        lines.append(
            f"| {r['n']} | {r['px']} | {t['train_peak_rss_mb']:.0f} | {t['train_peak_tree_rss_mb']:.0f} "
            f"| {t['validate_img_s']:.0f} | {t['train_wall_s']:.0f} | {t['rerun_wall_s']:.1f} "
            f"| {t['largest_cached_result_mb']:.2f} | {figure(t['predict_peak_rss_mb'], '.0f')} "
            f"| {figure(t['predict_img_s'], '.1f')} "
            f"| {t['test_accuracy']:.3f} |"
        )
    lines += [
        "",
        "| photos | px | fine-tune epoch img/s: ours / plain Keras (ratio) "
        "| frozen features img/s: ours / Keras predict (ratio) | pipeline peak RSS MB: ours / Keras "
        "| ours decoded in C++ | ours, every file through PIL: epoch / features img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in report["runs"] if "pipelines" in r):
        ours, keras = r["pipelines"]["ours"], r["pipelines"]["keras"]
        lines.append(
            f"| {r['n']} | {r['px']} "
            f"| {ours['epoch_img_s']:.1f} / {keras['epoch_img_s']:.1f} "
            f"({ours['epoch_img_s'] / keras['epoch_img_s']:.2f}x) "
            f"| {ours['extract_img_s']:.1f} / {keras['extract_img_s']:.1f} "
            f"({ours['extract_img_s'] / keras['extract_img_s']:.2f}x) "
            f"| {ours['peak_rss_mb']:.0f} / {keras['peak_rss_mb']:.0f} "
            f"| {figure(ours.get('native_share'), '.0%')} | {pil_figures(r['pipelines'].get('pil'), keras)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--pixels", type=int, nargs="+", default=[32, 224], choices=sorted(MODELS))
    parser.add_argument(
        "--cases", nargs="+", default=None, help="COUNT:PX pairs instead of every size x pixels (2000:224)"
    )
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "transferops-photos")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the earlier results' runs of other cases (a benchmark in parts)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each pipeline, interleaved; img/s is their median"
    )
    parser.add_argument(
        "--pil",
        action="store_true",
        help="also run our stream with every file decoded by PIL (no C++ decoding), in the same interleaving",
    )
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="only `transferops train` and its rerun, no predict or pipelines (50,000 photos at 224 px: "
        "about an hour on 2 cores instead of about three)",
    )
    args = parser.parse_args(argv)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="transferops-scale-") as tmp:
        work = Path(tmp)
        cases = (
            [tuple(map(int, c.split(":"))) for c in args.cases]
            if args.cases
            else [(n, side) for n in args.sizes for side in args.encoding]
        )
        for n, side in cases:
            folder = make_photos(args.data / f"photos-{n}", n)
            if side not in MODELS:
                parser.error(f"--cases {n}:{side}: px must be one of {sorted(MODELS)}")
            print(f"scale: {n} photos at {side} px", flush=True)
            run = {"n": n, "px": side, "transferops": transferops(folder, n, side, work, not args.train_only)}
            if not args.train_only:
                run["pipelines"] = pipelines(folder, side, work, args.repeats, args.pil)
            runs.append(run)
            print(json.dumps(run), flush=True)
    header, earlier, kept = results_io.header("bench.scale", argv), args.out / "scale.json", []
    done = {(r["n"], r["px"]) for r in runs}
    if args.keep and earlier.is_file():
        old = json.loads(earlier.read_text())
        kept = [r for r in old["runs"] if (r["n"], r["px"]) not in done]
        header["commands"] = [*dict.fromkeys([*old.get("commands", [old["command"]]), header["command"]])]
    runs = sorted(kept + runs, key=lambda r: (r["px"], r["n"]))
    report = {**header, "runs": runs}
    return results_io.write(args.out, "scale", report, markdown(report))


if __name__ == "__main__":
    main()
