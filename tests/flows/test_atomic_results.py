"""A stage's result file appears whole or not at all: a write that fails part-way (here the
process's file-size limit, as a full disk would) leaves neither the file nor a partial one."""

from __future__ import annotations

import subprocess
import sys

from prefect.filesystems import LocalFileSystem

from flows.stages.caching import write_whole  # noqa: F401 - also makes Prefect's writes whole

WRITE = """
import resource, signal, sys
import flows.stages.caching
from prefect.filesystems import LocalFileSystem
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write() fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    LocalFileSystem(basepath=sys.argv[1]).write_path("result-key", b"x" * 100_000, _sync=True)
except OSError as exc:
    print("failed:", exc.strerror)
"""


def test_a_result_write_that_fails_part_way_leaves_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-c", WRITE, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("failed: File too large"), done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_result_write_lands_whole_under_its_key(tmp_path):
    path = LocalFileSystem(basepath=str(tmp_path)).write_path("result-key", b"x" * 100_000)
    assert path == str(tmp_path / "result-key")
    assert (tmp_path / "result-key").read_bytes() == b"x" * 100_000
    assert [p.name for p in tmp_path.iterdir()] == ["result-key"]
