"""Distillation (知识蒸馏): a single student against the ensemble it learns from.

The demo's task (Fashion-MNIST classes 5-9 at 32 px, `--per-class` images each, the stand-in
backbone pretrained on classes 0-4), per seed:

- the teacher: an ensemble (tasks/search/ensemble.py, equal weights) of `--members` fixed-recipe
  fine-tunes of the stand-in, each with its own seed: what the search keeps as 模型融合;
- the student alone: the same recipe and architecture (the best single member's), one more
  seed, on the labels; with `--student-width` a narrower stand-in (pretrained the same way),
  the usual setting of distillation: a cheaper model taught by a better one;
- the student distilled: the same seed, learning the teacher's soft targets mixed with the
  labels in both phases (`finetune.distill_*` at their defaults, tasks/models/distill.py);
- with `--unlabelled N`, the student distilled again, the teacher also labelling a transfer set
  of N unlabelled images (more of the task's classes from Fashion-MNIST's train file, none of
  them in the labelled folder, written flat with no class names): what a user has when photos
  outnumber labels (`finetune.distill_unlabelled`).

Test accuracy of each on the held-out images of the task's classes from Fashion-MNIST's own test
file (1000 a class: 5000 images, never trained on; the split's few hundred test images would
leave 0.2 points of accuracy per image), the share of the teacher's lead over the student alone
that the distilled student recovers, and the median single-image forward time of teacher and
student. `--set finetune_key=value` changes the recipe of every fine-tune (members and students).
Results: bench/results/<--name>.{json,md} (distill). One command: `python -m bench.distill`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import results_io
from bench.transfer import copy_of

RESULTS = Path(__file__).parent / "results"


def accuracy(model: Any, split: Any, pixels: Any) -> float:
    from tasks.evaluation.evaluate import predict

    probabilities = predict(model, split.batches(pixels, 128, labels=False), len(split), "test")
    return float((probabilities.argmax(axis=1) == split.y).mean())


def latency_ms(model: Any, pixels: Any, calls: int = 50) -> float:
    """Median of single-image calls of the traced forward pass (as served)."""
    import numpy as np

    from tasks.registry.export import median_ms
    from tasks.registry.serving import forward_function

    forward = forward_function(model)
    return median_ms(
        lambda x: np.asarray(forward(x)), np.zeros((1, pixels.size, pixels.size, 3), "float32"), calls
    )


def transfer_set(folder: Path, labelled: Path, classes: tuple[int, ...], n: int) -> Any:
    """`n` images of `classes` from Fashion-MNIST's train file that are not under `labelled`
    (whose files are named by their index in it), written flat under `folder`, as an
    unlabelled split (tasks.data.datasets.unlabelled)."""
    import numpy as np
    from PIL import Image

    from tasks.data import fashion_mnist
    from tasks.data.datasets import unlabelled
    from tasks.modality.pixels import Images

    images, labels = fashion_mnist.load_fashion_mnist()
    used = {int(p.stem) for p in labelled.rglob("*.png")}
    pool = [i for i in np.flatnonzero(np.isin(labels, classes)) if i not in used]
    folder.mkdir(parents=True)
    for i in np.sort(np.random.default_rng(7).choice(pool, size=n, replace=False)):
        Image.fromarray(images[i]).save(folder / f"{i:05d}.png")
    return unlabelled(folder, Images(max_pixels=40_000_000))


def one_seed(
    seed: int,
    stand_ins: tuple[Any, Any],
    data: Any,
    test: Any,
    pixels: Any,
    members: int,
    recipe: dict[str, Any],
    transfer: Any = None,
) -> dict[str, Any]:
    import keras

    from tasks.core.config import FinetuneParams
    from tasks.data.datasets import joined
    from tasks.models import distill, finetune
    from tasks.search.ensemble import ensemble

    def fine_tune(run_seed: int, teacher: Any = None, student: bool = False, train: Any = None) -> Any:
        params = FinetuneParams(seed=run_seed, **recipe)
        keras.utils.set_random_seed(run_seed)
        classes = len(data.class_names)
        return finetune.finetune(
            copy_of(stand_ins[student]),
            train if train is not None else data.train,
            data.val,
            classes,
            params,
            pixels,
            teacher=teacher,
        ).model

    start = time.perf_counter()
    trained = [fine_tune(10 * seed + m) for m in range(members)]
    teacher = ensemble(trained, [1 / members] * members)
    targets = tuple(distill.targets(teacher, s, pixels, "teacher") for s in (data.train, data.val))
    alone = fine_tune(10 * seed + members, student=True)
    distilled = fine_tune(10 * seed + members, targets, student=True)

    def distilled_with(unlabelled: Any) -> dict[str, Any]:
        both = joined(data.train, unlabelled)
        taught = (distill.targets(teacher, both, pixels, "teacher on train + transfer set"), targets[1])
        student = fine_tune(10 * seed + members, taught, student=True, train=both)
        return {"unlabelled": len(unlabelled), "distilled_transfer": accuracy(student, test, pixels)}

    row = {
        "seed": seed,
        "members": [accuracy(m, test, pixels) for m in trained],
        "teacher": accuracy(teacher, test, pixels),
        # how often the soft targets' top class is the label on the images the student learns
        "teacher_on_train": float((targets[0][:, 1:].argmax(axis=1) == data.train.y).mean()),
        "alone": accuracy(alone, test, pixels),
        "distilled": accuracy(distilled, test, pixels),
        **(distilled_with(transfer) if transfer is not None else {}),
        "teacher_ms": latency_ms(teacher, pixels),
        "student_ms": latency_ms(distilled, pixels),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(row, flush=True)
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def mean_std(key: str) -> tuple[float, float]:
        values = [r[key] for r in rows]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    for r in rows:
        r["mean_member"] = statistics.mean(r["members"])
    keys = ("teacher", "mean_member", "alone", "distilled", "distilled_transfer", "teacher_ms", "student_ms")
    out = {key: mean_std(key) for key in keys if key in rows[0]}
    lead = out["teacher"][0] - out["alone"][0]
    for key, share in (("distilled", "recovered"), ("distilled_transfer", "recovered_transfer")):
        if key in out:
            out[share] = (out[key][0] - out["alone"][0]) / lead if lead > 0 else None
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    transfer = f"distilled + {report['unlabelled']} unlabelled | " if report.get("unlabelled") else ""
    lines = [
        f"# Distillation benchmark ({report['date']})",
        "",
        f"`{report['command']}` on {report['machine']}. Fashion-MNIST classes 5-9 at 32 px, "
        f"{report['per_class']} images per class ({report['images']['train']} train, "
        f"{report['images']['val']} val), the stand-in pretrained on classes 0-4, tested on "
        f"{report['held_out']} held-out images (Fashion-MNIST's test file); recipe: "
        f"{report['recipe'] or 'the fixed recipe at its defaults'}; teacher: an "
        f"ensemble of {report['members']} fine-tunes of the stand-in (width 32); student: one more "
        f"of a stand-in of width {report.get('student_width', 32)}, alone or distilled "
        "(same seed).",
        "",
        "| seed | members (test acc) | teacher | teacher on train | student alone | student distilled "
        f"| {transfer}teacher ms | student ms |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if transfer else ""),
    ]
    for r in report["runs"]:
        members = ", ".join(f"{a:.4f}" for a in r["members"])
        lines.append(
            f"| {r['seed']} | {members} | {r['teacher']:.4f} | {r['teacher_on_train']:.4f} "
            f"| {r['alone']:.4f} | {r['distilled']:.4f} "
            + (f"| {r['distilled_transfer']:.4f} " if transfer else "")
            + f"| {r['teacher_ms']:.2f} | {r['student_ms']:.2f} |"
        )

    def share(key: str) -> str:
        return "-" if s[key] is None else f"{s[key]:.2f}"

    with_transfer = (
        f"; distilled with the {report['unlabelled']} unlabelled images too "
        f"{s['distilled_transfer'][0]:.4f} ± {s['distilled_transfer'][1]:.4f}, recovering "
        f"{share('recovered_transfer')} of the lead"
        if transfer
        else ""
    )
    lines += [
        "",
        f"Mean ± std over seeds: teacher {s['teacher'][0]:.4f} ± {s['teacher'][1]:.4f} (its members "
        f"{s['mean_member'][0]:.4f} on average), student alone "
        f"{s['alone'][0]:.4f} ± {s['alone'][1]:.4f}, distilled {s['distilled'][0]:.4f} "
        f"± {s['distilled'][1]:.4f}, recovering {share('recovered')} of the teacher's lead"
        f"{with_transfer}; single-image forward "
        f"{s['student_ms'][0]:.2f} ms (student) against {s['teacher_ms'][0]:.2f} ms (teacher). "
        f"One test image is {1 / report['held_out']:.4f}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=600, help="target-task images per class")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--members", type=int, default=3, help="fine-tunes in the teacher ensemble")
    parser.add_argument(
        "--student-width", type=int, default=32, help="the student's stand-in: pretrained at this width"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="finetune recipe")
    parser.add_argument(
        "--unlabelled", type=int, default=0, help="distil again with a transfer set of N unlabelled images"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="distill", help="results file name under --out")
    args = parser.parse_args(argv)
    import yaml

    recipe = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.set)}

    from bench import heldout
    from tasks.core.config import FashionMnistParams, Params
    from tasks.data import fashion_mnist
    from tasks.data.datasets import load_folder
    from tasks.modality.pixels import Images, Pixels
    from tasks.models.pretraining import pretrain

    params = Params()
    with tempfile.TemporaryDirectory(prefix="transferops-distill-") as tmp:
        source, raw = Path(tmp) / "source", Path(tmp) / "raw"
        fashion_mnist.write_demo_data(source, raw, FashionMnistParams(raw_per_class=args.per_class))
        pretraining = load_folder(source, params.split, Images(max_pixels=40_000_000))
        stand_in = pretrain(pretraining, params.pretrain, Pixels(32)).backbone
        student = stand_in
        if args.student_width != params.pretrain.width:
            narrow = params.pretrain.model_copy(update={"width": args.student_width})
            student = pretrain(pretraining, narrow, Pixels(32)).backbone
        data = load_folder(raw, params.split, Images(max_pixels=40_000_000))
        test = heldout.held_out(Path(tmp) / "held-out", data.class_names, params.fashion_mnist.raw_classes)
        pixels = Pixels(32, params.images.resize)
        classes = params.fashion_mnist.raw_classes
        transfer = (
            transfer_set(Path(tmp) / "unlabelled", raw, classes, args.unlabelled) if args.unlabelled else None
        )
        rows = [
            one_seed(seed, (stand_in, student), data, test, pixels, args.members, recipe, transfer)
            for seed in range(args.seeds)
        ]
    report = {
        **results_io.header("bench.distill", argv),
        "per_class": args.per_class,
        "members": args.members,
        "images": data.sizes(),
        "held_out": len(test),
        "recipe": recipe,
        "student_width": args.student_width,
        "unlabelled": args.unlabelled,
        "runs": rows,
        "summary": summary(rows),
    }
    return results_io.write(args.out, args.name, report, markdown(report))


if __name__ == "__main__":
    main()
