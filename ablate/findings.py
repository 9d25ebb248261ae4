"""The paper's findings, tested against logged runs: a reproduction table with numbers and verdicts.

Each finding is one function from the run DataFrame of its study (finished
runs only) to (our numbers, verdict). Nothing here trains; every number comes
from the local store (or W&B), so the table is re-derivable at any time.
"""

from __future__ import annotations

import pandas as pd

from ablate.report import GAP, LABEL_ONLY, best_of, gap_fractions, study_frames
from ablate.store import RunStore
from ablate.study import StudyError, load_study

FAMILIES = {"fixed": ("fix/rs", "fix/cc", "fix/ic_ens"), "independent": ("ind/rc", "ind/ic"),
            "consistent": ("same/rc", "same/ic"), "funmatch": ("funmatch",)}
ACC = "last/test/acc"  # test accuracy at the end of training: what report.md and `ablate compare` rank by too
MIN_SEEDS = 2
"""Seeds every compared group needs before a verdict can hold; with fewer, only the direction is reported."""


def _stats(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    g = df.groupby(by)[ACC]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1).fillna(0.0), "n": g.size()})


def _pm(row) -> str:
    """`mean ± std (n=3)`; a single run has no spread: `mean (n=1)`."""
    spread = f" ± {100 * row['std']:.2f}" if row["n"] >= MIN_SEEDS else ""
    return f"{100 * row['mean']:.2f}{spread} (n={int(row['n'])})"


def _verdict(verdict: str, n: int) -> str:
    """The verdict, if every compared group has at least MIN_SEEDS seeds (n is the fewest); otherwise only which
    way the numbers point: `direction only (n=1): as claimed`, `...: partly as claimed: ...`, `...: not as claimed`."""
    if n >= MIN_SEEDS or verdict == "not tested":
        return verdict
    for head, says in (("holds", "as claimed"), ("partly", "partly as claimed"), ("does not hold", "not as claimed")):
        if verdict.startswith(head):
            return f"direction only (n={n}): {says}{verdict[len(head):]}"
    return f"direction only (n={n}): {verdict}"


def finding1(runs: pd.DataFrame):
    """Consistent policies beat fixed and independent ones at long schedules; function matching is best."""
    s = _stats(runs, ["policy"])
    best = {fam: s.loc[[p for p in pols if p in s.index]].sort_values("mean").iloc[-1:]
            for fam, pols in FAMILIES.items() if any(p in s.index for p in pols)}
    if len(best) < 4:
        return "missing runs", "not tested"
    lines = [f"{fam} (best: {b.index[0]}) {_pm(b.iloc[0])}" for fam, b in best.items()]
    m = {fam: b["mean"].iloc[0] for fam, b in best.items()}
    n = int(min(b["n"].iloc[0] for b in best.values()))
    claimed = ["funmatch", "consistent", "independent", "fixed"]
    gaps = {f"{a} - {b}": m[a] - m[b] for a, b in zip(claimed, claimed[1:])}
    closest = min(gaps, key=lambda k: abs(gaps[k]))
    lines.append(f"closest step of the claimed order: {closest} {100 * gaps[closest]:+.2f} points")
    order = all(g > 0 for g in gaps.values())
    order_text = ("order funmatch > consistent > independent > fixed holds" if order else
                  "order is " + " > ".join(sorted(m, key=m.get, reverse=True)))
    if n < MIN_SEEDS:  # no seed spread to separate them by: the order alone
        return "; ".join(lines), _verdict("holds" if order else "partly: " + order_text, n)
    separated = m["funmatch"] - m["fixed"] > max(s["std"].max(), 1e-9)
    verdict = ("holds" if order and separated else
               "partly: " + order_text
               + ("; funmatch vs best fixed separated by more than the seed spread" if separated else
                  "; funmatch vs best fixed NOT separated beyond the seed spread"))
    return "; ".join(lines), verdict


def _teaching(runs: pd.DataFrame) -> list[str]:
    """The runs' policies that distil from a teacher (not the label-only student), in the order they come."""
    return [p for p in dict.fromkeys(runs["policy"]) if p not in LABEL_ONLY]


def _complete(runs: pd.DataFrame, groups) -> list:
    """The schedules (epochs), ascending, at which every policy of `groups` has a finished run. The store fills
    progressively (seed 0 first), so the longest schedule may have finished for some policies only: a finding judges
    at the longest of these, not there."""
    have = runs[runs["policy"].isin(groups)].groupby("epochs")["policy"].nunique()
    return sorted(have[have == len(set(groups))].index)


def _schedule(runs: pd.DataFrame, groups, complete: list) -> str:
    """`1000 epochs`, and which longer schedules only some of `groups` have finished runs at, when there are any."""
    later = sorted(e for e in runs.loc[runs["policy"].isin(groups), "epochs"].unique() if e > complete[-1])
    return f"{complete[-1]:g} epochs" + (
        f" (the longest schedule every compared policy has finished runs at; "
        f"{', '.join(f'{e:g}' for e in later)} only partly finished)" if later else "")


def finding2(runs: pd.DataFrame):
    """Fixed teachers reach the lowest training distillation loss but overfit: test accuracy stalls or falls.

    Judged at the longest schedule at which every teaching policy has finished runs (the label-only student has no
    distillation loss), against the schedule before it."""
    if "epochs" not in runs or runs["epochs"].nunique() < 2:
        return "missing runs", "not tested"
    groups = _teaching(runs)
    complete = _complete(runs, groups)
    fixed = [p for p in ("fix/rs", "fix/ic_ens", "fix/cc") if p in groups]
    if not fixed or not {"funmatch", "same/ic"} & set(groups) or len(complete) < 2:
        return ("missing runs (needs a fixed policy and funmatch or same/ic, all finished at two schedules)",
                "not tested")
    used = runs[runs["policy"].isin(groups) & runs["epochs"].isin(complete[-2:])]
    loss = used[used.epochs == complete[-1]].groupby("policy")["last/train/loss"].mean()
    stats = _stats(used, ["policy", "epochs"])
    acc = stats["mean"].unstack("epochs")
    gains = {p: acc.loc[p].iloc[-1] - acc.loc[p].iloc[-2] for p in acc.index}
    lowest = loss.idxmin()
    # "stalls": a fixed policy gains less than a quarter of what function matching gains over the same stretch
    bar = 0.25 * gains.get("funmatch", gains.get("same/ic", 0.0))
    stalled = [p for p in fixed if gains[p] < bar]
    text = (f"lowest train loss at {_schedule(runs, groups, complete)}: {lowest} ({loss.min():.4f}; funmatch "
            f"{loss.get('funmatch', float('nan')):.4f}); test-acc gain over the last "
            f"{acc.columns[-1] / acc.columns[-2]:.3g}x of schedule ({acc.columns[-2]:g} to {acc.columns[-1]:g}): "
            + ", ".join(f"{p} {100 * gains[p]:+.2f}" for p in acc.index)
            + f"; stalled (gain < a quarter of funmatch's): {', '.join(stalled) or 'none'}")
    verdict = ("holds" if lowest in fixed and len(stalled) == len(fixed) else
               "partly" if lowest in fixed or stalled else "does not hold")
    return text, _verdict(verdict, int(stats["n"].min()))


def finding3(runs: pd.DataFrame):
    """With function matching, test accuracy keeps rising with schedule length and approaches the teacher.

    At each schedule both funmatch and the label-only student have finished, the fraction of the gap between the
    label-only student and the teacher funmatch closes (report.gap_fractions: each run's own fraction against the
    label-only mean at the same schedule); judged at the longest of these schedules: rising and past half the gap
    holds. Also says whether funmatch ends within 0.5 points of the teacher (the paper's claim) and closes 90% of
    the gap (the moonshot)."""
    if "epochs" not in runs or "teacher/test/acc" not in runs or runs["teacher/test/acc"].isna().all():
        return "missing runs", "not tested"
    groups = ["funmatch", "supervised"]
    complete = _complete(runs, groups)
    if len(complete) < 2:
        return "missing runs", "not tested"
    used = runs[runs["epochs"].isin(complete)]
    fm = _stats(used[used.policy == "funmatch"], ["epochs"])
    sup = _stats(used[used.policy == "supervised"], ["epochs"])
    gaps = gap_fractions(used[used["policy"].isin(groups)], ["epochs"], ACC)
    gap = gaps[gaps.policy == "funmatch"].groupby("epochs")[GAP].agg(["mean", "std", "count"])
    longest = complete[-1]
    teacher = runs.loc[runs.policy == "funmatch", "teacher/test/acc"].dropna()
    teacher = (teacher if len(teacher) else runs["teacher/test/acc"].dropna()).iloc[0]
    last, n_fm, n_sup = gap.loc[longest], int(fm.loc[longest, "n"]), int(sup.loc[longest, "n"])
    spread = f" ± {100 * last['std']:.1f}" if n_fm >= MIN_SEEDS and pd.notna(last["std"]) else ""
    rising = bool((fm["mean"].diff().dropna() > 0).all())
    below = teacher - fm.loc[longest, "mean"]  # points funmatch ends below the teacher
    text = ("funmatch by epochs: " + ", ".join(f"{e:g}: {100 * r['mean']:.2f}" for e, r in fm.iterrows())
            + f"; teacher {100 * teacher:.2f}; label-only at {longest:g} epochs {100 * sup.loc[longest, 'mean']:.2f}; "
            "gap closed: " + ", ".join(f"{e:g}: {100 * g['mean']:.0f}%" for e, g in gap.iterrows() if e != longest)
            + (", " if len(gap) > 1 else "") + f"{longest:g}: {100 * last['mean']:.0f}{spread}% "
            f"(n={n_fm}; label-only n={n_sup}); judged at {_schedule(runs, groups, complete)}; "
            f"funmatch {100 * abs(below):.2f} points {'below' if below >= 0 else 'above'} the teacher: "
            f"{'within' if below <= 0.005 else 'not within'} 0.5 points (the paper's claim), "
            f"{'at least' if last['mean'] >= 0.9 else 'under'} 90% of the gap (the moonshot)")
    verdict = ("holds" if rising and last["mean"] > 0.5 else
               "partly" if rising or last["mean"] > 0.5 else "does not hold")
    return text, _verdict(verdict, int(min(fm["n"].min(), sup["n"].min())))


def finding4(runs: pd.DataFrame):
    """At short schedules function matching can trail consistent teaching; short rankings do not predict long ones.

    Ranks the teaching policies (not the label-only student) at the schedules at which every one of them has
    finished runs; the longest of these is the long end."""
    if "epochs" not in runs:
        return "missing runs", "not tested"
    groups = _teaching(runs)
    complete = _complete(runs, groups)
    if not {"funmatch", "same/ic"} <= set(groups) or len(complete) < 2:
        return "missing runs", "not tested"
    stats = _stats(runs[runs["policy"].isin(groups) & runs["epochs"].isin(complete)], ["policy", "epochs"])
    acc = stats["mean"].unstack("epochs")
    long = acc.columns.max()
    diff = acc.loc["funmatch"] - acc.loc["same/ic"]
    trails = [e for e in acc.columns if e < long and diff[e] < 0]  # shorter schedules where funmatch trails
    rank_short = acc[acc.columns.min()].rank(ascending=False)
    rank_long = acc[long].rank(ascending=False)
    changed = int((rank_short != rank_long).sum())
    text = ("funmatch - same/ic by epochs: " + ", ".join(f"{e:g}: {100 * d:+.2f}" for e, d in diff.items())
            + f"; {changed} of {len(acc)} teaching policies change rank between {acc.columns.min():g} and "
            f"{_schedule(runs, groups, complete)}")
    catches_up = diff[long] > max(diff[e] for e in trails) if trails else False
    verdict = "holds" if trails and catches_up and changed else "partly" if trails or changed else "does not hold"
    return text, _verdict(verdict, int(stats["n"].min()))


def finding5(runs: pd.DataFrame):
    """A label-only student with the same long recipe is clearly worse."""
    s = _stats(runs, ["policy"])
    if not {"funmatch", "supervised"} <= set(s.index):
        return "missing runs", "not tested"
    d = s.loc["funmatch", "mean"] - s.loc["supervised", "mean"]
    spread = max(s.loc["funmatch", "std"], s.loc["supervised", "std"])
    text = f"funmatch {_pm(s.loc['funmatch'])}, label-only {_pm(s.loc['supervised'])}: {100 * d:+.2f} points"
    n = int(s.loc[["funmatch", "supervised"], "n"].min())
    return text, _verdict("holds" if d > 2 * spread and d > 0.01 else "does not hold", n)


def finding6(runs):
    """Out-of-domain images still distil to a useful degree; in-domain is best.

    "Useful" means knowledge of classes the student never saw an image of: its
    accuracy must clearly exceed the share of test images whose class is in its
    training data (Fashion-MNIST's test split is balanced, so 4 of 10 classes = 40%).
    """
    from ablate.data.fashion_mnist import OOD_CLASSES

    seen = len(OOD_CLASSES) / 10
    s = _stats(runs, ["dataset"])
    if not {"fashion_mnist", "fashion_mnist_ood"} <= set(s.index):
        return "missing runs", "not tested"
    ind, ood = s.loc["fashion_mnist"], s.loc["fashion_mnist_ood"]
    d = ind["mean"] - ood["mean"]
    text = (f"fashion_mnist {_pm(ind)}, fashion_mnist_ood {_pm(ood)}: {100 * d:+.2f} points; "
            f"{100 * seen:.0f}% of test images are of the classes the out-of-domain student saw")
    useful = ood["mean"] > seen + 0.05
    verdict = ("does not hold" if d <= 0 else "holds" if useful else
               "partly: in-domain is best; out-of-domain accuracy is not above the share of seen classes")
    return text, _verdict(verdict, int(min(ind["n"], ood["n"])))


def finding7(runs):
    """Pretrained student initialisation helps short schedules and matters little at long ones."""
    # `init` holds the study's variant labels (scratch / supervised), or the source run id and None in raw frames
    runs = runs.assign(init_from=runs["init"].map(lambda v: "scratch" if pd.isna(v) or v == "scratch"
                                                  else "supervised"))
    stats = _stats(runs, ["init_from", "epochs"])
    acc = stats["mean"].unstack("epochs")
    if acc.shape[0] < 2 or acc.shape[1] < 2:
        return "missing runs", "not tested"
    d = acc.loc["supervised"] - acc.loc["scratch"]
    text = "init advantage by epochs: " + ", ".join(f"{e:g}: {100 * v:+.2f}" for e, v in d.items())
    return text, _verdict("holds" if d.iloc[0] > 0 and d.iloc[-1] < d.iloc[0] else "does not hold",
                          int(stats["n"].min()))


def finding8(runs):
    """More aggressive mixup (p = 1) is better for function matching."""
    s = _stats(runs, ["mixup_p"])
    if len(s) < 2:
        return "missing runs", "not tested"
    best, spread = s["mean"].idxmax(), s["std"].max()
    top = s["mean"].sort_values(ascending=False)
    margin = top.iloc[0] - top.iloc[1]  # the best p's lead over the runner-up
    text = ", ".join(f"p={p:g}: {_pm(r)}" for p, r in s.iterrows())
    n = int(s["n"].min())
    if n < MIN_SEEDS:  # no seed spread to compare the lead with
        return text + f"; p={best:g} leads p={top.index[1]:g} by {100 * margin:.2f}", _verdict(
            "holds" if best == s.index.max() else f"does not hold (best p={best:g})", n)
    if s["mean"].max() - s["mean"].min() <= spread:  # every p within one seed spread of every other
        return text + f"; all within the seed spread ({100 * spread:.2f})", "does not hold (no p is better)"
    if margin <= spread:
        return (text + f"; p={best:g} leads p={top.index[1]:g} by {100 * margin:.2f}, within the seed spread "
                f"({100 * spread:.2f})", "does not hold (no p is better)")
    return text, "holds" if best == s.index.max() else f"does not hold (best p={best:g})"


FINDINGS = [
    (1, "consistency", finding1, "Consistent policies beat fixed and independent ones at long schedules; function matching is best."),
    (2, "patience", finding2, "Fixed teachers reach the lowest training loss but overfit: test accuracy stalls or falls."),
    (3, "patience", finding3, "Function matching keeps improving with schedule length and approaches the teacher."),
    (4, "patience", finding4, "At short schedules function matching can trail consistent teaching; short rankings do not predict long ones."),
    (5, "consistency", finding5, "A label-only student with the same long recipe is clearly worse."),
    (6, "ood", finding6, "Out-of-domain images still distil to a useful degree; in-domain is best."),
    (7, "init", finding7, "Pretrained student init helps short schedules, matters little at long ones."),
    (8, "mixup", finding8, "More aggressive mixup (p = 1) is better for function matching."),
]


def parse_study_presets(specs: list[str]) -> dict[str, str]:
    """`["patience=long"]` -> `{"patience": "long"}`; a malformed item or an unknown study is an error."""
    studies = {name for _, name, _, _ in FINDINGS}
    out = {}
    for spec in specs:
        name, sep, preset = spec.partition("=")
        if not sep or not name or not preset:
            raise StudyError(f"--study-preset must look like STUDY=PRESET (e.g. patience=long), got {spec!r}")
        if name not in studies:
            raise StudyError(f"--study-preset names study {name!r}, which no finding reads; "
                             f"valid: {', '.join(sorted(studies))}")
        out[name] = preset
    return out


def check_presets(preset: str, study_presets: dict | None = None) -> None:
    """StudyError, before anything is read, for a study that has no preset of the chosen name."""
    for study_name in dict.fromkeys(name for _, name, _, _ in FINDINGS):
        load_study(study_name).resolve((study_presets or {}).get(study_name, preset))


def table(preset: str, store: RunStore, source: str = "local", study_presets: dict | None = None) -> str:
    """The reproduction table as markdown: claim, study, our numbers, verdict (and the verdict on `best`), then a
    note on what the numbers and verdicts mean.

    Every study is read at `preset`, except those named in `study_presets`
    (e.g. `{"patience": "long"}` to test findings 2-4 on the longer schedules).
    """
    best = best_of(ACC)
    lines = [f"| # | paper's claim | study (preset) | runs | our numbers ({ACC}: last test top-1 %, mean ± std over "
             f"n seeds, no ± at n = 1) | verdict | same rule on {best} |", "|---|---|---|---|---|---|---|"]
    for num, study_name, fn, claim in FINDINGS:
        chosen = (study_presets or {}).get(study_name, preset)
        try:
            runs, _, grid = study_frames(load_study(study_name), chosen, source, store)
        except Exception as e:  # noqa: BLE001 - a missing study is reported, not fatal
            lines.append(f"| {num} | {claim} | `{study_name}` | - | cannot load: {e} | not tested | - |")
            continue
        done = runs[runs.status == "done"] if len(runs) else runs
        numbers, verdict = fn(done) if len(done) else ("no finished runs", "not tested")
        on_best = fn(done.assign(**{ACC: done[best]}))[1] if len(done) and best in done else "not tested"
        lines.append(f"| {num} | {claim} | `{study_name}` ({chosen}) | {len(done)}/{len(grid)} | {numbers} "
                     f"| **{verdict}** | {on_best} |")
    return "\n".join(lines + [
        "", f"Numbers are `{ACC}`, the student at the end of training (what report.md and `ablate compare` rank by); "
        f"the last column applies the same rule to `{best}`, the student at its best validation evaluation. "
        f"A verdict needs at least {MIN_SEEDS} finished seeds in every group it compares; with fewer it reads "
        "`direction only (n=1)` and says which way the numbers point."])
