"""An exported classifier in its own runtime (onnxruntime, the LiteRT interpreter, TensorFlow's
SavedModel loader) as a function of a batch: what `transferops export` checks an export with,
and what a served version answers through when its export passed that check
(tasks/registry/serving.py). Shipped inside served models: it imports nothing of `tasks`."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

Runtime = Callable[[np.ndarray], np.ndarray]  # a batch of model input -> probabilities (n, k)


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """LiteRT's C++ writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to
    file descriptor 2 when it prepares a model, past Python's logging: noise beside the check's
    one line. Errors still reach the user as the exceptions they raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _onnxruntime() -> Any:
    """onnxruntime, imported with TMPDIR pointed at a folder removed after: its telemetry writes
    a `.ses` file to the temporary folder as it is imported, which would be left there."""
    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    scratch = tempfile.mkdtemp(prefix="onnxruntime-")
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = scratch
    try:
        import onnxruntime
    finally:
        if before is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = before
        shutil.rmtree(scratch, ignore_errors=True)
    return onnxruntime


def load_runtime(path: Path | str, name: str) -> Runtime:
    """The artifact at `path` (export `name`: savedmodel, tflite[-float16|-int8], onnx) in its
    own runtime, on every core, as a function of a batch of the model's input."""
    fmt = name.partition("-")[0]
    threads = os.cpu_count() or 1
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # kept by the closure: its variables die with it
        return lambda x: np.asarray(loaded.serve(tf.constant(x)))
    if fmt == "onnx":
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda x: np.asarray(session.run(None, {input_name: x})[0])
    from ai_edge_litert.interpreter import Interpreter

    with native_stderr_quiet():
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    shape: list[int] = []
    # one interpreter holds one input and one output: a server's concurrent requests take turns
    # (onnxruntime's and TensorFlow's calls are safe from several threads at once)
    turn = threading.Lock()

    def run(x: np.ndarray) -> np.ndarray:
        with turn:
            if list(x.shape) != shape:  # the batch's dimensions are dynamic: size it to this batch
                interpreter.resize_tensor_input(source["index"], list(x.shape))
                with native_stderr_quiet():
                    interpreter.allocate_tensors()
                shape[:] = list(x.shape)
            interpreter.set_tensor(source["index"], x)
            interpreter.invoke()
            return np.array(interpreter.get_tensor(target["index"]))

    return run
