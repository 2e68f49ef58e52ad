"""The served model: an MLflow pyfunc that takes image bytes and returns class names and
probabilities.

Input: a DataFrame with a column `image`, each value the bytes of an image file, base64-
encoded (what `mlflow models serve` receives as JSON) or raw `bytes` in process. Never a
file path: a served model that opened paths would let any HTTP client read the server's
files and probe which exist. A trusted caller in the same process that has files on disk
reads them itself (`files_frame`).

Output: one row per input row, in order, with `label`, `confidence`, one probability column
per class, and `error`. Each row is decoded on its own: a row that is not an image gets its
reason in `error` (and nulls elsewhere), and the other rows still get their labels. Only a
request that has no `image` column or no rows fails as a whole, with one line and no stack
trace. Preprocessing (tasks.modality.images) and the class names travel inside the model.
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

from tasks.modality.images import ImageError, row_reader

KERAS_ARTIFACT = "keras_model"
META_ARTIFACT = "meta"
BATCH = 64  # rows per forward pass: a request of any size runs in bounded memory


def files_frame(paths: list[str] | list[Path]) -> pd.DataFrame:
    """The model's input for files a trusted, in-process caller chose (the explicit opt-in to
    local files): each file's bytes, base64-encoded."""
    return pd.DataFrame({"image": [base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in paths]})


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
    frame["error"] = errors if errors is not None else [None] * len(frame)
    failed = frame["error"].notna()
    if failed.any():
        frame = frame.astype(object)
        frame.loc[failed, ["label", "confidence", *columns]] = None
    return frame


def _request_error(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """Keras classifier + preprocessing + class names, as one pyfunc."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import keras

        # safe_mode (the default) refuses models that would run arbitrary code on load
        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False, safe_mode=True)
        meta = json.loads(Path(context.artifacts[META_ARTIFACT]).read_text())
        self.meta: dict[str, Any] = meta  # how it reads input (`Encoding.meta`)
        self.class_names: list[str] = meta["class_names"]
        self.read = row_reader(meta)  # one row's value -> model input (the modality's own)
        self.forward = forward_function(self.model)
        self.forward(np.zeros((1, *self.model.input_shape[1:]), "float32"))  # traced now, not on a request
        self._pool: ThreadPoolExecutor | None = None

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        if not isinstance(model_input, pd.DataFrame) or "image" not in model_input.columns:
            columns = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else []
            raise _request_error(f"input needs an 'image' column (base64 image bytes); got columns {columns}")
        if len(model_input) == 0:
            raise _request_error("input has no rows: send at least one image")
        try:
            return self._predict_rows(list(model_input["image"]))
        except MlflowException:
            raise
        except Exception as exc:  # a bug or resource problem: one line to the client, no stack trace
            raise MlflowException(f"prediction failed: {type(exc).__name__}: {exc}", INTERNAL_ERROR) from None

    def _decode(self, value: Any) -> np.ndarray | str:
        """One row's image, or the reason it is not one."""
        try:
            return self.read(value)
        except ImageError as exc:
            return str(exc)

    def _predict_rows(self, values: list[Any]) -> pd.DataFrame:
        if len(values) == 1:  # one image: no hand-off to a thread
            decoded = [self._decode(values[0])]
        else:  # on every core: PIL releases the GIL while it decodes and resizes
            if self._pool is None:  # one pool per loaded model, not one per request
                self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
            decoded = list(self._pool.map(self._decode, values))
        arrays = [d for d in decoded if isinstance(d, np.ndarray)]
        errors: list[str | None] = [d if isinstance(d, str) else None for d in decoded]
        good = [i for i, e in enumerate(errors) if e is None]
        probabilities = np.zeros((len(values), len(self.class_names)))
        if arrays:
            probabilities[good] = np.concatenate(
                [
                    np.asarray(self.forward(np.stack(arrays[i : i + BATCH]).astype("float32")))
                    for i in range(0, len(arrays), BATCH)
                ]
            )
        return predictions_frame(probabilities, self.class_names, errors)


def forward_function(model: Any) -> Any:
    """The model's forward pass (inference mode) as one traced graph function for any batch
    size: what `model.predict` would set up again on every call (its data adapter, callbacks
    and step function) is paid once per process."""
    import tensorflow as tf

    signature = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)]
    # autograph off: a plain call has no Python control flow to convert, and autograph would
    # write its converted source to the temp folder (a file left behind by every load)
    return tf.function(lambda x: model(x, training=False), input_signature=signature, autograph=False)
