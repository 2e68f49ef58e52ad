"""The MLflow model registry: logging the served model and backbones, versions, tags, aliases.

Aliases: `challenger` always points at the newest version; `champion` moves only through
the gate in `tasks.promotion.promote`, which compares both models on the same test set.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from tasks.core.config import registry_ref
from tasks.registry.serving import (
    KERAS_ARTIFACT,
    META_ARTIFACT,
    RUNTIME_ARTIFACT,
    RUNTIME_VARIABLE,
    files_frame,
    probability_columns,
)

if TYPE_CHECKING:  # `transferops status` reads the registry without importing TensorFlow
    import keras

    from tasks.modality import Encoding

TASKS_DIR = Path(__file__).parents[1]
# What the served model imports: reading each modality's rows and the pyfunc wrapper, nothing
# else of `tasks`.
SERVING_MODULES = (
    *("modality/images.py", "modality/texts.py", "modality/text_rows.py", "modality/token_layers.py"),
    *("registry/serving.py", "registry/runtimes.py"),
)
RUNTIME_PACKAGES = {"onnx": "onnxruntime", "tflite": "ai-edge-litert"}  # a served export's runtime

CHAMPION = "champion"
CHALLENGER = "challenger"
TRAINING_KEY = "training_key"  # version tag: the cache key of the training result it holds


def _pins(*packages: str) -> list[str]:
    return [f"{p}=={metadata.version(p)}" for p in packages]


def log_classifier(
    model: keras.Model,
    class_names: list[str],
    encoding: Encoding,
    workdir: Path,
    example_file: Path,
    name: str = "model",
    runtime: tuple[str, Path] | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log the classifier as a pyfunc (tasks.registry.serving.Classifier) in the active run, with
    the files its input needs (`encoding.artifacts`: a text model's tokenizer).

    `runtime`: (export name, file) of a checked export the served model answers through
    (tasks/registry/serving.py); None: Keras.
    `example_file` becomes the input example (MLflow tries it, and only warns when it fails).
    Before anything is logged, the saved file is loaded back as the served model loads it
    (safe mode) and must give the same probabilities: a model that would not serve is never
    registered."""
    import keras

    workdir.mkdir(parents=True, exist_ok=True)
    keras_path = workdir / "classifier.keras"
    model.save(keras_path)
    shape = (2, *(d or 8 for d in model.input_shape[1:]))  # any length: 8
    probe = np.random.default_rng(0).integers(0, 256, shape).astype(str(model.inputs[0].dtype))
    reloaded = keras.saving.load_model(keras_path, compile=False, safe_mode=True)
    if not np.allclose(reloaded.predict(probe, verbose=0), model.predict(probe, verbose=0), atol=1e-5):
        raise RuntimeError(f"{keras_path}: the saved classifier loads with other weights; not registered")
    meta_path = workdir / "meta.json"
    meta = {"class_names": class_names, **encoding.meta()}
    artifacts = {KERAS_ARTIFACT: str(keras_path), META_ARTIFACT: str(meta_path)}
    requirements = _pins("mlflow", "tensorflow-cpu", "keras", "pandas", "numpy", *encoding.requirements)
    if runtime is not None:
        artifacts[RUNTIME_ARTIFACT] = str(runtime[1])
        requirements += _pins(RUNTIME_PACKAGES[runtime[0].partition("-")[0]])
        # and how the served model warms it up as it loads: one input of zeros
        meta |= {"runtime": runtime[0], "runtime_input": [1, *shape[1:]], "runtime_dtype": str(probe.dtype)}
    meta_path.write_text(json.dumps(meta))
    column = str(meta.get("column", "image"))
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", column)]),
        outputs=Schema(
            [ColSpec("string", "label"), ColSpec("double", "confidence")]
            + [ColSpec("double", c) for c in probability_columns(class_names)]
            + [ColSpec("string", "error", required=False)]
        ),
    )
    example = files_frame([example_file], column)
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(TASKS_DIR / "registry" / "serving_model.py"),
        artifacts=artifacts | {k: str(v) for k, v in encoding.artifacts().items()},
        code_paths=[str(serving_package(workdir / "code"))],  # preprocessing travels with the model
        signature=signature,
        input_example=example,
        pip_requirements=requirements,
    )


def serving_package(folder: Path) -> Path:
    """A `tasks` package holding only what the served model imports (SERVING_MODULES)."""
    package = folder / "tasks"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        '"""What a served transferops model needs: decoding and the pyfunc."""\n'
    )
    for module in SERVING_MODULES:
        target = package / module
        target.parent.mkdir(exist_ok=True)
        (target.parent / "__init__.py").touch()
        shutil.copyfile(TASKS_DIR / module, target)
    return package


def log_backbone(backbone: keras.Model, name: str = "backbone") -> mlflow.models.model.ModelInfo:
    """Log a backbone with MLflow's Keras flavour (what `registry:` candidates load)."""
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("float32"), (-1, *backbone.input_shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, backbone.output_shape[-1]))]),
    )
    return mlflow.keras.log_model(
        backbone,
        name=name,
        signature=signature,
        pip_requirements=_pins("mlflow", "tensorflow-cpu", "keras"),
    )


def version_by_alias(name: str, alias: str) -> ModelVersion | None:
    try:
        return MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@dataclass(frozen=True)
class Registered:
    """A model version as registered, with the aliases it holds."""

    model: str
    version: str
    aliases: list[str] = field(default_factory=list)
    promoted: bool = False  # whether `champion` (or the backbone's alias) moved to it
    reason: str = ""  # why (the promotion gate's words)
    runtime: str = "keras"  # what the served version answers through (its `serve.runtime` tag)


def register_version(
    info: mlflow.models.model.ModelInfo, name: str, tags: dict[str, str], aliases: list[str]
) -> tuple[str, list[str]]:
    """Create a version of `name` from a logged model, set `aliases` on it; (version, its aliases).
    The tags are set with the version, in one call. The version's run is the flow's run
    (`tags["mlflow_run_id"]`), so that run's page lists it under "Registered models"
    (`mlflow.register_model` links a version made from a logged model to no run at all)."""
    client = MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    with sent_once():
        version = client.create_model_version(
            name, info.model_uri, run_id=tags.get("mlflow_run_id"), tags=tags, model_id=info.model_id
        )
    # what mlflow.register_model records too: the logged model's page links to its version
    client.set_logged_model_tags(
        info.model_id, {"mlflow.modelVersions": json.dumps([{"name": name, "version": version.version}])}
    )
    set_aliases(name, str(version.version), aliases)
    return str(version.version), aliases_of(name, version.version)


@contextmanager
def sent_once(timeout_s: int = 120) -> Iterator[None]:
    """One attempt with a long timeout for a call that must not be sent twice. MLflow retries
    every HTTP method after a timeout, POST included (`allowed_methods=None` in
    mlflow.utils.request_utils), so a slow create_model_version retried would add a second
    version. A failure here is retried by rerunning the flow, which finds the version by its
    TRAINING_KEY."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def describe(name: str, version: str, text: str) -> None:
    """The version's description: what the MLflow UI shows on its page (the model card)."""
    MlflowClient().update_model_version(name, version, description=text)


def set_aliases(name: str, version: str, aliases: list[str]) -> None:
    client = MlflowClient()
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version)


def register_backbone(
    backbone: keras.Model, name: str, alias: str, source_classes: list[str], tags: dict[str, str]
) -> Registered:
    """Log a pretrained backbone in the active run and register it under `alias`, with its
    lineage `tags` (data version, code, environment, params). A backbone already registered
    from the same training (tag TRAINING_KEY) is not added again; it gets the alias."""
    existing = find_version(name, TRAINING_KEY, tags[TRAINING_KEY])
    if existing is not None:
        set_aliases(name, str(existing.version), [alias])
        return Registered(
            name,
            str(existing.version),
            aliases_of(name, existing.version),
            True,
            f"already registered as v{existing.version} from this training; alias {alias}",
        )
    info = log_backbone(backbone)
    version, aliases = register_version(
        info, name, {**tags, "source_classes": json.dumps(source_classes)}, [alias]
    )
    return Registered(name, version, aliases, True, f"pretrained backbone, alias {alias}")


def aliases_of(name: str, version: str) -> list[str]:
    aliases = MlflowClient().get_registered_model(name).aliases
    return sorted(a for a, v in aliases.items() if str(v) == str(version))


def champion_version(name: str) -> str | None:
    """The version `champion` points at now, or None."""
    version = version_by_alias(name, CHAMPION)
    return str(version.version) if version is not None else None


# Versions registered before tasks/ had packages run `from tasks.serving import ...` at load
# time; in this process `tasks` is this checkout's package, so those names point at the moves.
_MOVED_SERVING_MODULES = {
    "tasks.serving": "tasks.registry.serving",
    "tasks.images": "tasks.modality.images",
    "tasks.data.images": "tasks.modality.images",
}


def load_pyfunc(uri: str, keras: bool = False) -> mlflow.pyfunc.PyFuncModel:
    """A registered classifier, loaded in this process without changing its import path.

    MLflow puts a model's code folder (the serving-only copy of `tasks`) first on `sys.path` and
    leaves it there. In this process `tasks` is already the checkout's package, so the copy is
    never needed; left on the path it shadows the checkout for every process started later
    (a Dask worker inherits `sys.path` and then cannot import `tasks.selection`).
    `keras`: the Keras model answers, whatever export the version was registered with."""
    for old, new in _MOVED_SERVING_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))
    path, asked = list(sys.path), os.environ.get(RUNTIME_VARIABLE)
    if keras:
        os.environ[RUNTIME_VARIABLE] = "keras"
    try:
        return mlflow.pyfunc.load_model(uri)
    finally:
        sys.path[:] = path
        if keras and asked is None:
            os.environ.pop(RUNTIME_VARIABLE, None)
        elif keras:
            os.environ[RUNTIME_VARIABLE] = asked


def load_version(name: str, version: str) -> mlflow.pyfunc.PyFuncModel:
    return load_pyfunc(f"models:/{name}/{version}")


def find_version(name: str, tag: str, value: str) -> ModelVersion | None:
    """The newest version of `name` whose tag `tag` is `value`, or None."""
    found = MlflowClient().search_model_versions(
        f"name = '{name}' and tags.`{tag}` = '{value}'", order_by=["version_number DESC"], max_results=1
    )
    return found[0] if found else None


def latest_version(name: str) -> str | None:
    return resolve(name)[1]


def encoding_of(pyfunc_model: mlflow.pyfunc.PyFuncModel) -> Encoding:
    """How a served classifier reads its input (images: the size, resize policy, pixel limit)."""
    from tasks import modality

    return modality.from_meta(pyfunc_model.unwrap_python_model().meta)


def champion_keras_model(pyfunc_model: mlflow.pyfunc.PyFuncModel) -> tuple[keras.Model, list[str]]:
    """The Keras classifier and class names inside a served Classifier."""
    inner = pyfunc_model.unwrap_python_model()
    return inner.model, inner.class_names


def warm_start(
    model_name: str, class_names: list[str], version: str | None = None
) -> tuple[keras.Model, list[np.ndarray], str, Encoding] | None:
    """(backbone, head weights, version, how it reads its input) of the champion (or of
    `version`) if it knows the same classes, else None."""
    found = version or champion_version(model_name)
    if found is None:
        return None
    from tasks.models.backbones import backbone_of, single

    served = load_version(model_name, found)
    classifier, known_classes = champion_keras_model(served)
    if known_classes != class_names:
        return None
    head = single(classifier).get_layer("head").get_weights()
    return backbone_of(classifier), head, found, encoding_of(served)


def resolve(ref: str) -> tuple[str, str | None]:
    """A registry reference (`name@alias`, `name/3`, `name`) -> (name, version), version None
    when there is no such version."""
    name, alias, version = registry_ref(ref)
    client = MlflowClient()
    try:
        if alias:
            return name, str(client.get_model_version_by_alias(name, alias).version)
        if version:
            return name, str(client.get_model_version(name, version).version)
        latest = client.search_model_versions(
            f"name='{name}'", order_by=["version_number DESC"], max_results=1
        )
        return name, str(latest[0].version) if latest else None
    except MlflowException:
        return name, None


def version_tags(name: str, version: str) -> dict[str, str]:
    """A model version's tags ({} when there is no such version)."""
    try:
        return dict(MlflowClient().get_model_version(name, version).tags)
    except MlflowException:
        return {}


def set_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


PREDICT_BATCH = 64  # files read and predicted at once: memory stays flat in the number of files


def predict_batches(
    pyfunc_model: mlflow.pyfunc.PyFuncModel, paths: list[str], batch_size: int = PREDICT_BATCH
) -> Iterator[tuple[list[str], pd.DataFrame]]:
    """The served model's rows for `paths`, `batch_size` files at a time (a trusted caller's
    files: see `files_frame`): (the batch's paths, its predictions)."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        yield chunk, pyfunc_model.predict(files_frame(chunk, input_column(pyfunc_model)))


def predict_files(pyfunc_model: mlflow.pyfunc.PyFuncModel, paths: list[str]) -> pd.DataFrame:
    """A served model's predictions for files this process trusts (it reads them, not the model)."""
    frames = [frame for _, frame in predict_batches(pyfunc_model, paths)]
    if frames:
        return pd.concat(frames, ignore_index=True)
    return pyfunc_model.predict(files_frame(paths, input_column(pyfunc_model)))


def input_column(pyfunc_model: mlflow.pyfunc.PyFuncModel) -> str:
    """The column a served classifier reads: `image` or `text`."""
    return str(pyfunc_model.unwrap_python_model().meta.get("column", "image"))
