"""Typed configuration: every tunable number, one section per stage.

`params.yaml` (read by DVC too) overrides the defaults embedded here. Only the entry point
(`flows/cli.py`) calls `load_params`; each stage receives just its own section.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class DataParams:
    raw: str = "data/raw"  # the target task's image folder: <raw>/<class>/<image>
    source: str = "data/source"  # the pretraining image folder, same layout
    image_size: int = 32  # images are decoded to RGB and resized to image_size x image_size


@dataclass(frozen=True)
class FashionMnistParams:
    source_classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    raw_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    source_per_class: int = 1000
    raw_per_class: int = 200
    seed: int = 0


@dataclass(frozen=True)
class ValidateParams:
    min_images_per_class: int = 5
    min_side: int = 8  # smallest accepted width/height in pixels
    max_pixels: int = 40_000_000  # larger images are refused as decompression bombs
    formats: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


@dataclass(frozen=True)
class SplitParams:
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    salt: str = "transferops-v1"  # changing it reshuffles every split: do it deliberately


@dataclass(frozen=True)
class PretrainParams:
    model_name: str = "transferops-backbone"
    alias: str = "pretrained"
    width: int = 32  # filters of the first conv block; later blocks double it
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class Candidate:
    """A pretrained backbone: `registry:<model>@<alias>`, `keras:<Application>`, `file:<x.keras>`."""

    uri: str
    weights: str | None = None  # keras: only; "imagenet" needs internet, "none" or a file path


@dataclass(frozen=True)
class SelectParams:
    candidates: tuple[Candidate, ...] = (
        Candidate("registry:transferops-backbone@pretrained"),
        Candidate("keras:MobileNetV3Small", weights="none"),
    )
    max_samples: int = 2000  # LogME is scored on at most this many training images


@dataclass(frozen=True)
class FinetuneParams:
    batch_size: int = 32
    head_epochs: int = 40
    head_learning_rate: float = 1e-3
    finetune_epochs: int = 15
    finetune_learning_rate: float = 1e-4
    unfreeze_layers: int = 4  # trainable layers (with weights) at the top of the backbone
    dropout: float = 0.2
    patience: int = 4  # early stopping on validation loss
    seed: int = 0


@dataclass(frozen=True)
class RegisterParams:
    model_name: str = "transferops-classifier"
    metric: str = "macro_f1"  # the promotion gate compares this metric on the same test set
    min_delta: float = 0.0  # the challenger must beat the champion by more than this


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    fashion_mnist: FashionMnistParams = field(default_factory=FashionMnistParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    split: SplitParams = field(default_factory=SplitParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    select: SelectParams = field(default_factory=SelectParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    register: RegisterParams = field(default_factory=RegisterParams)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


T = TypeVar("T")


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _build(cls: type[T], values: Any, where: str, source: Path) -> T:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in '{where}'; known: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        default = _default(fields[name])
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}", source)
        elif name == "candidates":
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{source}: '{where}.candidates' must be a non-empty list")
            kwargs[name] = tuple(
                _build(
                    Candidate, c if isinstance(c, dict) else {"uri": c}, f"{where}.candidates[{i}]", source
                )
                for i, c in enumerate(value)
            )
        elif isinstance(default, tuple):
            if not isinstance(value, list):
                raise ConfigError(f"{source}: '{where}.{name}' must be a list")
            kwargs[name] = tuple(value)
        elif isinstance(default, bool) or default is None:
            kwargs[name] = value
        elif isinstance(default, (int, float, str)):
            expected = (int, float) if isinstance(default, float) else type(default)
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ConfigError(
                    f"{source}: '{where}.{name}' must be {type(default).__name__}, got {value!r}"
                )
            kwargs[name] = type(default)(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def load_params(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml (if it exists) over the embedded defaults.

    `overrides` is a nested mapping applied on top, e.g. {"finetune": {"head_epochs": 2}}.
    """
    values: dict[str, Any] = {}
    source = Path(path) if path else Path("params.yaml")
    if path is not None and not source.exists():
        raise ConfigError(f"{source}: params file not found")
    if source.exists():
        try:
            loaded = yaml.safe_load(source.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections")
        values = loaded
    for section, section_values in (overrides or {}).items():
        values.setdefault(section, {})
        values[section] = {**values[section], **section_values}
    return _build(Params, values, "params", source)


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
