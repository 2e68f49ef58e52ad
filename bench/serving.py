"""Serving: what one 640x480 JPEG costs through the served model, against the network alone.

A MobileNetV3Small classifier at 224 px (untrained weights: the cost is what counts) is logged
as the pyfunc transferops registers (tasks/registry/serving.py) in a throwaway MLflow store, then:

- in this process, median of `--requests` calls each: decoding the JPEG (tasks.modality.images);
  the bare forward pass of one decoded image through a traced function; `model.predict` on it
  (what the pyfunc called before); the pyfunc's `predict` on one base64 row (decode + forward);
- served by `mlflow models serve` on 127.0.0.1 with 1 and 2 uvicorn workers: one client's
  request latency (median, p95) and the throughput of 1 and of 8 concurrent clients;
- each export format (`transferops export`, tasks/registry/export.py) of a trained classifier
  (Lite0 with its ImageNet weights, a head fitted on `--export-photos` photos of the scale
  benchmark): parity with Keras on the test split in the format's own runtime, file size,
  single-image latency, conversion time.

Results: bench/results/serving.{json,md}. One command: `python -m bench.serving`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import results_io
from bench.scale import make_photo
from bench.servers import free_port, wait_until_up

RESULTS = Path(__file__).parent / "results"
CLASSES = [f"class{k}" for k in range(8)]


def photo(folder: Path) -> Path:
    """A 640x480 RGB JPEG of the scale benchmark's workload."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(100):
        make_photo((folder / f"photo-{seed}", 1, seed))
        for made in folder.glob(f"photo-{seed}.*"):
            with Image.open(made) as image:
                if made.suffix == ".jpg" and image.size == (640, 480) and image.mode == "RGB":
                    return made
    raise RuntimeError("no 640x480 RGB JPEG made")


def logged_model(work: Path, example: Path) -> Path:
    """The classifier logged as transferops' pyfunc; its local model folder."""
    import mlflow

    from tasks.core.config import Candidate
    from tasks.modality.pixels import Pixels
    from tasks.models.backbones import build_classifier, build_head
    from tasks.registry import versions
    from tasks.reporting import tracking
    from tasks.selection.families import load_candidate

    tracking.configure(work / "mlflow")
    backbone = load_candidate(Candidate(uri="keras:MobileNetV3Small", weights="none", size=224), 0)
    _, dense = build_head(backbone.output_shape[-1], len(CLASSES), 0.0)
    model = build_classifier(backbone, dense, 0.0)
    with mlflow.start_run():
        info = versions.log_classifier(model, CLASSES, Pixels(224), work / "log", example)
    return Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(work / "model")))


def timed(call: Any, n: int) -> list[float]:
    """Milliseconds of `n` calls (after one untimed call)."""
    call()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "median_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 2),
    }


EXPORTS = ("savedmodel", "tflite", "tflite-float16", "tflite-int8", "onnx")


def exports(work: Path, photos: int) -> dict[str, Any]:
    """Every export format of a trained Lite0 classifier, checked on its test split."""
    import keras

    from bench.scale import make_photos
    from tasks.core.config import Candidate, SplitParams
    from tasks.data.datasets import load_folder
    from tasks.modality.pixels import Images, Pixels
    from tasks.models.backbones import build_classifier, build_head
    from tasks.registry import export
    from tasks.selection.families import load_candidate

    folder = make_photos(work / "export-photos", photos)
    splits = load_folder(folder, SplitParams(), Images(max_pixels=40_000_000))
    pixels = Pixels(224)
    keras.utils.set_random_seed(0)
    backbone = load_candidate(Candidate(uri="lite0:imagenet"), 0, work / "backbones")
    # the head on frozen features, as the pipeline's head phase trains it
    features = backbone.predict(splits.train.batches(pixels, 32, labels=False), verbose=0)
    head, dense = build_head(features.shape[-1], len(splits.class_names), 0.2)
    head.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    head.fit(features, splits.train.y, batch_size=64, epochs=60, verbose=0)
    model = build_classifier(backbone, dense, 0.2)
    report: dict[str, Any] = {"photos": photos, "test_images": len(splits.test)}
    for name in EXPORTS:
        start = time.perf_counter()
        # max_accuracy_drop 1: every format is measured and kept, none refused
        _, parity = export.export_checked(
            model, splits.class_names, pixels, splits.test, splits.train, name, work / "exports", 1.0
        )
        report[name] = {**vars(parity), "seconds": round(time.perf_counter() - start, 1)}
    return report


def in_process(model_dir: Path, jpeg: Path, n: int) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    from tasks.modality.images import decode
    from tasks.registry import versions

    data = jpeg.read_bytes()
    pyfunc = versions.load_pyfunc(str(model_dir))
    served = pyfunc.unwrap_python_model()
    pixels = decode(data, 224, 40_000_000, "squash")
    batch = pixels[None].astype("float32")
    frame = pd.DataFrame({"image": [base64.b64encode(data).decode("ascii")]})
    return {
        "decode": summary(timed(lambda: decode(data, 224, 40_000_000, "squash"), n)),
        "forward": summary(timed(lambda: np.asarray(served.forward(batch)), n)),
        "keras_predict": summary(timed(lambda: served.model.predict(batch, verbose=0), n)),
        "pyfunc_predict": summary(timed(lambda: pyfunc.predict(frame), n)),
    }


def request(url: str, body: bytes) -> float:
    start = time.perf_counter()
    call = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=120) as response:
        answer = json.loads(response.read())
    if answer["predictions"][0]["error"] is not None:
        raise RuntimeError(f"served model refused the photo: {answer['predictions'][0]['error']}")
    return (time.perf_counter() - start) * 1000


def served(model_dir: Path, jpeg: Path, workers: int, n: int, work: Path) -> dict[str, Any]:
    """`mlflow models serve` with `workers` uvicorn workers: 1 client, then 8 clients."""
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = ["mlflow", "models", "serve", "-m", str(model_dir), "--env-manager", "local"]
    process = subprocess.Popen(
        [sys.executable, "-m", *command, "--host", "127.0.0.1", "-p", str(port), "-w", str(workers)],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/ping", process)
        url = f"{base}/invocations"
        row = {"image": base64.b64encode(jpeg.read_bytes()).decode("ascii")}
        body = json.dumps({"dataframe_records": [row]}).encode()
        for _ in range(2 * workers):  # every worker has loaded and traced its model
            request(url, body)
        one = [request(url, body) for _ in range(n)]
        report: dict[str, Any] = {"one_client": summary(one), "one_client_rps": round(1000 * n / sum(one), 1)}
        with ThreadPoolExecutor(8) as pool:
            start = time.perf_counter()
            eight = list(pool.map(lambda _: request(url, body), range(4 * n)))
            seconds = time.perf_counter() - start
        report["eight_clients"] = summary(eight)
        report["eight_clients_rps"] = round(len(eight) / seconds, 1)
        return report
    finally:
        process.terminate()
        process.wait(timeout=60)


def markdown(report: dict[str, Any]) -> str:
    local, forward = report["in_process"], report["in_process"]["forward"]["median_ms"]
    lines = [
        f"# Serving benchmark ({report['date']})",
        "",
        f"`{report['command']}` on {report['machine']}. One 640x480 JPEG, MobileNetV3Small at 224 px "
        f"(8 classes), medians of {report['requests']} calls.",
        "",
        "| in this process | median (ms) | p95 (ms) | over the bare forward pass |",
        "|---|---|---|---|",
    ]
    for name, label in (
        ("decode", "decode the JPEG to 224 px"),
        ("forward", "bare forward pass (traced function)"),
        ("keras_predict", "`model.predict` (what the pyfunc called before)"),
        ("pyfunc_predict", "the pyfunc's predict (base64 row: decode + forward)"),
    ):
        m = local[name]
        lines.append(f"| {label} | {m['median_ms']} | {m['p95_ms']} | {m['median_ms'] / forward:.2f}x |")
    lines += [
        "",
        "| `mlflow models serve` | 1 client: median (ms) | p95 (ms) | req/s | 8 clients: req/s "
        "| median (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for workers, r in report["served"].items():
        lines.append(
            f"| {workers} worker(s) | {r['one_client']['median_ms']} | {r['one_client']['p95_ms']} "
            f"| {r['one_client_rps']} | {r['eight_clients_rps']} | {r['eight_clients']['median_ms']} |"
        )
    if "exports" in report:
        lines += export_lines(report["exports"])
    return "\n".join(lines) + "\n"


def export_lines(found: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Exports (`transferops export`) of Lite0 (ImageNet weights, frozen) with a head fitted on "
        f"{found['photos']} photos, each checked in its own runtime on the {found['test_images']} "
        "test images:",
        "",
        "| format | size (MiB) | top-1 agreement with Keras | max abs prob diff | test accuracy (Keras) "
        "| 1 image (ms) | Keras forward (ms) | convert + check (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in EXPORTS:
        r = found[name]
        lines.append(
            f"| {name} | {r['size_bytes'] / 2**20:.2f} | {r['agreement']:.2%} "
            f"| {r['max_abs_difference']:.2g} "
            f"| {r['accuracy']:.4f} ({r['keras_accuracy']:.4f}) | {r['latency_ms']:.2f} "
            f"| {r['keras_latency_ms']:.2f} | {r['seconds']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--export-photos", type=int, default=1000, help="photos for the export arms (0: none)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="transferops-serving-") as tmp:
        work = Path(tmp)
        jpeg = photo(work / "photos")
        model_dir = logged_model(work, jpeg)
        report = {
            **results_io.header("bench.serving", argv),
            "requests": args.requests,
            "in_process": in_process(model_dir, jpeg, args.requests),
            "served": {str(w): served(model_dir, jpeg, w, args.requests, work) for w in (1, 2)},
        }
        if args.export_photos:
            report["exports"] = exports(work, args.export_photos)
    return results_io.write(args.out, "serving", report, markdown(report))


if __name__ == "__main__":
    main()
