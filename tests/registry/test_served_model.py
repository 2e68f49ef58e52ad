"""The served model takes image bytes, never paths; each row succeeds or fails on its own.

A real classifier is logged as the pyfunc the pipeline registers (throwaway MLflow store),
loaded with `mlflow.pyfunc.load_model`, and served with a real `mlflow models serve` on
127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import clear_mlflow_env, free_port, make_image_folder, wait_until_up
from mlflow.exceptions import MlflowException
from PIL import Image

from tasks.modality.pixels import Pixels
from tasks.models.backbones import build_backbone, build_classifier, build_head
from tasks.registry import versions
from tasks.registry.serving import files_frame
from tasks.reporting import tracking

CLASSES = ["ant", "bee", "cat"]
PROBABILITIES = [f"p:{c}" for c in CLASSES]  # the served frame's probability columns


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory) -> tuple[str, Path]:
    """(local model folder, image folder): an untrained classifier is enough to test the
    contract (shapes, rows, errors), not the accuracy."""
    tmp = tmp_path_factory.mktemp("served")
    images = make_image_folder(tmp / "images", CLASSES, per_class=40, size=24)
    with pytest.MonkeyPatch.context() as mp:
        clear_mlflow_env(mp)
        tracking.configure(tmp / "mlflow")
        backbone = build_backbone(16, width=4)
        _, dense = build_head(16, len(CLASSES), 0.0)
        model = build_classifier(backbone, dense, 0.0)
        example = next((images / "ant").iterdir())
        with mlflow.start_run():
            info = versions.log_classifier(
                model, CLASSES, Pixels(16, max_pixels=100_000), tmp / "work", example
            )
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp / "model"))
    return local, images


@pytest.fixture(scope="module")
def pyfunc(logged_model):
    return versions.load_pyfunc(logged_model[0])


def test_loading_a_version_leaves_the_import_path_as_it_was(logged_model):
    """MLflow puts the model's code folder first on sys.path for good; a process started
    afterwards (a Dask worker inherits sys.path) would import that serving-only copy of
    `tasks` instead of the checkout's."""
    before = list(sys.path)
    served = versions.load_pyfunc(logged_model[0])
    assert served.metadata.flavors["python_function"].get("code")  # the model does carry code
    assert sys.path == before


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG")
    return buf.getvalue()


def test_each_row_is_decoded_on_its_own(pyfunc, logged_model):
    images = logged_model[1]
    good = (images / "bee" / "bee_0_003.png").read_bytes()
    rows = [
        b64(good),
        str(images / "bee" / "bee_0_003.png"),  # an existing path: refused, not read
        "/etc/passwd",
        "not base64 at all!",
        b64(b"GIF89a but not really"),
        b64(png(400, 400)),  # over this model's max_pixels=100000
        b64(good),
    ]
    out = pyfunc.predict(pd.DataFrame({"image": rows}))
    assert len(out) == 7
    assert out.loc[[0, 6], "error"].isna().all()
    assert set(out.loc[[0, 6], "label"]) <= set(CLASSES)
    np.testing.assert_allclose(out.loc[[0, 6], PROBABILITIES].astype(float).sum(axis=1), 1.0, rtol=1e-5)
    never_paths = "not base64-encoded image bytes (the model takes image bytes, never file paths)"
    assert out.loc[1, "error"] == out.loc[2, "error"] == out.loc[3, "error"] == never_paths
    assert out.loc[4, "error"] == "not an image PIL can identify"
    assert out.loc[5, "error"].startswith("400x400 pixels is over the limit of 100000")
    assert out.loc[1:5, "label"].isna().all() and out.loc[1:5, PROBABILITIES].isna().all().all()


def test_in_process_callers_opt_in_to_files(pyfunc, logged_model):
    paths = sorted((logged_model[1] / "cat").iterdir())[:3]
    out = pyfunc.predict(files_frame(paths))
    assert out["error"].isna().all() and len(out) == 3


def test_served_probabilities_are_the_keras_models_in_batches_of_any_size(pyfunc, logged_model):
    """The traced forward pass gives what `model.predict` gives, one row or more rows than
    one forward batch (serving.BATCH), in order."""
    from tasks.modality.images import decode
    from tasks.registry.serving import BATCH

    files = sorted(logged_model[1].rglob("*.png"))[: BATCH + 7]
    served = pyfunc.unwrap_python_model()
    expected = served.model.predict(
        np.stack([decode(p.read_bytes(), 16, 100_000) for p in files]).astype("float32"), verbose=0
    )
    many = pyfunc.predict(files_frame(files))
    assert many["error"].isna().all() and len(many) == len(files) > BATCH
    np.testing.assert_allclose(many[PROBABILITIES].astype(float).to_numpy(), expected, atol=1e-5)
    one = pyfunc.predict(files_frame(files[-1:]))
    np.testing.assert_allclose(one[PROBABILITIES].astype(float).to_numpy(), expected[-1:], atol=1e-5)


def test_a_missing_column_or_no_rows_is_one_clear_message(pyfunc):
    with pytest.raises(MlflowException, match="image"):  # MLflow's schema check, in front
        pyfunc.predict(pd.DataFrame({"picture": ["x"]}))
    model = pyfunc.unwrap_python_model()  # our own check, for callers without the schema
    with pytest.raises(MlflowException, match=r"input needs the 'image' column .* got columns \['picture'\]"):
        model.predict(None, pd.DataFrame({"picture": ["x"]}))
    with pytest.raises(MlflowException, match="input has no rows"):
        model.predict(None, pd.DataFrame({"image": []}))


def test_the_model_carries_no_more_code_than_serving(logged_model):
    package = Path(logged_model[0]) / "code" / "tasks"
    code = sorted(str(p.relative_to(package)) for p in package.rglob("*.py"))
    assert code == [
        "__init__.py",
        "modality/__init__.py",
        "modality/images.py",
        "modality/text_rows.py",
        "modality/texts.py",
        "modality/token_layers.py",
        "registry/__init__.py",
        "registry/runtimes.py",
        "registry/serving.py",
    ]


def post(url: str, payload: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_mlflow_models_serve_takes_every_image_as_base64_and_refuses_paths(logged_model, tmp_path):
    model_dir, images = logged_model
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    serve = ["mlflow", "models", "serve", "-m", model_dir, "--env-manager", "local"]
    process = subprocess.Popen(
        [sys.executable, "-m", *serve, "--host", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path,  # not the repository: the model must bring its own code
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/ping", process)
        files = sorted(p for p in images.rglob("*.png"))
        records = [{"image": b64(p.read_bytes())} for p in files]
        status, body = post(f"{url}/invocations", {"dataframe_records": records})
        assert status == 200
        predictions = body["predictions"]
        assert len(predictions) == len(files) == 120
        assert all(p["error"] is None and p["label"] in CLASSES for p in predictions)

        status, body = post(
            f"{url}/invocations",
            {"dataframe_records": [{"image": str(files[0])}, {"image": records[0]["image"]}]},
        )
        assert status == 200  # the good row still gets its label
        assert body["predictions"][0]["error"].startswith("not base64-encoded image bytes")
        assert body["predictions"][0]["label"] is None
        assert body["predictions"][1]["label"] in CLASSES
        assert body["predictions"][1]["error"] is None  # JSON null, not NaN, beside a failed row

        status, body = post(f"{url}/invocations", {"dataframe_records": [{"picture": "x"}]})
        assert status == 400
        assert "image" in body["message"]
        assert "stack_trace" not in body and "Traceback" not in json.dumps(body)
    finally:
        process.terminate()
        process.wait(timeout=30)
