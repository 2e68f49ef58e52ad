"""A folder of text class folders through ingest, Great Expectations and the split: each bad
file named with its reason, long texts counted, near-duplicates kept in one split."""

from tasks.core.config import SplitParams, ValidateParams
from tasks.data.datasets import prepare_splits
from tasks.data.validate import validate_folder
from tasks.modality.tokens import Texts


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def test_each_bad_text_is_named_and_long_ones_are_counted(tmp_path):
    root = tmp_path / "texts"
    for label in ("sport", "money"):
        for i in range(6):
            write(root / label / f"{i}.txt", f"A {label} story number {i} about {label}.")
    write(root / "sport" / "long.txt", "goal " * 300)
    write(root / "sport" / "latin1.txt", b"caf\xe9 au lait")
    write(root / "sport" / "empty.txt", b"  \n ")
    write(root / "money" / "binary.txt", b"PK\x03\x04\x00\x00zip")
    write(root / "money" / "twice.txt", "A sport story number 0 about sport.")  # also filed under sport
    data = validate_folder(root, ValidateParams(), tmp_path / "docs", Texts(window=64))
    problems = "\n".join(data.report.problems)
    assert not data.report.success
    assert "sport/latin1.txt: not UTF-8 at byte 3" in problems
    assert "sport/empty.txt: empty text (nothing but whitespace)" in problems
    assert "money/binary.txt: control character U+0003 at character 2" in problems
    assert "money/twice.txt: the same text (sha256) is also filed under another label" in problems
    assert len(data.report.problems) == 5  # the two copies of the conflicting text, and no other
    assert data.report.statistics["texts_over_window"] == 1.0  # long.txt: 302 tokens > 64
    assert data.report.statistics["texts_over_windows"] == 1.0  # and > 4 windows of 62 tokens
    assert (data.report.docs_dir / "index.html").is_file()


def test_near_duplicates_land_in_one_split(tmp_path):
    root = tmp_path / "texts"
    for label in ("a", "b"):
        for i in range(30):
            write(root / label / f"{i}.txt", f"Text {i} of class {label}.")
            write(root / label / f"{i}-copy.txt", f"  TEXT {i}\nof CLASS {label}.  ")  # same fold
    data = validate_folder(root, ValidateParams(), tmp_path / "docs", Texts())
    assert data.report.success, data.report.problems
    table = prepare_splits(data.manifest, root, SplitParams()).table.set_index("path")
    for label in ("a", "b"):
        for i in range(30):
            assert table.loc[f"{label}/{i}.txt", "split"] == table.loc[f"{label}/{i}-copy.txt", "split"]
    assert set(table["split"]) == {"train", "val", "test"}
