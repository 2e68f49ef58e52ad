"""The split stage: the stable split (tasks/data/datasets.py: files and labels, no pixels), and
the splits as MLflow dataset inputs of the flow's run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import mlflow.data

from flows.stages.caching import cached_stage
from flows.stages.flowrun import (
    FlowRun,
    run_stage,
)
from tasks.core.config import (
    Params,
    SplitParams,
)
from tasks.data import datasets
from tasks.data import validate as validation


def splits(
    run: FlowRun, data: validation.ValidatedData, data_dir: Path, params: Params
) -> datasets.SplitData:
    """The split stage, as every flow runs it."""
    return run_stage(
        run,
        split_data,
        log_split,
        data=data,
        data_dir=data_dir,
        params=params.split,
    )


@cached_stage("split")
def split_data(data: validation.ValidatedData, data_dir: Path, params: SplitParams) -> datasets.SplitData:
    """Assign splits by content hash: which file goes where (no image is read)."""
    return datasets.prepare_splits(data.manifest, data_dir, params)


def log_split(splits: datasets.SplitData, run: FlowRun, reused: bool) -> str:
    mlflow.log_metrics({f"n_{name}": n for name, n in splits.sizes().items()})
    mlflow.log_dict(splits.counts(), "split_counts.json")
    mlflow.log_table(splits.table, "split_table.json")
    return " / ".join(f"{name} {n}" for name, n in splits.sizes().items()) + " examples"


def log_datasets(run: FlowRun, data: validation.ValidatedData, splits: datasets.SplitData) -> None:
    """The splits as MLflow dataset inputs of the flow's run (the UI's Datasets column): named
    `<folder>-<split>`, digest = the DVC data version, source = the folder, one row per image
    (path, label, sha256), the images per class as an input tag."""
    version, folder = data.lineage["data_version"], data.lineage["data_path"]
    counts = splits.counts()
    names = ("train", "val", "test")
    found = []
    for name in names:
        rows = splits.table[splits.table["split"] == name][["path", "label", "sha256"]].reset_index(drop=True)
        found.append(
            mlflow.data.from_pandas(
                rows, source=folder, targets="label", name=f"{Path(folder).name}-{name}", digest=version[:36]
            )
        )
    mlflow.log_inputs(found, list(names), [{"class_counts": json.dumps(counts[n])} for n in names])
