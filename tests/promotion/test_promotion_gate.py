"""The paired gate end to end, through the real flows: a retrain that differs only in its seed
does not replace the champion without significant evidence; a clearly better one does."""

from __future__ import annotations

import json

import pytest
from conftest import make_image_folder, sets

from flows.cli import main

pytestmark = pytest.mark.slow

PRETRAIN = {"pretrain.epochs": 5, "pretrain.width": 8, "pretrain.batch_size": 16}
UNTRAINED = "[{uri: 'keras:MobileNetV3Small', weights: none, size: 32}]"  # features that barely separate
PRETRAINED = "[{uri: 'registry:transferops-backbone@pretrained'}]"
FIXED = {"search.enabled": "false"}  # the fixed recipe: the gate is the point here
WEAK = {**FIXED, "images.candidates": UNTRAINED, "finetune.head_epochs": 1, "finetune.finetune_epochs": 0}
STRONG = {**PRETRAIN, **FIXED, "images.candidates": PRETRAINED, "finetune.head_epochs": 20}
STRONG["finetune.finetune_epochs"] = 0


def train(root, params: dict) -> dict:
    assert main(["--root", str(root), *sets(params), "train"]) == 0
    return json.loads((root / "reports" / "train.json").read_text())["registered"]


def test_seed_noise_keeps_the_champion_and_a_real_gain_replaces_it(tmp_path, prefect_harness):
    root = tmp_path / "project"
    make_image_folder(root / "data" / "source", ["ant", "bee", "cat"], per_class=60, seed=1)
    make_image_folder(root / "data" / "raw", ["dog", "eel", "fox"], per_class=40, seed=2)
    assert main(["--root", str(root), *sets(PRETRAIN), "pretrain"]) == 0
    assert train(root, WEAK)["reason"] == "no champion yet"

    reseeded = train(root, {**WEAK, "finetune.seed": 1})  # the same recipe, another seed
    assert reseeded["version"] == "2" and not reseeded["promoted"]
    assert reseeded["reason"].startswith("vs champion v1: macro_f1 ")
    assert reseeded["reason"].endswith(": kept")

    better = train(root, STRONG)
    assert better["version"] == "3" and better["promoted"], better["reason"]
    assert better["reason"].startswith("vs champion v1: macro_f1 +")
    assert better["reason"].endswith(": promoted")
