"""Phase 2 of the fixed recipe under `tf.distribute` (`finetune.distribute`):

- `none` (the default): in this process, as `finetune.finetune` always did.
- `mirrored`: `MirroredStrategy` in this process, one replica per local device (GPUs; a
  machine without one has a single CPU replica, the same training as `none`).
- `multi_worker`: `MultiWorkerMirroredStrategy` over `finetune.distribute_workers` processes on
  this machine (`TF_CONFIG`: 127.0.0.1, a free port each). Each worker runs this module on the
  job the flow wrote to the checkpoints folder (the classifier to start from, the splits as file
  lists, the params); each global batch is split between the workers and their gradients are
  summed (all-reduce) before every step, so the weights stay the same everywhere. The first
  worker (the chief) writes the trained classifier and its curve back; the flow loads them.

A multi-worker strategy has to be made before TensorFlow runs anything in its process, which the
flow has done long before phase 2: that is why the workers are fresh processes. Every worker
decodes the whole split and keeps its share of each batch (TensorFlow's DATA sharding), so the
decoding is not divided, only the model's work. A worker that fails ends the others and the
stage, in one line that names it and points to its log. The flow's callbacks (batch bar,
TensorBoard, the per-epoch backup that a rerun resumes from) run under `none` and `mirrored`
only: a multi-worker phase writes a line per epoch to each worker's log, and a killed one starts
phase 2 again.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from tasks.core.config import FinetuneParams
from tasks.core.errors import UserError
from tasks.data.datasets import Split
from tasks.modality import Encoding

ROOT = Path(__file__).resolve().parents[2]
START, TRAINED, CURVE, JOB = "start.keras", "trained.keras", "curve.json", "job.pickle"


@dataclass
class Job:
    """What each worker trains: the splits (file lists, never pixels), how to decode them, the
    params; the classifier to start from is `START` beside it."""

    train: Split
    val: Split
    encoding: Encoding
    params: FinetuneParams
    distilled: bool = False  # the splits' `y` are distillation targets (tasks.models.distill)


def compile_for_phase2(classifier: keras.Model, params: FinetuneParams, distilled: bool = False) -> None:
    from tasks.models import distill

    loss, metric = distill.objective(params, distilled)
    classifier.compile(
        optimizer=keras.optimizers.Adam(params.finetune_learning_rate), loss=loss, metrics=[metric]
    )


def fit_phase2(
    classifier: keras.Model, job: Job, callbacks: list[keras.callbacks.Callback]
) -> dict[str, list[float]]:
    """Phase 2's fit, whatever the strategy in scope: its curve."""
    params = job.params
    fitted = classifier.fit(
        job.train.batches(job.encoding, params.batch_size, shuffle_seed=params.seed),
        validation_data=job.val.batches(job.encoding, params.batch_size),
        epochs=params.finetune_epochs,
        shuffle=False,  # the stream reshuffles itself every epoch
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=params.patience, restore_best_weights=True
            ),
            *callbacks,
        ],
        verbose=0,
    )
    return {k: [float(v) for v in vs] for k, vs in fitted.history.items()}


def mirrored(
    classifier: keras.Model, job: Job, folder: Path, callbacks: list[keras.callbacks.Callback]
) -> dict[str, list[float]]:
    """Phase 2 under `MirroredStrategy` in this process; `classifier` gets the trained weights.
    Its variables must be made in the strategy's scope: it is saved and built again there."""
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    classifier.save(folder / START)
    with tf.distribute.MirroredStrategy().scope():
        replica = keras.saving.load_model(folder / START, compile=False, safe_mode=True)
        compile_for_phase2(replica, job.params, job.distilled)
    history = fit_phase2(replica, job, callbacks)
    classifier.set_weights(replica.get_weights())
    return history


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multi_worker(
    classifier: keras.Model,
    job: Job,
    folder: Path,
    workers: int,
    say: Callable[[str], None] = lambda line: None,
) -> dict[str, list[float]]:
    """Phase 2 on `workers` local processes under `MultiWorkerMirroredStrategy`; `classifier`
    gets the trained weights. The job, each worker's log and the result live in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (TRAINED, CURVE):
        (folder / stale).unlink(missing_ok=True)
    classifier.save(folder / START)
    (folder / JOB).write_bytes(pickle.dumps(job))
    hosts = ",".join(f"127.0.0.1:{_free_port()}" for _ in range(workers))
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    logs = [folder / f"worker-{i}.log" for i in range(workers)]
    processes = []
    for i, log in enumerate(logs):
        with log.open("wb") as out:
            command = [sys.executable, "-m", "tasks.models.distribute", str(folder), str(i), hosts]
            processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
    say(f"finetune: phase 2 on {workers} workers (MultiWorkerMirroredStrategy, {hosts})")
    try:
        _wait(processes, logs)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    trained = keras.saving.load_model(folder / TRAINED, compile=False, safe_mode=True)
    classifier.set_weights(trained.get_weights())
    curve = json.loads((folder / CURVE).read_text())
    say(f"finetune: phase 2 trained as {curve['replicas']} replicas in sync")
    return curve["history"]


def _wait(processes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """Until every worker has ended; the first that fails ends the wait in one line (the others,
    waiting for it in an all-reduce, would wait for ever)."""
    while True:
        codes = [process.poll() for process in processes]
        failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            i = failed[0]
            lines = logs[i].read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else "no output"
            raise UserError(
                f"finetune.distribute: worker {i} of {len(processes)} failed (exit {codes[i]}): {last} "
                f"(its log: {logs[i]}); fix that or set finetune.distribute: none"
            )
        if all(code == 0 for code in codes):
            return
        time.sleep(0.2)


def worker(folder: Path, index: int, hosts: list[str]) -> None:
    """One worker: the strategy first (before TensorFlow runs anything), then the job."""
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
    )
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    job: Job = pickle.loads((folder / JOB).read_bytes())  # written by our flow, in its own folder
    keras.utils.set_random_seed(job.params.seed)
    with strategy.scope():
        classifier = keras.saving.load_model(folder / START, compile=False, safe_mode=True)
        optimizer = keras.optimizers.Adam(job.params.finetune_learning_rate)
        optimizer.build(classifier.trainable_variables)
    history = _train_loop(strategy, classifier, optimizer, job)
    if index == 0:  # the chief writes the result, whole (temp + rename)
        partial = folder / "partial.keras"
        classifier.save(partial)
        partial.replace(folder / TRAINED)
        curve = {"history": history, "replicas": strategy.num_replicas_in_sync}
        (folder / f".{CURVE}").write_text(json.dumps(curve))
        (folder / f".{CURVE}").replace(folder / CURVE)


def _train_loop(
    strategy: Any, classifier: keras.Model, optimizer: keras.optimizers.Optimizer, job: Job
) -> dict[str, list[float]]:
    """`fit_phase2` as a loop of `strategy.run` steps: Keras 3's `fit` fails under a
    MultiWorkerMirroredStrategy (keras-team/keras#20585: its first step reduces a PerReplica
    batch). Each step's loss is the mean over the global batch (its size summed over the
    replicas), the gradients are all-reduced by the optimizer; per epoch the same
    loss/accuracy/val_loss/val_accuracy as `fit`, early stopping on val_loss with the best
    weights restored. Every worker sees the same reduced figures, so all stop at the same epoch."""
    import tensorflow as tf

    params = job.params
    per_image = keras.losses.SparseCategoricalCrossentropy(reduction="none")

    def sums(x: Any, y: Any, training: bool) -> tuple[Any, Any, Any, Any]:
        probabilities = classifier(tf.cast(x, "float32"), training=training)
        losses = per_image(y, probabilities)
        correct = tf.cast(tf.equal(tf.argmax(probabilities, axis=1), tf.cast(y, tf.int64)), "float32")
        return losses, tf.reduce_sum(losses), tf.reduce_sum(correct), tf.cast(tf.size(y), "float32")

    def train_one(x: Any, y: Any) -> tuple[Any, Any, Any]:
        replicas = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            losses, loss_sum, correct, count = sums(x, y, True)
            mean = tf.reduce_sum(losses) / tf.maximum(replicas.all_reduce("SUM", count), 1.0)
        grads = tape.gradient(mean, classifier.trainable_variables)
        optimizer.apply_gradients(zip(grads, classifier.trainable_variables, strict=True))
        return loss_sum, correct, count

    def val_one(x: Any, y: Any) -> tuple[Any, Any, Any]:
        return sums(x, y, False)[1:]

    @tf.function
    def train_step(batch: Any) -> Any:
        return [strategy.reduce("SUM", v, axis=None) for v in strategy.run(train_one, args=batch)]

    @tf.function
    def val_step(batch: Any) -> Any:
        return [strategy.reduce("SUM", v, axis=None) for v in strategy.run(val_one, args=batch)]

    def epoch_of(step: Any, data: Any) -> tuple[float, float]:
        totals = np.zeros(3)
        for batch in strategy.experimental_distribute_dataset(data):
            totals += [float(v) for v in step(batch)]
        return totals[0] / max(totals[2], 1.0), totals[1] / max(totals[2], 1.0)

    train = job.train.batches(job.encoding, params.batch_size, shuffle_seed=params.seed)
    val = job.val.batches(job.encoding, params.batch_size)
    history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    best, best_loss, since = classifier.get_weights(), float("inf"), 0
    for _ in range(params.finetune_epochs):
        for key, value in zip(history, (*epoch_of(train_step, train), *epoch_of(val_step, val)), strict=True):
            history[key].append(float(value))
        print("epoch", len(history["loss"]), {k: round(v[-1], 4) for k, v in history.items()}, flush=True)
        if history["val_loss"][-1] < best_loss:
            best, best_loss, since = classifier.get_weights(), history["val_loss"][-1], 0
        else:
            since += 1
            if since >= params.patience:
                break
    classifier.set_weights(best)
    return history


def run(
    classifier: keras.Model,
    job: Job,
    folder: Path | None,
    callbacks: list[keras.callbacks.Callback],
    say: Callable[[str], None] = lambda line: None,
) -> dict[str, list[float]]:
    """Phase 2 under `job.params.distribute`: the curve; `classifier` holds the trained weights.
    `folder` holds what the strategy's processes share (a temporary one when None)."""
    kind = job.params.distribute
    if kind == "none":
        compile_for_phase2(classifier, job.params, job.distilled)
        return fit_phase2(classifier, job, callbacks)
    with tempfile.TemporaryDirectory(prefix="transferops-distribute-") as scratch:
        where = folder if folder is not None else Path(scratch)
        if kind == "mirrored":
            return mirrored(classifier, job, where / "mirrored", callbacks)
        return multi_worker(classifier, job, where / "multi_worker", job.params.distribute_workers, say)


def main(argv: list[str]) -> None:
    """A worker process: it ends with its exit code even when TensorFlow's collective threads,
    still waiting on a peer that failed (or on one this worker failed), would keep a normal
    interpreter exit waiting for ever (seen in CI: a worker printed its error and never exited)."""
    code = 0
    try:
        worker(Path(argv[0]), int(argv[1]), argv[2].split(","))
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
