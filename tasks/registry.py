"""The MLflow model registry: logging the served model, versions, tags, aliases, promotion.

Aliases: `challenger` always points at the newest version; `champion` moves only through
`promotion_decision`, which compares both models on the same test set.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from tasks.backbones import backbone_of
from tasks.serving import KERAS_ARTIFACT, META_ARTIFACT

TASKS_DIR = Path(__file__).parent

CHAMPION = "champion"
CHALLENGER = "challenger"


def _pins(*packages: str) -> list[str]:
    return [f"{p}=={metadata.version(p)}" for p in packages]


def log_classifier(
    model: keras.Model,
    class_names: list[str],
    image_size: int,
    workdir: Path,
    example_image: Path,
    name: str = "model",
) -> mlflow.models.model.ModelInfo:
    """Log the classifier as a pyfunc (tasks.serving.ImageClassifier) in the active run.

    `example_image` becomes the input example, so MLflow checks at logging time that the
    logged model loads and predicts."""
    keras_path = workdir / "classifier.keras"
    model.save(keras_path)
    meta_path = workdir / "meta.json"
    meta_path.write_text(json.dumps({"class_names": class_names, "image_size": image_size}))
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema(
            [ColSpec("string", "label"), ColSpec("double", "confidence")]
            + [ColSpec("double", c) for c in class_names]
        ),
    )
    example = pd.DataFrame({"image": [base64.b64encode(example_image.read_bytes()).decode()]})
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(TASKS_DIR / "serving_model.py"),
        artifacts={KERAS_ARTIFACT: str(keras_path), META_ARTIFACT: str(meta_path)},
        code_paths=[str(TASKS_DIR)],  # the `tasks` package: preprocessing travels with the model
        signature=signature,
        input_example=example,
        pip_requirements=_pins("mlflow", "tensorflow-cpu", "keras", "pillow", "pandas", "numpy"),
    )


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
class Decision:
    promote: bool
    reason: str


def promotion_decision(
    challenger: dict[str, float], champion: dict[str, float] | None, metric: str, min_delta: float
) -> Decision:
    """The gate. Promote when there is no champion, or the challenger's `metric` on the same
    test set beats the champion's by more than `min_delta`."""
    if champion is None:
        return Decision(True, "no champion yet")
    if metric not in challenger or metric not in champion:
        return Decision(False, f"metric {metric!r} missing; champion kept")
    new, old = challenger[metric], champion[metric]
    if new > old + min_delta:
        return Decision(True, f"{metric} {new:.4f} > champion {old:.4f} + {min_delta}")
    return Decision(False, f"{metric} {new:.4f} <= champion {old:.4f} + {min_delta}; champion kept")


def set_aliases(name: str, version: str, promote: bool) -> None:
    """`challenger` -> version always; `champion` -> version only if promoted."""
    client = MlflowClient()
    client.set_registered_model_alias(name, CHALLENGER, version)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)


def aliases_of(name: str, version: str) -> list[str]:
    aliases = MlflowClient().get_registered_model(name).aliases
    return sorted(a for a, v in aliases.items() if str(v) == str(version))


def load_champion(name: str) -> tuple[ModelVersion, mlflow.pyfunc.PyFuncModel] | None:
    version = version_by_alias(name, CHAMPION)
    if version is None:
        return None
    return version, mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")


def champion_keras_model(pyfunc_model: mlflow.pyfunc.PyFuncModel) -> tuple[keras.Model, list[str]]:
    """The Keras classifier and class names inside a served ImageClassifier."""
    inner = pyfunc_model.unwrap_python_model()
    return inner.model, inner.class_names


def warm_start(model_name: str, class_names: list[str]) -> tuple[keras.Model, list[np.ndarray], str] | None:
    """(backbone, head weights, version) of the champion if it knows the same classes, else None."""
    champion = load_champion(model_name)
    if champion is None:
        return None
    classifier, champion_classes = champion_keras_model(champion[1])
    if champion_classes != class_names:
        return None
    return backbone_of(classifier), classifier.get_layer("head").get_weights(), str(champion[0].version)


def predict_paths(pyfunc_model: mlflow.pyfunc.PyFuncModel, paths: list[str]) -> pd.DataFrame:
    return pyfunc_model.predict(pd.DataFrame({"image": paths}))


def model_status(name: str) -> dict[str, Any]:
    """Champion and challenger of a registered model: version, metrics, lineage."""
    client = MlflowClient()
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        return {"model": name, "registered": False, "aliases": {}}
    out: dict[str, Any] = {"model": name, "registered": True, "aliases": {}}
    for alias in (CHAMPION, CHALLENGER):
        if alias not in registered.aliases:
            continue
        mv = client.get_model_version_by_alias(name, alias)
        run = client.get_run(mv.run_id) if mv.run_id else None
        metrics = {k: v for k, v in (run.data.metrics if run else {}).items() if k.startswith("test_")}
        out["aliases"][alias] = {
            "version": str(mv.version),
            "run_id": mv.run_id,
            "created": pd.Timestamp(mv.creation_timestamp, unit="ms").isoformat(),
            "data_version": mv.tags.get("data_version"),
            "git_commit": mv.tags.get("git_commit"),
            "backbone": mv.tags.get("backbone"),
            "metrics": metrics,
        }
    return out
