"""Validate: a Great Expectations suite over the manifest, before anything is trained.

Two tables are checked: the manifest (one row per file: decodable, labelled, not the same
bytes under two labels, and the modality's own checks: an image of a known format, large enough) and a class table (enough images in
every class folder, at least two classes). Any failure blocks the run; the report names
each bad file and the reason. The Data Docs (HTML) are written to `docs_dir` either way.

File and folder names are untrusted (`<svg onload=...>.png` is a valid file name), and Data
Docs are HTML that people open from the MLflow UI. So Great Expectations never sees a name:
its tables hold the manifest row (`manifest_row`, the row of manifest.parquet) and a class
index (`class_id`, into the sorted class folders); the report maps them back to names,
escaped for the terminal with `files.printable`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tasks.core.config import ValidateParams
from tasks.core.files import printable
from tasks.data import data_docs, ingest, lineage
from tasks.modality import Modality


MAX_LISTED = 20  # problems a failure message lists; MLflow and the Data Docs have them all


@dataclass
class ValidationReport:
    success: bool
    problems: list[str] = field(default_factory=list)  # "<path>: <reason>", one per bad item
    statistics: dict[str, float] = field(default_factory=dict)
    docs_dir: Path | None = None
    ignored: list[str] = field(default_factory=list)  # hidden/system files skipped by design

    def message(self, root: Path | str) -> str:
        """The first MAX_LISTED problems, one per line; the count of the rest and where they are."""
        head = f"data validation failed for {root}: {len(self.problems)} problem(s)"
        lines = [head, *self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(
                f"... and {len(self.problems) - MAX_LISTED} more (every one: validation.json of the "
                "validate stage's MLflow run, and the Data Docs)"
            )
        return "\n  ".join(lines)


def _label_conflicts(files: pd.DataFrame) -> pd.Series:
    """True for files whose bytes also appear under another label."""
    labels_per_hash = files.groupby("sha256")["label"].transform("nunique")
    return labels_per_hash > 1


def class_table(files: pd.DataFrame, folders: list[str]) -> pd.DataFrame:
    """Usable images per class folder, empty folders included."""
    usable = files[files["decodable"] & files["label"].notna()]
    counts = usable.groupby("label").size()
    labels = sorted(set(folders) | set(counts.index))
    return pd.DataFrame({"label": labels, "n_images": [int(counts.get(label, 0)) for label in labels]})


def _suites(params: ValidateParams, modality: Modality):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    files = gx.ExpectationSuite(name=f"{modality.noun}_files")
    for expectation in (
        gxe.ExpectColumnValuesToNotBeNull(column="class_id"),
        gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
        *(expectation for expectation, _ in modality.expectations()),
        gxe.ExpectColumnValuesToBeInSet(column="label_conflict", value_set=[False]),
    ):
        files.add_expectation(expectation)
    classes = gx.ExpectationSuite(name=f"{modality.noun}_classes")
    for expectation in (
        gxe.ExpectTableRowCountToBeBetween(min_value=2),
        gxe.ExpectColumnValuesToBeBetween(column="n_images", min_value=params.min_per_class),
    ):
        classes.add_expectation(expectation)
    return files, classes


_REASONS = {
    "class_id": "not inside a class folder",
    "label_conflict": "the same {noun} (sha256) is also filed under another label",
}


def _reason(column: str, modality: Modality, own: dict[str, str], error: str) -> str:
    """Why a row failed the check on `column`; `own`: the modality's checks' reasons by column."""
    if column == "decodable":
        return error or "not decodable"
    return _REASONS[column].format(noun=modality.noun) if column in _REASONS else own.get(column, column)


def validate_manifest(
    manifest: pd.DataFrame, folders: list[str], params: ValidateParams, docs_dir: Path, modality: Modality
) -> ValidationReport:
    """Run the expectation suites; returns the report (it does not raise)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    ignored = [printable(p) for p in manifest.loc[manifest["ignored"], "path"]]
    files = manifest[~manifest["ignored"]].copy()  # index: the manifest row
    files["label_conflict"] = _label_conflicts(files)
    classes = class_table(files, folders)
    # Great Expectations sees ids, never the untrusted names: its Data Docs are HTML.
    own = {expectation.column: reason for expectation, reason in modality.expectations()}  # by column
    class_ids = {label: i for i, label in enumerate(classes["label"])}
    gx_files = pd.DataFrame(
        {
            "manifest_row": files.index.astype(int),
            "class_id": files["label"].map(class_ids).astype("Int64"),
            "decodable": files["decodable"],
            **{column: files[column] for column in own},
            "label_conflict": files["label_conflict"],
        }
    ).reset_index(drop=True)
    gx_classes = pd.DataFrame({"class_id": range(len(classes)), "n_images": classes["n_images"]})

    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # Only our own docs site: the default ephemeral context also writes one to a temp folder.
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
        ),
    )
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    docs_dir.mkdir(parents=True, exist_ok=True)
    context.add_data_docs_site(
        site_name="transferops",
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),
            },
        },
    )
    source = context.data_sources.add_pandas("manifest")
    file_suite, class_suite = _suites(params, modality)
    definitions = []
    for name, suite in (("files", file_suite), ("classes", class_suite)):
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        definitions.append(
            context.validation_definitions.add(
                gx.ValidationDefinition(name=name, data=batch, suite=context.suites.add(suite))
            )
        )

    problems: list[str] = []
    statistics: dict[str, float] = {"files": float(len(files)), "ignored_files": float(len(ignored))}
    statistics.update(modality.statistics(files[files["decodable"]]))
    errors = files["error"].fillna("")
    for definition, frame, key in (
        (definitions[0], gx_files, "manifest_row"),
        (definitions[1], gx_classes, "class_id"),
    ):
        result = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [key]},
        )
        statistics[f"{definition.name}_expectations_failed"] = float(
            result.statistics["unsuccessful_expectations"]
        )
        for r in result.results:
            if r.success:
                continue
            config = r.expectation_config
            if config.type == "expect_table_row_count_to_be_between":
                problems.append(f"{len(frame)} class folder(s) found; at least 2 are needed")
                continue
            for item in r.result.get("unexpected_index_list") or []:
                index = int(item[key])
                if key == "class_id":
                    name, count = classes.iloc[index]["label"], int(classes.iloc[index]["n_images"])
                    problems.append(
                        f"{printable(name)}/: {count} usable {modality.noun}(s); validate.min_per_class="
                        f"{params.min_per_class}"
                    )
                else:
                    reason = _reason(config.kwargs.get("column"), modality, own, errors.loc[index])
                    problems.append(f"{printable(files.loc[index, 'path'])}: {reason}")
    context.build_data_docs()
    data_docs.make_offline(docs_dir)  # no CDN: readable offline and in MLflow's preview
    return ValidationReport(
        success=not problems,
        problems=sorted(set(problems)),
        statistics=statistics,
        docs_dir=docs_dir,
        ignored=ignored,
    )


@dataclass
class ValidatedData:
    manifest: pd.DataFrame  # one row per file (tasks.data.ingest.columns)
    report: ValidationReport
    lineage: dict[str, str]  # data_version (DVC's directory hash), data_dvc_state, data_path
    modality: Modality  # what the examples are, with the run's settings

    @property
    def fingerprint(self) -> str:
        """By content: the manifest (every file's path, hashes, decoding) and the outcome."""
        return lineage.digest([lineage.frame_hash(self.manifest), self.report.success, self.lineage])


def validate_folder(data_dir: Path, params: ValidateParams, docs_dir: Path, modality: Modality) -> ValidatedData:
    """Ingest `data_dir` (hash and inspect every file), run the suites, and name the data version."""
    manifest = ingest.scan(data_dir, modality)
    report = validate_manifest(manifest, ingest.class_folders(data_dir), params, docs_dir, modality)
    return ValidatedData(manifest, report, lineage.data_lineage(data_dir, manifest), modality)
