"""The served model: an MLflow pyfunc that takes images and returns class names and probabilities.

Input: a DataFrame with a string column `image`, each value a file path or base64-encoded
image bytes (what `mlflow models serve` receives as JSON). Output: one row per image with
`label`, `confidence` and one probability column per class. Preprocessing (tasks.images) and
the class names travel inside the model, so callers send images exactly as they have them.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from tasks.images import decode

KERAS_ARTIFACT = "keras_model"
META_ARTIFACT = "meta"


def image_bytes(value: str | bytes) -> bytes:
    """A path or base64 string (or raw bytes) -> the image file's bytes."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if len(value) < 4096 and Path(value).is_file():
        return Path(value).read_bytes()
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"image {value[:80]!r} is neither an existing file nor base64 data") from None


def predictions_frame(probabilities: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(probabilities.astype("float64"), columns=class_names)
    frame.insert(0, "confidence", probabilities.max(axis=1).astype("float64"))
    frame.insert(0, "label", [class_names[i] for i in probabilities.argmax(axis=1)])
    return frame


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """Keras classifier + preprocessing + class names, as one pyfunc."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)
        meta = json.loads(Path(context.artifacts[META_ARTIFACT]).read_text())
        self.class_names: list[str] = meta["class_names"]
        self.image_size: int = meta["image_size"]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "image" not in model_input.columns:
            raise ValueError(f"input needs an 'image' column; got {list(model_input.columns)}")
        batch = np.stack([decode(image_bytes(v), self.image_size) for v in model_input["image"]]).astype(
            "float32"
        )
        probabilities = np.asarray(self.model.predict(batch, verbose=0))
        return predictions_frame(probabilities, self.class_names)
