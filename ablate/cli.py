"""The `ablate` command: list, teacher, distill, run, sweep, report, findings, compare."""

from __future__ import annotations

import argparse
import os
import sys

EXIT_USAGE = 2
STORE_HELP = "local run store folder (default: $ABLATE_STORE or ./runs)"
NO_PROGRESS_HELP = ("no progress bars, one line per finished run instead (the default when standard error is not a "
                    "terminal, e.g. in a log file)")


def _config_args(p: argparse.ArgumentParser) -> None:
    from ablate.config import RunConfig
    import dataclasses

    for f in dataclasses.fields(RunConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, metavar=f.name.upper(),
                       help=f"{f.metadata['help']} (default: {f.default})")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _sink_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help=STORE_HELP)
    p.add_argument("--wandb", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="W&B mode: auto = online with credentials, offline otherwise (default: auto)")
    p.add_argument("--wandb-project", default=os.environ.get("WANDB_PROJECT", "ablate"))
    p.add_argument("--wandb-entity", default=os.environ.get("WANDB_ENTITY"))
    p.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ablate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("list", help="show every registry (policies, losses, models, datasets, teachers, studies)")

    t = sub.add_parser("teacher", help="train (or load from cache) a named teacher and report its accuracy")
    t.add_argument("action", choices=["train"])
    t.add_argument("name")
    t.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)

    d = sub.add_parser("distill", help="run one distillation run from flags")
    _config_args(d)
    _sink_args(d)

    r = sub.add_parser("run", help="run a study: every cell not yet done")
    r.add_argument("study", help="study name (in ./studies) or path to a study file")
    r.add_argument("--preset", default=None)
    r.add_argument("--dry-run", action="store_true", help="print the grid and its estimated cost, run nothing")
    r.add_argument("--shard", default=None, metavar="K/N", help="run only the K-th of N disjoint slices")
    r.add_argument("--cell", default=None, metavar="RUN_ID", help="run only the cell with this run id")
    r.add_argument("--cohort-size", type=_positive_int, default=4, metavar="N",
                   help="train up to N cells that differ only in student-side fields (lr, wd, loss, temperature, "
                        "model, ...) together, sharing their views and the teacher's forward pass (default 4; "
                        "1 trains every cell alone)")
    r.add_argument("--report", nargs="?", const="", default=None, metavar="DIR",
                   help="then render the study's report from the store, into DIR (default: as `ablate report`)")
    _sink_args(r)

    sw = sub.add_parser("sweep", help="write a W&B grid sweep over a study's cells (one agent run per cell)")
    sw.add_argument("study", help="study name (in ./studies) or path to a study file")
    sw.add_argument("--preset", default=None)
    sw.add_argument("--format", default="yaml", choices=["yaml", "json"])
    sw.add_argument("--out", default=None, help="write the config to this file (default: print it)")
    sw.add_argument("--wandb-project", default=os.environ.get("WANDB_PROJECT", "ablate"))
    sw.add_argument("--wandb-entity", default=os.environ.get("WANDB_ENTITY"))

    rep = sub.add_parser("report", help="render a study's figures and report.md from its logged runs")
    rep.add_argument("study")
    rep.add_argument("--preset", default=None)
    rep.add_argument("--store", default=None, help=STORE_HELP)
    rep.add_argument("--source", default="local", help="'local' or wandb:ENTITY/PROJECT")
    rep.add_argument("--out", default=None, help="output folder (default: REPORTS/NAME/PRESET, or REPORTS/NAME/default "
                                                 "without a preset; REPORTS is $ABLATE_REPORTS or ./reports, NAME the "
                                                 "study's name, e.g. paper_pets for paper/pets)")

    f = sub.add_parser("findings", help="test the paper's findings 1-8 against logged runs; writes a markdown table")
    f.add_argument("--preset", default="full", help="preset every study is read at (default: full)")
    f.add_argument("--store", default=None, help=STORE_HELP)
    f.add_argument("--source", default="local", help="'local' or wandb:ENTITY/PROJECT")
    f.add_argument("--study-preset", action="append", default=[], metavar="STUDY=PRESET",
                   help="read one study at another preset, e.g. patience=long (repeatable)")
    f.add_argument("--out", default=None, help="also write the table to this file")

    c = sub.add_parser("compare", help="table of runs grouped over seeds, ranked, with deltas to a baseline")
    c.add_argument("filters", nargs="*", help="FIELD=VALUE filters, e.g. policy=funmatch epochs=300")
    c.add_argument("--study", default=None, help="only the runs of this study's grid (name or file), whichever "
                                                 "study ran them first")
    c.add_argument("--preset", default=None, help="the study's preset (with --study)")
    c.add_argument("--store", default=None, help=STORE_HELP)
    c.add_argument("--source", default="local", help="'local' or wandb:ENTITY/PROJECT")
    c.add_argument("--metric", default="last/test/acc",
                   help="metric to rank by (default: last/test/acc, the end of training, as report.md and findings "
                        "rank; its best/ counterpart, at the best validation evaluation, is shown beside it)")
    c.add_argument("--by", default=None, help="comma-separated fields to group by (default: the fields that vary)")
    c.add_argument("--baseline", default=None, help="FIELD=VALUE of the baseline group, e.g. policy=supervised")
    c.add_argument("--csv", default=None, help="also write the table to this CSV file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "no_progress") and not sys.stderr.isatty():
        args.no_progress = True  # bars redrawn with escape codes make a log unreadable: plain lines instead
    # one line at a time even into a file or pipe: a killed run's log keeps every line it printed
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)
    if args.command != "list":  # `list` computes nothing: no jax (nor a multi-host run to join), so it is quick
        from ablate import parallel

        if parallel.initialize() and not parallel.is_leader():
            # process 0 speaks for a multi-host run: the others print no results and show no progress bars
            sys.stdout, args.no_progress = open(os.devnull, "w"), True
    from ablate.tracking import scrub  # error messages never show W&B credentials

    try:
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("ablate: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except _usage_errors() as e:
        print(f"ablate: error: {scrub(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except _store_error() as e:
        print(f"ablate: error: {scrub(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:  # an unwritable or full output folder outside the store (e.g. report --out)
        where = f": {e.filename}" if e.filename else ""
        print(f"ablate: error: cannot write output ({scrub(e.strerror or str(e))}){where}", file=sys.stderr)
        return 1


# An except clause's classes are looked up only when an exception reaches it: these import the modules that
# define them (the report's and the store's need pandas) then, not on every command.
def _usage_errors() -> tuple[type[Exception], ...]:
    """Errors in what the command was given (exit code 2)."""
    from ablate.config import ConfigError
    from ablate.data import DataError
    from ablate.registry import UnknownNameError
    from ablate.report import QueryError
    from ablate.store import StoreLocationError
    from ablate.study import StudyError

    return ConfigError, StudyError, UnknownNameError, DataError, QueryError, StoreLocationError


def _store_error() -> type[Exception]:
    """Errors of the run store (exit code 1)."""
    from ablate.store import StoreError

    return StoreError


def cmd_list(args) -> None:
    from ablate.data import DATASETS
    from ablate.losses import LOSSES
    from ablate.models import MODELS
    from ablate.policies import POLICIES
    from ablate.registry import summary
    from ablate.study import available_studies, load_study, StudyError
    from ablate.teacher_registry import TEACHERS

    for title, reg in [("policies", POLICIES), ("losses", LOSSES), ("models", MODELS),
                       ("datasets", DATASETS), ("teachers", TEACHERS)]:
        print(f"{title}:")
        for name, entry in reg.items():
            print(f"  {name:<18} {summary(entry)}")
    print("studies:")
    for name in available_studies():
        try:
            question = load_study(name).question
        except StudyError as e:
            question = f"(cannot load: {str(e).splitlines()[0]})"
        print(f"  {name:<18} {question}")


def cmd_teacher(args) -> None:
    from ablate.teachers import get_teacher

    print(_teacher_line(args.name, get_teacher(args.name, progress=not args.no_progress)))


def _teacher_line(name: str, teacher) -> str:
    """What a study's reader wants to know of its teacher: accuracy, training time, where it is cached."""
    from ablate.teachers import teacher_dir

    s = teacher.summary
    if s.get("last/test/acc") is None:
        return f"teacher {name}: loaded from its checkpoint (not evaluated by ablate), {teacher_dir(name)}"
    return (f"teacher {name}: test acc {100 * s['last/test/acc']:.2f}%, val acc {100 * s['last/val/acc']:.2f}% "
            f"({s.get('last/time/train_s', 0):.0f} s of training), cached in {teacher_dir(name)}")


def _runner(args):
    from ablate import paths
    from ablate.runner import Runner
    from ablate.store import RunStore
    from ablate.tracking import resolve_mode

    resolve_mode(args.wandb)
    return Runner(RunStore(args.store or paths.store_dir()), args.wandb, args.wandb_project,
                  args.wandb_entity, progress=not args.no_progress)


def cmd_distill(args) -> None:
    import dataclasses
    from ablate import parallel
    from ablate.config import RunConfig, validate
    from ablate.study import Cell

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig) if getattr(args, f.name) is not None}
    cfg = RunConfig.from_dict({**RunConfig().to_dict(), **values})
    validate(cfg)
    runner = _runner(args)
    cell = Cell(cfg, {"policy": cfg.policy})
    done = runner.store.is_done(cell.run_id)
    if not done:
        runner.preflight([cell])  # bad input fails before any work
    if done:
        print(f"run {cell.run_id} is already done; results in {runner.store.run_dir(cell.run_id)}")
    else:
        outcome = runner.run(cell, group="distill")
        if outcome == "busy":
            print(f"run {cell.run_id} is being run by another process", file=sys.stderr)
            return 1
    parallel.barrier("ablate: run finished")  # on several hosts the others then read what process 0 wrote
    _print_summary(runner.store, cell.run_id)
    return 1 if runner.store.status(cell.run_id).get("state") == "failed" else 0


def _print_summary(store, run_id) -> None:
    rec = store.record(run_id)
    keys = ["best/val/acc", "best/test/acc", "last/test/acc", "last/test/agree_top1", "last/test/kl",
            "last/train/loss", "teacher/test/acc", "wall_s"]
    print(f"run {run_id}: {rec.get('status')}  ({store.run_dir(run_id)})")
    for k in keys:
        if rec.get(k) is not None:
            print(f"  {k:<22} {rec[k]:.4f}")


def _done_in_store(args, grid) -> frozenset:
    """Run ids of `grid` already done in the run store; a dry run reads the store and never creates it."""
    from ablate import paths
    from ablate.store import RunStore

    store = RunStore(args.store or paths.store_dir())
    if not store.root.is_dir():
        return frozenset()
    return frozenset(c.run_id for c in grid if store.is_done(c.run_id))


def cmd_run(args) -> int:
    from ablate.study import cells, load_study, run_cells, shard
    from ablate import estimate

    study = load_study(args.study)
    grid = cells(study, args.preset)
    if args.cell:
        from ablate.sweep import select_cell
        grid = select_cell(grid, args.cell, study.name, args.preset)
    grid = shard(grid, args.shard)
    if args.dry_run:
        print(estimate.describe_grid(study, grid, args.preset, args.cohort_size, _done_in_store(args, grid)))
        return 0
    runner = _runner(args)
    pending = [c for c in grid if not runner.store.is_done(c.run_id)]
    for run_id in {c.run_id for c in grid} - {c.run_id for c in pending}:
        runner.store.drop_stale_lock(run_id)
    runner.preflight(pending)  # bad input fails before any run
    group, desc = study.name, f"{study.name} ({args.preset or 'default'})"
    for name in sorted({name for c in pending for name in c.config.teachers}):
        # trained (or loaded) once, before the study's runs are counted
        print(_teacher_line(name, runner.teacher(name)))
    outcome = run_cells(grid, lambda cs: runner.run_cohort(cs, group=group), runner.store.is_done,
                        progress=not args.no_progress, desc=desc, cohort_key=runner.cohort_key,
                        cohort_size=args.cohort_size)
    print(f"study {study.name}: {outcome.ran} ran, {outcome.skipped} already done, {outcome.failed} failed, "
          f"{outcome.busy} being run elsewhere; runs in the run store {runner.store.root.absolute()}")
    if (outcome.ran or outcome.skipped) and args.report is not None:
        _render_after_run(args, study, runner.store.root)
    elif outcome.ran or outcome.skipped:
        print(f"render its report with: ablate report {args.study}" +
              (f" --preset {args.preset}" if args.preset else ""))
    return 1 if outcome.failed else 0


def _render_after_run(args, study, store_root) -> None:
    """`ablate run --report`: the report of what the store now holds (written by process 0 of a multi-host run)."""
    from ablate import parallel, report
    from ablate.store import RunStore

    if parallel.is_leader():
        out = report.render(study, args.preset, store=RunStore(store_root), out_dir=args.report or None,
                            called=args.study)
        print(f"report written to {out / 'report.md'}")


def _store_to_read(args):
    """The run store that report, findings and compare read: checked to exist when they read it (source local)."""
    from ablate import paths
    from ablate.store import RunStore

    store = RunStore(args.store or paths.store_dir())
    if args.source == "local":
        store.check_readable()
    return store


def cmd_report(args) -> None:
    from ablate import report
    from ablate.study import load_study

    out = report.render(load_study(args.study), args.preset, source=args.source, store=_store_to_read(args),
                        out_dir=args.out, called=args.study)
    print(f"report written to {out / 'report.md'}")


def cmd_findings(args) -> None:
    import pathlib

    from ablate import findings, report

    report.check_source(args.source)
    study_presets = findings.parse_study_presets(args.study_preset)
    findings.check_presets(args.preset, study_presets)
    text = findings.table(args.preset, _store_to_read(args), args.source, study_presets)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")


def cmd_compare(args) -> None:
    from ablate import report
    from ablate.study import load_study

    store = _store_to_read(args)
    where = f"the run store {store.root}" if report.check_source(args.source) == "local" else args.source
    if args.study:
        runs, _, _ = report.study_frames(load_study(args.study), args.preset, args.source, store)
        where = f"{where} for study {args.study}" + (f" (preset {args.preset})" if args.preset else "")
    elif args.preset:
        raise report.QueryError("--preset picks a study's preset: give the study with --study")
    else:
        runs = report.load_runs(args.source, store)
    if runs.empty:
        raise report.QueryError(f"no runs in {where}" + (" (--store or $ABLATE_STORE picks another)"
                                                         if args.source == "local" else ""))
    table = report.compare(runs, args.filters, metric=args.metric, by=args.by, baseline=args.baseline)
    import pandas as pd

    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False))
    for line in report.damaged_lines(runs):
        print(line)
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"written {args.csv}")


def cmd_sweep(args) -> None:
    import pathlib
    from ablate import sweep
    from ablate.study import cells, load_study

    study = load_study(args.study)
    config = sweep.sweep_config(args.study, study, cells(study, args.preset), args.preset,
                                project=args.wandb_project, entity=args.wandb_entity)
    text = sweep.dumps(config, args.format)
    if not args.out:
        print(text, end="")
        return
    pathlib.Path(args.out).write_text(text)
    n = len(config["parameters"][sweep.PARAMETER]["values"])
    print(f"wrote {args.out}: grid sweep over {n} cells; start it with `wandb sweep {args.out}`, then run "
          "`wandb agent ENTITY/PROJECT/SWEEP_ID` on each machine", file=sys.stderr)


COMMANDS = {"list": cmd_list, "teacher": cmd_teacher, "distill": cmd_distill, "run": cmd_run,
            "report": cmd_report, "compare": cmd_compare, "findings": cmd_findings}
COMMANDS["sweep"] = cmd_sweep

if __name__ == "__main__":
    sys.exit(main())
