"""The served model: an MLflow pyfunc that takes examples (image bytes or texts) and returns class
names and probabilities.

Input: a DataFrame with the column its modality reads. Images: `image`, each value the bytes
of an image file, base64-encoded (what `mlflow models serve` receives as JSON) or raw `bytes`
in process. Texts: `text`, each value a string, cut to the version's window of tokens. Never a
file path: a served model that opened paths would let any HTTP client read the server's
files and probe which exist. A trusted caller in the same process that has files on disk
reads them itself (`files_frame`).

Output: one row per input row, in order, with `label`, `confidence`, one probability column
per class, and `error`. Each row is read on its own: a row that is not an image (or not a
text: null, a number, empty) gets its reason in `error` (and nulls elsewhere), and the other
rows still get their labels. Only a request that lacks the column or has no rows fails as a
whole, with one line and no stack trace. Preprocessing (tasks.modality.images, or
tasks.modality.text_rows with the tokenizer file) and the class names travel inside the model.

Runtime: a version registered with a checked export (`register.serve_runtime`: its ONNX or
TFLite file, whose test-split parity with the Keras model passed; meta `runtime`) answers
through that export's runtime (tasks/registry/runtimes.py) and never loads Keras for it; else
through the Keras model's traced forward pass. The environment variable
`TRANSFEROPS_SERVE_RUNTIME=keras` where the model loads (`mlflow models serve`) forces Keras.
"""

from __future__ import annotations

import base64
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

from tasks.modality.images import ImageError
from tasks.modality.texts import TextError

KERAS_ARTIFACT = "keras_model"
META_ARTIFACT = "meta"
RUNTIME_ARTIFACT = "runtime_model"  # the checked export a version answers through (meta "runtime")
RUNTIME_VARIABLE = "TRANSFEROPS_SERVE_RUNTIME"  # "keras": the Keras model answers, whatever export there is
BATCH = 64  # rows per forward pass: a request of any size runs in bounded memory
ROW_ERRORS = (ImageError, TextError)  # a row that cannot be read: its own error, not the request's


def files_frame(paths: list[str] | list[Path], column: str = "image") -> pd.DataFrame:
    """The model's input for files a trusted, in-process caller chose (the explicit opt-in to
    local files): an image file's bytes base64-encoded; a text file's bytes as a string, any
    bytes that are not UTF-8 kept (surrogate escapes) for the model to name."""
    if column == "text":
        texts = [Path(p).read_bytes().decode("utf-8", "surrogateescape") for p in paths]
        return pd.DataFrame({"text": pd.Series(texts, dtype=object)})  # not Arrow: it refuses surrogates
    return pd.DataFrame({"image": [base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in paths]})


def reader(meta: dict[str, Any], artifacts: dict[str, str]) -> tuple[str, Any, Any]:
    """(the input column, one row -> model input, model inputs -> a batch) of the modality the
    version recorded (`Encoding.meta`; before modalities, images)."""
    if meta.get("modality", "images") == "texts":
        from tasks.modality import text_rows, token_layers  # noqa: F401  (its layers: registered to load)

        return "text", text_rows.row_reader(meta, artifacts[TOKENIZER_ARTIFACT]), text_rows.batcher(meta)
    from tasks.modality.images import row_reader

    return "image", row_reader(meta), lambda rows: np.stack(rows).astype("float32")


TOKENIZER_ARTIFACT = "tokenizer"  # a text version's tokenizer.json


PROBABILITY = "p:"  # class c's probability column is "p:c": no class name can shadow a column of ours


def probability_columns(class_names: list[str]) -> list[str]:
    return [f"{PROBABILITY}{c}" for c in class_names]


def predictions_frame(
    probabilities: np.ndarray, class_names: list[str], errors: list[str | None] | None = None
) -> pd.DataFrame:
    """`label`, `confidence`, `p:<class>` for each class, `error`. Rows with an error hold
    nulls (None, which JSON can carry) in every other column."""
    columns = probability_columns(class_names)
    frame = pd.DataFrame(probabilities.astype("float64"), columns=columns)
    frame.insert(0, "confidence", probabilities.max(axis=1).astype("float64") if len(frame) else [])
    frame.insert(0, "label", [class_names[i] for i in probabilities.argmax(axis=1)] if len(frame) else [])
    # object dtype: a row without an error holds None (JSON null), never a string column's NaN
    frame["error"] = pd.Series(errors if errors is not None else [None] * len(frame), dtype=object)
    failed = frame["error"].notna()
    if failed.any():
        frame = frame.astype(object)
        frame.loc[failed, ["label", "confidence", *columns]] = None
    return frame


def _request_error(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class Classifier(mlflow.pyfunc.PythonModel):
    """Keras classifier + preprocessing + class names, as one pyfunc."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        meta = json.loads(Path(context.artifacts[META_ARTIFACT]).read_text())
        self.meta: dict[str, Any] = meta  # how it reads input (`Encoding.meta`)
        self.class_names: list[str] = meta["class_names"]
        # one row's value -> model input, and a batch of those (the modality's own)
        self.column, self.read, self.stack = reader(meta, context.artifacts)
        self._keras_path = context.artifacts[KERAS_ARTIFACT]
        self._model: Any = None
        asked = os.environ.get(RUNTIME_VARIABLE)
        self.runtime: str = (
            "keras" if asked == "keras" or RUNTIME_ARTIFACT not in context.artifacts else meta["runtime"]
        )
        if self.runtime == "keras":
            self.forward = forward_function(self.model)
            self.forward(warm_up_input(self.model))  # traced now, not on a request
        else:
            from tasks.registry.runtimes import load_runtime

            self.forward = load_runtime(context.artifacts[RUNTIME_ARTIFACT], self.runtime)
            # allocated now (ones: a text export cannot run a batch of nothing but padding)
            self.forward(np.ones(meta["runtime_input"], meta["runtime_dtype"]))
        self._pool: ThreadPoolExecutor | None = None

    @property
    def model(self) -> Any:
        """The Keras classifier (loaded on first use where the version answers through an export)."""
        if self._model is None:
            import keras

            # safe_mode (the default) refuses models that would run arbitrary code on load
            self._model = keras.saving.load_model(self._keras_path, compile=False, safe_mode=True)
        return self._model

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        column = self.column
        if not isinstance(model_input, pd.DataFrame) or column not in model_input.columns:
            columns = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else []
            what = "base64 image bytes" if column == "image" else "a string each"
            raise _request_error(f"input needs the '{column}' column ({what}); got columns {columns}")
        if len(model_input) == 0:
            raise _request_error(f"input has no rows: send at least one {column}")
        try:
            return self._predict_rows(list(model_input[column]))
        except MlflowException:
            raise
        except Exception as exc:  # a bug or resource problem: one line to the client, no stack trace
            raise MlflowException(f"prediction failed: {type(exc).__name__}: {exc}", INTERNAL_ERROR) from None

    def _decode(self, value: Any) -> Any:
        """One row's model input (an image's array, a text's windows), or the reason it is not
        one (a string)."""
        try:
            return self.read(value)
        except ROW_ERRORS as exc:
            return str(exc)

    def _predict_rows(self, values: list[Any]) -> pd.DataFrame:
        if len(values) == 1:  # one image: no hand-off to a thread
            decoded = [self._decode(values[0])]
        else:  # on every core: PIL releases the GIL while it decodes and resizes
            if self._pool is None:  # one pool per loaded model, not one per request
                self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
            decoded = list(self._pool.map(self._decode, values))
        arrays = [d for d in decoded if not isinstance(d, str)]
        errors: list[str | None] = [d if isinstance(d, str) else None for d in decoded]
        good = [i for i, e in enumerate(errors) if e is None]
        probabilities = np.zeros((len(values), len(self.class_names)))
        if arrays:
            probabilities[good] = np.concatenate(
                [
                    np.asarray(self.forward(self.stack(arrays[i : i + BATCH])))
                    for i in range(0, len(arrays), BATCH)
                ]
            )
        return predictions_frame(probabilities, self.class_names, errors)


def forward_function(model: Any) -> Any:
    """The model's forward pass (inference mode) as one traced graph function for any batch
    size: what `model.predict` would set up again on every call (its data adapter, callbacks
    and step function) is paid once per process."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None, *model.input_shape[1:]], model.inputs[0].dtype)]
    # autograph off: a plain call has no Python control flow to convert, and autograph would
    # write its converted source to the temp folder (a file left behind by every load)
    return tf.function(lambda x: model(x, training=False), input_signature=signature, autograph=False)


def warm_up_input(model: Any) -> np.ndarray:
    """One input of the shape and type `model` takes (a dimension of any length: 1), zeros."""
    return np.zeros((1, *(d or 1 for d in model.input_shape[1:])), str(model.inputs[0].dtype))
