"""The registry commands of `transferops`: status, history, promote, rollback, predict, export.
Each reads or moves the MLflow registry only (export adds tags); none starts a flow."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tasks.core.config import Params, Paths
from tasks.core.errors import UserError


def cmd_status(args: argparse.Namespace, params: Params, paths: Paths) -> None:
    from tasks.registry import history
    from tasks.reporting import tracking

    tracking.configure(paths.mlflow_dir)
    status = history.model_status(params.register.model_name)
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
        served = f"  served by {info['runtime']}"
        print(f"{alias:<11} v{info['version']}  data {info['data_version']}  {metrics}{served}")
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


def version_ref(params: Params, model: str) -> str:
    """@ALIAS of the configured model, NAME@ALIAS as given, or a version number of the model."""
    name = params.register.model_name
    return f"{name}{model}" if model.startswith("@") else model if "@" in model else f"{name}/{model}"


def cmd_predict(args: argparse.Namespace, params: Params, paths: Paths) -> None:
    from tasks.core.files import printable
    from tasks.registry import predict, versions
    from tasks.reporting import tracking

    tracking.configure(paths.mlflow_dir)
    ref = version_ref(params, args.model)
    files = predict.input_files(args.inputs)
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

    written = predict.predict(served, files, args.out, None if args.out else show, params.texts.text_column)
    if args.out is not None:
        labels = ", ".join(f"{printable(str(k))} {v}" for k, v in sorted(written.labels.items()))
        print(f"wrote {written.rows} rows to {args.out} ({written.errors} errors; {labels or 'no labels'})")


def cmd_export(args: argparse.Namespace, params: Params, paths: Paths) -> None:
    from tasks.registry import export, versions
    from tasks.reporting import tracking

    name = export.export_name(args.format, args.quantize)  # a bad combination ends before any loading
    tracking.configure(paths.mlflow_dir)
    ref = version_ref(params, args.model)
    model_name, version = versions.resolve(ref)
    if version is None:
        raise UserError(f"export: {ref} is not a registered version; `transferops status` shows what is")
    print(f"{model_name} v{version} ({ref}): export {name}, checked on its test split")
    path, parity = export.export_version(model_name, version, name, params.export, paths.root, args.out)
    print(f"wrote {path}: {parity.words()}")
    print(f"recorded on {model_name} v{version} as tags export.{name}.*")


def add_registry_commands(sub: Any, after: list[argparse.ArgumentParser]) -> None:
    """The registry's subcommands on the `transferops` parser."""
    status = sub.add_parser(
        "status", parents=after, help="champion and challenger with metrics and data versions"
    )
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    history = sub.add_parser(
        "history", parents=after, help="every move of the champion alias: when, from, to, why"
    )
    history.add_argument("--model", help="registered model (default: register.model_name)")
    history.add_argument("--json", action="store_true")
    history.set_defaults(func=cmd_history)

    promote = sub.add_parser("promote", parents=after, help="make a version the champion by hand (recorded)")
    promote.add_argument("version", help="version number of the registered model")
    promote.add_argument("--reason", required=True, help="why (recorded in the registry)")
    promote.add_argument("--model", help="registered model (default: register.model_name)")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser(
        "rollback", parents=after, help="champion back to the one it replaced (recorded)"
    )
    rollback.add_argument("--reason", default="", help="why (recorded in the registry)")
    rollback.add_argument("--model", help="registered model (default: register.model_name)")
    rollback.set_defaults(func=cmd_rollback)

    predict = sub.add_parser(
        "predict",
        parents=after,
        help="label examples with a registered version (its pyfunc): files, folders, tables of texts",
    )
    predict.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        help="files (images or texts), folders (walked recursively), and for a text version CSV, JSONL or "
        "Parquet tables (each row of texts.text_column)",
    )
    predict.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write one row per file (path, label, confidence, error) to FILE.parquet or FILE.csv, "
        "streamed; without it, a line per file on stdout",
    )
    predict.add_argument(
        "--model",
        default="@champion",
        help="@ALIAS, VERSION or NAME@ALIAS (default: @champion of register.model_name)",
    )
    predict.set_defaults(func=cmd_predict)

    export = sub.add_parser(
        "export",
        parents=after,
        help="write a registered version for another runtime, checked on its test split (parity recorded)",
    )
    export.add_argument("model", help="VERSION, @ALIAS or NAME@ALIAS of the registered model")
    export.add_argument("--format", required=True, choices=["savedmodel", "tflite", "onnx"])
    export.add_argument(
        "--quantize", choices=["float16", "int8"], help="tflite only (int8: calibrated on train images)"
    )
    export.add_argument(
        "--out", type=Path, default=None, help="folder (default: .transferops/exports/<model>/v<version>)"
    )
    export.set_defaults(func=cmd_export)
