"""Typed configuration: every tunable number, one section per stage, with its range.

The defaults live here and only here; `params.yaml` (the file users edit, and DVC reads) is
kept equal to them by a test. Only the entry point (`flows/cli.py`) calls `load_params`; each
stage receives just its own section. Every section is a frozen pydantic model that forbids
unknown keys, so a typo is an error that names the key and where it came from.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    Field,
    ValidationError,
    model_validator,
)

from tasks.core.errors import UserError
from tasks.core.sections import Candidate, ImagesParams, Section, Strategy, TextsParams, upgrade

__all__ = ["Candidate", "ImagesParams", "Section", "TextsParams"]  # params' sections, from one place


class ConfigError(UserError, ValueError):
    """Params that cannot be used; the message names the source (file or --set) and the key."""


class DataParams(Section):
    raw: str = "data/raw"  # the target task: <raw>/<class>/<example>
    source: str = "data/source"  # the pretraining set (images), same layout
    # What the examples are (tasks/modality): auto finds it from data.raw (`modality.detect`)
    modality: Literal["auto", "images", "texts"] = "auto"


class FashionMnistParams(Section):
    source_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    raw_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    source_per_class: int = Field(1000, ge=1)
    raw_per_class: int = Field(200, ge=1)
    seed: int = 0


class ValidateParams(Section):
    min_per_class: int = Field(5, ge=1)  # usable examples a class needs (each modality checks its own)


class SplitParams(Section):
    val_fraction: float = Field(0.15, gt=0, lt=1)  # early stopping and checkpoints need validation images
    test_fraction: float = Field(0.15, gt=0, lt=1)
    salt: str = "transferops-v1"  # changing it reshuffles every split: do it deliberately

    @model_validator(mode="after")
    def _room_for_training(self) -> SplitParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1 (training needs images)")
        return self


class PretrainParams(Section):
    model_name: Annotated[str, AfterValidator(check_model_name)] = "transferops-backbone"
    alias: str = Field("pretrained", min_length=1)
    width: int = Field(32, ge=1)  # filters of the first conv block; later blocks double it
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    seed: int = 0
    histogram_freq: int = Field(0, ge=0)  # TensorBoard weight histograms every N epochs (0: none)


# A registered model name: it goes into registry filters, lock-file names and models:/ URIs.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_model_name(value: str) -> str:
    if not MODEL_NAME.fullmatch(value):
        raise ValueError("a model name is up to 100 letters, digits, '.', '_', '-', the first alphanumeric")
    return value


class SelectParams(Section):
    """How a backbone is chosen among the modality's candidates (`images.candidates`,
    `texts.candidates`)."""

    max_samples: int = Field(2000, ge=2)  # LogME is scored on at most this many training examples
    top_k: int = Field(2, ge=1)  # with search.enabled: the strategy search also chooses among LogME's best k


class FinetuneParams(Section):
    batch_size: int = Field(32, ge=1)
    head_epochs: int = Field(40, ge=0)
    head_learning_rate: float = Field(1e-3, gt=0)
    finetune_epochs: int = Field(3, ge=0)  # at 224 px an epoch of the demo is about a minute on 2 cores
    finetune_learning_rate: float = Field(1e-4, gt=0)
    unfreeze_layers: int = Field(4, ge=0)  # trainable layers (with weights) at the top of the backbone
    dropout: float = Field(0.2, ge=0, lt=1)
    patience: int = Field(4, ge=1)  # early stopping on validation loss
    seed: int = 0
    histogram_freq: int = Field(0, ge=0)  # TensorBoard weight histograms every N epochs (0: none)
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"  # phase 2 (tasks/models/distribute.py)
    distribute_workers: int = Field(2, ge=1)  # multi_worker: processes on this machine
    distill_from: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}/[0-9]+$")
    distill_temperature: float = Field(3.0, gt=0)  # distill_from NAME/N: learn its soft targets
    distill_soft_weight: float = Field(0.5, ge=0, le=1)  # the teacher's share of the loss; the rest: labels
    distill_unlabelled: str | None = None  # a folder of unlabelled images (any depth) the teacher labels too

    @model_validator(mode="after")
    def _trains_something(self) -> FinetuneParams:
        if self.head_epochs == 0 and (self.finetune_epochs == 0 or self.unfreeze_layers == 0):
            raise ValueError("head_epochs is 0 and phase 2 is off: nothing would be trained")
        return self


class SearchParams(Section):
    """How `finetune` chooses its strategy on the val split (tasks/search/strategy.py): head trials,
    a budgeted bracket of fine-tune trials, scratch and raw-pixel baselines. Off: the fixed recipe."""

    enabled: bool = True
    strategies: tuple[Strategy, ...] = Field(("head", "top", "scratch", "raw"), min_length=1)
    head_trials: int = Field(4, ge=1)  # head learning rates per backbone, log-spaced over the range
    learning_rate_range: tuple[float, float] = (1e-4, 1e-2)  # the head trials'
    finetune_rate: float = Field(0.1, gt=0)  # fine-tune trials: head rate = the best head's x this
    backbone_rate: float = Field(1.0, gt=0)  # unfrozen backbone layers: the head rate x this
    unfreeze_layers: tuple[int, ...] = Field((2, 4), min_length=1)  # for `top`
    cached_top: bool = True  # `top` trials on cached activations below their top layers, unaugmented
    max_epochs: int = Field(9, ge=1)  # the most epochs one fine-tune trial trains
    factor: int = Field(3, ge=2)  # each rung keeps 1/factor of the trials, for factor x the epochs
    budget_epochs: int = Field(3, ge=0)  # epochs over the training split all fine-tune trials share
    time_budget_minutes: float = Field(30, ge=0)  # no trial or epoch starts after it (0: none)
    scratch_epochs: int = Field(200, ge=1)  # the scratch baseline: outside the bracket, on its own budget
    scratch_patience: int = Field(20, ge=1)  # epochs without a better val_accuracy before it stops, at most
    scratch_patience_steps: int | None = Field(1000, ge=1)  # or this many steps' epochs (>= 5); None: off
    scratch_learning_rate: float = Field(1e-3, gt=0)
    ensemble_size: int = Field(3, ge=1)  # average the best N trials when that wins on val (1: off)
    ensemble_weighted: bool = True  # weight members by their val accuracy
    # When no ensemble of the best is kept: the chosen trial averaged with the raw-input baseline
    # unless the chosen alone really leads that on val (texts' default: an encoder and TF-IDF err
    # on different texts; bench/results/text_transfer.md)
    fuse_raw: bool = False
    distill_ensemble: bool = False  # a kept ensemble of k backbones: distilled into one (ensemble.distil)

    @model_validator(mode="after")
    def _positive(self) -> SearchParams:
        low, high = self.learning_rate_range
        if not 0 < low <= high:
            raise ValueError("learning_rate_range must be [low, high] with 0 < low <= high")
        if any(n < 1 for n in self.unfreeze_layers):
            raise ValueError("unfreeze_layers must be at least 1")
        return self


class RegisterParams(Section):
    model_name: Annotated[str, AfterValidator(check_model_name)] = "transferops-classifier"
    metric: str = Field("macro_f1", pattern=r"^(accuracy|macro_f1)$")  # what the promotion gate compares
    min_delta: float = Field(0.0, ge=0, le=1)  # the challenger must beat the champion by more than this
    alpha: float = Field(0.05, gt=0, lt=1)  # paired gate (evaluation/gate.py): McNemar p < it, (1-it) CI > 0
    bootstrap_resamples: int = Field(1000, ge=100)
    max_recall_drop: float = Field(0.10, ge=0, le=1)  # no class may lose more recall than this
    min_metric: float = Field(0.0, ge=0, le=1)  # a floor on the challenger's metric
    # What the registered version answers through: its ONNX or TFLite export, checked on the
    # test split as `transferops export` checks (export.max_accuracy_drop), else Keras
    serve_runtime: Literal["onnx", "tflite", "keras"] = "onnx"


class RetrainParams(Section):
    drift_alpha: float = Field(0.05, gt=0, lt=1)  # the drift test's (promotion/drift.py: MMD², permutations)
    drift_samples: int = Field(300, ge=10)  # images per side
    drift_permutations: int = Field(200, ge=10)
    require_drift: bool = False  # true: changed data without significant drift is not retrained


class RetentionParams(Section):
    """What `transferops gc` (and the retrain flow after each round) keeps (tasks/retention)."""

    keep_last: int = Field(5, ge=1)  # the newest versions, and the newest flow runs
    keep_moves: int = Field(10, ge=0)  # versions of the champion's last moves (rollback targets)
    keep_validations: int = Field(5, ge=1)  # Data Docs folders kept locally (MLflow has every one)
    prefect_days: int = Field(30, ge=0)  # Prefect flow runs older than this go (0: kept)
    min_age_minutes: float = Field(10, ge=0)  # newer files may be a run's in progress: kept
    after_retrain: bool = True  # the retrain flow (and the scheduled deployment) ends with gc


class ReproducibilityParams(Section):
    # Deterministic TensorFlow ops: the same inputs give the same weights and metrics, bit for
    # bit, on the same machine and versions. false trades that for speed (recorded on the run).
    deterministic: bool = True


class RunnerParams(Section):
    # Where fan-out work (each candidate's features and LogME) runs (tasks/core/runner.py):
    # `local` in the flow's process; `dask` on a Dask cluster: the scheduler at `address`
    # (tcp://host:8786), or without one a local cluster of `workers` processes for the run.
    kind: Literal["local", "dask"] = "local"
    address: str | None = None
    workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)


class ExportParams(Section):  # `transferops export` (tasks/registry/export.py)
    max_accuracy_drop: float = Field(0.01, ge=0, le=1)  # more test accuracy lost in its runtime: refused
    representative_images: int = Field(100, ge=1)  # int8: train images that calibrate activations
    latency_calls: int = Field(30, ge=1)  # single-image calls timed for the recorded median


# Two section names are also attributes of pydantic's BaseModel (the deprecated classmethod
# `validate`) and of its ABCMeta (`register`); on an instance the field wins, so the warning
# pydantic gives for them is noise.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r'Field name "(validate|register)"', category=UserWarning)

    class Params(Section):
        data: DataParams = DataParams()
        images: ImagesParams = ImagesParams()
        texts: TextsParams = TextsParams()
        fashion_mnist: FashionMnistParams = FashionMnistParams()
        validate: ValidateParams = ValidateParams()  # type: ignore[assignment]
        split: SplitParams = SplitParams()
        pretrain: PretrainParams = PretrainParams()
        select: SelectParams = SelectParams()
        finetune: FinetuneParams = FinetuneParams()
        search: SearchParams = SearchParams()
        register: RegisterParams = RegisterParams()  # type: ignore[assignment]
        retrain: RetrainParams = RetrainParams()
        retention: RetentionParams = RetentionParams()
        reproducibility: ReproducibilityParams = ReproducibilityParams()
        runner: RunnerParams = RunnerParams()
        export: ExportParams = ExportParams()

        @model_validator(mode="after")
        def _distribute_what_runs(self) -> Params:
            unfit = self.search.enabled or self.finetune.distribute == "multi_worker"
            if self.finetune.distill_from and unfit:
                raise ValueError("finetune.distill_from needs search.enabled: false and no multi_worker")
            teaches = self.finetune.distill_from or (self.search.enabled and self.search.distill_ensemble)
            if self.finetune.distill_unlabelled and not teaches:
                raise ValueError("finetune.distill_unlabelled needs distill_from or search.distill_ensemble")
            if self.finetune.distribute != "none" and self.search.enabled:
                raise ValueError(
                    "finetune.distribute applies to the fixed recipe's phase 2: set search.enabled: false "
                    "with it, or finetune.distribute: none"
                )
            return self

        def section(self, modality: str) -> ImagesParams | TextsParams:
            """The params section of the modality named `modality` (images, texts)."""
            return getattr(self, modality)

        def search_for(self, modality: str) -> SearchParams:
            """The search's params on `modality`: texts search `texts.strategies` and
            `texts.fuse_raw`."""
            section = self.section(modality)
            own = {key: getattr(section, key) for key in ("strategies", "fuse_raw") if hasattr(section, key)}
            return self.search.model_copy(update=own)

        def as_dict(self) -> dict[str, Any]:
            """Plain JSON-able values, keyed as in params.yaml."""
            return self.model_dump(mode="json")


def _merge(base: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return base | {s: base[s] | v if isinstance(base.get(s), dict) else v for s, v in overrides.items()}


def _describe(error: Any) -> str:
    """`<key>: <what is wrong> (got <value>)` for one pydantic error."""
    where = ".".join(str(part) for part in error["loc"]) or "top level"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] not in ("missing",) and not isinstance(error.get("input"), dict):
        message = f"{message} (got {error['input']!r})"
    return f"{where}: {message}"


def parse_params(
    values: dict[str, Any],
    source: str,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Params:
    """Params from the mapping read out of `source`, with `overrides` ({section: {key: value}},
    from --set) on top. An error names each bad key and whether --set or `source` gave it."""
    overrides = upgrade(overrides or {})
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections")
    values = upgrade(values)
    try:
        return Params.model_validate(_merge(values, overrides))
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            loc = [str(p) for p in error["loc"]]
            from_set = len(loc) >= 2 and loc[1] in overrides.get(loc[0], {})
            whole_section_from_set = len(loc) == 1 and loc[0] in overrides
            origin = "--set" if from_set or whole_section_from_set else f"{source}:"
            lines.append(f"{origin} {_describe(error)}")
        raise ConfigError("; ".join(lines)) from None


def load_params(path: Path | str | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Params:
    """The embedded defaults, then the params file `path` (it must exist when given), then
    `overrides`. With no path, no file is read: never a params.yaml of the current folder."""
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: params file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the params file: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        values = loaded if loaded is not None else {}
    return parse_params(values, source, overrides)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """["finetune.head_epochs=2"] -> {"finetune": {"head_epochs": 2}} (values parsed as YAML)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            out.setdefault(section, {})[name] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    return out


def resolve_params(root: Path, params_arg: Path | None, sets: list[str]) -> Params:
    """The params of a command: `--params FILE` (relative to the root; it must exist), else
    <root>/params.yaml when there is one, else the embedded defaults; then the --set overrides.
    Never a params file of another folder."""
    overrides = parse_overrides(sets)
    if params_arg is not None:
        return load_params(params_arg if params_arg.is_absolute() else root / params_arg, overrides)
    default = root / "params.yaml"
    if default.exists():
        return load_params(default, overrides)
    print(f"transferops: no params.yaml in {root}; using the built-in defaults", file=sys.stderr)
    return load_params(None, overrides)


@dataclass(frozen=True)
class Paths:
    """Every location the pipeline writes, declared once and passed in."""

    root: Path
    mlflow_dir: Path
    reports_dir: Path

    @classmethod
    def from_root(cls, root: Path | str) -> Paths:
        root = Path(root).resolve()
        return cls(root=root, mlflow_dir=root / "mlflow", reports_dir=root / "reports")

    def resolve(self, path: str | Path) -> Path:
        """A params path is relative to the project root unless absolute."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p


def project_root() -> Path:
    """The project root: $TRANSFEROPS_ROOT, else the current directory."""
    return Path(os.environ.get("TRANSFEROPS_ROOT", ".")).resolve()


def registry_ref(ref: str) -> tuple[str, str | None, str | None]:
    """`name@alias`, `name/version` or `name` (the latest) -> (name, alias, version)."""
    if "@" in ref:
        name, _, alias = ref.partition("@")
        return name, alias, None
    name, _, version = ref.partition("/")
    return name, None, version or None


def registry_uri(ref: str) -> str:
    """The MLflow models:/ URI of a registry reference."""
    name, alias, version = registry_ref(ref)
    if alias:
        return f"models:/{name}@{alias}"
    return f"models:/{name}/{version or 'latest'}"
