"""Benchmark: `transferops train` on BBC News as a user runs it, judged by the registered pyfunc.

    .venv/bin/python -m bench.bbc_news [--test-fraction 0.3] [--windows 4 1]

Writes all 2,225 articles as `.txt` class folders in a fresh project, runs `transferops train
--data ...` on its embedded defaults but the split (`split.test_fraction` 0.3, `val_fraction`
0.1: a 70/30 split whose 70 also holds the val split), then loads the registered version with
`mlflow.pyfunc` (what `mlflow models serve` runs) and labels the held-out test split from
`{"text": ...}` rows. Reports the wall time of the train, the flow's own test metrics, and the
pyfunc's accuracy and texts/s on the held-out articles, for each `texts.windows` asked (4, the
default: pooled windows; 1: every article cut to its first 256 tokens), side by side.
Writes bench/results/bbc_news.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import results_io

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument(
        "--windows", type=int, nargs="+", default=[4, 1], help="texts.windows of each arm (4: the default)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    split = {"test_fraction": args.test_fraction, "val_fraction": 0.1}
    arms = {f"windows={w}": arm(w, split) for w in args.windows}
    first = next(iter(arms.values()))
    report = {
        **results_io.header("bench.bbc_news", argv),
        "split": split,
        "examples": first["examples"],
        "held_out": first["held_out"],
        "arms": arms,
    }
    return results_io.write(args.out, "bbc_news", report, markdown(report))


def arm(windows: int, split: dict[str, float]) -> dict[str, Any]:
    """One fresh project: `transferops train` on all of BBC News with `texts.windows`, then the
    registered pyfunc on the held-out articles."""
    from tasks.core.config import SplitParams
    from tasks.data.bbc_news import write_bbc_news
    from tasks.data.datasets import load_folder
    from tasks.modality.tokens import Texts
    from tasks.registry import versions
    from tasks.reporting import tracking

    with tempfile.TemporaryDirectory(prefix="transferops-bbc-") as tmp:
        root = Path(tmp)
        write_bbc_news(root / "texts")
        settings = {**{f"split.{k}": v for k, v in split.items()}, "texts.windows": windows}
        sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
        command = ["--root", str(root), *sets, "train", "--data", str(root / "texts")]
        start = time.perf_counter()
        # the project's own stores: not the one an earlier arm's tracking.configure left in the environment
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        subprocess.run([sys.executable, "-m", "flows.cli", *command], check=True, env=env)
        train_seconds = time.perf_counter() - start
        summary = json.loads((root / "reports" / "train.json").read_text())
        tracking.configure(root / "mlflow")
        test = load_folder(root / "texts", SplitParams(**split), Texts()).test
        names = summary["classes"]
        texts = [(test.root / f).read_text(encoding="utf-8") for f in test.files]
        model = versions.load_version("transferops-classifier", summary["registered"]["version"])
        start = time.perf_counter()
        out = pd.concat(
            [model.predict(pd.DataFrame({"text": texts[i : i + 64]})) for i in range(0, len(texts), 64)],
            ignore_index=True,
        )
        served_seconds = time.perf_counter() - start
    truth = np.array([names[y] for y in test.y])
    return {
        "windows": windows,
        "examples": summary["examples"],
        "backbone": summary["backbone"],
        "strategy": summary["strategy"],
        "train_seconds": round(train_seconds, 1),
        "stage_seconds": summary["stage_seconds"],
        "flow_test": summary["test"],
        "held_out": len(texts),
        "pyfunc_accuracy": round(float(np.mean(out["label"].to_numpy() == truth)), 4),
        "pyfunc_errors": int(out["error"].notna().sum()),
        "pyfunc_texts_per_second": round(len(texts) / served_seconds, 1),
    }


def markdown(r: dict[str, Any]) -> str:
    arms = r["arms"]

    def row(what: str, value: Any) -> str:
        return f"| {what} | " + " | ".join(str(value(a)) for a in arms.values()) + " |"

    return "\n".join(
        [
            f"# BBC News through `transferops train` ({r['date']})",
            "",
            f"`{r['command']}` on {r['machine']}. All 2,225 articles, split {r['examples']} "
            f"(test_fraction {r['split']['test_fraction']}, val_fraction {r['split']['val_fraction']}), "
            "every other param at its default but `texts.windows` (each arm a fresh project, one "
            "after the other in this run; the window is 256 tokens).",
            "",
            "| what | " + " | ".join(f"`texts.{k}`" for k in arms) + " |",
            "|---|" + "---|" * len(arms),
            row("backbone chosen", lambda a: f"`{a['backbone']}`"),
            row("train wall time", lambda a: f"{a['train_seconds']:.0f} s"),
            row(
                "select / finetune / evaluate",
                lambda a: " / ".join(
                    f"{a['stage_seconds'].get(k, 0):.0f} s" for k in ("select", "finetune", "evaluate")
                ),
            ),
            row(
                "test accuracy / macro-F1 (the flow's evaluate)",
                lambda a: f"{a['flow_test']['accuracy']:.4f} / {a['flow_test']['macro_f1']:.4f}",
            ),
            row(
                'held-out accuracy, registered pyfunc, `{"text": ...}` rows',
                lambda a: f"{a['pyfunc_accuracy']:.4f} ({a['pyfunc_errors']} errors)",
            ),
            row("pyfunc throughput, 64 rows a call", lambda a: f"{a['pyfunc_texts_per_second']} texts/s"),
            "",
            *(f"Strategy at `texts.{k}`: {a['strategy']}" for k, a in arms.items()),
            "",
        ]
    )


if __name__ == "__main__":
    main()
