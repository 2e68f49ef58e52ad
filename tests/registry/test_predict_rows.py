"""Batch inference's writer: one schema for every batch, a temporary name until complete."""

import pandas as pd
import pytest

from tasks.core.errors import UserError
from tasks.registry.predict import RowWriter, input_files


@pytest.mark.parametrize("name", ["labels.parquet", "labels.csv"])
def test_batches_with_and_without_errors_land_in_one_file(tmp_path, name):
    out = tmp_path / name
    writer = RowWriter(out)
    writer.write(pd.DataFrame({"path": ["a.png"], "label": ["cat"], "confidence": [0.9], "error": [None]}))
    assert not out.exists()  # only the temporary name while rows are still coming
    writer.write(pd.DataFrame({"path": ["b.png"], "label": [None], "confidence": [None], "error": ["bad"]}))
    writer.close()
    rows = pd.read_parquet(out) if out.suffix == ".parquet" else pd.read_csv(out)
    assert rows["path"].tolist() == ["a.png", "b.png"] and rows["error"].isna().tolist() == [True, False]
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_folders_are_walked_without_hidden_files_and_missing_inputs_refused(tmp_path):
    (tmp_path / "a" / ".git").mkdir(parents=True)
    for name in ("a/x.png", "a/.DS_Store", "a/.git/y.png", "z.jpg"):
        (tmp_path / name).write_bytes(b"x")
    found = input_files([tmp_path / "a", tmp_path / "z.jpg"])
    assert [str(p.relative_to(tmp_path)) for p in found] == ["a/x.png", "z.jpg"]
    with pytest.raises(UserError, match=r"missing\.png: no such file or folder"):
        input_files([tmp_path / "missing.png"])
    with pytest.raises(UserError, match=r"write \.parquet or \.csv"):
        RowWriter(tmp_path / "labels.json")
