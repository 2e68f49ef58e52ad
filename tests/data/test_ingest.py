import numpy as np
from PIL import Image

from tasks.data.ingest import class_folders, scan, usable
from tasks.modality.pixels import Images


def test_manifest_has_one_row_per_file_with_hashes(image_folder):
    manifest = scan(image_folder, Images())
    assert len(manifest) == 36
    assert manifest["decodable"].all()
    assert set(manifest["label"]) == {"ant", "bee", "cat"}
    row = manifest.iloc[0]
    assert len(row["sha256"]) == 64 and len(row["md5"]) == 32
    assert (row["format"], row["mode"], row["width"], row["height"]) == ("PNG", "RGB", 24, 24)


def test_bad_files_are_recorded_with_a_reason(image_folder):
    (image_folder / "ant" / "empty.png").write_bytes(b"")
    (image_folder / "ant" / "notes.png").write_text("not an image")
    good = (image_folder / "ant").iterdir().__next__().read_bytes()
    (image_folder / "bee" / "truncated.png").write_bytes(good[: len(good) // 2])
    (image_folder / ".DS_Store").write_bytes(b"\0\0")
    (image_folder / "stray.png").write_bytes(good)
    manifest = scan(image_folder, Images()).set_index("path")

    assert manifest.loc["ant/empty.png", "error"] == "empty file (0 bytes)"
    assert manifest.loc["ant/notes.png", "error"] == "not an image PIL can identify"
    assert manifest.loc["bee/truncated.png", "error"].startswith("cannot decode")
    assert "class folder" in manifest.loc["stray.png", "error"]
    assert manifest.loc[".DS_Store", "ignored"]
    assert not manifest.loc[["ant/empty.png", "bee/truncated.png"], "decodable"].any()
    assert len(usable(manifest.reset_index())) == 36


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    (tmp_path / "big").mkdir()
    Image.fromarray(np.zeros((300, 300), dtype=np.uint8)).save(tmp_path / "big" / "a.png")
    row = scan(tmp_path, Images(max_pixels=10_000)).iloc[0]
    assert not row["decodable"]
    assert "exceeds images.max_pixels" in row["error"]


def test_class_folders_include_empty_ones(image_folder):
    (image_folder / "dog").mkdir()
    assert class_folders(image_folder) == ["ant", "bee", "cat", "dog"]
