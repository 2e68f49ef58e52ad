"""Benchmark: transferops' finetune stage against the Keras guide's recipe and training from
scratch, side by side on the demo data, with the same backbone, data and epoch budget.

    make bench            # or: .venv/bin/python -m bench.transfer [--seeds 3] [--epochs 10]

(a) transferops: head on cached frozen features, then the top `unfreeze_layers` of the
    backbone at finetune_learning_rate (params.yaml), BatchNorm in inference mode.
(b) Keras guide "Transfer learning & fine-tuning": frozen base + new head trained through the
    base, then the whole base unfrozen at 1e-5, BatchNorm in inference mode.
(c) from scratch: the same architecture, randomly initialised, every layer trained.
Each arm gets `epochs` epochs per phase (scratch: twice that, in one phase), early stopping
on validation loss with the same patience. Data: `transferops data fashion-mnist` output
(written here if missing); the backbone is pretrained here on data/source, once per run.
Writes bench/results/transfer.json and transfer.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench import results_io
from flows.runtime import apply_env_defaults

apply_env_defaults()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tasks import evaluate, fashion_mnist  # noqa: E402
from tasks.backbones import build_backbone  # noqa: E402
from tasks.config import Params, Paths, load_params  # noqa: E402
from tasks.datasets import Split, load_folder  # noqa: E402
from tasks.finetune import finetune, train_from_scratch  # noqa: E402
from tasks.pretraining import pretrain  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def load(data_dir: Path, params: Params) -> dict[str, Any]:
    data = load_folder(data_dir, params.split, params.data.image_size, params.validate.max_pixels)
    return {"train": data.train, "val": data.val, "test": data.test, "names": data.class_names}


def subsample(split_data: Split, per_class: int, seed: int = 0) -> Split:
    """At most `per_class` training images of each class (the few-label regime)."""
    rng = np.random.default_rng(seed)
    keep = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(split_data.y == k))[:per_class] for k in np.unique(split_data.y)]
        )
    )
    return Split(split_data.x[keep], split_data.y[keep], [split_data.paths[i] for i in keep])


def copy_of(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def keras_guide(backbone: keras.Model, data: dict, epochs: int, patience: int, batch: int, seed: int):
    """The recipe of keras.io/guides/transfer_learning, on our backbone."""
    keras.utils.set_random_seed(seed)
    base = copy_of(backbone)
    base.trainable = False
    inputs = keras.Input(base.input_shape[1:])
    x = base(inputs, training=False)  # BatchNorm stays in inference mode, also when unfrozen
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(len(data["names"]), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    fit_args = {
        "x": data["train"].x.astype("float32"),
        "y": data["train"].y,
        "validation_data": (data["val"].x.astype("float32"), data["val"].y),
        "epochs": epochs,
        "batch_size": batch,
        "verbose": 0,
    }
    stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
    model.compile(keras.optimizers.Adam(), "sparse_categorical_crossentropy")
    h1 = model.fit(**fit_args, callbacks=[stop])
    base.trainable = True
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy")
    stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
    h2 = model.fit(**fit_args, callbacks=[stop])
    return model, len(h1.history["loss"]) + len(h2.history["loss"])


def run_arm(name: str, backbone: keras.Model, data: dict, params: Params, epochs: int, seed: int):
    ft = params.finetune.model_copy(update={"head_epochs": epochs, "finetune_epochs": epochs, "seed": seed})
    train, val = (data["train"].x, data["train"].y), (data["val"].x, data["val"].y)
    start = time.perf_counter()
    if name == "transferops":
        result = finetune(copy_of(backbone), train, val, len(data["names"]), ft)
        model, ran = result.model, sum(len(h["loss"]) for h in result.history.values())
    elif name == "keras_guide":
        model, ran = keras_guide(backbone, data, epochs, ft.patience, ft.batch_size, seed)
    else:
        keras.utils.set_random_seed(seed)
        fresh = build_backbone(params.data.image_size, params.pretrain.width)
        model, history = train_from_scratch(
            fresh,
            train,
            val,
            len(data["names"]),
            2 * epochs,
            params.pretrain.learning_rate,
            ft.batch_size,
            ft.patience,
            ft.dropout,
            seed,
        )
        ran = len(history["loss"])
    seconds = time.perf_counter() - start
    probabilities = np.asarray(model.predict(data["test"].x.astype("float32"), verbose=0))
    return {"seconds": seconds, "epochs_run": ran, **evaluate.metrics(data["test"].y, probabilities)}


def markdown(report: dict[str, Any]) -> str:
    rows = report["summary"]
    lines = [
        f"# Transfer benchmark ({report['date']})",
        "",
        f"`{report['command']}` on {report['machine']}. Test split: {report['n_test']} images, "
        f"{len(report['classes'])} classes; seeds {report['seeds']}; {report['epochs_per_phase']} "
        f"epochs per phase (scratch: {2 * report['epochs_per_phase']}); mean ± std over seeds.",
        "",
        "| train images | arm | test accuracy | macro-F1 | wall time (s) | time vs transferops "
        "| epochs run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        base = rows[f"{r['n_train']}/transferops"]
        lines.append(
            f"| {r['n_train']} | {r['arm']} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} "
            f"| {r['macro_f1_mean']:.4f} | {r['seconds_mean']:.1f} "
            f"| {r['seconds_mean'] / base['seconds_mean']:.2f}x | {r['epochs_run_mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15, help="epochs per phase")
    parser.add_argument(
        "--per-class",
        type=int,
        nargs="+",
        default=[20, 0],
        help="training images per class to keep; 0 = the whole training split",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    paths = Paths.from_root(Path.cwd())
    params = load_params(paths.root / "params.yaml")
    raw, source = paths.resolve(params.data.raw), paths.resolve(params.data.source)
    if not raw.is_dir() or not source.is_dir():
        fashion_mnist.write_demo_data(source, raw, params.fashion_mnist)

    source_data = load_folder(source, params.split, params.data.image_size, params.validate.max_pixels)
    start = time.perf_counter()
    backbone = pretrain(source_data, params.pretrain, params.data.image_size).backbone
    pretrain_seconds = time.perf_counter() - start
    full = load(raw, params)

    arms = ("transferops", "keras_guide", "scratch")
    runs: list[dict[str, Any]] = []
    for per_class in args.per_class:
        data = full | {"train": subsample(full["train"], per_class) if per_class else full["train"]}
        for seed in range(args.seeds):
            for arm in arms:  # interleaved, so machine noise hits every arm alike
                result = run_arm(arm, backbone, data, params, args.epochs, seed)
                runs.append({"arm": arm, "seed": seed, "n_train": len(data["train"]), **result})
                print(
                    f"n_train {len(data['train'])} seed {seed} {arm:<12} "
                    f"acc {result['accuracy']:.4f} {result['seconds']:.1f}s",
                    flush=True,
                )

    summary: dict[str, dict[str, Any]] = {}
    for n_train in dict.fromkeys(r["n_train"] for r in runs):
        for arm in arms:
            mine = [r for r in runs if r["arm"] == arm and r["n_train"] == n_train]
            summary[f"{n_train}/{arm}"] = {"n_train": n_train, "arm": arm} | {
                f"{k}_{agg}": fn([r[k] for r in mine])
                for k in ("accuracy", "macro_f1", "seconds", "epochs_run")
                for agg, fn in (("mean", statistics.mean), ("std", statistics.pstdev))
            }
    report = {
        **results_io.header("bench.transfer", argv, f"Keras {keras.__version__}"),
        "seeds": args.seeds,
        "epochs_per_phase": args.epochs,
        "classes": full["names"],
        "n_test": len(full["test"]),
        "pretrain_seconds": pretrain_seconds,
        "summary": summary,
        "runs": runs,
    }
    return results_io.write(args.out, "transfer", report, markdown(report))


if __name__ == "__main__":
    main()
