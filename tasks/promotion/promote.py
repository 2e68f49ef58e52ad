"""Evaluate and promote: the new model against the champion on the same test images, and the
gate that decides whether `champion` moves.

The champion is loaded from the registry afresh (also after a warm start, which changed the
in-memory copy) and predicts through its own served pyfunc, so it sees the images exactly as
it would in production. A champion trained on other classes cannot be compared: that is an
explicit outcome (`ChampionScores.not_comparable`), and the gate keeps it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient

from tasks.core.config import ExportParams, RegisterParams
from tasks.data.datasets import Split, SplitData, restore
from tasks.evaluation import card, evaluate, gate
from tasks.modality import Encoding
from tasks.models import backbones
from tasks.promotion import drift
from tasks.registry import export, history, lease, serving, versions
from tasks.registry.versions import CHALLENGER, CHAMPION, TRAINING_KEY, Registered

log = logging.getLogger(__name__)
BATCH_SIZE = 64  # test images decoded and predicted at once


@dataclass(frozen=True)
class ChampionScores:
    """The champion on the challenger's test images: no champion (version None), comparable
    (metrics), or not comparable (metrics None, `not_comparable` says why)."""

    version: str | None = None
    metrics: dict[str, float] | None = None
    not_comparable: str | None = None
    predicted: list[int] | None = None  # its predicted class of each test image (the gate pairs them)


@dataclass
class Evaluation:
    challenger: evaluate.TestReport
    champion: ChampionScores


def class_columns(columns: list[str]) -> tuple[list[str], list[str]]:
    """The probability columns of a served frame and the class each one is for: `p:<class>`,
    or (versions registered before that prefix) every column but label, confidence, error."""
    prefixed = [c for c in columns if c.startswith(serving.PROBABILITY)]
    if prefixed:
        return prefixed, [c[len(serving.PROBABILITY) :] for c in prefixed]
    legacy = [c for c in columns if c not in ("label", "confidence", "error")]
    return legacy, legacy


def champion_scores(model_name: str, version: str | None, data: SplitData) -> ChampionScores:
    """Score `version` of `model_name` (the champion; None: there is none) on `data.test`."""
    if version is None:
        return ChampionScores()
    predicted = versions.predict_files(versions.load_version(model_name, version), data.test.paths)
    columns, classes = class_columns(list(predicted.columns))
    if classes != data.class_names:
        reason = f"champion v{version} knows classes {classes}, this data {data.class_names}"
        log.warning("%s; not comparable", reason)
        return ChampionScores(version, None, reason)
    probabilities = predicted[columns].to_numpy(dtype="float64", na_value=0.0)
    return ChampionScores(
        version, evaluate.metrics(data.test.y, probabilities), predicted=probabilities.argmax(1).tolist()
    )


def evaluate_challenger(
    model: Any, data: SplitData, encoding: Encoding, model_name: str, champion: str | None
) -> Evaluation:
    """Test report of the new model (its test images streamed, decoded as `pixels` says) and
    the scores of the champion (version `champion`) on the same test images."""
    test = data.test
    source, order = test.in_run_order(encoding)  # texts shortest first, put back in order
    probabilities = restore(
        order, evaluate.predict(model, source.batches(encoding, BATCH_SIZE, labels=False), len(test), "test")
    )
    return Evaluation(
        evaluate.report(
            test.y, probabilities, data.class_names, lambda rows: test.subset(rows).preview(encoding)
        ),
        champion_scores(model_name, champion, data),
    )


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    comparison: gate.Comparison | None = None  # the paired numbers, when there was a champion to pair with


def as_own_champion(evaluation: Evaluation, version: str) -> Evaluation:
    """`evaluation` (made with no champion) when the champion, `version`, is this very training
    (an unchanged rerun): its scores on the test images are the challenger's, no need to
    load and run it again."""
    report = evaluation.challenger
    return Evaluation(report, ChampionScores(version, dict(report.metrics), None, list(report.predicted)))


def decide(evaluation: Evaluation, y_true: np.ndarray, params: RegisterParams) -> Decision:
    """The gate. Promote when there is no champion, or when `tasks.evaluation.gate` finds the challenger
    significantly better on the same test images (and no guard stops it). A champion that
    cannot be compared (other classes) is kept: replacing it is a decision for a person."""
    champion = evaluation.champion
    if champion.version is None:
        return Decision(True, "no champion yet")
    if champion.predicted is None:
        return Decision(False, f"champion not comparable ({champion.not_comparable}); kept")
    comparison = gate.compare(
        y_true,
        evaluation.challenger.predicted,
        np.asarray(champion.predicted),
        evaluation.challenger.class_names,
        params.metric,
        params.bootstrap_resamples,
        level=1 - params.alpha,
    )
    verdict = gate.judge(comparison, params)
    return Decision(verdict.promote, f"vs champion v{champion.version}: {verdict.reason}", comparison)


def register_candidate(
    model: Any,
    data: SplitData,
    encoding: Encoding,
    evaluation: Evaluation,
    tags: dict[str, str],
    params: RegisterParams,
    workdir: Path,
    export_params: ExportParams | None = None,
) -> Registered:
    """Log the classifier in the active run (with the checked export it serves through:
    `serving_runtime`), register it as `challenger` with its lineage and test metrics as tags,
    and move `champion` to it only if the gate says so. A model already
    registered from the same training (`tags[TRAINING_KEY]`: a rerun after a failed
    registration, or an unchanged rerun) is not added again: `finish_registration`."""
    model_name = params.model_name
    existing = versions.find_version(model_name, TRAINING_KEY, tags[TRAINING_KEY])
    if existing is not None:
        return finish_registration(model_name, existing.version, existing.tags)
    decision = decide(evaluation, data.test.y, params)
    info, served = log_served(
        model,
        data,
        encoding,
        workdir,
        params.serve_runtime,
        export_params or ExportParams(),
        evaluation.challenger.probabilities,
    )
    reference = workdir / "reference_features.npy"  # what `retrain` measures drift against
    np.save(reference, drift.reference_features(backbones.backbone_of(model), data.train, encoding))
    mlflow.log_artifact(str(reference), "drift_reference")
    version_tags = {
        **tags,
        **{f"test_{k}": repr(v) for k, v in evaluation.challenger.metrics.items()},  # full precision
        **{f"ci_test_{k}": json.dumps(v) for k, v in evaluation.challenger.intervals.items()},
        "classes": json.dumps(data.class_names),
        "input": f"{encoding.modality}, {encoding.describe()}",
        "promotion": decision.reason,
        "promoted": str(decision.promote).lower(),
        "gate": json.dumps(decision.comparison.as_dict() if decision.comparison else None),
        "compared_with": evaluation.champion.version or "none",
        drift.REFERENCE_TAG: mlflow.get_artifact_uri(f"drift_reference/{reference.name}"),
        **served.tags(),
    }
    version, _ = versions.register_version(info, model_name, version_tags, [])
    compared_with = evaluation.champion.version
    _, moved_to = place_aliases(model_name, version, True, decision.promote, compared_with, decision.reason)
    if moved_to is not None:
        decision = champion_moved(model_name, version, compared_with, moved_to, decision)
        version_tags.update(promoted="false", promotion=decision.reason)
    report, champion = evaluation.challenger, evaluation.champion
    text = card.model_card(
        model_name,
        version,
        version_tags,
        data.counts(),
        report.metrics,
        report.intervals,
        report.per_class,
        (champion.version, champion.metrics),
        decision.reason,
    )
    (workdir / "model_card.md").write_text(text)
    mlflow.log_artifact(str(workdir / "model_card.md"))
    versions.describe(model_name, version, text)
    held = versions.aliases_of(model_name, version)
    return Registered(model_name, version, held, decision.promote, decision.reason, served.runtime)


def place_aliases(
    model_name: str, version: str, challenger: bool, promote: bool, compared_with: str | None, why: str
) -> tuple[list[str], str | None]:
    """Under the registry lock (tasks.registry.lease: one holder across every process sharing
    the tracking server): `challenger` on `version` when asked, and `champion` with its history
    move when `promote` and the champion is still `compared_with` (None: still none). Returns
    the aliases set and, when the champion had moved, the version holding it ("none" if none)."""
    with lease.held(model_name):
        now = versions.champion_version(model_name)
        aliases = [CHALLENGER] if challenger else []
        moved_to = None
        if promote and now == compared_with:
            aliases.append(CHAMPION)
        elif promote:
            moved_to = now or "none"
        versions.set_aliases(model_name, version, aliases)
        if CHAMPION in aliases:
            history.record(model_name, now, version, "gate", why)
    return aliases, moved_to


def champion_moved(
    model_name: str, version: str, compared_with: str | None, moved_to: str, decision: Decision
) -> Decision:
    """The gate said promote, but another run moved the champion first: not promoted, and the
    version's tags say so."""
    was = f"v{compared_with}" if compared_with else "no champion"
    reason = (
        f"champion moved to v{moved_to} during this run (compared with {was}); "
        "not promoted: rerun to compare with the new champion"
    )
    MlflowClient().set_model_version_tag(model_name, version, "promoted", "false")
    MlflowClient().set_model_version_tag(model_name, version, "promotion", reason)
    return Decision(False, reason, decision.comparison)


def finish_registration(model_name: str, version: str, tags: dict[str, str]) -> Registered:
    """A version already registered from this training: set what its registration left unset
    (stopped between creating the version and moving the aliases). `challenger` when it is
    still the newest version; `champion` when its gate said promote and the champion it was
    compared with is still the champion."""
    version = str(version)
    held = versions.aliases_of(model_name, version)
    challenger = CHALLENGER not in held and versions.latest_version(model_name) == version
    compared_with = None if tags.get("compared_with", "none") == "none" else tags["compared_with"]
    promote = tags.get("promoted") == "true" and CHAMPION not in held
    missing, moved_to = place_aliases(
        model_name, version, challenger, promote, compared_with, tags.get("promotion", "")
    )
    if moved_to is not None:
        champion_moved(model_name, version, compared_with, moved_to, Decision(True, ""))
    done = f"; set {', '.join(missing)} as its gate had decided" if missing else ""
    return Registered(
        model_name,
        version,
        versions.aliases_of(model_name, version),
        CHAMPION in missing,
        f"already registered as v{version} from this same training: nothing added{done}",
        tags.get("serve.runtime", "keras"),
    )


@dataclass
class ServingRuntime:
    """What a version registered now answers through: `runtime` "keras", or an export's name
    with its file (checked on the test split) and parity; `reason` says why."""

    runtime: str
    reason: str
    path: Path | None = None
    parity: export.Parity | None = None

    def tags(self) -> dict[str, str]:
        """The version's `serve.runtime` and `serve.runtime_reason`, and the export's parity."""
        own = {"serve.runtime": self.runtime, "serve.runtime_reason": self.reason}
        return own | (self.parity.tags() if self.parity else {})


def serving_runtime(
    model: Any,
    class_names: list[str],
    encoding: Encoding,
    test: Split,
    train: Split,
    runtime: str,
    folder: Path,
    params: ExportParams,
    reference: np.ndarray | None = None,
) -> ServingRuntime:
    """Export `model` as `runtime` (onnx, tflite) and check it on `test` as `transferops export`
    does; it serves when its accuracy is within `params.max_accuracy_drop` of Keras' and its
    top-1 agrees on as large a share. Else (or `runtime` "keras", or a conversion that fails)
    Keras serves, and the reason says why. `reference`: Keras' probabilities of `test`, when
    known (the evaluation's)."""
    if runtime == "keras":
        return ServingRuntime("keras", "register.serve_runtime is keras")
    try:
        path, parity = export.export_checked(
            model,
            class_names,
            encoding,
            test,
            train,
            runtime,
            folder,
            params.max_accuracy_drop,
            latency_calls=10,
            reference=reference,
        )
    except export.ExportRefused as refused:
        return ServingRuntime("keras", f"{runtime} export refused: {refused}", parity=refused.parity)
    except OSError:
        raise  # a full disk, a permission: the run's own failure
    except Exception as exc:  # a converter's own failure: Keras still serves, and says why
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return ServingRuntime("keras", f"{runtime} export failed ({type(exc).__name__}: {first})")
    if parity.agreement < 1 - params.max_accuracy_drop:
        return ServingRuntime(
            "keras",
            f"{runtime} export agrees with Keras on {parity.agreement:.2%} of the test split, under "
            f"1 - export.max_accuracy_drop",
            parity=parity,
        )
    return ServingRuntime(
        runtime, f"{runtime}: parity on {parity.images} test examples ({parity.words()})", path, parity
    )


def log_served(
    model: Any,
    data: SplitData,
    encoding: Encoding,
    workdir: Path,
    runtime: str,
    export_params: ExportParams,
    reference: np.ndarray | None = None,
) -> tuple[mlflow.models.model.ModelInfo, ServingRuntime]:
    """Log the classifier in the active run, answering through `runtime` where its export passes
    the check on `data.test` (`serving_runtime`): the model's info and how its runtime was chosen."""
    served = serving_runtime(
        model,
        data.class_names,
        encoding,
        data.test,
        data.train,
        runtime,
        workdir / "runtime",
        export_params,
        reference,
    )
    info = versions.log_classifier(
        model,
        data.class_names,
        encoding,
        workdir,
        Path(data.test.paths[0]),
        runtime=(served.runtime, served.path) if served.path else None,
    )
    return info, served
