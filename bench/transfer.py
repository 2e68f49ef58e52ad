"""Benchmark: how transferops fine-tunes against the Keras guide's recipe and training from
scratch, side by side on the demo data, at 10, 20 and all labels per class, over seeds, each
arm under the same time budget (`--budget` seconds: no trial starts and no training goes on
after it).

    make bench            # or: .venv/bin/python -m bench.transfer [--seeds 3] [--budget 600]

(a) search: the strategy search (tasks/models/strategy.py, params.yaml `search`): Hyperband over
    head / top-n / full from a head trained on frozen features, then the scratch baseline (d)
    on its own budget, the best on val (or the ensemble of the best 3).
(b) fixed: transferops' fixed recipe: head on cached frozen features, then the top
    `unfreeze_layers` of the backbone at finetune_learning_rate, BatchNorm in inference mode.
(c) Keras guide "Transfer learning & fine-tuning": frozen base + new head trained through the
    base, then the whole base unfrozen at 1e-5, BatchNorm in inference mode.
(d) scratch: the same architecture, randomly initialised, every layer trained on augmented
    batches (strategy.train_scratch, params.yaml `search.scratch_*`: up to 200 epochs, stopped
    20 epochs after val_accuracy last improved, the best epoch kept): scratch trained
    properly, not cut short. The search's scratch baseline is this same training.
Early stopping on validation loss elsewhere uses params' patience (`--epochs` per phase).

Then LogME against fine-tuning at every label count, over 4 candidate backbones of different
quality (pretrained 6 epochs, 1 epoch, on 2 of the 5 source classes, untrained): weighted
Kendall tau of the LogME scores (on that training split) with the fine-tuned test accuracy
(fixed recipe), per seed; which candidate the selection picks, with `select.top_k` 1 (LogME's
first) and 2 (of LogME's first two, the one with the better fine-tuned val accuracy), against
the best on test; and the cost of scoring against fine-tuning every candidate. Data:
`transferops data fashion-mnist` output (written here if missing); the backbones are
pretrained here on data/source. Writes bench/results/transfer.{json,md}.
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
from scipy.stats import weightedtau  # noqa: E402

from tasks.core.config import Params, Paths, load_params  # noqa: E402
from tasks.data import fashion_mnist  # noqa: E402
from tasks.data.datasets import SplitData, load_folder  # noqa: E402
from tasks.data.stream import Pixels  # noqa: E402
from tasks.evaluation import evaluate  # noqa: E402
from tasks.models import strategy  # noqa: E402
from tasks.models.backbones import build_backbone, extract_features  # noqa: E402
from tasks.models.finetune import finetune  # noqa: E402
from tasks.models.pretraining import pretrain  # noqa: E402
from tasks.selection.logme import logme  # noqa: E402

ARMS = ("search", "fixed", "keras_guide", "scratch")

RESULTS = Path(__file__).parent / "results"


def load(data_dir: Path, params: Params) -> dict[str, Any]:
    """The splits (streamed by the fixed recipe) and their decoded images (the arms that train
    on arrays: the search, scratch, the Keras guide; this data set is small)."""
    data = load_folder(data_dir, params.split, params.validate.max_pixels)
    pixels = Pixels(params.data.image_size, params.data.resize)
    splits = {"train": data.train, "val": data.val, "test": data.test}
    return {
        **splits,
        "x": {k: s.images(pixels) for k, s in splits.items()},
        "pixels": pixels,
        "names": data.class_names,
    }


def subsample(data: dict[str, Any], per_class: int, seed: int = 0) -> dict[str, Any]:
    """At most `per_class` training images of each class (the few-label regime)."""
    split_data = data["train"]
    rng = np.random.default_rng(seed)
    keep = np.sort(
        np.concatenate(
            [rng.permutation(np.flatnonzero(split_data.y == k))[:per_class] for k in np.unique(split_data.y)]
        )
    )
    return data | {"train": split_data.subset(keep), "x": data["x"] | {"train": data["x"]["train"][keep]}}


def copy_of(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def keras_guide(
    backbone: keras.Model, data: dict, epochs: int, patience: int, batch: int, seed: int, deadline: float
):
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
        "x": data["x"]["train"].astype("float32"),
        "y": data["train"].y,
        "validation_data": (data["x"]["val"].astype("float32"), data["val"].y),
        "epochs": epochs,
        "batch_size": batch,
        "verbose": 0,
    }
    stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
    model.compile(keras.optimizers.Adam(), "sparse_categorical_crossentropy")
    h1 = model.fit(**fit_args, callbacks=[stop, strategy.Deadline(deadline)])
    base.trainable = True
    model.compile(keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy")
    stop = keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True)
    h2 = model.fit(**fit_args, callbacks=[stop, strategy.Deadline(deadline)])
    return model, len(h1.history["loss"]) + len(h2.history["loss"])


def run_arm(
    name: str, backbone: keras.Model, data: dict, params: Params, options: argparse.Namespace, seed: int
):
    epochs = options.epochs
    ft = params.finetune.model_copy(update={"head_epochs": epochs, "finetune_epochs": epochs, "seed": seed})
    train, val = (data["x"]["train"], data["train"].y), (data["x"]["val"], data["val"].y)
    start = time.perf_counter()
    deadline = time.monotonic() + options.budget
    chosen = ""
    if name == "search":
        found = strategy.search(
            {"backbone": copy_of(backbone)},
            train,
            val,
            len(data["names"]),
            params.search,
            ft,
            params.augment,
            deadline=deadline,
        )
        model, ran = found.model, sum(t.epochs for t in found.trials)
        chosen = found.best.words() + (
            f" + ensemble of {len(found.ensemble['members'])}" if found.ensemble else ""
        )
    elif name == "fixed":  # 30 epochs at most: seconds, far inside any budget
        result = finetune(
            copy_of(backbone), data["train"], data["val"], len(data["names"]), ft, data["pixels"]
        )
        model, ran = result.model, sum(len(h["loss"]) for h in result.history.values())
    elif name == "keras_guide":
        model, ran = keras_guide(backbone, data, epochs, ft.patience, ft.batch_size, seed, deadline)
    else:
        record, model = strategy.train_scratch(
            backbone, train, val, len(data["names"]), params.search, ft, params.augment, deadline=deadline
        )
        ran = record.epochs
    seconds = time.perf_counter() - start
    probabilities = np.asarray(model.predict(data["x"]["test"].astype("float32"), verbose=0))
    val_probabilities = np.asarray(model.predict(data["x"]["val"].astype("float32"), verbose=0))
    return {
        "seconds": seconds,
        "hit_budget": time.monotonic() > deadline,
        "epochs_run": ran,
        "chosen": chosen,
        "val_accuracy": float((val_probabilities.argmax(axis=1) == data["val"].y).mean()),
        **evaluate.metrics(data["test"].y, probabilities),
    }


def candidate_backbones(source: SplitData, params: Params) -> dict[str, keras.Model]:
    """Four backbones of different quality for LogME to rank."""
    size, pre = params.data.image_size, params.pretrain
    two = np.isin(source.train.y, [0, 1]), np.isin(source.val.y, [0, 1]), np.isin(source.test.y, [0, 1])
    train, val, test = (
        s.subset(np.flatnonzero(m)) for s, m in zip((source.train, source.val, source.test), two, strict=True)
    )
    narrow = SplitData(source.class_names[:2], train, val, test, source.table)
    return {
        f"pretrained-{pre.epochs}ep": pretrain(source, pre, size).backbone,
        "pretrained-1ep": pretrain(source, pre.model_copy(update={"epochs": 1}), size).backbone,
        "pretrained-2-classes": pretrain(narrow, pre, size).backbone,
        "untrained": build_backbone(size, pre.width, seed=pre.seed),
    }


def logme_tau(
    candidates: dict[str, keras.Model], data: dict, params: Params, options: argparse.Namespace
) -> dict[str, Any]:
    """LogME score of each candidate (frozen features of this training split) against its
    fine-tuned test accuracy (fixed recipe), per seed: weighted Kendall tau (scipy), and which
    candidate the selection picks with top_k 1 and 2 against the best on test."""
    scores, score_seconds = {}, 0.0
    for name, backbone in candidates.items():
        start = time.perf_counter()
        x = data["x"]["train"]
        features = extract_features(backbone, (x[i : i + 256] for i in range(0, len(x), 256)), len(x), name)
        scores[name] = float(logme(features, data["train"].y))
        score_seconds += time.perf_counter() - start
    ranked = sorted(scores, key=scores.__getitem__, reverse=True)
    per_seed, finetune_seconds = [], 0.0
    for seed in range(options.seeds):
        accuracy, val_accuracy = {}, {}
        for name, backbone in candidates.items():
            result = run_arm("fixed", backbone, data, params, options, seed)
            accuracy[name], val_accuracy[name] = result["accuracy"], result["val_accuracy"]
            finetune_seconds += result["seconds"]
        tau = weightedtau([scores[n] for n in ranked], [accuracy[n] for n in ranked]).statistic
        best = max(accuracy.values())
        picks = {1: ranked[0], 2: max(ranked[:2], key=val_accuracy.__getitem__)}
        per_seed.append(
            {
                "seed": seed,
                "accuracy": accuracy,
                "val_accuracy": val_accuracy,
                "tau": float(tau),
                "picked": {str(k): v for k, v in picks.items()},
                "picked_best": {str(k): accuracy[v] == best for k, v in picks.items()},
                "regret": {str(k): best - accuracy[v] for k, v in picks.items()},
            }
        )
        print(f"LogME n_train {len(data['train'])} seed {seed}: tau {tau:.3f}, picks {picks}", flush=True)
    return {
        "n_train": len(data["train"]),
        "scores": scores,
        "per_seed": per_seed,
        "tau_mean": statistics.mean(r["tau"] for r in per_seed),
        "picked_best": {k: sum(r["picked_best"][k] for r in per_seed) for k in ("1", "2")},
        "regret_mean": {k: statistics.mean(r["regret"][k] for r in per_seed) for k in ("1", "2")},
        "score_seconds": score_seconds,
        "finetune_all_seconds": finetune_seconds / options.seeds,
    }


def verdict(rows: dict[str, dict[str, Any]], n_train: int) -> str:
    """Where the search stands against the best other arm at one label count."""
    search = rows[f"{n_train}/search"]
    others = [r for r in rows.values() if r["n_train"] == n_train and r["arm"] != "search"]
    rival = max(others, key=lambda r: r["accuracy_mean"])
    gap = search["accuracy_mean"] - rival["accuracy_mean"]
    if abs(gap) < 1e-9:
        words = "ties"
    elif gap > 0:
        words = "leads"
    elif -gap <= max(search["accuracy_std"], rival["accuracy_std"]):
        words = "within one std of"
    else:
        words = "behind"
    return f"{n_train} images: search {words} the best other arm ({rival['arm']}), {gap:+.4f}"


def markdown(report: dict[str, Any]) -> str:
    rows = report["summary"]
    lines = [
        f"# Transfer benchmark ({report['date']})",
        "",
        f"`{report['command']}` on {report['machine']}. Test split: {report['n_test']} images, "
        f"{len(report['classes'])} classes; seeds {report['seeds']}; every arm under the same "
        f"{report['budget']:.0f} s budget; {report['epochs_per_phase']} epochs per phase (scratch: up to "
        f"{report['scratch_epochs']}, patience {report['scratch_patience']}); mean ± std over seeds.",
        "",
        "| train images | arm | test accuracy | macro-F1 | wall time (s) | time vs fixed "
        "| epochs run | hit budget | chosen (search) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        base = rows[f"{r['n_train']}/fixed"]
        lines.append(
            f"| {r['n_train']} | {r['arm']} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} "
            f"| {r['macro_f1_mean']:.4f} | {r['seconds_mean']:.1f} "
            f"| {r['seconds_mean'] / base['seconds_mean']:.2f}x | {r['epochs_run_mean']:.1f} "
            f"| {r['hit_budget']}/{report['seeds']} | {'; '.join(r['chosen']) if r['chosen'] else ''} |"
        )
    lines += ["", *(f"- {verdict(rows, n)}" for n in dict.fromkeys(r["n_train"] for r in rows.values()))]
    for tau in report.get("logme", []):
        seeds = tau["per_seed"]
        lines += [
            "",
            f"LogME against fine-tuning ({tau['n_train']} training images, fixed recipe):",
            "",
            "| backbone | LogME | " + " | ".join(f"test accuracy, seed {r['seed']}" for r in seeds) + " |",
            "|---|---|" + "---|" * len(seeds),
        ]
        for name, score in tau["scores"].items():
            accs = " | ".join(f"{r['accuracy'][name]:.4f}" for r in seeds)
            lines.append(f"| {name} | {score:.4f} | {accs} |")
        lines += [
            "",
            f"Weighted Kendall tau {tau['tau_mean']:.3f} (per seed: "
            + ", ".join(f"{r['tau']:.3f}" for r in seeds)
            + f"). The selection picked the best fine-tuned backbone in {tau['picked_best']['1']} of "
            f"{len(seeds)} seeds with top_k 1 (mean regret {tau['regret_mean']['1']:.4f}), in "
            f"{tau['picked_best']['2']} of {len(seeds)} with top_k 2 (regret {tau['regret_mean']['2']:.4f}). "
            f"Scoring all {len(tau['scores'])}: {tau['score_seconds']:.1f} s; fine-tuning all: "
            f"{tau['finetune_all_seconds']:.1f} s "
            f"({tau['finetune_all_seconds'] / tau['score_seconds']:.0f}x).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15, help="epochs per phase")
    parser.add_argument("--budget", type=float, default=600, help="seconds every arm may train at most")
    parser.add_argument(
        "--per-class",
        type=int,
        nargs="+",
        default=[10, 20, 0],
        help="training images per class to keep; 0 = the whole training split",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-logme", action="store_true", help="skip the LogME rank correlation")
    args = parser.parse_args(argv)

    paths = Paths.from_root(Path.cwd())
    params = load_params(paths.root / "params.yaml")
    raw, source = paths.resolve(params.data.raw), paths.resolve(params.data.source)
    if not raw.is_dir() or not source.is_dir():
        fashion_mnist.write_demo_data(source, raw, params.fashion_mnist)

    source_data = load_folder(source, params.split, params.validate.max_pixels)
    start = time.perf_counter()
    backbone = pretrain(source_data, params.pretrain, params.data.image_size).backbone
    pretrain_seconds = time.perf_counter() - start
    full = load(raw, params)
    candidates = {} if args.no_logme else candidate_backbones(source_data, params)

    runs: list[dict[str, Any]] = []
    taus: list[dict[str, Any]] = []
    for per_class in args.per_class:
        data = subsample(full, per_class) if per_class else full
        for seed in range(args.seeds):
            for arm in ARMS:  # interleaved, so machine noise hits every arm alike
                result = run_arm(arm, backbone, data, params, args, seed)
                runs.append({"arm": arm, "seed": seed, "n_train": len(data["train"]), **result})
                print(
                    f"n_train {len(data['train'])} seed {seed} {arm:<12} "
                    f"acc {result['accuracy']:.4f} {result['seconds']:.1f}s {result['chosen']}",
                    flush=True,
                )
        if candidates:
            taus.append(logme_tau(candidates, data, params, args))

    summary: dict[str, dict[str, Any]] = {}
    for n_train in dict.fromkeys(r["n_train"] for r in runs):
        for arm in ARMS:
            mine = [r for r in runs if r["arm"] == arm and r["n_train"] == n_train]
            summary[f"{n_train}/{arm}"] = (
                {"n_train": n_train, "arm": arm}
                | {
                    f"{k}_{agg}": fn([r[k] for r in mine])
                    for k in ("accuracy", "macro_f1", "seconds", "epochs_run")
                    for agg, fn in (("mean", statistics.mean), ("std", statistics.pstdev))
                }
                | {"chosen": [r["chosen"] for r in mine if r["chosen"]]}
                | {"hit_budget": sum(r["hit_budget"] for r in mine)}
            )
    report = {
        **results_io.header("bench.transfer", argv, f"Keras {keras.__version__}"),
        "seeds": args.seeds,
        "epochs_per_phase": args.epochs,
        "budget": args.budget,
        "scratch_epochs": params.search.scratch_epochs,
        "scratch_patience": params.search.scratch_patience,
        "classes": full["names"],
        "n_test": len(full["test"]),
        "pretrain_seconds": pretrain_seconds,
        "summary": summary,
        "runs": runs,
        "n_train_all": len(full["train"]),
        "logme": taus,
    }
    return results_io.write(args.out, "transfer", report, markdown(report))


if __name__ == "__main__":
    main()
