import shutil

import pytest

from tasks.core.config import ValidateParams
from tasks.data.ingest import class_folders, scan
from tasks.data.validate import MAX_LISTED, validate_manifest
from tasks.modality.pixels import Images


def run(folder, tmp_path, min_per_class=5, **own):
    checks = ValidateParams(min_per_class=min_per_class)
    images = Images(**own)
    return validate_manifest(scan(folder, images), class_folders(folder), checks, tmp_path / "docs", images)


def test_clean_folder_passes_and_writes_data_docs(image_folder, tmp_path):
    report = run(image_folder, tmp_path)
    assert report.success, report.problems
    assert (tmp_path / "docs" / "index.html").exists()
    assert list((tmp_path / "docs" / "validations").rglob("*.html"))


def test_each_bad_file_is_named_with_its_reason(image_folder, tmp_path):
    (image_folder / "ant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (image_folder / "bee" / "zero.png").write_bytes(b"")
    shutil.copy(image_folder / "ant" / "ant_0_000.png", image_folder / "cat" / "copy.png")
    (image_folder / ".DS_Store").write_bytes(b"x")
    report = run(image_folder, tmp_path)
    assert not report.success
    assert any(p.startswith("ant/broken.png: cannot decode") for p in report.problems)
    assert "bee/zero.png: empty file (0 bytes)" in report.problems
    conflict = "the same image (sha256) is also filed under another label"
    assert f"cat/copy.png: {conflict}" in report.problems
    assert f"ant/ant_0_000.png: {conflict}" in report.problems
    assert report.ignored == [".DS_Store"]  # skipped, not a failure
    message = report.message(image_folder)
    assert str(image_folder) in message and "ant/broken.png" in message


def test_small_and_empty_classes_are_named(image_folder, tmp_path):
    (image_folder / "dog").mkdir()
    for extra in list((image_folder / "cat").iterdir())[3:]:
        extra.unlink()
    report = run(image_folder, tmp_path, min_per_class=5)
    assert "dog/: 0 usable image(s); validate.min_per_class=5" in report.problems
    assert "cat/: 3 usable image(s); validate.min_per_class=5" in report.problems


@pytest.mark.parametrize(
    ("param", "reason"),
    [({"min_side": 30}, "smaller than images.min_side=30"), ({"formats": ("JPEG",)}, "format not in")],
)
def test_size_and_format_rules(image_folder, tmp_path, param, reason):
    report = run(image_folder, tmp_path, **param)
    assert len(report.problems) == 36
    assert all(reason in p for p in report.problems)


def test_one_class_is_not_a_classification_task(tmp_path):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "one", ["only"], per_class=6)
    report = run(folder, tmp_path)
    assert report.problems == ["1 class folder(s) found; at least 2 are needed"]


def test_a_failure_message_lists_twenty_problems_and_counts_the_rest(image_folder, tmp_path):
    for i in range(45):
        (image_folder / "ant" / f"zero{i:02d}.png").write_bytes(b"")
    report = run(image_folder, tmp_path)
    lines = report.message(image_folder).splitlines()
    assert lines[0].endswith(f"{len(report.problems)} problem(s)") and len(report.problems) >= 45
    assert len(lines) == 1 + MAX_LISTED + 1
    assert lines[-1].strip().startswith(f"... and {len(report.problems) - MAX_LISTED} more")
