"""What a flow run did, in one shape for pretrain, train and retrain: written to
`reports/<command>.json` (DVC metrics) and printed by one formatter."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tasks.promotion import ChampionScores
from tasks.registry import Registered
from tasks.reproduce import Reproduction


@dataclass
class RunSummary:
    flow: str
    mlflow_run_id: str = ""
    skipped: str | None = None  # why nothing was trained (a retrain on unchanged data)
    data_version: str = ""
    data_dvc_state: str = ""
    images: dict[str, int] = field(default_factory=dict)  # per split
    classes: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)  # measured by the stage wrappers
    reused: list[str] = field(default_factory=list)  # stages whose cached result was reused
    logme: dict[str, float] = field(default_factory=dict)
    backbone: str = ""  # where fine-tuning started (train) or the architecture trained (pretrain)
    test: dict[str, float] = field(default_factory=dict)  # the new model on its test split
    champion_before: ChampionScores | None = None  # train only: the champion on the same images
    registered: Registered | None = None
    reproduction: Reproduction | None = None  # reproduce only: recorded and new metrics
    drift: dict[str, float] | None = None  # retrain: the drift test against the champion
    decision: str | None = None  # retrain: why it trained (a skipped one says why in `skipped`)

    @property
    def ok(self) -> bool:
        """False when a reproduction does not match within its tolerance."""
        return self.reproduction is None or self.reproduction.matches

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.reproduction is not None:
            out["reproduction"]["matches"] = self.reproduction.matches
        return out


def _scores(values: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in values.items())


def format_summary(s: RunSummary) -> str:
    """The terminal view of a run."""
    if s.skipped:
        return f"{s.flow}: skipped: {s.skipped}"
    lines = [
        f"\n== {s.flow} (MLflow run {s.mlflow_run_id}) ==",
        f"data version  {s.data_version}  images {s.images}",
        "stages        " + "  ".join(f"{k} {v:.1f}s" for k, v in s.stage_seconds.items()),
    ]
    if s.reused:
        reused = ", ".join(s.reused)
        lines.append(f"reused        {reused} (unchanged since an earlier run; --force recomputes)")
    if s.decision:
        lines.append(f"retrain       {s.decision}")
    if s.logme:
        lines.append(f"LogME         {_scores(s.logme)}")
    if s.backbone:
        lines.append(f"backbone      {s.backbone}")
    if s.test:
        lines.append(f"test          {_scores(s.test)}")
    before = s.champion_before
    if before is not None and before.version is not None:
        lines.append(
            f"champion was  v{before.version}  {_scores(before.metrics or {}) or '(not comparable)'}"
        )
    if s.registered is not None:
        reg = s.registered
        lines.append(f"registered    {reg.model} v{reg.version}  aliases: {', '.join(reg.aliases)}")
        if s.flow != "pretrain":
            lines.append(f"promotion     {reg.reason}")
    if s.reproduction is not None:
        lines.extend(format_reproduction(s.reproduction))
    return "\n".join(lines)


def format_reproduction(r: Reproduction) -> list[str]:
    lines = [f"reproduce     {r.model} v{r.version}   recorded     new          difference"]
    for metric, then in r.recorded.items():
        now = r.new.get(metric, float("nan"))
        lines.append(f"  {metric:<24}{then:<13.6f}{now:<13.6f}{now - then:+.6f}")
    for warning in r.warnings:
        lines.append(f"  warning: {warning}")
    verdict = "match" if r.matches else "DIFFERENT"
    lines.append(f"verdict       {verdict} (tolerance {r.tolerance:g})")
    return lines
