"""A version carries a transfer set in its lineage only when its model learnt from it."""

from __future__ import annotations

from flows.stages.finetune import used_transfer_set
from tasks.core.config import FinetuneParams
from tasks.models.finetune import FinetuneResult


def searched(ensemble: dict | None) -> FinetuneResult:
    return FinetuneResult(model=None, search={"ensemble": ensemble})


def test_the_transfer_set_is_recorded_only_where_the_kept_model_learnt_from_it():
    assert used_transfer_set(
        FinetuneParams(distill_from="transferops-classifier/3"), FinetuneResult(model=None)
    )
    assert not used_transfer_set(FinetuneParams(), FinetuneResult(model=None))
    # the search: only a distilled student that replaced its ensemble learnt from it
    assert not used_transfer_set(FinetuneParams(), searched(None))
    assert not used_transfer_set(FinetuneParams(), searched({"members": ["a", "b"]}))
    assert not used_transfer_set(
        FinetuneParams(), searched({"members": ["a", "b"], "distilled": {"kept": False}})
    )
    assert used_transfer_set(FinetuneParams(), searched({"members": ["a", "b"], "distilled": {"kept": True}}))
