"""Export a registered version for another runtime, checked on the version's own test split.

`transferops export VERSION --format savedmodel|tflite|onnx [--quantize float16|int8]` writes
the artifact and, beside it, `<artifact>.json`: how to feed it (its encoding's `meta`: for
images RGB, a square of the `resize` policy, float32 0-255, NHWC; for texts int32 token ids of
the `tokenizer` file shipped beside it, cut to the `window`, 0-padded) and the class names in
output order. Most "mismatches" reported between runtimes are preprocessing differences
(tensorflow-onnx#1428), so the export names its preprocessing, and the check runs that very
decoding (the version's `Encoding`).

The check: every test image of the version goes through the Keras model and through the
artifact in its own runtime (TensorFlow's SavedModel loader, the LiteRT interpreter that phones
run, onnxruntime), batch by batch, so memory stays flat in the number of images. Recorded on
the version as tags `export.<name>.*` (`<name>`: the format, `-float16`/`-int8` when quantized):
top-1 agreement with Keras, the largest absolute probability difference, test accuracy in that
runtime and in Keras, file size, median single-image latency of both. An export that loses
more test accuracy than `export.max_accuracy_drop` is refused: its file is deleted, its parity
is still recorded (status `refused`), and the command ends in one line that says by how much
(TFLite conversions that silently lost accuracy: tensorflow#59684, #62709, armnn#376).

int8 (TFLite only) calibrates its activations on `export.representative_images` train images.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core import progress
from tasks.core.config import ExportParams
from tasks.core.errors import UserError
from tasks.data.datasets import Split
from tasks.modality import Encoding
from tasks.registry.runtimes import Runtime, load_runtime

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("float16", "int8")
BATCH = 64  # examples a call of the check, at most,
BATCH_VALUES = 2**21  # and about this many input values (8 MB of float32): 13 images at 224 px,
# 64 at 32. onnxruntime keeps its arena at the largest call's size: 64 Lite0 images at 224 px
# held 1.7 GB through the register stage.


class ExportRefused(UserError):
    """The exported model loses more test accuracy than `export.max_accuracy_drop` allows."""

    def __init__(self, message: str, parity: Parity) -> None:
        super().__init__(message)
        self.parity = parity


def export_name(fmt: str, quantize: str | None = None) -> str:
    """`tflite-float16`: the format, and the quantization when there is one."""
    if fmt not in FORMATS:
        raise UserError(f"export: format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if quantize is None:
        return fmt
    if quantize not in QUANTIZATIONS or fmt != "tflite":
        raise UserError(
            f"export: --quantize {quantize} applies to --format tflite only "
            f"({', '.join(QUANTIZATIONS)}); SavedModel and ONNX keep float32 weights"
        )
    return f"{fmt}-{quantize}"


def artifact_path(folder: Path, name: str) -> Path:
    """Where the export named `name` goes in `folder`: a SavedModel is a folder, the others a file."""
    fmt, _, quantize = name.partition("-")
    stem = "model" + (f"-{quantize}" if quantize else "")
    return folder / ("savedmodel" if fmt == "savedmodel" else f"{stem}.{fmt}")


@contextlib.contextmanager
def _quiet_converters() -> Iterator[None]:
    """tf2onnx logs each optimizer it could not apply with a traceback (the model is still
    converted): noise for a user, whose one line is the check's verdict."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # Keras' tf2onnx patch probes the removed `np.object`
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def write(
    model: Any,
    name: str,
    path: Path,
    representative: Callable[[], Iterator[list[np.ndarray]]] | None = None,
    column: str = "image",
) -> Path:
    """Write `model` (a Keras classifier: float32 0-255 images, or int32 token ids) as export
    `name` to `path`, through Keras' own exporters (`model.export`); its input is `column`."""
    import tensorflow as tf

    fmt, _, quantize = name.partition("-")
    signature = [tf.TensorSpec([None, *model.input_shape[1:]], model.inputs[0].dtype, name=column)]
    options: dict[str, Any] = {}
    if quantize:
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    elif quantize == "int8":
        options["representative_dataset"] = representative
    keras_format = {"savedmodel": "tf_saved_model", "tflite": "litert", "onnx": "onnx"}[fmt]
    with _quiet_converters(), _temporary_files_in(path.parent / f".tmp-{path.name}"):
        model.export(str(path), format=keras_format, input_signature=signature, verbose=False, **options)
    return path


@contextlib.contextmanager
def _temporary_files_in(folder: Path) -> Iterator[None]:
    """The converters' temporary files (autograph's converted sources, tf2onnx's SavedModel)
    go to `folder`, removed after: none is left in the system's temporary folder."""
    folder.mkdir(parents=True, exist_ok=True)
    before = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = before
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Parity:
    """The export against the Keras model on the same test images."""

    name: str
    images: int
    agreement: float  # share of test images with the same top-1 class
    max_abs_difference: float  # largest |p_keras - p_export| over every image and class
    accuracy: float  # test accuracy in the export's runtime
    keras_accuracy: float
    size_bytes: int
    latency_ms: float  # median of single-image calls in the export's runtime
    keras_latency_ms: float  # the same for the Keras model's traced forward pass
    cpu: str
    status: str = "exported"  # or "refused"

    @property
    def accuracy_drop(self) -> float:
        return self.keras_accuracy - self.accuracy

    def tags(self) -> dict[str, str]:
        """`export.<name>.<field>`: what the registry records."""
        values = {**asdict(self), "accuracy_drop": round(self.accuracy_drop, 6)}
        values.pop("name")
        return {f"export.{self.name}.{key}": str(value) for key, value in values.items()}

    def words(self) -> str:
        return (
            f"{self.images} test images: top-1 agreement with Keras {self.agreement:.2%}, "
            f"max |dp| {self.max_abs_difference:.2g}, accuracy {self.accuracy:.4f} "
            f"(Keras {self.keras_accuracy:.4f}), {self.size_bytes / 2**20:.1f} MiB, "
            f"1 image {self.latency_ms:.1f} ms (Keras {self.keras_latency_ms:.1f} ms)"
        )


def size_of(path: Path) -> int:
    """Bytes of the artifact (a SavedModel is a folder). The registry may not import retention's
    own helper: imports go one way (tests/test_layout.py)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def median_ms(run: Runtime, image: np.ndarray, calls: int) -> float:
    run(image)  # the first call allocates and warms up
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run(image)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def compare(
    model: Any,
    runtime: Runtime,
    name: str,
    test: Split,
    encoding: Encoding,
    path: Path,
    latency_calls: int = 30,
    reference: np.ndarray | None = None,
) -> Parity:
    """Run the test split through both, batch by batch (texts shortest first), and measure
    single-image latency. `reference`: the Keras model's probabilities of the test split, in
    its order, where they are known (the register stage's evaluation): not computed again."""
    from tasks.data.lineage import cpu_kind
    from tasks.registry.serving import forward_function

    forward = forward_function(model)
    agree = correct = keras_correct = done = 0
    worst = 0.0
    first: np.ndarray | None = None
    source, order = test.in_run_order(encoding)
    with progress.counting(f"check {name}", len(test)) as advance:
        rows_per_call = max(1, min(BATCH, BATCH_VALUES // max(1, encoding.cost)))
        for batch, labels in source.batches(encoding, rows_per_call).as_numpy_iterator():
            x = batch.astype(str(model.inputs[0].dtype))
            first = x[:1] if first is None else first
            rows = np.arange(done, done + len(x)) if order is None else order[done : done + len(x)]
            done += len(x)
            ours = np.asarray(forward(x)) if reference is None else reference[rows]
            theirs = runtime(x)
            worst = max(worst, float(np.abs(ours - theirs).max()))
            agree += int((ours.argmax(1) == theirs.argmax(1)).sum())
            correct += int((theirs.argmax(1) == labels).sum())
            keras_correct += int((ours.argmax(1) == labels).sum())
            advance(len(x))
    if first is None:
        raise UserError(f"export {name}: the version's test split has no images to check it on")
    n = len(test)
    return Parity(
        name,
        n,
        agree / n,
        worst,
        correct / n,
        keras_correct / n,
        size_of(path),
        median_ms(runtime, first, latency_calls),
        median_ms(lambda x: np.asarray(forward(x)), first, latency_calls),
        cpu_kind(),
    )


def representative_images(
    train: Split, encoding: Encoding, count: int
) -> Callable[[], Iterator[list[np.ndarray]]]:
    """int8 calibration data: `count` train images spread evenly over the split (which is in
    folder order, so the first `count` would be one class), one at a time."""
    rows = np.unique(np.linspace(0, len(train) - 1, min(count, len(train))).astype(np.int64))
    sample = train.subset(rows)

    def images() -> Iterator[list[np.ndarray]]:
        for batch in sample.batches(encoding, 1, labels=False).as_numpy_iterator():
            yield [batch.astype("float32") if batch.dtype == np.uint8 else batch]

    return images


def _replace(partial: Path, final: Path) -> None:
    if final.is_dir():
        shutil.rmtree(final)
    elif final.exists():
        final.unlink()
    partial.rename(final)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def export_checked(
    model: Any,
    class_names: list[str],
    encoding: Encoding,
    test: Split,
    train: Split,
    name: str,
    folder: Path,
    max_accuracy_drop: float,
    representative_count: int = 100,
    latency_calls: int = 30,
    reference: np.ndarray | None = None,
) -> tuple[Path, Parity]:
    """Write export `name` of `model` into `folder`, check it on `test`, and keep it only when
    it loses at most `max_accuracy_drop` test accuracy: (artifact, parity). A refused export
    leaves no file and raises ExportRefused with its parity in `.parity`. A half-written export
    (a kill, a full disk) never carries the final name."""
    folder.mkdir(parents=True, exist_ok=True)
    final = artifact_path(folder, name)
    partial = final.with_name(f".partial-{final.name}")
    _remove(partial)
    try:
        progress.say(f"export {name}: converting")
        representative = (
            representative_images(train, encoding, representative_count) if "int8" in name else None
        )
        write(model, name, partial, representative, str(encoding.meta().get("column", "image")))
        runtime = load_runtime(partial, name)
        parity = compare(model, runtime, name, test, encoding, partial, latency_calls, reference)
        if parity.accuracy_drop > max_accuracy_drop:
            parity.status = "refused"
            raise ExportRefused(
                f"export {name} refused: it loses {parity.accuracy_drop:.4f} test accuracy "
                f"({parity.keras_accuracy:.4f} in Keras, {parity.accuracy:.4f} exported, {parity.images} "
                f"test images), over export.max_accuracy_drop {max_accuracy_drop}; nothing written "
                "(try another --quantize, or raise export.max_accuracy_drop)",
                parity,
            )
        _replace(partial, final)
    finally:
        _remove(partial)
    meta = {
        "format": name,
        **encoding.meta(),
        "class_names": class_names,
        "parity": asdict(parity),
    }
    Path(f"{final}.json").write_text(json.dumps(meta, indent=2))
    for key, source in encoding.artifacts().items():  # a text export's tokenizer, named in its JSON
        shutil.copyfile(source, folder / str(meta[key]))
    return final, parity


def export_version(
    model_name: str, version: str, name: str, params: ExportParams, root: Path, folder: Path | None = None
) -> tuple[Path, Parity]:
    """Export `version` of `model_name` as `name`, checked on the version's own test split (its
    recorded data version, restored by DVC when the folder has changed since, split by its
    recorded params), and record the parity on the version (refused exports too)."""
    from tasks import modality
    from tasks.data.datasets import load_folder
    from tasks.registry import reproduce, versions

    record = reproduce.recorded(model_name, version)
    served = versions.load_version(model_name, version)
    model, class_names = versions.champion_keras_model(served)
    encoding = versions.encoding_of(served)
    scratch = root / ".transferops" / "reproduce" / f"export-{model_name}-v{version}"  # gc clears leftovers
    try:
        data_dir = reproduce.restore_data(record, root, scratch)
        splits = load_folder(data_dir, record.params.split, modality.from_params(record.params, data_dir))
        if splits.class_names != class_names:
            raise UserError(
                f"export: {model_name} v{version} knows classes {class_names}, but its data version "
                f"has {splits.class_names}: it cannot be checked"
            )
        where = folder or root / ".transferops" / "exports" / model_name / f"v{version}"
        try:
            path, parity = export_checked(
                model,
                class_names,
                encoding,
                splits.test,
                splits.train,
                name,
                where,
                params.max_accuracy_drop,
                params.representative_images,
                params.latency_calls,
            )
        except ExportRefused as refused:
            versions.set_version_tags(model_name, version, refused.parity.tags())
            raise
    finally:
        reproduce.remove_scratch(scratch)
    versions.set_version_tags(model_name, version, {**parity.tags(), f"export.{name}.path": str(path)})
    return path, parity
