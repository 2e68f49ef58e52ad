"""A cached stage refuses an input it cannot key: Prefect would only log the error and run
the stage uncached every time, a lost cache nobody sees."""

from __future__ import annotations

import pytest

from flows.stages.caching import StageKey, fingerprint


class Opaque:
    """An object with nothing that says what of it decides a result."""


def test_an_input_without_a_fingerprint_is_refused_before_the_stage_runs():
    policy = StageKey(module="flows.stages.validate", folders=("data_dir",))
    policy.check_inputs({"run": Opaque(), "data_dir": "/any/folder", "seed": 3, "names": ["a", "b"]})
    with pytest.raises(TypeError, match="Opaque has no fingerprint"):
        policy.check_inputs({"seed": 3, "model": Opaque()})
    with pytest.raises(TypeError, match="Opaque has no fingerprint"):
        policy.check_inputs({"nested": {"deep": [Opaque()]}})


def test_fingerprints_are_values_and_own_keys():
    class Keyed:
        fingerprint = "abc123"

    assert fingerprint({"k": (1, "x", None), "m": Keyed()}) == {"k": [1, "x", None], "m": "abc123"}
