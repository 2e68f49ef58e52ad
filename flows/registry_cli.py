"""The registry commands of `transferops`: status, history, promote, rollback, predict. Each
reads or moves the MLflow registry only; none starts a flow."""

from __future__ import annotations

import argparse
import json

from tasks.core.config import Params, Paths
from tasks.core.errors import UserError


def cmd_status(args: argparse.Namespace, params: Params, paths: Paths) -> None:
    from tasks.registry import history, versions
    from tasks.reporting import tracking

    tracking.configure(paths.mlflow_dir)
    status = versions.model_status(params.register.model_name)
    status["last_moves"] = [vars(m) for m in history.moves(params.register.model_name)[-3:]]
    if args.json:
        print(json.dumps(status, indent=2))
        return
    if not status["registered"]:
        print(f"{status['model']}: not registered yet")
        return
    for alias, info in status["aliases"].items():
        metrics = "  ".join(
            f"{k} {v:.4f}"
            + (" [{:.3f}, {:.3f}]".format(*info["intervals"][k]) if k in info["intervals"] else "")
            for k, v in info["metrics"].items()
        )
        print(f"{alias:<11} v{info['version']}  data {info['data_version']}  {metrics}")
    if status["last_moves"]:
        print("last champion moves (transferops history for all):")
    for move in history.moves(params.register.model_name)[-3:]:
        print(f"  {move.words()}")


def cmd_history(args: argparse.Namespace, params: Params, paths: Paths) -> None:
    from tasks.registry import history
    from tasks.reporting import tracking

    tracking.configure(paths.mlflow_dir)
    model = args.model or params.register.model_name
    found = history.moves(model)
    if args.json:
        print(json.dumps([vars(m) for m in found], indent=2))
    elif not found:
        print(f"{model}: no champion moves recorded")
    for move in [] if args.json else found:
        print(move.words())


def cmd_promote(args: argparse.Namespace, params: Params, paths: Paths) -> None:
    from tasks.core import runlock
    from tasks.registry import history
    from tasks.reporting import tracking

    tracking.configure(paths.mlflow_dir)
    model = args.model or params.register.model_name
    with runlock.exclusive(paths.root, model):  # not while a run of this model may move it
        move = history.promote(model, args.version, args.reason)
    print(f"{model}: champion {move.words()}")


def cmd_rollback(args: argparse.Namespace, params: Params, paths: Paths) -> None:
    from tasks.core import runlock
    from tasks.registry import history
    from tasks.reporting import tracking

    tracking.configure(paths.mlflow_dir)
    model = args.model or params.register.model_name
    with runlock.exclusive(paths.root, model):
        move = history.rollback(model, args.reason)
    print(f"{model}: champion {move.words()}")


def cmd_predict(args: argparse.Namespace, params: Params, paths: Paths) -> None:
    from tasks.data.images import printable
    from tasks.registry import predict, versions
    from tasks.reporting import tracking

    tracking.configure(paths.mlflow_dir)
    name, model = params.register.model_name, args.model
    # @ALIAS of the configured model, NAME@ALIAS as given, or a version number of the model
    ref = f"{name}{model}" if model.startswith("@") else model if "@" in model else f"{name}/{model}"
    files = predict.image_files(args.images)
    if args.out is not None and args.out.suffix.lower() not in predict.FORMATS:
        raise UserError(f"predict: --out {args.out}: write .parquet or .csv")
    model_name, version = versions.resolve(ref)
    if version is None:
        raise UserError(f"predict: {ref} is not a registered version; `transferops status` shows what is")
    served = versions.load_version(model_name, version)
    print(f"{model_name} v{version} ({ref}): {len(files)} files")

    def show(row: dict) -> None:
        if isinstance(row["error"], str):  # None or NaN when the row was predicted
            print(f"{printable(row['path'])}  error: {row['error']}")
        else:
            print(f"{printable(row['path'])}  {row['label']}  {row['confidence']:.3f}")

    written = predict.predict(served, files, args.out, None if args.out else show)
    if args.out is not None:
        labels = ", ".join(f"{printable(str(k))} {v}" for k, v in sorted(written.labels.items()))
        print(f"wrote {written.rows} rows to {args.out} ({written.errors} errors; {labels or 'no labels'})")
