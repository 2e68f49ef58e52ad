"""What a flow run did, in one shape for pretrain, train and retrain: written to
`reports/<command>.json`, printed by `format_summary`, and published as Markdown (`markdown`)
on the MLflow run (its description) and as a Prefect artifact. `tasks.reporting.dvc_reports` writes its
numbers for DVC."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tasks.core.markdown import code, table
from tasks.promotion.promote import ChampionScores
from tasks.registry.reproduce import Reproduction
from tasks.registry.versions import Registered


@dataclass
class RunSummary:
    flow: str
    mlflow_run_id: str = ""
    skipped: str | None = None  # why nothing was trained (a retrain on unchanged data)
    data_version: str = ""
    data_dvc_state: str = ""
    examples: dict[str, int] = field(default_factory=dict)  # per split
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
    strategy: str | None = None  # train: how the strategy search chose (tasks/search/strategy.py)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # phase -> metric -> epochs
    confusion: dict[str, list] | None = None  # {"classes": [...], "matrix": rows true, columns predicted}
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)  # class -> precision, recall...
    gc: str | None = None  # retrain: what the retention pass after it freed (tasks/retention)

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
        return f"{s.flow}: skipped: {s.skipped}" + (f"\n{s.gc}" if s.gc else "")
    lines = [
        f"\n== {s.flow} (MLflow run {s.mlflow_run_id}) ==",
        f"data version  {s.data_version}  examples {s.examples}",
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
    if s.strategy:
        lines.append(f"strategy      {s.strategy}")
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
    if s.gc:
        lines.append(s.gc)
    return "\n".join(lines)


def format_reproduction(r: Reproduction) -> list[str]:
    lines = [f"reproduce     {r.model} v{r.version}   recorded     new          difference"]
    for metric, then in r.recorded.items():
        now = r.new.get(metric, float("nan"))
        lines.append(f"  {metric:<24}{then:<13.6f}{now:<13.6f}{now - then:+.6f}")
    for warning in r.warnings:
        lines.append(f"  warning: {warning}")
    verdict = "match" if r.matches else "DIFFERENT"
    if not r.matches and r.cpu is not None:  # expected: oneDNN picks kernels by instruction set
        verdict = f"different CPU kind (recorded on {r.cpu[0]}, run on {r.cpu[1]}): compare on the same kind"
    lines.append(f"verdict       {verdict} (tolerance {r.tolerance:g})")
    return lines


def markdown(s: RunSummary, links: dict[str, str]) -> str:
    """The run as a short Markdown page: data version, LogME table, test metrics beside the
    champion's, the gate's decision, and `links` (label -> URL, percent-encoded: the MLflow
    run and version, the Data Docs). Names from folders go into code spans (`tasks.core.markdown.code`)."""
    lines = [f"# {s.flow}: {code(s.mlflow_run_id)}", ""]
    if s.skipped:
        lines += [f"**Skipped**: {s.skipped}", ""]
    lines.append(f"- **Data version** {code(s.data_version)} ({s.data_dvc_state or 'state unknown'})")
    if s.examples:
        lines.append("- **Examples** " + ", ".join(f"{k} {v}" for k, v in s.examples.items()))
    if s.classes:
        lines.append(f"- **Classes** ({len(s.classes)}) " + ", ".join(code(c) for c in s.classes))
    if s.backbone:
        lines.append(f"- **Backbone** {code(s.backbone)}")
    if s.strategy:
        lines.append(f"- **Strategy** {s.strategy}")
    if s.decision:
        lines.append(f"- **Retrain** {s.decision}")
    if s.reused:
        lines.append(f"- **Reused** (unchanged since an earlier run) {', '.join(s.reused)}")
    if s.stage_seconds:
        lines.append("- **Stages** " + ", ".join(f"{k} {v:.1f} s" for k, v in s.stage_seconds.items()))
    if s.logme:
        best = max(s.logme, key=s.logme.__getitem__)
        rows = [[code(k), f"{v:.4f}", "best" if k == best else ""] for k, v in s.logme.items()]
        lines += ["", "## LogME (transferability: higher is better)", ""]
        lines += table(["candidate", "LogME", ""], rows)
    if s.test:
        before = s.champion_before
        compared = before is not None and before.version is not None and before.metrics
        header = ["metric", "this run"] + ([f"champion v{before.version}, same images"] if compared else [])
        rows = [
            [k, f"{v:.4f}"] + ([f"{before.metrics.get(k, float('nan')):.4f}"] if compared else [])
            for k, v in s.test.items()
        ]
        lines += ["", "## Test metrics", "", *table(header, rows)]
    if s.registered is not None:
        reg = s.registered
        lines += [
            "",
            "## Registry",
            "",
            f"{code(reg.model)} v{reg.version}, aliases: {', '.join(reg.aliases) or 'none'}",
        ]
        if s.flow != "pretrain":
            lines += ["", f"**Promotion gate**: {reg.reason}"]
    if links:
        lines += ["", "## Links", "", *(f"- [{label}]({url})" for label, url in links.items())]
    return "\n".join(lines) + "\n"
