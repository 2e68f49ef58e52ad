"""A registered version answers through its checked export (`register.serve_runtime`): ONNX by
default, the Keras model when asked or when the export is refused.

Real converters, onnxruntime, LiteRT and MLflow pyfuncs on the project's small CNN (16 px) and
on the text encoder's architecture at a tiny width (random weights: the plumbing, not accuracy)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import clear_mlflow_env, make_image_folder

from tasks.core.config import ExportParams, SplitParams
from tasks.data import bbc_news
from tasks.data.datasets import load_folder
from tasks.modality.pixels import Images, Pixels
from tasks.modality.tokens import Texts, Tokens
from tasks.models.backbones import build_backbone, build_classifier, build_head
from tasks.models.minilm import build_minilm
from tasks.promotion.promote import log_served, serving_runtime
from tasks.registry import versions
from tasks.registry.serving import files_frame, forward_function
from tasks.reporting import tracking

SIZE = 16


def fitted_images(root):
    folder = make_image_folder(root / "images", ["ant", "bee", "cat"], 30)
    splits = load_folder(
        folder, SplitParams(val_fraction=0.2, test_fraction=0.3), Images(max_pixels=1_000_000)
    )
    keras.utils.set_random_seed(0)
    _, dense = build_head(16, 3, 0.0)
    model = build_classifier(build_backbone(SIZE, width=4), dense, 0.0)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(splits.train.batches(Pixels(SIZE), 16), epochs=8, verbose=0, shuffle=False)
    return model, splits, Pixels(SIZE)


def tiny_texts(root):
    every = root / "all"
    bbc_news.write_bbc_news(every)
    folder = root / "texts"
    for label in sorted(p.name for p in every.iterdir())[:3]:
        (folder / label).mkdir(parents=True)
        for article in sorted((every / label).iterdir())[:12]:
            (folder / label / article.name).write_bytes(article.read_bytes())
    splits = load_folder(folder, SplitParams(val_fraction=0.2, test_fraction=0.3), Texts(32, 2))
    keras.utils.set_random_seed(0)
    model = build_classifier(build_minilm(32, 4, 1, 64), keras.layers.Dense(3, activation="softmax"), 0.0)
    return model, splits, Tokens(32, 2)


def served(root, model, splits, encoding, runtime="onnx", reference=None):
    """(the registered pyfunc, how it was chosen): logged as the register stage logs it."""
    with pytest.MonkeyPatch.context() as mp:
        clear_mlflow_env(mp)
        tracking.configure(root / "mlflow")
        with mlflow.start_run():
            info, chosen = log_served(
                model, splits, encoding, root / "work", runtime, ExportParams(), reference
            )
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "model"))
    return local, chosen


@pytest.mark.parametrize("modality", ["images", "texts"])
def test_a_version_answers_through_its_checked_onnx_export(tmp_path, modality):
    model, splits, encoding = (fitted_images if modality == "images" else tiny_texts)(tmp_path)
    forward = forward_function(model)
    batches = splits.test.batches(encoding, 64).as_numpy_iterator()
    keras_probabilities = np.concatenate([np.asarray(forward(x)) for x, _ in batches])
    # the check runs texts shortest first and takes Keras' probabilities from the evaluation's
    local, chosen = served(tmp_path, model, splits, encoding, reference=keras_probabilities)
    assert chosen.runtime == "onnx", chosen.reason
    assert chosen.tags()["serve.runtime"] == "onnx" and chosen.parity.agreement == 1.0
    assert chosen.parity.max_abs_difference < 1e-4
    column = "image" if modality == "images" else "text"
    frame = files_frame(list(splits.test.paths), column)
    pyfunc = versions.load_pyfunc(local)
    inner = pyfunc.unwrap_python_model()
    ours = pyfunc.predict(frame)
    assert inner.runtime == "onnx" and inner._model is None  # Keras was never loaded to serve
    assert ours["error"].isna().all()
    columns = [f"p:{c}" for c in splits.class_names]
    if modality == "images":  # the served model decodes with PIL, training's stream mostly in C++
        # (within a grey level: tests/data/test_native_decode.py): Keras on the served pixels
        keras_probabilities = np.asarray(forward(splits.test.examples(encoding)))
    difference = np.abs(ours[columns].to_numpy(float) - keras_probabilities).max()
    assert difference <= chosen.parity.max_abs_difference + 1e-7
    # TRANSFEROPS_SERVE_RUNTIME=keras forces Keras: the same rows, the Keras model's own probabilities
    forced = versions.load_pyfunc(local, keras=True)
    assert forced.unwrap_python_model().runtime == "keras"
    again = forced.predict(frame)
    np.testing.assert_allclose(again[columns].to_numpy(float), keras_probabilities, atol=1e-5)
    bad = pyfunc.predict(pd.DataFrame({column: [None]}))
    assert bad.loc[0, "error"] and bad.loc[0, "label"] is None


def test_keras_serves_when_asked_and_tflite_when_chosen(tmp_path):
    """(A refused export leaves Keras serving: `serving_runtime` returns what
    `export.export_checked` refuses, tests/registry/test_export.py.)"""
    model, splits, encoding = fitted_images(tmp_path)
    asked = serving_runtime(
        model, splits.class_names, encoding, splits.test, splits.train, "keras", tmp_path, ExportParams()
    )
    assert (asked.runtime, asked.path) == ("keras", None)
    local, chosen = served(tmp_path / "tflite", model, splits, encoding, "tflite")
    assert chosen.runtime == "tflite", chosen.reason
    pyfunc = versions.load_pyfunc(local)
    assert pyfunc.unwrap_python_model().runtime == "tflite"
    # a server calls one loaded model from several threads at once; batches of 1 and 3 rows
    # make the interpreter resize between calls
    frames = [files_frame(list(splits.test.paths)[: 1 + 2 * (k % 2)]) for k in range(2)]
    alone = [pyfunc.predict(frame) for frame in frames]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda k: pyfunc.predict(frames[k % 2]), range(48)))
    for k, out in enumerate(together):
        pd.testing.assert_frame_equal(out, alone[k % 2])
