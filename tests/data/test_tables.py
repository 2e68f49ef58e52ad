"""A table of texts (CSV, JSONL, Parquet) is staged as class folders of `.txt` files named by
row, once per content; its data version is the md5 `dvc add` records for it; an untrusted label
never leaves the staging folder; every unusable row is named in one refusal; and DVC brings an
older table back for `reproduce`, which stages it again."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks import modality
from tasks.core.config import Params
from tasks.core.errors import UserError
from tasks.data import ingest, lineage, tables, versioning

ROWS = [
    ("Shares fell as the bank reported a loss.", "business"),
    ('He said "no comment",\nthen left.', "politics"),  # a quote, a comma and a newline in a cell
    ("Shares fell as the bank reported a loss.", "business"),  # an exact duplicate row
    ("The striker scored twice.", "sports"),
]


def staged_texts(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*.txt"))}


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_a_table_is_staged_as_class_folders_named_by_row(tmp_path, kind):
    frame = pd.DataFrame(ROWS, columns=["body", "topic"])
    table = tmp_path / f"news.{kind}"
    if kind == "csv":
        frame.to_csv(table, index=False)
    elif kind == "jsonl":
        frame.to_json(table, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(table)
    folder = tables.stage(table, tmp_path / "p", "body", "topic")
    assert staged_texts(folder) == {
        "business/row-1.txt": ROWS[0][0],
        "politics/row-2.txt": ROWS[1][0],
        "business/row-3.txt": ROWS[2][0],
        "sports/row-4.txt": ROWS[3][0],
    }
    md5 = hashlib.md5(table.read_bytes()).hexdigest()
    assert folder.parent == tmp_path / "p" / ".transferops" / "tables" and folder.name.startswith(md5)
    manifest = ingest.scan(folder, modality.named("texts", Params()))
    assert lineage.data_lineage(folder, manifest) == {
        "data_version": md5,  # what `dvc add news.<kind>` records
        "data_dvc_state": "untracked",
        "data_path": str(table.resolve()),
    }
    (tmp_path / f"news.{kind}.dvc").write_text(yaml.safe_dump({"outs": [{"md5": md5, "path": table.name}]}))
    assert lineage.data_lineage(folder, manifest)["data_dvc_state"] == "tracked"
    # staged once: the same content is not written again
    before = (folder / "sports" / "row-4.txt").stat().st_mtime_ns
    assert tables.stage(table, tmp_path / "p", "body", "topic") == folder
    assert (folder / "sports" / "row-4.txt").stat().st_mtime_ns == before


def test_a_table_is_texts_to_the_modality_and_the_run(tmp_path):
    table = tmp_path / "t.csv"
    pd.DataFrame(ROWS, columns=["text", "label"]).to_csv(table, index=False)
    assert modality.from_params(Params(), table).name == "texts"
    folder = tables.data_folder(table, tmp_path, Params())
    assert folder.is_dir() and modality.detect(folder) == "texts"
    assert tables.data_folder(tmp_path / "images", tmp_path, Params()) == tmp_path / "images"


def test_every_unusable_row_is_named_in_one_refusal_and_nothing_is_staged(tmp_path):
    lines = [
        {"text": "fine", "label": "a"},
        {"text": "no label"},
        {"text": "empty label", "label": ""},
        {"text": 42, "label": "a"},
        {"text": None, "label": "a"},
        {"text": "escapes", "label": "../../outside"},
        {"text": "hidden", "label": ".git"},
        {"text": "a bool", "label": True},
        ["not", "an", "object"],
    ]
    table = tmp_path / "bad.jsonl"
    table.write_text("\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    with pytest.raises(UserError) as refused:
        tables.stage(table, tmp_path / "p")
    message = str(refused.value)
    assert message.startswith("bad.jsonl: 9 row(s) cannot be used: row 2: no label; row 3: no label; ")
    for said in (
        "row 4: text is int, not a string",
        "row 5: no text",
        "row 6: label '../../outside' cannot name a class",
        "row 7: label '.git' cannot name a class",
        "row 8: label is bool, not a string",
        "row 9: a JSON list, not an object",
        "row 10: not a JSON line",
    ):
        assert said in message
    assert "\n" not in message
    assert not (tmp_path / "outside").exists()
    assert not list((tmp_path / "p" / ".transferops" / "tables").iterdir())  # the partial staging went


def test_a_table_that_cannot_be_read_says_what_to_do(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"text,label\ncaf\xe9,a\n")
    with pytest.raises(UserError, match=r"latin.csv: not UTF-8 after row 0 \(save the table as UTF-8\)"):
        tables.stage(latin, tmp_path / "p")
    other = tmp_path / "other.csv"
    other.write_text("body,topic\nx,a\n")
    with pytest.raises(UserError, match=r"other.csv: no column 'text' \(its columns: body, topic\); name the"):
        tables.stage(other, tmp_path / "p")
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label\n")
    with pytest.raises(UserError, match="empty.csv: no rows"):
        tables.stage(empty, tmp_path / "p")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match="broken.parquet: cannot be read as parquet"):
        tables.stage(broken, tmp_path / "p")


def test_a_bad_text_in_a_good_row_is_found_by_validation_naming_the_row(tmp_path):
    table = tmp_path / "t.csv"
    pd.DataFrame([("fine", "a"), ("   ", "a"), ("nul\x00", "b")], columns=["text", "label"]).to_csv(
        table, index=False
    )
    folder = tables.stage(table, tmp_path / "p")
    manifest = ingest.scan(folder, modality.named("texts", Params())).set_index("path")
    assert manifest.loc["a/row-2.txt", "error"] == "empty text (nothing but whitespace)"
    assert manifest.loc["b/row-3.txt", "error"].startswith("NUL at character 3")


def test_an_older_table_comes_back_from_dvc(tmp_path):
    """`reproduce` of a version trained on a table that has changed since: DVC checks out the
    recorded md5 as a file, in a git project."""
    root = tmp_path / "p"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / ".gitignore").write_text("/.transferops/\n")
    table = root / "data" / "news.csv"
    table.parent.mkdir()
    pd.DataFrame(ROWS, columns=["text", "label"]).to_csv(table, index=False)
    first = table.read_bytes()
    versioning.track(root, [table], root / ".dvc-remote")
    md5 = yaml.safe_load((root / "data" / "news.csv.dvc").read_text())["outs"][0]["md5"]
    assert md5 == tables.file_md5(table)
    table.write_text("text,label\nchanged,a\n")
    versioning.track(root, [table], root / ".dvc-remote")
    target = root / ".transferops" / "reproduce" / "m-v1" / "data.csv"
    versioning.restore(root, md5, target)
    assert target.read_bytes() == first
    assert tables.stage(target, root).name.startswith(md5)
    shutil.rmtree(target.parent)
