"""`reproduce` on another CPU kind says so, instead of a bare mismatch; every version records its
CPU kind (model and the instruction sets oneDNN picks kernels by)."""

from __future__ import annotations

from tasks.core.config import Params
from tasks.data import lineage
from tasks.registry.reproduce import Recorded, compare
from tasks.reporting.summary import format_reproduction


def record(cpu: str | None) -> Recorded:
    tags = {} if cpu is None else {"cpu": cpu}
    return Recorded("m", "3", Params(), tags, {"accuracy": 0.91})


def test_the_environment_names_the_cpu_kind():
    kind = lineage.environment()["cpu"]
    assert kind == lineage.cpu_kind() and kind.endswith("]") and " [" in kind


def test_a_mismatch_on_another_cpu_kind_is_named_as_such():
    other = compare(record("Some Other CPU [avx avx2 avx512f]"), {"accuracy": 0.90}, 1e-6, [])
    assert other.cpu == ("Some Other CPU [avx avx2 avx512f]", lineage.cpu_kind()) and not other.matches
    verdict = format_reproduction(other)[-1]
    assert verdict.startswith(
        "verdict       different CPU kind (recorded on Some Other CPU [avx avx2 avx512f], run on"
    )

    same = compare(record(lineage.cpu_kind()), {"accuracy": 0.90}, 1e-6, [])
    assert same.cpu is None and format_reproduction(same)[-1].startswith("verdict       DIFFERENT")
    unknown = compare(record(None), {"accuracy": 0.91}, 1e-6, [])  # a version from before the tag
    assert unknown.cpu is None and format_reproduction(unknown)[-1].startswith("verdict       match")
