"""Reading runs back: the study report (figures + report.md) and the compare table."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import re
import textwrap
import time

import numpy as np
import pandas as pd

from ablate import paths
from ablate.config import RunConfig
from ablate.store import RunStore
from ablate.study import SEED_FIELDS, Study, Variant, cells

RANK_METRIC = "last/test/acc"
"""What report.md, `ablate compare` and `ablate findings` rank by: test accuracy at the end of training."""
TABLE_METRICS = (RANK_METRIC, "best/test/acc", "last/test/agree_top1", "last/test/kl", "last/train/loss",
                 "best/val/acc")


class QueryError(ValueError):
    """A bad source, filter, grouping, metric or baseline for reading runs back; the message says what is valid."""


# ----------------------------------------------------------------------------- sources

def check_source(source: str) -> str:
    """`source` if it is 'local' or 'wandb:ENTITY/PROJECT'; QueryError otherwise."""
    if source == "local" or (source.startswith("wandb:") and source[len("wandb:"):].strip("/")):
        return source
    raise QueryError(f"unknown source {source!r}; use 'local' or 'wandb:ENTITY/PROJECT'")


def load_runs(source: str, store: RunStore, group: str | None = None) -> pd.DataFrame:
    """Runs as a DataFrame from the local store, or from W&B with source 'wandb:ENTITY/PROJECT'."""
    if check_source(source) == "local":
        return store.frame()
    return _wandb_runs(source[len("wandb:"):], group)[0]


def _wandb_runs(path: str, group: str | None):
    import wandb

    api = wandb.Api()
    runs = api.runs(path, filters={"group": group} if group else None)
    rows, hist = [], []
    for r in runs:
        cfg = {k: v for k, v in r.config.items() if not k.startswith("_")}
        rows.append({"run_id": r.id, **cfg, "status": "done" if r.state == "finished" else r.state,
                     **{k: v for k, v in r.summary.items() if not k.startswith("_")}})
        for h in r.history(pandas=False):
            hist.append({"run_id": r.id, "step": h.get("_step"), **{k: v for k, v in h.items() if "/" in k}})
    return pd.DataFrame(rows), pd.DataFrame(hist)


def study_frames(study: Study, preset: str | None, source: str, store: RunStore):
    """(runs, histories, expected cells) of a study: only the runs its grid defines."""
    grid = cells(study, preset)
    ids = [c.run_id for c in grid]
    if check_source(source) == "local":
        runs, hist = store.frame(ids), store.history_frame(ids)
    else:
        runs, hist = _wandb_runs(source[len("wandb:"):], study.name)
        runs = runs[runs.run_id.isin(ids)]
        hist = hist[hist.run_id.isin(ids)] if len(hist) else hist
    # an axis of variants (`data=[variant("in-domain", ...), ...]`, `init=[variant("scratch", init=None), ...]`)
    # is shown by its labels, whether or not the axis is also a config field
    s = study.resolve(preset)
    labelled = [k for k, vals in s.axes.items() if any(isinstance(v, Variant) for v in vals)]
    labelled += [k for z in s.zipped for k, vals in z.items() if any(isinstance(v, Variant) for v in vals)]
    if len(runs):
        for axis in labelled:
            runs[axis] = runs["run_id"].map({c.run_id: c.point.get(axis) for c in grid})
    return runs, hist, grid


# ----------------------------------------------------------------------------- tables

def rank_metric(metrics) -> str | None:
    """The metric rows are ranked by: the first `last/` one (at the end of training), else the first."""
    return next((m for m in metrics if m.startswith("last/")), metrics[0] if metrics else None)


def best_of(metric: str) -> str | None:
    """`last/test/acc` -> `best/test/acc`: the same metric at the evaluation with the best validation accuracy."""
    return "best/" + metric[len("last/"):] if metric.startswith("last/") else None


def summarize(runs: pd.DataFrame, by: list[str], metrics=TABLE_METRICS) -> pd.DataFrame:
    """Mean and std over seeds of each metric, per group of `by`; n counts the finished seeds (std NaN at n = 1)."""
    done = runs[runs.status == "done"] if "status" in runs else runs
    metrics = [m for m in metrics if m in done]
    if done.empty:
        return pd.DataFrame(columns=by + ["n"])
    g = done.groupby(by, dropna=False, sort=False)
    out = g.size().rename("n").to_frame()
    for m in metrics:
        out[m] = g[m].mean()
        out[f"{m} std"] = g[m].std(ddof=1)
    return out.reset_index()


def training_minutes(runs: pd.DataFrame) -> float:
    """Wall time spent training the runs, in minutes; a cohort's time (every member's `wall_s`) counted once."""
    size = runs["cohort_size"].fillna(1) if "cohort_size" in runs else 1
    return float((runs["wall_s"] / size).sum() / 60)


def _fmt(mean: float, std: float, pct: bool, n: int = 2) -> str:
    """`mean ± std`, or the single run's value without ± when n < 2 (one seed has no spread)."""
    if pd.isna(mean):
        return "-"
    value = f"{100 * mean:.2f}" if pct else f"{mean:.4g}"
    if n < 2 or pd.isna(std):
        return value
    return f"{value} ± {100 * std:.2f}" if pct else f"{value} ± {std:.2g}"


def markdown_table(table: pd.DataFrame, by: list[str]) -> str:
    metrics = [c for c in table.columns if c not in by and c != "n" and not c.endswith(" std")]
    header = by + ["n"] + [m + (" (%)" if _is_pct(m) else "") for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells_ = [f"{row[b]:g}" if isinstance(row[b], float) else str(row[b]) for b in by] + [str(int(row["n"]))]
        cells_ += [_fmt(row[m], row[f"{m} std"], _is_pct(m), int(row["n"])) for m in metrics]
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def _is_pct(metric: str) -> bool:
    return metric.endswith("acc") or "agree" in metric


GAP = "gap"
"""gap_fractions' column: the fraction of the label-only-to-teacher gap a run closes."""


def gap_fractions(runs: pd.DataFrame, by=("epochs",), metric: str = RANK_METRIC) -> pd.DataFrame:
    """Each finished run with column `gap`: the fraction of the gap between the label-only student and the teacher
    it closes, (acc - L) / (T - L), its own `metric` against L, the label-only student's mean `metric` over its
    seeds at the same `by` values (the same schedule), and T, its teacher's `teacher/test/acc` (for the label-only
    runs themselves, which have no teacher, the study's one teacher). 1 is the teacher's accuracy, 0 the label-only
    student's, so each distilled run's fraction varies with its own seed and the seed spread of the fractions is the
    seed spread of the runs. NaN where no label-only run has finished at those `by` values or the teacher is not
    better than L; an empty frame where the runs have no label-only student or no teacher accuracy."""
    done = runs[runs.status == "done"] if "status" in runs else runs
    by = [b for b in by if b in done]
    if metric not in done or "teacher/test/acc" not in done:
        return done.iloc[:0].assign(**{GAP: pd.Series(dtype=float)})
    done = done.dropna(subset=[metric])
    ref = done[_label_only(done)]
    if ref.empty or done["teacher/test/acc"].isna().all():
        return done.iloc[:0].assign(**{GAP: pd.Series(dtype=float)})
    teachers = done["teacher/test/acc"].dropna().unique()
    teacher = done["teacher/test/acc"]
    if len(teachers) == 1:  # one teacher: the label-only runs are measured against it too
        teacher = teacher.fillna(teachers[0])
    if by:
        label_only = ref.groupby(by, dropna=False)[metric].mean().rename("_label_only").reset_index()
        floor = done[by].merge(label_only, on=by, how="left")["_label_only"].to_numpy()
    else:
        floor = np.full(len(done), ref[metric].mean())
    span = teacher.to_numpy() - floor
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.where(span > 0, (done[metric].to_numpy() - floor) / span, np.nan)
    return done.assign(**{GAP: gap})


def gap_table(runs: pd.DataFrame, keys: list[str], x: str = "epochs", metric: str = RANK_METRIC) -> list[str]:
    """report.md's lines for the table of the fraction of the label-only-to-teacher gap closed (%): a row per group
    of `keys` (policies by display name, in the grid's order), a column per `x` (schedule), each cell mean ± std over
    the seeds of the runs' own fractions (gap_fractions; no ± at n = 1). No lines (the table left out) unless the runs
    have an `x` axis, a label-only student and the teacher's accuracy."""
    if x not in runs:
        return []
    g = gap_fractions(runs, [x], metric)  # against the label-only mean at the same schedule
    if g.empty or g[GAP].isna().all():
        return []
    g = g.assign(_row=_labels(g, keys))
    stats = g.groupby(["_row", x], sort=False)[GAP].agg(["mean", "std", "count"])
    columns = sorted(g[x].unique())
    rows = list(dict.fromkeys(g["_row"]))
    name = ", ".join(keys) or "runs"
    lines = ["## Fraction of the label-only-to-teacher gap closed", "",
             f"| {name} | " + " | ".join(f"{c:g} {x} (%)" if isinstance(c, (int, float, np.number)) else
                                          f"{c} (%)" for c in columns) + " |",
             "|" + "---|" * (len(columns) + 1)]
    missing = False
    for row in rows:
        cells_ = []
        for c in columns:
            s = stats.loc[(row, c)] if (row, c) in stats.index else None
            if s is None or not s["count"]:
                cells_.append("-")
                missing = True
                continue
            mean = 0.0 if abs(s["mean"]) < 1e-12 else s["mean"]  # the label-only row, 0 by construction: not -0.00
            cells_.append(_fmt(mean, s["std"], True, int(s["count"])))
        lines.append(f"| {row} | " + " | ".join(cells_) + " |")
    spread = ("mean ± std over seeds of each run's own fraction, no ± at n = 1" if (stats["count"] > 1).any()
              else "one run per cell, so no ±")
    at = "schedule" if x == "epochs" else display(x)
    return lines + ["", f"100% is the teacher's test accuracy, 0% the label-only student's (its mean over seeds at the "
                        f"same {at}); {spread}" + (f"; -: the policy or the label-only student has no finished run "
                                                   f"at that {at} yet" if missing else "") + ".", ""]


def compare(runs: pd.DataFrame, filters: list[str], metric: str = RANK_METRIC, by: str | None = None,
            baseline: str | None = None) -> pd.DataFrame:
    """Runs filtered by FIELD=VALUE, grouped over seeds, ranked by `metric`, with deltas to a baseline group.

    `metric` defaults to `last/test/acc` (end of training), the metric report.md and `ablate findings` rank by;
    its `best/` counterpart (at the best validation evaluation) is shown beside it. Values match as numbers where
    both sides are numbers (`epochs=500` finds 500.0), else as text. Bad filters, fields, metrics or baselines
    raise QueryError naming what is valid.
    """
    if runs.empty:
        raise QueryError("no runs to compare")
    df = runs.copy()
    for f in filters:
        k, v = _field_value(f, "filter", df)
        kept = df[_equals(df[k], v)]
        if kept.empty:
            present = ", ".join(sorted({str(x) for x in df[k]})[:20])
            raise QueryError(f"no runs match {' '.join(filters)}: no run with {k}={v} "
                             f"{'among those matching the filters before it ' if len(df) < len(runs) else ''}"
                             f"(values of {k}: {present})")
        df = kept
    if metric not in df:
        if "status" in df and (df.status == "done").any():
            raise QueryError(f"unknown metric {metric!r}; metrics: "
                             f"{', '.join(c for c in df.columns if c.startswith(('best/', 'last/')))}")
        df[metric] = np.nan  # no run has finished yet: the table still lists the failed ones
    keys = by.split(",") if by else (_varying(df) or ["policy" if "policy" in df else "run_id"])
    unknown = [k for k in keys if k not in df]
    if unknown:
        raise QueryError(f"cannot group by {', '.join(map(repr, unknown))}: no such field; "
                         f"fields: {', '.join(sorted(map(str, df.columns)))}")
    second = best_of(metric)
    table = summarize(df, keys, metrics=(metric, second) if second and second in df else (metric,))
    for col, states in (("failed", ("failed", "damaged")), ("running", ("running",))):  # always shown
        counts = df[df.status.isin(states)].groupby(keys, dropna=False).size().rename(col)
        if len(counts):
            counts = counts.reset_index()
            table = counts if table.empty else table.merge(counts, on=keys, how="outer")
    for col, fill in ((metric, np.nan), ("failed", 0), ("running", 0), ("n", 0)):
        table[col] = table[col].fillna(fill) if col in table else fill
    for col in ("failed", "running", "n"):
        table[col] = table[col].astype(int)
    if (table["n"] < 2).all():  # one seed per group: no spread to show
        table = table.drop(columns=[c for c in table.columns if c.endswith(" std")])
    table = table.sort_values(metric, ascending=False, na_position="last").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    if baseline:
        k, v = _field_value(baseline, "baseline", table, valid=keys)
        base = table[_equals(table[k], v)]
        if base.empty:
            raise QueryError(f"baseline {baseline!r} matches no group; groups: {table[keys].to_dict('records')}")
        if len(base) > 1:
            raise QueryError(f"baseline {baseline!r} matches {len(base)} groups: {base[keys].to_dict('records')}; "
                             "add a filter so that one group matches")
        table[f"delta vs {baseline}"] = table[metric] - base[metric].iloc[0]
    return table


def _field_value(spec: str, what: str, df: pd.DataFrame, valid: list[str] | None = None) -> tuple[str, str]:
    """"FIELD=VALUE" -> (FIELD, VALUE), FIELD one of `valid` (default: the frame's columns)."""
    k, sep, v = spec.partition("=")
    if not sep or not k:
        raise QueryError(f"{what} {spec!r} must look like FIELD=VALUE, e.g. policy=funmatch")
    valid = valid if valid is not None else sorted(map(str, df.columns))
    if k not in valid:
        raise QueryError(f"unknown field {k!r} in {what} {spec!r}; "
                         f"{'grouping fields' if what == 'baseline' else 'fields'}: {', '.join(valid)}")
    return k, v


def _equals(column: pd.Series, value: str) -> pd.Series:
    """Rows whose value is `value`: as numbers where both are numbers, else as text."""
    as_text = column.astype(str) == value
    try:
        number = float(value)
    except ValueError:
        return as_text
    as_number = pd.to_numeric(column, errors="coerce").astype(float)
    return as_text | pd.Series(np.isclose(as_number, number, rtol=1e-12, atol=0.0), index=column.index)


CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in SEED_FIELDS)
"""Config fields a compare table may group by: all but the seeds, which a group averages over."""


def _varying(df: pd.DataFrame) -> list[str]:
    """Config fields (besides the seeds, which a group averages over) whose value differs between runs."""
    return [k for k in CONFIG_KEYS if k in df and df[k].astype(str).nunique() > 1]


# ----------------------------------------------------------------------------- report.md

def render(study: Study, preset: str | None, *, source: str = "local", store: RunStore | None = None,
           out_dir: str | pathlib.Path | None = None, called: str | None = None) -> pathlib.Path:
    """Write the study's figures (PNG) and report.md with its tables; returns the folder.

    `called` is the study as given to `ablate run` (e.g. "paper/pets" for the study named paper_pets), for the
    commands report.md quotes; default: the study's name.
    """
    import matplotlib

    matplotlib.use("Agg")
    store = store or RunStore(paths.store_dir())
    runs, hist, grid = study_frames(study, preset, source, store)
    for line in damaged_lines(runs):  # also in report.md; said here so that it is not missed
        print(line, file=sys.stderr)
    out = pathlib.Path(out_dir) if out_dir else paths.reports_dir() / study.name / (preset or "default")
    out.mkdir(parents=True, exist_ok=True)
    s = study.resolve(preset)
    axes = [k for k in list(s.axes) + [k for z in s.zipped for k in z] if k != "seed"]
    x = study.x or (axes[0] if axes else "policy")
    hue = study.hue or next((a for a in axes if a != x), None)

    lines = [f"# Study `{study.name}`" + (f" (preset `{preset}`)" if preset else ""), "", f"> {study.question}", ""]
    n_done = int((runs.status == "done").sum()) if len(runs) else 0
    called = called or study.name
    run_flags = f" --preset {preset}" if preset else ""
    report_flags = run_flags + (f" --source {source}" if source != "local" else "")
    metrics = study.metrics or TABLE_METRICS
    lines += [f"{n_done} of {len(grid)} runs finished; read from {describe_source(source, store, study.name)} "
              f"on {time.strftime('%Y-%m-%d %H:%M')}.", "",
              f"Made by `ablate run {called}{run_flags}` (the runs) and "
              f"`ablate report {called}{report_flags}` (this page).", ""]
    if n_done:
        shows_test = any("test/" in m for m in metrics)
        teacher_line = teacher_accuracy(runs)
        if teacher_line and shows_test:
            lines += [teacher_line, ""]
        by = axes or ["policy"]
        table = summarize(runs, by, metrics=metrics)
        rank = rank_metric([m for m in metrics if m in table])
        ranked = len(by) == 1 and rank is not None  # one axis: rows best first; several: the grid's order
        if ranked:
            table = table.sort_values(rank, ascending=False, kind="stable")
        over = "seeds" if s.seed_field == "seed" else "seeds of the student's initialisation (init_seed)"
        lines += ["## Results", "", markdown_table(table, by), "",
                  results_notes(table, rank, ranked, over), ""]
        if "wall_s" in runs:
            lines += [f"Total training wall time: {training_minutes(runs):.1f} min over {n_done} runs.", ""]
        if x == "epochs":  # how far each policy gets from the label-only student towards the teacher
            lines += gap_table(runs, [a for a in by if a != x] or ["policy"], x)
        lines += teacher_agreement_table(runs, by)
        number = 0
        for name in study.figures:
            made = FIGURE_FNS[name](runs, hist, x, hue, axes=axes, title=short_title(study.question))
            if made is not None:
                fig, caption = made
                number += 1
                lines += [f"![{name}]({_save(fig, out, name).name})", "", f"*Figure {number}. {caption}*", ""]
    lines += did_not_finish(runs)
    missing = len(grid) - len(runs)
    if missing:
        lines += [f"{missing} cells have not started; run `ablate run {called}{run_flags}`.", ""]
    if len(runs):
        columns = ([c for c in (*study.metrics, "wall_s") if c in runs] if study.metrics else
                   [c for c in runs.columns if c.startswith(("best/", "last/", "teacher/")) or c == "wall_s"])
        seeds = [c for c in SEED_FIELDS if c in runs and runs[c].notna().any()]
        keep = ["run_id", *[c for c in axes if c in runs], *seeds, "status", *columns]
        runs[list(dict.fromkeys(keep))].to_csv(out / "runs.csv", index=False)
        lines += ["Every number above comes from the runs listed in `runs.csv` (run id = config hash; "
                  "the run folders hold configs and metric histories).", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out


def teacher_agreement_table(runs: pd.DataFrame, by: list[str], split: str = "test") -> list[str]:
    """report.md's lines for the student's top-1 agreement with each teacher and with their ensemble, per group of
    `by` (mean ± std over seeds), where some runs have several teachers ('a+b'); no lines otherwise. A one-teacher
    run's agreement counts for its teacher's column; a several-teacher run's ensemble column is its `agree_top1`."""
    if not _several(runs).any():
        return []
    done = runs[runs.status == "done"] if "status" in runs else runs
    names = list(dict.fromkeys(n for t in done["teacher"].dropna().astype(str) for n in t.split("+")))
    whole = f"last/{split}/agree_top1"
    several = _several(done)
    columns = {}
    for name in names:
        own = done[f"{whole}/{name}"] if f"{whole}/{name}" in done else pd.Series(np.nan, index=done.index)
        columns[f"`{name}` agree"] = own.where(several, done[whole].where(done["teacher"] == name))
    columns["ensemble agree"] = done[whole].where(several)
    table = summarize(done.assign(**columns), by, metrics=list(columns))
    return ["## Agreement with each teacher", "", markdown_table(table, by), "",
            f"Top-1 agreement (%) of the student with each teacher and with the ensemble of a run's teachers (mean "
            f"probabilities) on the {split} split at the end of training; mean ± std over seeds; -: not one of the "
            "run's teachers.", ""]


def teacher_accuracy(runs: pd.DataFrame) -> str | None:
    """report.md's line of teacher test accuracy: the one teacher's; or, where runs name several teachers ('a+b'),
    each teacher's and each ensemble's (mean probabilities) by name. None where no run has a teacher."""
    accs = _teacher_accs(runs)
    if not len(accs):
        return None
    t = runs.dropna(subset=["teacher/test/acc"])
    if "teacher" not in t or (len(accs) == 1 and not _several(t).any()):
        return f"Teacher test accuracy: {', '.join(f'{100 * a:.2f}%' for a in t['teacher/test/acc'].unique())}."
    single = {name: acc for name, acc in accs.items() if "+" not in name}
    for column in t.columns:  # each member of an ensemble, as a several-teacher run records it
        member = re.fullmatch(r"teacher/(.+)/test/acc", column)
        if member and t[column].notna().any():
            single.setdefault(member[1], t[column].dropna().iloc[0])
    line = "Teachers' test accuracy: " + ", ".join(f"`{name}` {100 * acc:.2f}%" for name, acc in single.items())
    ensembles = [f"`{name}` {100 * acc:.2f}%" for name, acc in accs.items() if "+" in name]
    return line + ("; their ensembles' (mean probabilities): " + ", ".join(ensembles) if ensembles else "") + "."


def describe_source(source: str, store: RunStore, group: str | None = None) -> str:
    """What report.md was read from: the local run store (its folder) or the W&B project (and group)."""
    if source != "local":
        return f"the W&B project `{source[len('wandb:'):]}`" + (f" (group `{group}`)" if group else "")
    root = store.root
    try:  # a store inside the working folder is named as the user would type it
        root = root.resolve().relative_to(pathlib.Path.cwd().resolve())
    except ValueError:
        pass
    return f"the local run store `{root}`"


def results_notes(table: pd.DataFrame, rank: str | None, ranked: bool, over: str) -> str:
    """The paragraph under report.md's table: what n and ± are, what `last` and `best` mean, what ranks the rows."""
    n = table["n"]
    notes = ["n counts each cell's finished runs. " + (
        "Every cell has one run, so there is no spread and no ±; differences between cells are single draws."
        if n.max() < 2 else f"Values are mean ± std over the {over}"
        + ("; cells with n = 1 show their single run, without ±." if n.min() < 2 else "."))]
    if rank and rank.startswith("last/"):
        notes.append("`last/` metrics are measured at the end of training and are what report.md, `ablate compare` "
                     "and `ablate findings` rank by" + (f"; rows here are ranked by `{rank}`." if ranked else "."))
    if any(c.startswith("best/") and not c.endswith(" std") for c in table.columns):
        notes.append("`best/` metrics are measured at the evaluation with the highest validation accuracy "
                     "(what early stopping on the validation split would keep), shown beside them for reference.")
    return " ".join(notes)


def did_not_finish(runs: pd.DataFrame) -> list[str]:
    """report.md lines for runs that failed (non-finite loss, an error), were interrupted or are damaged."""
    bad = runs[runs.status != "done"] if len(runs) else runs
    if not len(bad):
        return []
    lines = ["## Runs that did not finish", "",
             f"{len(bad)} run(s): failed runs give the step and the reason; `running` means interrupted (or still "
             "going): `ablate run` resumes it; `damaged` names the file that cannot be read: `ablate run` "
             "rewrites it.", "", "| run | status | step | reason |", "|---|---|---|---|"]
    for _, r in bad.iterrows():
        step = r.get("failed_step")
        step = "-" if step is None or pd.isna(step) else str(int(step))
        reason = r.get("reason")
        reason = "" if reason is None or (isinstance(reason, float) and pd.isna(reason)) else str(reason)
        reason = " ".join(reason.split()).replace("|", "\\|")
        lines.append(f"| {r.run_id} | {r.status} | {step} | {reason} |")
    return lines + [""]


def damaged_lines(runs: pd.DataFrame) -> list[str]:
    """One warning per damaged run folder, naming the file (for `ablate compare`)."""
    if not len(runs) or "status" not in runs:
        return []
    return [f"warning: run {r.run_id} is damaged: {r.reason}; `ablate run` on its study rewrites it"
            for _, r in runs[runs.status == "damaged"].iterrows()]


# ----------------------------------------------------------------------------- figures

NAMES = {
    "last/test/acc": "test accuracy at the end of training (%)",
    "best/test/acc": "test accuracy at the best validation evaluation (%)",
    "last/val/acc": "validation accuracy at the end of training (%)",
    "test/acc": "student test accuracy (%)",
    "test/agree_top1": "top-1 agreement with the teacher (%)",
    "last/train/loss": "training distillation loss at the end of training",
    "policy": "teacher-input policy", "epochs": "schedule length (epochs)", "epoch": "epoch",
    "lr": "learning rate", "wd": "weight decay", "temperature": "temperature T", "mixup_p": "mixup strength p",
    "loss": "loss", "init": "student initialisation", "optimizer": "optimiser", "data": "training images",
    "setup": "set-up", "teacher": "teacher",
}
"""Display names of metrics and axes on figures (report.md's tables keep the keys, as compare and runs.csv do)."""
SHORT = {"mixup_p": "p", "temperature": "T"}
LABEL_ONLY = {"supervised": "label-only (no teacher)", "supervised/mixup": "label-only + mixup (no teacher)"}
POLICY_COLOURS = {"fix/rs": "#9ecae1", "fix/cc": "#4292c6", "fix/ic_ens": "#08519c",  # fixed: blues
                  "ind/rc": "#fdae6b", "ind/ic": "#e6550d",  # independent: oranges
                  "same/rc": "#a1d99b", "same/ic": "#31a354",  # consistent: greens
                  "funmatch": "#d62728", **{name: "#7f7f7f" for name in LABEL_ONLY.values()}}


def display(key: str) -> str:
    return NAMES.get(key, key.replace("_", " "))


def short_title(question: str, width: int = 70) -> str:
    """A figure's title: the study's question up to its first sentence end, wrapped into lines of even length."""
    first = re.split(r"(?<=[?.!])\s", question.strip(), maxsplit=1)[0]
    lines = math.ceil(len(first) / width)
    return textwrap.fill(first, math.ceil(len(first) / lines) + 6)


def _label_only(df: pd.DataFrame) -> pd.Series:
    return df["policy"].isin(LABEL_ONLY) if "policy" in df else pd.Series(False, index=df.index)


def _labels(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """One text label per row from the axes `keys`: policies by display name, numbers as `0.5` (or `T=2` beside
    another axis)."""
    def one(row):
        parts = []
        for k in keys:
            v = row[k]
            if k == "policy":
                parts.append(LABEL_ONLY.get(v, str(v)))
            elif isinstance(v, (int, float, np.number)) and not isinstance(v, bool):
                parts.append(f"{v:g}" if len(keys) == 1 else f"{SHORT.get(k, k)}={v:g}")
            else:
                parts.append(str(v))
        return ", ".join(parts)

    return df.apply(one, axis=1) if keys and len(df) else pd.Series("all runs", index=df.index, dtype=object)


def _in_order(df: pd.DataFrame, key: str, labels: str) -> list:
    """The labels of an axis in its natural order: numbers ascending, anything else as the grid lists it."""
    firsts = df.drop_duplicates(labels)
    if pd.api.types.is_numeric_dtype(firsts[key]):
        firsts = firsts.sort_values(key)
    return list(firsts[labels])


def _palette(levels) -> dict:
    """Policies in their families' colours, label-only grey; other levels from tab10 (or husl, past 8 levels)."""
    import seaborn as sns

    levels = list(levels)
    others = [level for level in levels if level not in POLICY_COLOURS]
    colours = ([c for i, c in enumerate(sns.color_palette("tab10")) if i not in (3, 7)]  # not funmatch's red, grey
               if len(others) <= 8 else sns.color_palette("husl", len(others)))
    return {level: POLICY_COLOURS.get(level) or colours[others.index(level)] for level in levels}


def _pct(df: pd.DataFrame, cols) -> pd.DataFrame:
    return df.assign(**{c: 100 * df[c] for c in cols if c in df})


def _seeds(df: pd.DataFrame, keys: list[str]) -> str | None:
    """Runs per cell as a caption gives them (`n = 3`, `n = 2-3`); None when every cell has one run (no spread)."""
    n = df.groupby(keys, dropna=False).size() if keys else pd.Series([len(df)])
    if n.max() < 2:
        return None
    return f"n = {n.min()}" if n.min() == n.max() else f"n = {n.min()}-{n.max()}"


BANDS_UP_TO = 5
"""Lines a figure shades ± 1 std bands for; past that they would hide each other (the table has the std)."""


def _spread_note(seeds: str | None, drawn_as: str, lines: int = 0) -> str:
    if not seeds:
        return "one run per cell (n = 1), so no spread is shown"
    if drawn_as == "shaded" and lines > BANDS_UP_TO:
        return f"lines are means over {seeds} seeds (no bands with more than {BANDS_UP_TO} lines: see the table)"
    return f"{drawn_as}: ± 1 std over {seeds} seeds"


def _several(runs: pd.DataFrame) -> pd.Series:
    """Which runs distil from several teachers (`teacher` names joined by '+')."""
    if "teacher" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["teacher"].astype(str).str.contains("+", regex=False)


def _teacher_accs(runs: pd.DataFrame) -> pd.Series:
    """Test accuracy (0-1) of each distinct teacher of the runs, by its `teacher` value ('a+b': their ensemble)."""
    if "teacher/test/acc" not in runs:
        return pd.Series(dtype=float)
    t = runs.dropna(subset=["teacher/test/acc"])
    names = t["teacher"].astype(str) if "teacher" in t else pd.Series("teacher", index=t.index)
    return t.groupby(names)["teacher/test/acc"].first()


def _teachers(runs: pd.DataFrame) -> list[tuple[str, float]]:
    """(label, test accuracy in %) of each distinct teacher of the runs."""
    accs = _teacher_accs(runs)
    if len(accs) == 1:
        return [("teacher", 100 * accs.iloc[0])]
    sizes = [name.count("+") + 1 for name in accs.index]
    return [(f"teacher {name}" if n == 1 else f"ensemble of {n}" if sizes.count(n) == 1 else f"ensemble {name}",
             100 * acc) for (name, acc), n in zip(accs.items(), sizes)]


TEACHER_DASHES = ("--", "-.", ":", (0, (6, 2, 1, 2)), (0, (1, 1)))
"""Dash patterns that tell several teachers' (and ensembles') reference lines apart."""


def _teacher_references(ax, runs: pd.DataFrame, vertical: bool = False) -> list[float]:
    """The teachers' test accuracy as black reference lines; returns the values, for zooming. One teacher is named
    on its line; several (teachers or their ensembles) differ in dash pattern and are named in the legend, since
    names on lines a fraction of a point apart would overlap."""
    refs = _teachers(runs)
    for i, (label, acc) in enumerate(refs):
        if len(refs) == 1:
            _reference(ax, acc, label, vertical=vertical)
        else:
            (ax.axvline if vertical else ax.axhline)(acc, color="k", lw=1.2, ls=TEACHER_DASHES[i % len(TEACHER_DASHES)],
                                                     label=f"{label}: {acc:.1f}%")
    return [acc for _, acc in refs]


def _teacher_note(runs: pd.DataFrame, one: str = "dashed black: the teacher") -> str:
    """A caption's words for `_teacher_references`' lines."""
    return one if len(_teachers(runs)) < 2 else "black lines: each teacher and ensemble, by dash pattern (legend)"


def _reference(ax, value: float, label: str, vertical: bool = False, colour: str = "k", ls: str = "--"):
    """A labelled reference line (teacher, label-only student): named on the line and in the legend."""
    (ax.axvline if vertical else ax.axhline)(value, color=colour, ls=ls, lw=1.2, label=f"{label}: {value:.1f}%")
    where = dict(xy=(value, 0.99), xycoords=("data", "axes fraction"), rotation=90, ha="right", va="top") \
        if vertical else dict(xy=(0.99, value), xycoords=("axes fraction", "data"), ha="right", va="bottom")
    ax.annotate(f"{label} {value:.1f}%", fontsize=8, color=colour, **where)


def _zoom(set_lim, values, pad: float = 0.1):
    """Axis limits from the data (and reference lines) alone, not from 0 or chance level."""
    values = np.asarray([v for v in values if np.isfinite(v)])
    if len(values):
        lo, hi = values.min(), values.max()
        span = max(hi - lo, 1.0)
        set_lim(lo - pad * span, hi + pad * span)


def _by_last_value(df: pd.DataFrame, x: str, y: str) -> list:
    """`_line` levels ordered as their lines end, top first: the legend reads like the lines' right edge."""
    last = df[df[x] == df[x].max()].groupby("_line")[y].mean()
    return list(last.sort_values(ascending=False).index) + [v for v in dict.fromkeys(df["_line"]) if v not in last]


DASHES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))
"""Line style and marker per level of a second axis, where colours alone cannot tell the lines apart."""


def _two_axis_styles(done: pd.DataFrame, keys: list[str], order: list) -> tuple[dict, dict]:
    """Past 8 lines of two axes: one colour per level of the axis with more levels, one line style and marker per
    level of the other (at most 4), instead of one colour per line. Returns ({line: colour}, {line: (ls, marker)}),
    or a palette of its own per line and no styles where that does not apply."""
    if len(keys) != 2 or len(order) <= 8:
        return _palette(order), {}
    levels = {k: _labels(done, [k]) for k in keys}
    coloured, dashed = sorted(keys, key=lambda k: -levels[k].nunique())
    if levels[dashed].nunique() > len(DASHES):
        return _palette(order), {}
    of_line = pd.DataFrame({"line": _labels(done, keys), "c": levels[coloured], "d": levels[dashed]})
    of_line = of_line.drop_duplicates("line").set_index("line").loc[[o for o in order if o in set(of_line.line)]]
    colours = _palette(dict.fromkeys(of_line["c"]))
    dashes = dict(zip(dict.fromkeys(of_line["d"]), DASHES))
    return ({line: colours[r.c] for line, r in of_line.iterrows()},
            {line: dashes[r.d] for line, r in of_line.iterrows()})


def _lines(ax, df: pd.DataFrame, x: str, y: str, palette: dict, spread: bool, styles: dict | None = None
           ) -> list[float]:
    """One line per `_line` level (mean over seeds, ± 1 std band when `spread`); label-only ones dashed grey;
    `styles` ({level: (line style, marker)}) where colour is shared. Returns the plotted extents, for zooming."""
    extent = []
    for level, colour in palette.items():
        g = df[df["_line"] == level].groupby(x)[y].agg(["mean", "std"])
        if g.empty:
            continue
        ls, marker = (styles or {}).get(level, ("--" if level in LABEL_ONLY.values() else "-", "o"))
        ax.plot(g.index, g["mean"], color=colour, ls=ls, marker=marker, ms=4, lw=1.6, label=level)
        lo, hi = g["mean"] - g["std"].fillna(0), g["mean"] + g["std"].fillna(0)
        if spread:
            ax.fill_between(g.index, lo, hi, color=colour, alpha=0.15, lw=0)
        extent += [*lo, *hi]
    return extent


def _log_axis(axis, values):
    """A log-scale axis with plain numbers (0.2, not 2x10^-1); the minor ticks labelled too within one decade."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.axes.set_xscale("log") if axis.axis_name == "x" else axis.axes.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain if values.max() < 10 * values.min() else NullFormatter())


def _save(fig, out, name):
    import matplotlib.pyplot as plt

    path = out / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps legends placed outside the axes
    plt.close(fig)
    return path


def fig_final(runs, hist, x, hue, axes=(), title=""):
    """Test accuracy at the end of training per cell, best first; teacher and label-only student as lines."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = runs[runs.status == "done"].dropna(subset=[RANK_METRIC])
    if done.empty:
        return None
    done = _pct(done, [RANK_METRIC])
    as_line = hue is None and x == "policy"  # the label-only student is a reference line, not a category
    ref, cells_ = (done[_label_only(done)], done[~_label_only(done)]) if as_line else (done.iloc[:0], done)
    cells_ = cells_.assign(_y=_labels(cells_, [x]), _hue=_labels(cells_, [hue]) if hue else None)
    means = cells_.groupby("_y", sort=False)[RANK_METRIC].mean()
    order = list(means.sort_values(ascending=False).index) if hue is None else _in_order(cells_, x, "_y")
    levels = _in_order(cells_, hue, "_hue") if hue else order
    seeds = _seeds(cells_, [k for k in (x, hue) if k])
    fig, ax = plt.subplots(figsize=(7.5, 1.6 + 0.42 * len(order) * (1 + 0.3 * (len(levels) - 1) * bool(hue))))
    sns.pointplot(data=cells_, x=RANK_METRIC, y="_y", order=order, hue="_hue" if hue else "_y",
                  hue_order=levels, palette=_palette(levels), errorbar="sd" if seeds else None,
                  linestyle="none", dodge=0.5 if hue else False, legend=bool(hue), ax=ax)
    if hue is None:
        for i, label in enumerate(order):
            ax.annotate(f"{means[label]:.1f}", (means[label], i), xytext=(0, 7), textcoords="offset points",
                        ha="center", fontsize=8)
    extent = [*cells_[RANK_METRIC]]
    extent += _teacher_references(ax, done, vertical=True)
    if len(ref):
        acc = ref[RANK_METRIC].mean()
        _reference(ax, acc, LABEL_ONLY.get(ref["policy"].iloc[0], "label-only"), vertical=True, colour="#7f7f7f",
                   ls=":")
        extent.append(acc)
    _zoom(ax.set_xlim, extent)
    ax.set_xlabel(display(RANK_METRIC))
    ax.set_ylabel(display(x))
    if hue or len(_teachers(done)) > 1:  # (otherwise the reference lines are named on the lines alone)
        ax.legend(title=display(hue) if hue else None, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(title)
    what = "per " + display(x) + (f" and {display(hue)}" if hue else ", best at the top")
    refs = _teacher_note(done, "dashed: the teacher") + ("; dotted: the label-only student" if len(ref) else "")
    return fig, f"Student test accuracy at the end of training {what}; {refs}; {_spread_note(seeds, 'error bars')}."


def fig_patience(runs, hist, x, hue, axes=(), title=""):
    """Test accuracy at the end of training against schedule length (log axis), one line per policy; beside it,
    where the runs have a label-only student and a teacher, the fraction of the gap between them each policy closes
    (paper Figs. 4-5)."""
    import matplotlib.pyplot as plt

    done = runs[runs.status == "done"].dropna(subset=[RANK_METRIC])
    if done.empty or "epochs" not in done:
        return None
    keys = [a for a in axes if a != "epochs"] or (["policy"] if "policy" in done else [])
    df = _pct(done, [RANK_METRIC]).assign(_line=_labels(done, keys))
    seeds = _seeds(df, keys + ["epochs"])
    gaps = gap_fractions(done, ["epochs"])
    gaps = gaps[~_label_only(gaps)].dropna(subset=[GAP])  # the label-only student is 0 by definition
    gaps = gaps.assign(**{GAP: 100 * gaps[GAP]}, _line=_labels(gaps, keys))
    fig, axs = plt.subplots(1, 2 if len(gaps) else 1, figsize=(13, 4.8) if len(gaps) else (7.5, 4.8),
                            squeeze=False)
    ax = axs[0][0]
    palette = _palette(_by_last_value(df, "epochs", RANK_METRIC))
    bands = bool(seeds) and len(palette) <= BANDS_UP_TO
    extent = _lines(ax, df, "epochs", RANK_METRIC, palette, bands)
    extent += _teacher_references(ax, done)
    _zoom(ax.set_ylim, extent)
    ax.set_ylabel(display(RANK_METRIC))
    epochs = sorted(done["epochs"].unique())
    if len(gaps):
        right = axs[0][1]
        shown = {level: c for level, c in palette.items() if level in set(gaps["_line"])}
        extent = _lines(right, gaps, "epochs", GAP, shown, bands) + [0.0, 100.0]
        for value, label, colour in ((100.0, "teacher", "k"), (0.0, "label-only", "#7f7f7f")):
            right.axhline(value, color=colour, ls="--", lw=1.2)
            right.annotate(f"{label} ({value:g}%)", xy=(0.01, value), xycoords=("axes fraction", "data"),
                           ha="left", va="bottom", fontsize=8, color=colour)
        _zoom(right.set_ylim, extent)
        right.set_ylabel("gap closed (%)")
        ax.set_title("test accuracy at the end of training")
        right.set_title("fraction of the label-only-to-teacher gap closed")
    for a in axs[0]:
        a.set_xscale("log")
        a.set_xticks(epochs, [f"{e:g}" for e in epochs], minor=False)
        a.minorticks_off()
        a.set_xlabel(display("epochs") + ", log scale")
    legend = dict(title=", ".join(display(k) for k in keys) or None, fontsize=8, loc="center left")
    if len(gaps):  # one legend for both panels, outside them on the right
        fig.legend(*ax.get_legend_handles_labels(), bbox_to_anchor=(1.0, 0.5), **legend)
        fig.suptitle(title)
        fig.tight_layout()
    else:
        ax.legend(bbox_to_anchor=(1.01, 0.5), **legend)
        ax.set_title(title)
    label_only = _label_only(done).any()
    left = (f"student test accuracy at the end of training against schedule length, per "
            f"{', '.join(display(k) for k in keys) or 'cell'}; {_teacher_note(done)}"
            + ("; grey dashed: the label-only student" if label_only else ""))
    spread = _spread_note(seeds, "shaded", len(palette))
    if not len(gaps):
        return fig, left[0].upper() + left[1:] + f"; {spread}."
    return fig, ("Left: " + left + ". Right: the fraction of the gap between the label-only student and the teacher "
                 "that each policy closes, each run's (student - label-only) / (teacher - label-only) against the "
                 "label-only student's mean at the same schedule (100%: the teacher's accuracy, 0%: the label-only "
                 f"student's; the table gives the numbers). Both: {spread}.")


def fig_loss_vs_acc(runs, hist, x, hue, axes=(), title=""):
    """Training distillation loss vs test accuracy: fixed teachers fit their targets and still generalise worse.
    Label-only students are left out: their training loss is label cross-entropy, not a distillation loss."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = runs[(runs.status == "done") & runs["last/train/loss"].notna()] if "last/train/loss" in runs else runs[:0]
    done = done[~_label_only(done)]
    if done.empty:
        return None
    keys = [a for a in axes if a != "epochs"] or (["policy"] if "policy" in done else [])
    df = _pct(done, [RANK_METRIC]).assign(_point=_labels(done, keys))
    levels = list(dict.fromkeys(df["_point"]))
    sized = "epochs" in df and df["epochs"].nunique() > 1
    sizes = None
    if sized:  # as ordered levels, evenly sized: sizes proportional to 10 ... 3,000 epochs would tell only the last
        schedules = [f"{e:g}" for e in sorted(df["epochs"].unique())]  # legend: 500, not 500.0
        sizes = dict(zip(schedules, np.linspace(12, 140, len(schedules))))
        df["epochs"] = df["epochs"].map(lambda e: f"{e:g}")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sns.scatterplot(data=df, x="last/train/loss", y=RANK_METRIC, hue="_point", hue_order=levels,
                    palette=_palette(levels), size="epochs" if sized else None,
                    size_order=list(sizes) if sizes else None, sizes=sizes, s=60, legend=sized, ax=ax)
    named = not sized and len(df) == len(levels)  # one point per cell: name each point instead of a legend
    if named:
        for _, r in df.iterrows():
            ax.annotate(r["_point"], (r["last/train/loss"], r[RANK_METRIC]), xytext=(5, 3),
                        textcoords="offset points", fontsize=8)
    else:
        handles = ax.get_legend_handles_labels()[0] if sized else [
            plt.Line2D([], [], marker="o", ls="", color=c, label=level) for level, c in _palette(levels).items()]
        ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    extent = [*df[RANK_METRIC]]
    extent += _teacher_references(ax, done)
    if named and len(_teachers(done)) > 1:  # several teachers' lines are named in a legend
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _zoom(ax.set_ylim, extent)
    _log_axis(ax.xaxis, df["last/train/loss"])
    ax.set_xlabel(display("last/train/loss") + ", log scale")
    ax.set_ylabel(display(RANK_METRIC))
    ax.set_title(title)
    return fig, ("Each point is one run: the distillation loss it reached on its training batches against its test "
                 "accuracy" + (", marker size = schedule length" if sized else "")
                 + f"; {_teacher_note(done, 'dashed: the teacher')}. "
                 "Label-only students are left out: their training loss is label cross-entropy.")


def fig_curves(runs, hist, x, hue, axes=(), title=""):
    """Test accuracy and teacher-student agreement over training, per cell (longest schedule); teacher as a line."""
    import matplotlib.pyplot as plt

    if hist.empty:
        return None
    done = runs[runs.status == "done"]
    longest = None
    if "epochs" in done and done["epochs"].nunique() > 1:
        longest = done["epochs"].max()
        done = done[done["epochs"] == longest]
    keys = [a for a in axes if a != "epochs"] or (["policy"] if "policy" in done else [])
    h = hist.merge(done[["run_id"]].assign(_line=_labels(done, keys), _ref=_label_only(done)), on="run_id")
    evals = int(h.groupby("run_id").size().max()) if len(h) else 0
    h = h[h["step"] > 0]  # step 0 is the untrained student at chance level: it would squeeze the rest
    panels = [m for m in ("test/acc", "test/agree_top1") if m in h]
    if h.empty or not panels:
        return None
    h = _pct(h, panels)
    seeds = _seeds(done, keys)
    palette, styles = _two_axis_styles(done, keys, _by_last_value(h.dropna(subset=[panels[0]]), "epoch", panels[0]))
    log_x = "eval_spacing" in done and bool((done["eval_spacing"] == "log").all())  # evaluated log-uniformly
    fig, axs = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
    for ax, m in zip(axs[0], panels):
        data = h.dropna(subset=[m])
        data = data[~data["_ref"]] if m != "test/acc" else data  # the label-only student has no teacher to agree with
        extent = _lines(ax, data, "epoch", m, palette, bool(seeds) and len(palette) <= BANDS_UP_TO, styles)
        if m == "test/acc":
            extent += _teacher_references(ax, done)
        _zoom(ax.set_ylim, extent)
        ax.set_title(display(m))
        ax.set_xlabel(display("epoch") + (", log scale" if log_x else ""))
        if log_x:
            _log_axis(ax.xaxis, data["epoch"])
        ax.set_ylabel("%")
    fig.legend(*axs[0][0].get_legend_handles_labels(), title=", ".join(display(k) for k in keys) or None,
               fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    return fig, ("Test accuracy and top-1 agreement with the teacher"
                 + (" (a run with several teachers: with their ensemble)" if _several(done).any() else "")
                 + " over training"
                 + (f" at the longest schedule ({longest:g} epochs)" if longest else "")
                 + f", at each run's {evals - 1} evaluations after step 0"
                 + (", spaced log-uniformly (log axis)" if log_x else "")
                 + f" (step 0, the untrained student at chance level, is left out); {_teacher_note(done)}"
                 + ("; grey dashed: the label-only student" if _label_only(done).any() else "")
                 + f"; {_spread_note(seeds, 'shaded', len(palette))}.")


def fig_validation(runs, hist, x, hue, axes=(), title=""):
    """Validation accuracy at the end of training as a heatmap (x axis by the other axes), each row's best boxed:
    hyperparameters are chosen on it, without test data."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    metric = "last/val/acc"
    done = runs[runs.status == "done"]
    if done.empty or metric not in done:
        return None
    rows = [a for a in axes if a != x]
    df = _pct(done, [metric]).assign(_col=_labels(done, [x]),
                                     _row=_labels(done, rows) if rows else "validation accuracy")
    grid = df.pivot_table(index="_row", columns="_col", values=metric, aggfunc="mean")
    grid = grid.reindex(index=_in_order(df, rows[0], "_row") if len(rows) == 1 else list(dict.fromkeys(df["_row"])),
                        columns=_in_order(df, x, "_col"))
    fig, ax = plt.subplots(figsize=(2.5 + 1.1 * grid.shape[1], 1.8 + 0.55 * grid.shape[0]))
    sns.heatmap(grid, annot=True, fmt=".1f", cmap="viridis", linewidths=0.5, ax=ax,
                cbar_kws={"label": display(metric)})
    for i, (_, row) in enumerate(grid.iterrows()):
        if row.notna().any():
            ax.add_patch(plt.Rectangle((int(np.nanargmax(row.values)), i), 1, 1, fill=False, ec="red", lw=2.5))
    ax.set_xlabel(display(x))
    ax.set_ylabel(", ".join(display(r) for r in rows))
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(title)
    seeds = _seeds(df, [x, *rows])
    return fig, (f"Validation accuracy at the end of training (%) for each {display(x)}"
                 + (f" and {', '.join(display(r) for r in rows)}" if rows else "")
                 + "; the red box marks each row's highest value; "
                 + (f"means over {seeds} seeds." if seeds else "one run per cell (n = 1)."))


FIGURE_FNS = {"final": fig_final, "validation": fig_validation, "patience": fig_patience,
              "loss_vs_acc": fig_loss_vs_acc, "curves": fig_curves}
