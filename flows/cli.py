"""The `transferops` command line: the entry point that reads params.yaml and runs flows."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.runtime import (
    apply_env_defaults,
    silence_prefect_server,
    start_prefect_server,
    wait_for_prefect_server,
)

if TYPE_CHECKING:
    from prefect import Flow

apply_env_defaults()  # before TensorFlow or Prefect are imported

from flows.housekeeping import cmd_gc  # noqa: E402
from flows.registry_cli import add_registry_commands  # noqa: E402
from tasks.core import runlock  # noqa: E402
from tasks.core.config import (  # noqa: E402
    Params,
    Paths,
    parse_overrides,  # noqa: F401  (tests and scripts read them here too)
    project_root,
    resolve_params,
)
from tasks.core.errors import UserError  # noqa: E402

if TYPE_CHECKING:
    from tasks.reporting.summary import RunSummary


def _run(flow_fn: Flow, *args: Any, **kwargs: Any) -> RunSummary:
    """Run a flow. A run that failed on an exception re-raises it (`main` explains it in one
    line); one that failed with a message (a failed validation) exits with that message."""
    wait_for_prefect_server()
    state = flow_fn(*args, return_state=True, **kwargs)
    result = state.result(raise_on_failure=False)
    if state.is_completed():
        return result
    if isinstance(result, BaseException):
        raise result
    raise SystemExit(f"transferops: {flow_fn.name} {state.name.lower()}: {state.message}")


def _write_report(paths: Paths, name: str, summary: RunSummary) -> None:
    """reports/<command>.json (the whole summary); for the DVC stages (pretrain, train) run by
    `dvc repro` / `dvc exp run` (DVC sets DVC_STAGE) also their numbers under metrics/
    (tasks.reporting.dvc_reports), which `dvc exp show` compares. Run by hand (`make demo`), a
    stage leaves the committed metrics/ alone: they change with dvc.lock, on purpose."""
    from tasks.reporting import dvc_reports

    paths.reports_dir.mkdir(parents=True, exist_ok=True)
    (paths.reports_dir / f"{name}.json").write_text(json.dumps(summary.as_dict(), indent=2, default=str))
    if summary.flow in dvc_reports.DVC_STAGES and not summary.skipped and os.environ.get("DVC_STAGE"):
        dvc_reports.write(paths.root, summary)


def cmd_data(args: argparse.Namespace, params: Params, paths: Paths) -> None:
    from tasks.data import bbc_news, fashion_mnist, versioning

    if args.dataset == "bbc-news":  # texts: one folder of class folders
        folders = [paths.resolve(args.to or "data/bbc-news")]
        written = {"texts": bbc_news.write_bbc_news(folders[0], force=args.force)}
    else:  # images: the pretraining set and the target task
        folders = [paths.resolve(params.data.source), paths.resolve(params.data.raw)]
        written = fashion_mnist.write_demo_data(*folders, params.fashion_mnist, force=args.force)
    counts = [sum(n.values()) for n in written.values()]
    print("wrote " + ", ".join(f"{n} files to {f}" for n, f in zip(counts, folders, strict=True)))
    if not args.no_dvc:
        versioning.track(paths.root, folders, paths.root / ".dvc-remote")
        print(f"dvc add + dvc push done ({', '.join(f'{f.name}.dvc' for f in folders)})")


def cmd_pretrain(args: argparse.Namespace, params: Params, paths: Paths) -> RunSummary:
    start_prefect_server()  # while the flow's imports load
    from flows.pretrain import pretrain_flow

    return _run(pretrain_flow, params, paths.root, force=args.force)


def check_candidates(params: Params, data_dir: Path) -> None:
    """A misnamed candidate ends the run here, in one line, not after validation and splitting."""
    from tasks import modality
    from tasks.selection.families import check_candidates as check

    name = modality.from_params(params, data_dir).name
    check(params.section(name).candidates, name)


def cmd_train(args: argparse.Namespace, params: Params, paths: Paths) -> RunSummary:
    from tasks.data.tables import data_folder

    given = paths.resolve(args.data or params.data.raw)
    data_dir = data_folder(given, paths.root, params)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"{given}: data folder not found (expected <folder>/<class>/<file>, or a .csv, .jsonl "
            "or .parquet table)"
        )
    with runlock.exclusive(paths.root, params.register.model_name):  # refused at once, not after start-up
        start_prefect_server()
        check_candidates(params, data_dir)
        from flows.train import train_flow

        return _run(train_flow, data_dir, params, paths.root, force=args.force)


def cmd_distill(args: argparse.Namespace, params: Params, paths: Paths) -> RunSummary:
    """Train `--student` on the soft targets of the registered version `teacher` (the fixed
    recipe, tasks/models/distill.py), then evaluate and register it through the gate like any
    challenger; the version records its teacher."""
    from flows.registry_cli import version_ref
    from flows.stages.finetune import transfer_folder
    from tasks.registry import versions
    from tasks.reporting import tracking

    tracking.configure(paths.mlflow_dir)
    ref = version_ref(params, args.teacher)
    name, version = versions.resolve(ref)
    if version is None:
        raise UserError(f"distill: {ref} is not a registered version; `transferops status` shows what is")
    unlabelled = str(args.unlabelled.resolve()) if args.unlabelled else None
    data = paths.resolve(params.data.raw)
    params = distill_params(params, f"{name}/{version}", args.student, unlabelled, data)
    transfer_folder(paths, params.finetune)  # a mistyped folder: said now, not after select
    print(f"distill {name} v{version} ({ref}) into {args.student}")
    return cmd_train(argparse.Namespace(data=None, force=args.force), params, paths)


def distill_params(
    params: Params, teacher: str, student: str, unlabelled: str | None = None, data: Path | None = None
) -> Params:
    """A train's params that distil version `teacher` (NAME/N) into backbone `student`: the
    fixed recipe (both phases learn the teacher's targets), the student the only candidate of
    the modality of `data`; `unlabelled`: a folder of examples the teacher labels too (the
    params' own otherwise)."""
    from tasks import modality
    from tasks.core.config import parse_params

    transfer = {"distill_unlabelled": unlabelled} if unlabelled else {}
    overrides = {
        "finetune": {"distill_from": teacher, **transfer},
        modality.from_params(params, data).name: {"candidates": [student]},
        "search": {"enabled": False},
    }
    return parse_params(params.as_dict(), "transferops distill", overrides)


def cmd_retrain(args: argparse.Namespace, params: Params, paths: Paths) -> RunSummary:
    with runlock.exclusive(paths.root, params.register.model_name):
        start_prefect_server()
        check_candidates(params, paths.resolve(args.data or params.data.raw))
        from flows.retrain import retrain_flow

        return _run(retrain_flow, params, str(paths.root), args.data, force=args.force)


def cmd_reproduce(args: argparse.Namespace, params: Params, paths: Paths) -> RunSummary:
    start_prefect_server()
    from flows.reproduce import reproduce_flow

    model = args.model or params.register.model_name
    return _run(reproduce_flow, model, args.version, paths.root, args.tolerance)


def check_cron(cron: str) -> None:
    """Prefect's own check of a cron string (five fields), before anything is imported or deployed."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise UserError(
            f"--cron {cron!r}: not a cron schedule; give five fields, minute hour day month weekday "
            "(e.g. '0 3 * * *': every day at 03:00)"
        ) from None


def cmd_schedule(args: argparse.Namespace, params: Params, paths: Paths) -> None:
    check_cron(args.cron)
    from flows.schedule import deploy_retrain, serve_retrain

    if args.serve:
        serve_retrain(args.cron, paths.root, params, args.data)
        return
    deployment_id = deploy_retrain(args.cron, paths.root, params, args.data, args.pool)
    print(
        f"deployment retrain/scheduled-retrain ({deployment_id}) runs on '{args.cron}'. "
        f"Start a worker to run it: prefect worker start --pool {args.pool}"
    )


def cmd_demo(args: argparse.Namespace, params: Params, paths: Paths) -> RunSummary:
    from tasks.reporting.summary import format_summary

    args.force, data = False, argparse.Namespace(dataset="fashion-mnist", to=None, force=False, no_dvc=False)
    cmd_data(data, params, paths)  # every field `data` takes, none left to what demo's parser set
    pretrained = cmd_pretrain(args, params, paths)
    _write_report(paths, "pretrain", pretrained)
    print(format_summary(pretrained))
    args.data = None
    return cmd_train(args, params, paths)


def _common_options(where: str) -> argparse.ArgumentParser:
    """--root, --params and --set, accepted before and after the subcommand (`where` keeps
    the two apart in the namespace; `main` merges them)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root",
        type=Path,
        dest=f"root_{where}",
        help="project root (default: $TRANSFEROPS_ROOT or the current folder)",
    )
    common.add_argument(
        "--params",
        type=Path,
        dest=f"params_{where}",
        help="params file, relative to the root (default: <root>/params.yaml, else built-in defaults)",
    )
    common.add_argument(
        "--set",
        action="append",
        default=[],
        dest=f"set_{where}",
        metavar="SECTION.KEY=VALUE",
        help="override one param, e.g. --set finetune.head_epochs=5 (repeatable)",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transferops",
        description="Transfer learning with validation, tracking, a registry and promotion.",
        parents=[_common_options("before")],
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    parser.add_argument("--quiet", action="store_true", help="no progress lines (default off a terminal)")
    after = [_common_options("after")]
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", parents=after, help="write demo data (class folders), version it with DVC")
    data.add_argument("dataset", choices=["fashion-mnist", "bbc-news"])
    data.add_argument("--to", help="bbc-news: the folder to write (default data/bbc-news)")
    data.add_argument("--no-dvc", action="store_true", help="write the folders only")
    data.add_argument(
        "--force",
        action="store_true",
        help="replace folders holding other files (the old ones are kept as *.old-<time>)",
    )
    data.set_defaults(func=cmd_data)

    force = argparse.ArgumentParser(add_help=False)
    force.add_argument(
        "--force", action="store_true", help="recompute every stage (default: reuse unchanged ones)"
    )
    sub.add_parser(
        "pretrain", parents=[*after, force], help="train and register the pretrained backbone"
    ).set_defaults(func=cmd_pretrain)

    train = sub.add_parser(
        "train", parents=[*after, force], help="validate, fine-tune, evaluate and register"
    )
    train.add_argument(
        "--data", type=Path, help="<data>/<class>/<file> (images or .txt), or a CSV/JSONL/Parquet table"
    )
    train.set_defaults(func=cmd_train)

    distill = sub.add_parser(
        "distill",
        parents=[*after, force],
        help="train a student on a registered version's soft targets, then gate it like any challenger",
    )
    distill.add_argument("teacher", help="VERSION, @ALIAS or NAME@ALIAS of the teacher (an ensemble, say)")
    distill.add_argument(
        "--student",
        required=True,
        help="the student's backbone, a candidate URI (registry:, keras:, lite0:, file:)",
    )
    distill.add_argument(
        "--unlabelled",
        type=Path,
        metavar="DIR",
        help="a transfer set: images without labels (any layout) the teacher labels for the student too",
    )
    distill.set_defaults(func=cmd_distill)

    retrain = sub.add_parser(
        "retrain", parents=[*after, force], help="train warm-started from the champion, if data changed"
    )
    retrain.add_argument("--data", type=str)
    retrain.set_defaults(func=cmd_retrain)

    schedule = sub.add_parser(
        "schedule", parents=after, help="create the Prefect deployment of retrain on a cron"
    )
    schedule.add_argument("--cron", required=True, help='e.g. "0 3 * * 1" (Mondays, 03:00)')
    schedule.add_argument("--pool", default="transferops", help="process work pool (created if missing)")
    schedule.add_argument("--data", type=str)
    schedule.add_argument(
        "--serve", action="store_true", help="serve the schedule from this process instead of a work pool"
    )
    schedule.set_defaults(func=cmd_schedule)

    reproduce = sub.add_parser(
        "reproduce",
        parents=after,
        help="rebuild a registered version from its recorded data, params and backbone; compare metrics",
    )
    reproduce.add_argument("version", help="version number of the registered model")
    reproduce.add_argument("--model", help="registered model (default: register.model_name)")
    reproduce.add_argument(
        "--tolerance",
        type=float,
        default=0.0,
        help="largest accepted difference of a test metric (default 0: bit-for-bit)",
    )
    reproduce.set_defaults(func=cmd_reproduce)

    add_registry_commands(sub, after)

    gc = sub.add_parser(
        "gc", parents=after, help="delete what params `retention` does not keep (caches, old versions, runs)"
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")
    gc.set_defaults(func=cmd_gc)

    demo = sub.add_parser("demo", parents=after, help="data fashion-mnist + pretrain + train, then a summary")
    demo.set_defaults(func=cmd_demo)
    return parser


USAGE_ERRORS = (UserError, FileNotFoundError, FileExistsError)  # exit 2: what was asked cannot be done


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 a run or a service failed, 2 bad params or paths, 130 interrupted."""
    from flows import errors

    args = build_parser().parse_args(argv)
    if args.quiet:
        os.environ["TRANSFEROPS_PROGRESS"] = "0"
    if not args.debug:
        errors.quiet_prefect_tracebacks()
    root = (args.root_after or args.root_before or project_root()).resolve()
    paths = Paths.from_root(root)
    try:
        params = resolve_params(
            root, args.params_after or args.params_before, args.set_before + args.set_after
        )
        if args.command != "data":
            errors.check_services()
        summary = args.func(args, params, paths)
        if summary is not None:
            from tasks.reporting.summary import format_summary

            _write_report(paths, args.command, summary)
            print(format_summary(summary))
            if not summary.ok:
                return 1
    except KeyboardInterrupt:
        silence_prefect_server()
        print("transferops: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = errors.explain(exc)
        if message is None or args.debug:
            raise
        silence_prefect_server()  # this line is the last one
        print(f"transferops: {message}", file=sys.stderr)
        if errors.disk_full(exc):  # a file that failed to close (HDF5) can crash the interpreter's exit
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        return 2 if isinstance(exc, USAGE_ERRORS) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
