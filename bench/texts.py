"""Benchmark: embedding texts with MiniLM, our stream against the plain path.

    .venv/bin/python -m bench.texts [--texts 512] [--repeats 3] [--source articles|spans]

Every arm embeds the first window (256 tokens) of the same texts with the same Keras MiniLM
(`tasks/models/minilm.py`), batches of 32, in one process. The texts: BBC News articles
(`articles`, most longer than the window), or spans of 1 to 7 of their sentences (`spans`,
lengths that vary as support tickets' or reviews' do; `bench.text_scale.write_spans`). Arms:
- `plain`: what a user gets from the shipped tokenizer as it is configured (every text padded
  to a fixed length, here the window) and `model.predict` over the padded array;
- `ours`: `Tokens.batches` (files read inside the folder and checked, the Rust tokenizer per
  batch, each batch padded to its own longest text) and the model called per batch;
- `by_length`: the pipeline's feature pass (`tasks.models.features.features`): the same stream
  run shortest first (`Tokens.order`, bucketing by length) and stored in the files' order.
Reports texts per second (median of interleaved repeats) and the largest difference between the
two arms' embeddings. Writes bench/results/texts.{json,md}.
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
BATCH, WINDOW = 32, 256


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--source", choices=["articles", "spans"], default="articles")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from tokenizers import Tokenizer

    from bench.text_scale import write_spans
    from tasks.data.bbc_news import write_bbc_news
    from tasks.data.datasets import Split
    from tasks.modality.tokens import Tokens, tokenizer_path
    from tasks.models.features import features
    from tasks.models.minilm import minilm_backbone

    model = minilm_backbone()
    with tempfile.TemporaryDirectory(prefix="transferops-texts-") as tmp:
        root = Path(tmp) / "bbc"
        write_spans(root, args.texts) if args.source == "spans" else write_bbc_news(root)
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.txt"))
        files = [files[i] for i in np.random.default_rng(0).permutation(len(files))[: args.texts]]
        fixed = Tokenizer.from_file(str(tokenizer_path()))
        fixed.enable_truncation(max_length=WINDOW)
        fixed.enable_padding(length=WINDOW)  # the shipped file pads to a fixed length (128)

        def plain() -> np.ndarray:
            texts = [(root / f).read_text(encoding="utf-8") for f in files]
            ids = np.array([[e.ids] for e in fixed.encode_batch(texts)], dtype="int32")  # one window a text
            return model.predict(ids, batch_size=BATCH, verbose=0)

        def ours() -> np.ndarray:
            stream = Tokens(WINDOW, 1).batches(root, files, BATCH)
            return np.concatenate([np.asarray(model(batch)) for batch in stream.as_numpy_iterator()])

        def by_length() -> np.ndarray:
            split = Split(root, files, np.zeros(len(files), np.int64))
            return features(model, "minilm", split, Tokens(WINDOW, 1), None)

        arms = {"plain": plain, "ours": ours, "by_length": by_length}
        seconds: dict[str, list[float]] = {name: [] for name in arms}
        out: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, arm in arms.items():
                start = time.perf_counter()
                out[name] = arm()
                seconds[name].append(time.perf_counter() - start)
                print(name, round(seconds[name][-1], 2), flush=True)
        tokens = Tokens(WINDOW, 0).examples(root, files)
    lengths = (tokens != 0).sum(axis=1)
    rate = {name: args.texts / statistics.median(s) for name, s in seconds.items()}
    report = {
        **results_io.header("bench.texts", argv),
        "texts": args.texts,
        "window": WINDOW,
        "batch": BATCH,
        "tokens_median": float(np.median(lengths)),
        "texts_at_window": int((lengths == WINDOW).sum()),
        "seconds": seconds,
        "texts_per_second": {k: round(v, 1) for k, v in rate.items()},
        "source": args.source,
        "ours_over_plain": round(rate["ours"] / rate["plain"], 2),
        "by_length_over_plain": round(rate["by_length"] / rate["plain"], 2),
        "max_abs_difference": float(max(np.abs(out[k] - out["plain"]).max() for k in ("ours", "by_length"))),
    }
    return results_io.write(args.out, "texts", report, markdown(report))


def markdown(r: dict[str, Any]) -> str:
    rate = r["texts_per_second"]
    return "\n".join(
        [
            f"# Text embedding benchmark ({r['date']})",
            "",
            f"`{r['command']}` on {r['machine']}. {r['texts']} BBC News "
            f"{'spans of 1 to 7 sentences' if r.get('source') == 'spans' else 'articles'}, their first "
            f"{r['window']} tokens (median {r['tokens_median']:.0f} tokens; {r['texts_at_window']} "
            f"cut at the window), all-MiniLM-L6-v2 in Keras, batches of {r['batch']}; median of "
            f"{len(r['seconds']['ours'])} interleaved repeats.",
            "",
            "| arm | texts/s |",
            "|---|---|",
            f"| plain (every text padded to {r['window']}, `model.predict`) | {rate['plain']} |",
            f"| ours (`Tokens.batches`: padded per batch, the model called per batch) | {rate['ours']} |",
            f"| by_length (the feature pass: the same, shortest first) | {rate['by_length']} |",
            "",
            f"Ours over plain: {r['ours_over_plain']}x; by length over plain: {r['by_length_over_plain']}x. "
            "Largest difference between the arms' "
            f"embeddings: {r['max_abs_difference']:.1e} (padding is masked out).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
