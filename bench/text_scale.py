"""Scale in the number of texts: `transferops train` on short texts, peak memory against count.

    .venv/bin/python -m bench.text_scale [--counts 20000 200000] [--window 32] [--windows N]

The workload (made here): every distinct span of 1 to 7 consecutive sentences of each BBC News
article (a sentence two classes share is dropped: one label per text), about 206,000 texts,
labelled by the article's class; the first N in a fixed shuffled order, as `.txt` class
folders. For each count, `transferops train --data FOLDER` as a user runs it (its own process,
defaults but the window: `texts.window`, 32 tokens by default here so that 200,000 texts embed
in minutes on 2 cores; the memory held per text does not depend on it; `--windows` sets
`texts.windows`, 1 to read each text's first window only), measured by
`bench.scale.run_measured`: wall time, peak RSS of the process and of its whole tree, stage
times, test accuracy. Results: bench/results/text_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from bench import results_io
from bench.scale import run_measured

RESULTS = Path(__file__).parent / "results"


def write_spans(folder: Path, count: int) -> int:
    """`count` short texts under `folder` (see the module); how many spans there were to draw from."""
    import numpy as np

    from tasks.data.bbc_news import write_bbc_news

    source = folder.parent / f".{folder.name}-bbc"
    write_bbc_news(source)
    spans, seen = [], set()
    for label in sorted(p.name for p in source.iterdir()):
        for article in sorted((source / label).iterdir()):
            text = article.read_text(encoding="utf-8")
            sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) >= 20]
            for length in range(1, 8):
                for start in range(len(sentences) - length + 1):
                    span = " ".join(sentences[start : start + length])
                    if span not in seen:
                        seen.add(span)
                        spans.append((label, f"{article.stem}-{start}-{length}", span))
    for i in np.random.default_rng(0).permutation(len(spans))[:count]:
        label, name, span = spans[i]
        (folder / label).mkdir(parents=True, exist_ok=True)
        (folder / label / f"{name}.txt").write_text(span, encoding="utf-8")
    return len(spans)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[20000, 200000])
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--windows", type=int, default=0, help="texts.windows (0: the default)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    runs = []
    for count in args.counts:
        with tempfile.TemporaryDirectory(prefix="transferops-text-scale-") as tmp:
            root, folder = Path(tmp), Path(tmp) / "texts"
            available = write_spans(folder, count)
            written = sum(1 for _ in folder.rglob("*.txt"))
            command = [
                "--root",
                str(root),
                "--set",
                f"texts.window={args.window}",
                *(["--set", f"texts.windows={args.windows}"] if args.windows else []),
                "train",
                "--data",
                str(folder),
            ]
            measured = run_measured([".venv/bin/transferops", *command])
            summary = json.loads((root / "reports" / "train.json").read_text())
        runs.append(
            {
                "texts": written,
                "spans_available": available,
                "wall_s": round(measured["wall_s"], 1),
                "peak_rss_mb": round(measured["peak_rss_mb"]),
                "peak_tree_rss_mb": round(measured["peak_tree_rss_mb"]),
                "peak_at_s": round(measured["peak_at_s"]),
                "peak_file_backed_mb": round(measured["peak_file_backed_mb"]),
                "examples": summary["examples"],
                "stage_seconds": summary["stage_seconds"],
                "test": summary["test"],
                "strategy": summary["strategy"],
            }
        )
        print(json.dumps(runs[-1])[:300], flush=True)
    first, last = runs[0], runs[-1]
    report = {
        **results_io.header("bench.text_scale", argv),
        "window": args.window,
        "windows": args.windows or None,
        "runs": runs,
        "peak_ratio_last_over_first": round(last["peak_tree_rss_mb"] / first["peak_tree_rss_mb"], 2),
    }
    return results_io.write(args.out, "text_scale", report, markdown(report))


def markdown(r: dict[str, Any]) -> str:
    def row(run: dict[str, Any]) -> str:
        stages = ", ".join(f"{k} {v:.0f}" for k, v in run["stage_seconds"].items())
        memory = f"{run['peak_rss_mb']:,} | {run['peak_tree_rss_mb']:,}"
        if "peak_at_s" in run:
            memory += f" | {run['peak_file_backed_mb']:,} at {run['peak_at_s']:,} s"
        accuracy = run["test"]["accuracy"]
        return f"| {run['texts']:,} | {run['wall_s']:.0f} | {memory} | {stages} | {accuracy:.4f} |"

    rows = [row(run) for run in r["runs"]]
    return "\n".join(
        [
            f"# Scale in the number of texts ({r['date']})",
            "",
            f"`{r['command']}` on {r['machine']}. `transferops train --data FOLDER` on short BBC News "
            f"texts (spans of 1 to 7 sentences), defaults but `texts.window={r['window']}`"
            + (f", `texts.windows={r['windows']}`" if r.get("windows") else "")
            + "; peak RSS "
            "sampled every 0.2 s.",
            "",
            "| texts | wall (s) | peak RSS, train (MB) | with children (MB) | file-backed at the peak (MB) "
            "| stage seconds | test acc. |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Peak RSS (with children) at the last count over the first: {r['peak_ratio_last_over_first']}x.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
