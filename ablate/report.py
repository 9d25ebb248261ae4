"""Reading runs back: the study report (figures + report.md) and the compare table."""

from __future__ import annotations

import dataclasses
import pathlib
import time

import numpy as np
import pandas as pd

from ablate import paths
from ablate.config import RunConfig
from ablate.store import RunStore
from ablate.study import SEED_FIELDS, Study, Variant, cells

TABLE_METRICS = ("best/test/acc", "last/test/acc", "last/test/agree_top1", "last/test/kl", "last/train/loss",
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

def summarize(runs: pd.DataFrame, by: list[str], metrics=TABLE_METRICS) -> pd.DataFrame:
    """Mean and std over seeds of each metric, per group of `by`; n counts the finished seeds."""
    done = runs[runs.status == "done"] if "status" in runs else runs
    metrics = [m for m in metrics if m in done]
    if done.empty:
        return pd.DataFrame(columns=by + ["n"])
    g = done.groupby(by, dropna=False, sort=False)
    out = g.size().rename("n").to_frame()
    for m in metrics:
        out[m] = g[m].mean()
        out[f"{m} std"] = g[m].std(ddof=0 if len(done) == 1 else 1).fillna(0.0)
    return out.reset_index()


def training_minutes(runs: pd.DataFrame) -> float:
    """Wall time spent training the runs, in minutes; a cohort's time (every member's `wall_s`) counted once."""
    size = runs["cohort_size"].fillna(1) if "cohort_size" in runs else 1
    return float((runs["wall_s"] / size).sum() / 60)


def _fmt(mean: float, std: float, pct: bool) -> str:
    if pd.isna(mean):
        return "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if pct else f"{mean:.4g} ± {std:.2g}"


def markdown_table(table: pd.DataFrame, by: list[str]) -> str:
    metrics = [c for c in table.columns if c not in by and c != "n" and not c.endswith(" std")]
    header = by + ["n"] + [m + (" (%)" if _is_pct(m) else "") for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells_ = [str(row[b]) for b in by] + [str(int(row["n"]))]
        cells_ += [_fmt(row[m], row[f"{m} std"], _is_pct(m)) for m in metrics]
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def _is_pct(metric: str) -> bool:
    return metric.endswith("acc") or "agree" in metric


def compare(runs: pd.DataFrame, filters: list[str], metric: str = "best/test/acc", by: str | None = None,
            baseline: str | None = None) -> pd.DataFrame:
    """Runs filtered by FIELD=VALUE, grouped over seeds, ranked by `metric`, with deltas to a baseline group.

    Values match as numbers where both sides are numbers (`epochs=500` finds 500.0), else as text. Bad
    filters, fields, metrics or baselines raise QueryError naming what is valid.
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
    table = summarize(df, keys, metrics=(metric,))
    for col, states in (("failed", ("failed", "damaged")), ("running", ("running",))):  # always shown
        counts = df[df.status.isin(states)].groupby(keys, dropna=False).size().rename(col)
        if len(counts):
            counts = counts.reset_index()
            table = counts if table.empty else table.merge(counts, on=keys, how="outer")
    for col, fill in ((metric, np.nan), ("failed", 0), ("running", 0), ("n", 0)):
        table[col] = table[col].fillna(fill) if col in table else fill
    for col in ("failed", "running", "n"):
        table[col] = table[col].astype(int)
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


# ----------------------------------------------------------------------------- figures

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
    lines += [f"{n_done} of {len(grid)} runs finished; rendered {time.strftime('%Y-%m-%d %H:%M')} "
              f"from `{source}`.", "",
              f"Made by `ablate run {called}{run_flags}` (the runs) and "
              f"`ablate report {called}{report_flags}` (this page).", ""]
    if n_done:
        shows_test = any("test/" in m for m in metrics)
        teacher_acc = runs["teacher/test/acc"].dropna().unique() if "teacher/test/acc" in runs else []
        if len(teacher_acc) and shows_test:
            lines += [f"Teacher test accuracy: {', '.join(f'{100 * a:.2f}%' for a in teacher_acc)}.", ""]
        by = axes or ["policy"]
        table = summarize(runs, by, metrics=metrics)
        over = "seeds" if s.seed_field == "seed" else "seeds of the student's initialisation (init_seed)"
        lines += [f"## Results (mean ± std over {over})", "", markdown_table(table, by), ""]
        if "wall_s" in runs:
            lines += [f"Total training wall time: {training_minutes(runs):.1f} min over {n_done} runs.", ""]
        for fig in study.figures:
            path = FIGURE_FNS[fig](runs, hist, x, hue, out, axes=axes)
            if path is not None:
                lines += [f"![{fig}]({path.name})", ""]
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


def _teacher_line(ax, runs):
    if "teacher/test/acc" in runs and runs["teacher/test/acc"].notna().any():
        ax.axhline(runs["teacher/test/acc"].dropna().iloc[0], color="k", ls="--", lw=1, label="teacher")


def _save(fig, out, name):
    path = out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def fig_final(runs, hist, x, hue, out, **_):
    """Student test accuracy (best-on-val and last) per cell, teacher as a dashed line."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = runs[runs.status == "done"]
    long = done.melt(id_vars=[c for c in [x, hue] if c], value_vars=["best/test/acc", "last/test/acc"],
                     var_name="which", value_name="test accuracy")
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * done[x].nunique() + 2), 4))
    colour = hue or "which"
    sns.pointplot(data=long, x=x, y="test accuracy", hue=colour, errorbar="sd",
                  dodge=0.3 if long[colour].nunique() > 1 else False,
                  linestyle="none" if hue is None else "-", ax=ax)
    _teacher_line(ax, done)
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=8)
    return _save(fig, out, "final")


def fig_validation(runs, hist, x, hue, out, axes=(), **_):
    """Validation accuracy at the end of training per cell, for choosing hyperparameters without test data."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = runs[runs.status == "done"]
    if done.empty or "last/val/acc" not in done:
        return None
    col = next((a for a in axes if a not in (x, hue)), None)
    grid = sns.catplot(data=done, x=x, y="last/val/acc", hue=hue, col=col, kind="point", errorbar="sd",
                       dodge=0.2 if hue and done[hue].nunique() > 1 else False, height=3.8, aspect=1.1)
    grid.set_ylabels("validation accuracy (end of training)")
    grid.tick_params(axis="x", rotation=30)
    path = out / "validation.png"
    grid.figure.savefig(path, dpi=120, bbox_inches="tight")  # keeps catplot's legend outside the axes
    plt.close(grid.figure)
    return path


def fig_patience(runs, hist, x, hue, out, **_):
    """Student test accuracy vs schedule length (log axis) per policy; teacher as a line."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = runs[runs.status == "done"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sns.lineplot(data=done, x="epochs", y="last/test/acc", hue=hue if hue != "epochs" else "policy",
                 marker="o", errorbar="sd", ax=ax)
    ax.set_xscale("log")
    ax.set_ylabel("student test accuracy (end of training)")
    _teacher_line(ax, done)
    ax.legend(fontsize=8)
    return _save(fig, out, "patience")


def fig_loss_vs_acc(runs, hist, x, hue, out, **_):
    """Training distillation loss vs test accuracy: fixed teachers fit their targets and still generalise worse."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    done = runs[(runs.status == "done") & runs["last/train/loss"].notna()]
    if done.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sns.scatterplot(data=done, x="last/train/loss", y="last/test/acc", hue="policy",
                    size="epochs" if done["epochs"].nunique() > 1 else None, ax=ax)
    ax.set_xscale("log")
    ax.set_xlabel("training distillation loss (end of training)")
    ax.set_ylabel("student test accuracy")
    ax.legend(fontsize=7)
    return _save(fig, out, "loss_vs_acc")


def fig_curves(runs, hist, x, hue, out, **_):
    """Test accuracy and teacher-student agreement over training, per policy (longest schedule)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if hist.empty:
        return None
    done = runs[runs.status == "done"]
    if "epochs" in done and done["epochs"].nunique() > 1:
        done = done[done["epochs"] == done["epochs"].max()]
    colour = hue if (hue and hue != "epochs") else x
    h = hist.merge(done[["run_id", colour]], on="run_id")
    panels = [m for m in ("test/acc", "test/agree_top1") if m in h]
    fig, axs = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, m in zip(axs[0], panels):
        sns.lineplot(data=h, x="epoch", y=m, hue=colour, errorbar="sd", ax=ax)
        ax.set_title(m)
        ax.legend(fontsize=7)
        if m == "test/acc":
            _teacher_line(ax, done)
    return _save(fig, out, "curves")


FIGURE_FNS = {"final": fig_final, "validation": fig_validation, "patience": fig_patience,
              "loss_vs_acc": fig_loss_vs_acc, "curves": fig_curves}
