"""Backbone families: each candidate URI scheme (`registry:`, `keras:`, `lite0:`, `minilm:`,
`keras_hub:`, `file:`) registers what it takes (its modality), how to check it before a run, load
it, name it and say which backbone exactly it is. A new family is one `register` call, not a
branch in every function that reads a URI (Ludwig's encoder registry is the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from tasks.core.config import Candidate, registry_uri
from tasks.core.errors import UserError
from tasks.data import lineage
from tasks.modality.pixels import input_size
from tasks.modality.tokens import token_input, vocabulary
from tasks.models import backbones
from tasks.registry import versions


@dataclass(frozen=True)
class Family:
    scheme: str  # the URI's part before ":"
    modality: str | None  # what its backbones take: "images"; None: any (a registered or saved model)
    load: Callable[[Candidate, int, Path], keras.Model]  # (candidate, seed, converted-weights cache)
    lineage: Callable[[Candidate], dict[str, str]]  # backbone_version, backbone_data_version
    short: Callable[[str], str]  # the reference after ":" -> what a run name shows
    check: Callable[[Candidate], None] = lambda candidate: None  # raises UserError, loads nothing
    takes: Callable[[keras.Model, str], object] = input_size  # a ValueError when a loaded one does not


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> None:
    FAMILIES[family.scheme] = family


def family_of(uri: str) -> Family:
    scheme = uri.partition(":")[0]
    if scheme not in FAMILIES:
        known = ", ".join(f"{s}:" for s in FAMILIES)
        raise ValueError(f"{uri}: candidate must start with {known}")
    return FAMILIES[scheme]


def _ref(candidate: Candidate) -> str:
    return candidate.uri.partition(":")[2]


def _registry_lineage(candidate: Candidate) -> dict[str, str]:
    name, version = versions.resolve(_ref(candidate))
    data_version = versions.version_tags(name, version).get("data_version", "") if version else ""
    return {"backbone_version": version or "", "backbone_data_version": data_version}


def _load_registry(candidate: Candidate, seed: int, cache: Path) -> keras.Model:
    import mlflow

    return mlflow.keras.load_model(registry_uri(_ref(candidate)))


def _load_file(candidate: Candidate, seed: int, cache: Path) -> keras.Model:
    path = Path(_ref(candidate))
    if not path.is_file():
        raise FileNotFoundError(f"{candidate.uri}: model file not found")
    return keras.saving.load_model(path)


def _check_file(candidate: Candidate) -> None:
    if not Path(_ref(candidate)).is_file():
        raise UserError(f"images.candidates: {candidate.uri}: no such model file (a path to a .keras)")


def _load_keras(candidate: Candidate, seed: int, cache: Path) -> keras.Model:
    size = candidate.size or backbones.KERAS_SIZE
    return backbones.keras_application(_ref(candidate), size, candidate.weights, seed)


def _load_lite0(candidate: Candidate, seed: int, cache: Path) -> keras.Model:
    from tasks.models import lite0

    if _ref(candidate) != "imagenet":
        raise ValueError(f"{candidate.uri}: lite0 has ImageNet weights only (lite0:imagenet)")
    return lite0.lite0_backbone(cache)


def _lite0_lineage(candidate: Candidate) -> dict[str, str]:
    from tasks.models import lite0

    digest = lineage.file_sha256(lite0.checkpoint_path())[:16]
    return {"backbone_version": f"sha256={digest}", "backbone_data_version": "imagenet"}


register(
    Family(
        "registry",
        None,
        _load_registry,
        _registry_lineage,
        lambda ref: ref.split(" ")[0],
        takes=lambda model, uri: None,  # checked against the run's modality by `encoding_for`
    )
)
register(
    Family(
        "keras",
        "images",
        _load_keras,
        lambda c: {"backbone_version": f"weights={c.weights or 'none'}", "backbone_data_version": ""},
        lambda ref: ref,
        backbones.check_application,
    )
)
register(Family("lite0", "images", _load_lite0, _lite0_lineage, lambda ref: f"lite0-{ref}"))


def _load_minilm(candidate: Candidate, seed: int, cache: Path) -> keras.Model:
    from tasks.models import minilm

    return minilm.minilm_backbone()


def _minilm_lineage(candidate: Candidate) -> dict[str, str]:
    from tasks.models import minilm

    digest = lineage.file_sha256(minilm.weights_path())[:16]
    return {"backbone_version": f"sha256={digest}", "backbone_data_version": "sentence-transformers"}


register(
    Family(
        "minilm",
        "texts",
        _load_minilm,
        _minilm_lineage,
        lambda ref: f"minilm-{ref}",
        takes=token_input,
    )
)


def _load_hub(candidate: Candidate, seed: int, cache: Path) -> keras.Model:
    from tasks.models import minilm

    return minilm.hub_backbone(_ref(candidate), vocabulary())


def _hub_lineage(candidate: Candidate) -> dict[str, str]:
    from tasks.models import minilm

    digest = lineage.file_sha256(minilm.hub_weights_file(_ref(candidate)))[:16]
    return {"backbone_version": f"sha256={digest}", "backbone_data_version": "keras_hub"}


def _check_hub(candidate: Candidate) -> None:
    from tasks.models import minilm

    minilm.check_hub(candidate.uri)


register(
    Family(
        "keras_hub",
        "texts",
        _load_hub,
        _hub_lineage,
        lambda ref: Path(ref.rstrip("/")).name or ref,
        _check_hub,
        takes=token_input,
    )
)
register(
    Family(
        "file",
        None,
        _load_file,
        lambda c: {"backbone_version": lineage.file_sha256(Path(_ref(c))), "backbone_data_version": ""},
        lambda ref: Path(ref).name,
        _check_file,
        takes=lambda model, uri: None,  # checked against the run's modality by `encoding_for`
    )
)


def load_candidate(candidate: Candidate, seed: int = 0, cache_dir: Path | None = None) -> keras.Model:
    """Materialise a candidate backbone at its own input size (a keras: candidate's `size`,
    224 by default). `cache_dir` keeps converted weights (lite0:)."""
    family = family_of(candidate.uri)
    model = family.load(candidate, seed, cache_dir or Path(".transferops") / "backbones")
    family.takes(model, candidate.uri)  # a file or registry model of another kind is refused here
    return model


def check_candidates(candidates: tuple[Candidate, ...], modality: str) -> None:
    """What can be checked of `modality`'s candidates before a run starts, without loading one
    (each takes that modality, a Keras Application exists and preprocesses in the model, a file
    exists). Raises UserError (the URI's form is checked with the params)."""
    for candidate in candidates:
        family = family_of(candidate.uri)
        if family.modality not in (None, modality):
            raise UserError(
                f"{modality}.candidates: {candidate.uri} takes {family.modality}, and the data are "
                f"{modality} (list it under {family.modality}.candidates, or set data.modality)"
            )
        family.check(candidate)


def candidate_lineage(candidate: Candidate) -> dict[str, str]:
    """Which backbone exactly: a registry candidate's version and the data it was trained on,
    a file's sha256, a Keras Application's weights, Lite0's checkpoint."""
    return family_of(candidate.uri).lineage(candidate)


def short_name(uri: str) -> str:
    """registry:foo@bar -> foo@bar, keras:MobileNetV3Small -> MobileNetV3Small, file:/m/b.keras ->
    b.keras, lite0:imagenet -> lite0-imagenet: what a run name shows of where fine-tuning started
    (a URI of no family, such as the search's raw-pixel baseline, as it is)."""
    scheme, _, ref = uri.partition(":")
    return FAMILIES[scheme].short(ref) if scheme in FAMILIES else uri


def candidate_name(candidate: Candidate) -> str:
    """A metric-safe short name: registry:foo@bar -> foo_bar, registry:foo/3 -> foo_3,
    file:/models/b.keras -> b.keras, keras:MobileNetV3Small -> MobileNetV3Small."""
    kind, _, ref = candidate.uri.partition(":")
    short = ref if kind == "registry" else short_name(candidate.uri)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in short)
