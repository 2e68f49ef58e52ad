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

from tasks import evaluate, registry
from tasks.datasets import SplitData
from tasks.registry import CHALLENGER, CHAMPION, Registered

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChampionScores:
    """The champion on the challenger's test images: no champion (version None), comparable
    (metrics), or not comparable (metrics None, `not_comparable` says why)."""

    version: str | None = None
    metrics: dict[str, float] | None = None
    not_comparable: str | None = None


@dataclass
class Evaluation:
    challenger: evaluate.TestReport
    champion: ChampionScores


def champion_scores(model_name: str, data: SplitData) -> ChampionScores:
    """Score the current champion of `model_name` on `data.test`."""
    loaded = registry.load_champion(model_name)
    if loaded is None:
        return ChampionScores()
    version, pyfunc_model = loaded
    predicted = registry.predict_files(pyfunc_model, data.test.paths)
    classes = [c for c in predicted.columns if c not in ("label", "confidence", "error")]
    if classes != data.class_names:
        reason = f"champion v{version.version} knows classes {classes}, this data {data.class_names}"
        log.warning("%s; not comparable", reason)
        return ChampionScores(str(version.version), None, reason)
    probabilities = predicted[data.class_names].to_numpy(dtype="float64", na_value=0.0)
    return ChampionScores(str(version.version), evaluate.metrics(data.test.y, probabilities))


def evaluate_challenger(model: Any, data: SplitData, model_name: str) -> Evaluation:
    """Test report of the new model and the champion's scores on the same test images."""
    probabilities = evaluate.predict(model, data.test.x)
    return Evaluation(
        evaluate.report(data.test.y, probabilities, data.class_names),
        champion_scores(model_name, data),
    )


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(challenger: dict[str, float], champion: ChampionScores, metric: str, min_delta: float) -> Decision:
    """The gate. Promote when there is no champion, or the challenger's `metric` on the same
    test set beats the champion's by more than `min_delta`. A champion that cannot be
    compared (other classes) is kept: replacing it is a decision for a person."""
    if champion.version is None:
        return Decision(True, "no champion yet")
    if champion.metrics is None:
        return Decision(False, f"champion not comparable ({champion.not_comparable}); kept")
    if metric not in challenger or metric not in champion.metrics:
        return Decision(False, f"metric {metric!r} missing; champion kept")
    new, old = challenger[metric], champion.metrics[metric]
    if new > old + min_delta:
        return Decision(True, f"{metric} {new:.4f} > champion v{champion.version} {old:.4f} + {min_delta}")
    return Decision(
        False, f"{metric} {new:.4f} <= champion v{champion.version} {old:.4f} + {min_delta}; champion kept"
    )


def register_candidate(
    model: Any,
    data: SplitData,
    image_size: int,
    evaluation: Evaluation,
    tags: dict[str, str],
    model_name: str,
    metric: str,
    min_delta: float,
    workdir: Path,
) -> Registered:
    """Log the classifier in the active run, register it as `challenger` with its lineage and
    test metrics as tags, and move `champion` to it only if the gate says so."""
    decision = decide(evaluation.challenger.metrics, evaluation.champion, metric, min_delta)
    if decision.promote:  # compare-and-set: replace only the champion this model was compared with
        current = registry.version_by_alias(model_name, CHAMPION)
        now = str(current.version) if current is not None else None
        if now != evaluation.champion.version:
            was = f"v{evaluation.champion.version}" if evaluation.champion.version else "no champion"
            decision = Decision(
                False,
                f"champion moved to v{now} during this run (compared with {was}); "
                "not promoted: rerun to compare with the new champion",
            )
    info = registry.log_classifier(model, data.class_names, image_size, workdir, Path(data.test.paths[0]))
    version_tags = {
        **tags,
        **{f"test_{k}": repr(v) for k, v in evaluation.challenger.metrics.items()},  # full precision
        "classes": json.dumps(data.class_names),
        "promotion": decision.reason,
    }
    aliases = [CHALLENGER, CHAMPION] if decision.promote else [CHALLENGER]
    version, held = registry.register_version(info.model_uri, model_name, version_tags, aliases)
    return Registered(model_name, version, held, decision.promote, decision.reason)
