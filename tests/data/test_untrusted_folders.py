"""Image folders are untrusted: hostile names, links out of the folder, pipes, bad bytes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.config import SplitParams, ValidateParams
from tasks.data.datasets import load_folder
from tasks.data import ingest
from tasks.core.files import UnsafePathError, read_inside
from tasks.data.ingest import scan
from tasks.data.validate import validate_folder
from tasks.modality.pixels import Images

HOSTILE_FILE = "<svg onload=alert(1)>.png"
HOSTILE_CLASS = '"><img src=x onerror=alert(2)>'


@pytest.fixture
def hostile_folder(image_folder: Path, tmp_path: Path) -> Path:
    """The three-class folder with hostile names (valid images) and entries that must not be read."""
    shutil.copy(image_folder / "ant" / "ant_0_000.png", image_folder / "ant" / HOSTILE_FILE)
    os.rename(image_folder / "bee", image_folder / HOSTILE_CLASS)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes((image_folder / "ant" / "ant_0_001.png").read_bytes())
    os.symlink(outside / "secret.png", image_folder / "ant" / "link-out.png")
    os.symlink("/etc/passwd", image_folder / "cat" / "passwd.png")
    os.symlink(outside, image_folder / "linked-class")
    os.symlink(image_folder / "ant" / "ant_0_002.png", image_folder / "cat" / "link-in.png")
    os.symlink(image_folder / "nowhere.png", image_folder / "cat" / "dangling.png")
    os.mkfifo(image_folder / "cat" / "pipe.png")
    (image_folder / "cat" / "esc\x1b[2Jclear.png").write_bytes(b"not an image")
    with open(os.fsencode(image_folder / "cat") + b"/caf\xe9.png", "wb") as f:
        f.write(b"latin-1 name")
    return image_folder


def test_nothing_outside_the_folder_is_read_and_each_entry_is_named(hostile_folder, tmp_path):
    data = validate_folder(hostile_folder, ValidateParams(), tmp_path / "docs", Images())
    manifest = data.manifest.set_index("path")
    for rel in ("ant/link-out.png", "cat/passwd.png", "linked-class", "cat/dangling.png", "cat/pipe.png"):
        assert pd.isna(manifest.loc[rel, "sha256"]), rel  # never read, never hashed
    problems = "\n".join(data.report.problems)
    assert "ant/link-out.png: symbolic link to outside the data folder: not read" in problems
    assert "cat/passwd.png: symbolic link to outside the data folder: not read" in problems
    assert "linked-class: symbolic link to outside the data folder: not read" in problems
    assert "cat/dangling.png: symbolic link that leads nowhere (broken or a loop): not read" in problems
    assert "cat/pipe.png: a FIFO (named pipe): not read" in problems
    assert "cat/caf\\xe9.png: file name is not valid UTF-8: rename it" in problems
    assert "cat/esc\\x1b[2Jclear.png: not an image PIL can identify" in problems  # escaped, not sent
    assert "\x1b" not in data.report.message(hostile_folder)
    # a link to an image inside the folder is an ordinary (duplicate) image
    assert manifest.loc["cat/link-in.png", "decodable"]
    assert manifest.loc["cat/link-in.png", "sha256"] == manifest.loc["ant/ant_0_002.png", "sha256"]
    # hostile names of real images are fine as data
    assert manifest.loc[f"ant/{HOSTILE_FILE}", "decodable"]
    assert manifest.loc[f"{HOSTILE_CLASS}/bee_0_000.png", "label"] == HOSTILE_CLASS


def test_data_docs_never_carry_a_raw_name(hostile_folder, tmp_path):
    data = validate_folder(hostile_folder, ValidateParams(), tmp_path / "docs", Images())
    assert not data.report.success
    pages = [p for p in (tmp_path / "docs").rglob("*") if p.is_file()]
    assert any(p.suffix == ".html" for p in pages)
    for page in pages:  # (the inlined jQuery and Bootstrap hold "onload" and "alert(" of their own)
        text = page.read_text(errors="replace")
        for raw in ("<svg onload=alert(1)>", "<img src=x onerror=alert(2)>", "alert(1)", "alert(2)"):
            assert raw not in text, (page, raw)


def test_reading_refuses_what_resolves_outside_the_root(hostile_folder):
    assert read_inside(hostile_folder, "cat/link-in.png")[:4] == b"\x89PNG"
    with pytest.raises(UnsafePathError, match="outside the data folder"):
        read_inside(hostile_folder, "ant/link-out.png")
    with pytest.raises(UnsafePathError, match="outside the data folder"):
        read_inside(hostile_folder, "../outside/secret.png")
    with pytest.raises(OSError, match="not a regular file"):
        read_inside(hostile_folder, "cat/pipe.png")


def test_only_images_inside_the_folder_are_trained_on(image_folder, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(image_folder / "ant" / "ant_0_000.png", outside / "x.png")
    os.symlink(outside / "x.png", image_folder / "ant" / "x.png")
    data = load_folder(image_folder, SplitParams(), Images(max_pixels=40_000_000))
    used = data.train.paths + data.val.paths + data.test.paths
    assert len(used) == 36 and not any(p.endswith("ant/x.png") for p in used)


def test_a_hidden_pipe_is_skipped_like_any_hidden_file(image_folder):
    os.mkfifo(image_folder / ".pipe")
    row = scan(image_folder, Images()).set_index("path").loc[".pipe"]
    assert row["ignored"] and pd.isna(row["error"])


def test_hidden_and_system_folders_are_skipped_and_recorded_not_classes(image_folder, tmp_path):
    for folder in (".ipynb_checkpoints", "ant/.git/objects", "__MACOSX/ant"):
        (image_folder / folder).mkdir(parents=True)
        shutil.copy(image_folder / "ant" / "ant_0_000.png", image_folder / folder / "copy.png")
    manifest = scan(image_folder, Images())
    ignored = manifest.loc[manifest["ignored"], "path"].tolist()
    assert {".ipynb_checkpoints/", "ant/.git/", "__MACOSX/"} <= set(ignored)
    assert not manifest["path"].str.endswith("copy.png").any()  # nothing inside them is read
    data = validate_folder(image_folder, ValidateParams(), tmp_path / "docs", Images())
    assert data.report.success and sorted(ingest.usable(data.manifest)["label"].unique()) == ["ant", "bee", "cat"]
    assert {".ipynb_checkpoints/", "ant/.git/", "__MACOSX/"} <= set(data.report.ignored)
