"""Benchmark: embedding texts with MiniLM, our stream against the plain path.

    .venv/bin/python -m bench.texts [--texts 512] [--repeats 3] [--windows 128 256]
                                    [--source articles|spans] [--name texts]

Every arm embeds the first window (128 and 256 tokens) of the same texts with the same Keras MiniLM
(`tasks/models/minilm.py`), batches of 32, in one process. The texts: BBC News articles
(`articles`, most longer than the window), or spans of 1 to 7 of their sentences (`spans`,
lengths that vary as support tickets' or reviews' do; `bench.text_scale.write_spans`). Arms:
- `plain`: what a user gets from the shipped tokenizer as it is configured (every text padded
  to a fixed length, here the window) and `model.predict` over the padded array;
- `ours`: `Tokens.batches` (files read inside the folder and checked, the Rust tokenizer per
  batch, each batch padded to its own longest text) and Keras' compiled `predict_on_batch`
  per batch, as the feature pass runs above `EAGER_IMAGES` (512) examples (below it the model
  is called eagerly: at 128 tokens that ran at 0.7x the plain path on 2026-12-07);
- `by_length`: the same stream run shortest first (`Tokens.order`, bucketing by length, as the
  pipeline's feature pass runs) and put back in the files' order.
Reports texts per second (median of interleaved repeats) and the largest difference between the
arms' embeddings, per window. Writes bench/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import results_io

RESULTS = Path(__file__).parent / "results"
BATCH = 32


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, nargs="+", default=[128, 256], help="tokens a text is cut to")
    parser.add_argument("--source", choices=["articles", "spans"], default="articles")
    parser.add_argument("--name", default="texts", help="results file stem")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from tokenizers import Tokenizer

    from bench.text_scale import write_spans
    from tasks.data.bbc_news import write_bbc_news
    from tasks.modality.tokens import Tokens, tokenizer_path
    from tasks.models.minilm import minilm_backbone

    model = minilm_backbone()
    runs = []
    with tempfile.TemporaryDirectory(prefix="transferops-texts-") as tmp:
        root = Path(tmp) / "bbc"
        write_spans(root, args.texts) if args.source == "spans" else write_bbc_news(root)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.txt"))
        files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[: args.texts]]
        for window in args.windows:
            fixed = Tokenizer.from_file(str(tokenizer_path()))
            fixed.enable_truncation(max_length=window)
            fixed.enable_padding(length=window)  # the shipped file pads to a fixed length (128)

            def plain(fixed: Any = fixed) -> np.ndarray:
                texts = [(root / f).read_text(encoding="utf-8") for f in files]
                encoded = fixed.encode_batch(texts)
                ids = np.array([[e.ids] for e in encoded], dtype="int32")  # one window a text
                return model.predict(ids, batch_size=BATCH, verbose=0)

            def ours(window: int = window, order: Any = None) -> np.ndarray:
                given = files if order is None else [files[i] for i in order]
                stream = Tokens(window, 1).batches(root, given, BATCH)
                batches = stream.as_numpy_iterator()  # compiled, as the feature pass runs above 512 texts
                out = np.concatenate([np.asarray(model.predict_on_batch(batch)) for batch in batches])
                if order is not None:  # back to the files' order, as the feature pass stores them
                    out[order] = out.copy()
                return out

            def by_length(window: int = window) -> np.ndarray:
                return ours(window, Tokens(window, 1).order(root, files))

            runs.append(measure(window, {"plain": plain, "ours": ours, "by_length": by_length}, args.repeats))
            tokens = Tokens(window, 0).examples(root, files)
            lengths = (tokens != 0).sum(axis=1)
            runs[-1]["tokens_median"] = float(np.median(lengths))
            runs[-1]["texts_at_window"] = int((lengths == window).sum())
    for run in runs:
        seconds = run["seconds"].items()
        run["texts_per_second"] = {k: round(args.texts / statistics.median(v), 1) for k, v in seconds}
        rate = run["texts_per_second"]
        run["ours_over_plain"] = round(rate["ours"] / rate["plain"], 2)
        run["by_length_over_plain"] = round(rate["by_length"] / rate["plain"], 2)
    report = {
        **results_io.header("bench.texts", argv),
        "texts": args.texts,
        "source": args.source,
        "batch": BATCH,
        "runs": runs,
    }
    return results_io.write(args.out, args.name, report, markdown(report))


def measure(window: int, arms: dict[str, Any], repeats: int) -> dict[str, Any]:
    """The arms interleaved `repeats` times: their seconds, and how far their embeddings differ."""
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    out: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for name, arm in arms.items():
            start = time.perf_counter()
            out[name] = arm()
            seconds[name].append(time.perf_counter() - start)
            print(window, name, round(seconds[name][-1], 2), flush=True)
    differences = [np.abs(out[k] - out["plain"]).max() for k in arms if k != "plain"]
    return {"window": window, "seconds": seconds, "max_abs_difference": float(max(differences))}


def markdown(r: dict[str, Any]) -> str:
    texts = "spans of 1 to 7 sentences" if r["source"] == "spans" else "articles"
    rows = [
        f"| {run['window']} | {run['tokens_median']:.0f} | {run['texts_at_window']} | "
        f"{run['texts_per_second']['plain']} | {run['texts_per_second']['ours']} | "
        f"{run['texts_per_second']['by_length']} | {run['ours_over_plain']}x | "
        f"{run['by_length_over_plain']}x | "
        f"{run['max_abs_difference']:.1e} |"
        for run in r["runs"]
    ]
    return "\n".join(
        [
            f"# Text embedding benchmark ({r['date']})",
            "",
            f"`{r['command']}` on {r['machine']}. {r['texts']} BBC News {texts}, each cut to its first "
            f"window, all-MiniLM-L6-v2 in Keras, batches of {r['batch']}; texts per second, the median "
            f"of {len(r['runs'][0]['seconds']['ours'])} interleaved repeats. `plain`: every text padded to "
            "the window, `model.predict`; `ours`: `Tokens.batches` (each batch padded to its longest "
            "text), `predict_on_batch` per batch; `by_length`: the same, shortest text first "
            "(`Tokens.order`, as the feature pass runs).",
            "",
            "| window | median tokens | texts cut at the window | plain | ours | by_length | ours / plain "
            "| by_length / plain | largest difference |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "The differences between the arms' embeddings are float round-off: padding is masked out.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
