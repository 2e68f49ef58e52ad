"""`transferops data bbc-news`: the package's articles as UTF-8 class folders of .txt files."""

import hashlib
from collections import Counter

import pytest

from tasks.data.bbc_news import write_bbc_news
from tasks.modality.texts import text_of


def test_every_article_is_written_as_a_checked_utf8_text_and_again_the_same(tmp_path):
    target = tmp_path / "data" / "bbc-news"
    counts = write_bbc_news(target)
    assert list(counts) == ["business", "entertainment", "politics", "sports", "tech"]
    assert sum(counts.values()) == 2225
    files = sorted(target.rglob("*.txt"))
    digests = Counter(hashlib.sha256(f.read_bytes()).hexdigest() for f in files)
    assert all(text_of(f.read_bytes()) for f in files)  # every one passes the text checks
    assert "£15.8" in (target / "sports" / "199.txt").read_text(encoding="utf-8")  # was Windows-1252
    assert sum(n - 1 for n in digests.values() if n > 1) >= 90  # the package's exact duplicates
    before = {f: f.read_bytes() for f in files}
    write_bbc_news(target)  # the same bytes again: replaced without --force
    assert {f: f.read_bytes() for f in sorted(target.rglob("*.txt"))} == before
    (target / "tech" / "mine.txt").write_text("not the demo's")
    with pytest.raises(FileExistsError, match="--force"):
        write_bbc_news(target)
    write_bbc_news(target, force=True)
    assert len(list(tmp_path.joinpath("data").glob("bbc-news.old-*"))) == 1


def test_the_data_command_writes_them_where_asked(tmp_path, capsys):
    from flows.cli import main

    assert main(["--root", str(tmp_path), "data", "bbc-news", "--no-dvc", "--to", "texts"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"wrote 2225 files to {tmp_path / 'texts'}")
    assert len(list((tmp_path / "texts").rglob("*.txt"))) == 2225
