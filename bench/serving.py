"""Serving: what one request costs through the served model, in each runtime it can answer
through (`register.serve_runtime`: Keras, or its checked ONNX or TFLite export), side by side.

Two versions, each logged as the pyfunc the register stage logs (tasks/registry/serving.py) in a
throwaway MLflow store, once per runtime, with the runtime chosen and checked as the register
stage does it (`promote.serving_runtime`: the export's parity on the test split):
- an image version like the demo champion: Lite0 (ImageNet weights) with a head fitted on
  `--photos` photos of the scale benchmark at 224 px; one request = one 640x480 JPEG;
- a text version: MiniLM (its real weights, 256-token windows, 4 a text) with a head fitted on
  `--articles` BBC News articles a class; one request = one article of median length.
For each: in this process, the pyfunc's `predict` on one row (decode or tokenize + forward);
then `mlflow models serve` (1 worker) on 127.0.0.1: one client's `--requests` sequential requests
(median, p95), and 8 concurrent clients' throughput. `--exports` adds every export format of
the image model (parity, size, single-image latency, conversion time).

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


RUNTIMES = ("keras", "onnx", "tflite")


def image_version(work: Path, photos: int) -> tuple[Any, Any, Any]:
    """(classifier, splits, encoding): Lite0 with a head fitted on frozen features of `photos`
    photos, as the pipeline's head phase trains one."""
    import keras

    from bench.scale import make_photos
    from tasks.core.config import Candidate, SplitParams
    from tasks.data.datasets import load_folder
    from tasks.modality.pixels import Images, Pixels
    from tasks.models.backbones import build_classifier, build_head
    from tasks.selection.families import load_candidate

    splits = load_folder(
        make_photos(work / "photos-fit", photos), SplitParams(), Images(max_pixels=40_000_000)
    )
    pixels = Pixels(224)
    keras.utils.set_random_seed(0)
    backbone = load_candidate(Candidate(uri="lite0:imagenet"), 0, work / "backbones")
    features = backbone.predict(splits.train.batches(pixels, 32, labels=False), verbose=0)
    head, dense = build_head(features.shape[-1], len(splits.class_names), 0.2)
    head.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    head.fit(features, splits.train.y, batch_size=64, epochs=60, verbose=0)
    return build_classifier(backbone, dense, 0.2), splits, pixels


def text_version(work: Path, per_class: int) -> tuple[Any, Any, Any]:
    """(classifier, splits, encoding): MiniLM with a head fitted on `per_class` BBC News
    articles a class."""
    import keras

    from tasks.core.config import SplitParams
    from tasks.data import bbc_news
    from tasks.data.datasets import load_folder
    from tasks.modality.tokens import Texts, Tokens
    from tasks.models.backbones import build_classifier, build_head
    from tasks.models.minilm import minilm_backbone

    every, folder = work / "bbc-all", work / "bbc"
    bbc_news.write_bbc_news(every)
    for label in sorted(p.name for p in every.iterdir()):
        (folder / label).mkdir(parents=True)
        for article in sorted((every / label).iterdir())[:per_class]:
            (folder / label / article.name).write_bytes(article.read_bytes())
    splits = load_folder(folder, SplitParams(), Texts(256, 4))
    tokens = Tokens(256, 4)
    keras.utils.set_random_seed(0)
    backbone = minilm_backbone()
    features = backbone.predict(splits.train.batches(tokens, 16, labels=False), verbose=0)
    head, dense = build_head(features.shape[-1], len(splits.class_names), 0.0)
    head.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    head.fit(features, splits.train.y, batch_size=64, epochs=100, verbose=0)
    return build_classifier(backbone, dense, 0.0), splits, tokens


def logged(work: Path, model: Any, splits: Any, encoding: Any, runtime: str) -> tuple[Path, dict[str, Any]]:
    """The version logged as the register stage logs it, answering through `runtime` when its
    export passes the check: (local model folder, how the runtime was chosen)."""
    import mlflow

    from tasks.core.config import ExportParams
    from tasks.promotion.promote import log_served
    from tasks.reporting import tracking

    start = time.perf_counter()
    folder = work / runtime
    tracking.configure(work / "mlflow")
    with mlflow.start_run():
        info, chosen = log_served(model, splits, encoding, folder / "log", runtime, ExportParams())
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(folder / "model")))
    parity = vars(chosen.parity) if chosen.parity else None
    seconds = round(time.perf_counter() - start, 1)
    return local, {
        "runtime": chosen.runtime,
        "reason": chosen.reason,
        "parity": parity,
        "register_s": seconds,
    }


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


def exports(work: Path, model: Any, splits: Any, encoding: Any) -> dict[str, Any]:
    """Every export format of the image version, checked on its test split."""
    from tasks.registry import export

    report: dict[str, Any] = {"photos": sum(splits.sizes().values()), "test_images": len(splits.test)}
    for name in EXPORTS:
        start = time.perf_counter()
        # max_accuracy_drop 1: every format is measured and kept, none refused
        _, parity = export.export_checked(
            model, splits.class_names, encoding, splits.test, splits.train, name, work / "exports", 1.0
        )
        report[name] = {**vars(parity), "seconds": round(time.perf_counter() - start, 1)}
    return report


def in_process(model_dir: Path, row: dict[str, str], n: int) -> dict[str, Any]:
    """The pyfunc's predict on one row, in this process."""
    import pandas as pd

    from tasks.registry import versions

    pyfunc = versions.load_pyfunc(str(model_dir))
    frame = pd.DataFrame([row])
    if pyfunc.predict(frame)["error"].notna().any():
        raise RuntimeError("the served model refused the benchmark's row")
    return {"pyfunc_predict": summary(timed(lambda: pyfunc.predict(frame), n))}


def request(url: str, body: bytes) -> float:
    start = time.perf_counter()
    call = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=120) as response:
        answer = json.loads(response.read())
    if answer["predictions"][0]["error"] is not None:
        raise RuntimeError(f"served model refused the photo: {answer['predictions'][0]['error']}")
    return (time.perf_counter() - start) * 1000


def served(
    model_dir: Path, row: dict[str, str], workers: int, n: int, work: Path, keras: bool = False
) -> dict[str, Any]:
    """`mlflow models serve` with `workers` uvicorn workers: 1 client, then 8 clients; `keras`:
    the Keras model answers, whatever export the version has (TRANSFEROPS_SERVE_RUNTIME)."""
    from tasks.registry.serving import RUNTIME_VARIABLE

    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop(RUNTIME_VARIABLE, None)
    if keras:
        env[RUNTIME_VARIABLE] = "keras"
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
    lines = [
        f"# Serving benchmark ({report['date']})",
        "",
        f"`{report['command']}` on {report['machine']}. Medians of {report['requests']} sequential "
        "requests; the runtime each version answers through chosen and checked as the register "
        "stage does (`register.serve_runtime`; parity on the test split).",
    ]
    for kind, what in (("image", "one 640x480 JPEG a request"), ("text", "one BBC News article a request")):
        found = report["versions"][kind]
        lines += [
            "",
            f"**{found['description']}**, {what} ({found['row']}):",
            "",
            "| runtime | pyfunc predict in process (ms) | `mlflow models serve`, 1 client: median (ms) "
            "| p95 (ms) | req/s | 8 clients: req/s | over Keras (1 client median) "
            "| max abs prob diff vs Keras (test split) | register + check (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        keras_median = found["keras"]["served"]["one_client"]["median_ms"]
        for runtime in RUNTIMES:
            r = found[runtime]
            one = r["served"]["one_client"]
            parity = r["chosen"]["parity"]
            diff = f"{parity['max_abs_difference']:.2g}" if parity else "0 (Keras)"
            answered = r["chosen"]["runtime"] + ("" if r["chosen"]["runtime"] == runtime else " (fell back)")
            lines.append(
                f"| {answered} | {r['in_process']['pyfunc_predict']['median_ms']} | {one['median_ms']} "
                f"| {one['p95_ms']} | {r['served']['one_client_rps']} | {r['served']['eight_clients_rps']} "
                f"| {one['median_ms'] / keras_median:.2f}x | {diff} | {r['chosen']['register_s']} |"
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


def median_article(splits: Any) -> Path:
    """The test article of median size."""
    paths = sorted(splits.test.paths, key=lambda p: Path(p).stat().st_size)
    return Path(paths[len(paths) // 2])


def measure(
    work: Path, model: Any, splits: Any, encoding: Any, row: dict[str, str], n: int
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for runtime in RUNTIMES:
        model_dir, chosen = logged(work, model, splits, encoding, runtime)
        found[runtime] = {
            "chosen": chosen,
            "in_process": in_process(model_dir, row, n),
            "served": served(model_dir, row, 1, n, work),
        }
    return found


def champion(root: Path, work: Path, jpeg: Path, n: int) -> dict[str, Any]:
    """The champion of the project at `root` (e.g. the demo's), served as registered and with
    Keras forced, one 640x480 JPEG a request."""
    import mlflow

    from tasks.core.config import load_params
    from tasks.reporting import tracking

    name = load_params(root / "params.yaml").register.model_name if (root / "params.yaml").exists() else None
    name = name or "transferops-classifier"
    tracking.configure(root / "mlflow")
    version = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(work / "champion"))
    )
    row = {"image": base64.b64encode(jpeg.read_bytes()).decode("ascii")}
    return {
        "model": f"{name} v{version.version}",
        "backbone": version.tags.get("backbone"),
        "strategy": version.tags.get("strategy"),
        "registered_runtime": version.tags.get("serve.runtime", "keras"),
        "max_abs_difference": version.tags.get("export.onnx.max_abs_difference"),
        "as_registered": served(local, row, 1, n, work),
        "keras": served(local, row, 1, n, work, keras=True),
    }


def champion_lines(found: dict[str, Any], n: int) -> list[str]:
    lines = [
        "",
        f"**A project's champion**, {found['model']} ({found['backbone']}), registered to answer "
        f"through {found['registered_runtime']} (max abs prob diff vs Keras on its test split "
        f"{float(found['max_abs_difference'] or 0):.2g}), one 640x480 JPEG a request, "
        f"{n} sequential requests:",
        "",
        "| served through | 1 client: median (ms) | p95 (ms) | req/s | 8 clients: req/s |",
        "|---|---|---|---|---|",
    ]
    for label, key in ((found["registered_runtime"], "as_registered"), ("keras (forced)", "keras")):
        r = found[key]
        lines.append(
            f"| {label} | {r['one_client']['median_ms']} | {r['one_client']['p95_ms']} "
            f"| {r['one_client_rps']} | {r['eight_clients_rps']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--photos", type=int, default=1000, help="photos the image version is fitted and checked on"
    )
    parser.add_argument(
        "--articles", type=int, default=40, help="BBC News articles a class for the text version"
    )
    parser.add_argument(
        "--exports", action="store_true", help="also every export format of the image version"
    )
    parser.add_argument("--champion", type=Path, help="a project root: serve its champion only (the demo's)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="transferops-serving-") as tmp:
        work = Path(tmp)
        jpeg = photo(work / "photos")
        if args.champion:
            found = champion(args.champion.resolve(), work, jpeg, args.requests)
            report = {
                **results_io.header("bench.serving", argv),
                "requests": args.requests,
                "champion": found,
            }
            text = (
                f"# Serving a champion ({report['date']})\n\n`{report['command']}` on {report['machine']}.\n"
            )
            text += "\n".join(champion_lines(found, args.requests)) + "\n"
            return results_io.write(args.out, "serving-champion", report, text)
        report: dict[str, Any] = {
            **results_io.header("bench.serving", argv),
            "requests": args.requests,
            "versions": {},
        }
        model, splits, encoding = image_version(work, args.photos)
        row = {"image": base64.b64encode(jpeg.read_bytes()).decode("ascii")}
        report["versions"]["image"] = {
            "description": f"Lite0 (ImageNet) + a head fitted on {args.photos} photos, 224 px",
            "row": f"{jpeg.stat().st_size:,} bytes",
            **measure(work / "image", model, splits, encoding, row, args.requests),
        }
        if args.exports:
            report["exports"] = exports(work, model, splits, encoding)
        model, splits, encoding = text_version(work, args.articles)
        article = median_article(splits)
        text = article.read_text(encoding="utf-8")
        report["versions"]["text"] = {
            "description": f"MiniLM (256-token windows, 4 a text) + a head fitted on {args.articles} "
            "BBC News articles a class",
            "row": f"{len(text):,} characters",
            **measure(work / "text", model, splits, encoding, {"text": text}, args.requests),
        }
    return results_io.write(args.out, "serving", report, markdown(report))


if __name__ == "__main__":
    main()
