"""report.md, its figures and `ablate compare` on synthetic run stores (no training): n and ± as the seeds allow,
one ranking metric (`last`) with `best` beside it, figures titled and labelled with display names."""

import dataclasses

import matplotlib
import numpy as np
import pandas as pd
import pytest

from ablate import report
from ablate.cli import build_parser, main
from ablate.store import RunStore
from ablate.study import LABEL_ONLY, Study, variant
from tests.helpers import fake_runs

matplotlib.use("Agg")

QUESTION = "Must the teacher see the student's view? Fixed vs consistent."
STUDY = Study(
    name="fake", question=QUESTION,
    base=dict(teacher="fmnist_xs", model="resnet_xs", subset_per_class=10, batch_size=50, epochs=4),
    axes=dict(policy=["funmatch", "fix/rs", variant("supervised", policy="supervised", loss="label_ce",
                                                    teacher=None)]),
    presets=dict(one=dict(seeds=1), two=dict(seeds=2)),
    figures=("final", "loss_vs_acc", "curves"),
)
# at the end of training funmatch > supervised > fix/rs; at the best validation evaluation fix/rs leads
LAST = {"funmatch": 0.83, "fix/rs": 0.75, "supervised": 0.78}
BEST = {"funmatch": 0.84, "fix/rs": 0.86, "supervised": 0.79}


def summary(cell):
    p, seed = cell.point["policy"], cell.config.seed
    out = {"last/test/acc": LAST[p] + 0.002 * seed, "best/test/acc": BEST[p] + 0.002 * seed,
           "last/val/acc": LAST[p], "best/val/acc": BEST[p], "last/train/loss": 0.1 if p == "funmatch" else 0.01}
    return out if p == "supervised" else {**out, "teacher/test/acc": 0.90, "last/test/agree_top1": LAST[p] + 0.02}


def history(cell):
    p = cell.point["policy"]
    rows = [{"step": s, "epoch": e, "test/acc": a, "val/acc": a} for s, e, a in
            ((0, 0.0, 0.1), (4, 2.0, LAST[p] - 0.05), (8, 4.0, LAST[p]))]
    return rows if p == "supervised" else [{**r, "test/agree_top1": r["test/acc"] + 0.02} for r in rows]


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "store")
    for preset in ("one", "two"):
        fake_runs(store, STUDY, preset, summary, history)
    return store


def frames(store, preset):
    runs, hist, _ = report.study_frames(STUDY, preset, "local", store)
    return runs, hist


def test_one_seed_shows_no_plus_minus_and_says_so(store, tmp_path):
    """n = 1: the single run's value without ±, a note that there is no spread, `last` explained, rows ranked by it,
    `best` beside it, the store named, and one caption per figure."""
    out = report.render(STUDY, "one", store=store, out_dir=tmp_path / "one")
    text = (out / "report.md").read_text()
    assert not [line for line in text.splitlines() if line.startswith("|") and "±" in line]
    assert f"read from the local run store `{store.root}`" in text
    assert "| policy | n | last/test/acc (%) | best/test/acc (%) |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | 1 | " in line]
    assert [r.split(" | ")[0] for r in rows] == ["| funmatch", "| supervised", "| fix/rs"]  # by last, not best
    assert rows[0].startswith("| funmatch | 1 | 83.00 | 84.00 |")
    assert "Every cell has one run, so there is no spread and no ±" in text
    assert "rows here are ranked by `last/test/acc`" in text
    assert "`best/` metrics are measured at the evaluation" in text
    captions = [line for line in text.splitlines() if line.startswith("*Figure ")]
    assert len(captions) == 3 and all("n = 1" in c for c in captions[:1] + captions[2:])
    assert "Label-only students are left out" in captions[1]


def test_two_seeds_show_mean_and_std(store, tmp_path):
    out = report.render(STUDY, "two", store=store, out_dir=tmp_path / "two")
    text = (out / "report.md").read_text()
    assert "| funmatch | 2 | 83.10 ± 0.14 | 84.10 ± 0.14 |" in text
    assert "Values are mean ± std over the seeds" in text and "over n = 2 seeds" in text


def test_compare_ranks_by_last_with_best_beside(store):
    """`ablate compare` ranks by last/test/acc by default (its --metric default), showing best/test/acc beside it."""
    assert build_parser().parse_args(["compare"]).metric == "last/test/acc" == report.RANK_METRIC
    runs, _ = frames(store, "two")
    table = report.compare(runs, [])
    assert list(table.policy) == ["funmatch", "supervised", "fix/rs"]
    columns = list(table.columns)
    assert columns.index("n") < columns.index("last/test/acc") < columns.index("best/test/acc")
    assert list(report.compare(runs, [], metric="best/test/acc").policy) == ["fix/rs", "funmatch", "supervised"]
    one_seed = report.compare(frames(store, "one")[0], [])
    assert not [c for c in one_seed.columns if c.endswith(" std")] and set(one_seed["n"]) == {1}  # no ± at n = 1


def test_compare_command_ranks_by_last(store, tmp_path, capsys):
    csv = tmp_path / "cmp.csv"
    assert main(["compare", "--store", str(store.root), "--baseline", "policy=supervised", "--csv", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert list(table.policy) == ["funmatch", "supervised", "fix/rs"] and list(table["rank"]) == [1, 2, 3]
    assert table["last/test/acc"].is_monotonic_decreasing and "best/test/acc" in table
    assert "last/test/acc" in capsys.readouterr().out


def _title(fig):
    return fig.get_suptitle() or fig.axes[0].get_title()


def _texts(fig):
    """Every label, tick label, legend entry and annotation a reader sees on the figure."""
    out = [_title(fig)]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *(t.get_text() for t in ax.texts)]
        out += [t.get_text() for t in ax.get_yticklabels()]
        if ax.get_legend():
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    for legend in fig.legends:
        out += [t.get_text() for t in legend.get_texts()]
    return [t for t in out if t]


@pytest.mark.parametrize("name", ["final", "loss_vs_acc", "curves"])
def test_figures_have_a_title_display_names_and_labelled_references(store, name):
    runs, hist = frames(store, "one")
    fig, caption = report.FIGURE_FNS[name](runs, hist, "policy", None, axes=["policy"],
                                           title=report.short_title(QUESTION))
    texts = _texts(fig)
    assert _title(fig) == "Must the teacher see the student's view?"
    assert not [t for t in texts if "/" in t and t not in ("fix/rs",)], texts  # no raw keys such as test/acc
    assert any("teacher 90.0%" in t for t in texts)
    assert caption.endswith(".") and "\n" not in caption
    if name == "loss_vs_acc":
        assert not [t for t in texts if "label-only" in t]  # its loss is label cross-entropy: left out
        assert fig.axes[0].get_ylabel() == "test accuracy at the end of training (%)"
    else:
        assert any(t.startswith("label-only (no teacher)") for t in texts)
    if name == "final":
        assert fig.axes[0].get_xlabel() == "test accuracy at the end of training (%)"
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["funmatch", "fix/rs"]  # best first
        assert fig.axes[0].get_xlim()[0] > 70  # zoomed to the data, not from 0
    if name == "curves":
        acc, agree = fig.axes[:2]
        assert (acc.get_title(), agree.get_title()) == ("student test accuracy (%)",
                                                        "top-1 agreement with the teacher (%)")
        assert acc.get_ylim()[0] > 60  # not from step 0's chance level (10%)
        assert "label-only (no teacher)" not in [line.get_label() for line in agree.lines]  # nothing to agree with
        assert "label-only (no teacher)" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_validation_heatmap_marks_each_rows_best(store):
    runs, hist = frames(store, "one")
    fig, caption = report.fig_validation(runs, hist, "policy", None, axes=["policy"], title="Which policy?")
    ax = fig.axes[0]
    assert _title(fig) == "Which policy?" and ax.get_xlabel() == "teacher-input policy"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["funmatch", "fix/rs", "label-only (no teacher)"]
    assert [t.get_text() for t in ax.texts] == ["83.0", "75.0", "78.0"]
    assert len(ax.patches) == 1 and ax.patches[0].get_xy() == (0, 0)  # funmatch's cell boxed
    assert caption.startswith("Validation accuracy at the end of training (%) for each teacher-input policy")


# ----------------------------------------------------------------------------- the patience study's gap fraction

PATIENCE = Study(
    name="fake_patience", question="How do policies scale with schedule length? Fixed teachers should overfit.",
    base=dict(teacher="fmnist_xs", model="resnet_xs", subset_per_class=10, batch_size=50),
    axes=dict(policy=["fix/rs", "funmatch", LABEL_ONLY], epochs=[10, 100]),
    presets=dict(one=dict(seeds=1), two=dict(seeds=2), no_label_only=dict(policy=["fix/rs", "funmatch"], seeds=2)),
    x="epochs", hue="policy", figures=("patience",),
)
# mean test accuracy at 10 and 100 epochs; seed 0 is a point below, seed 1 a point above; the teacher has 90%
PATIENCE_ACC = {"fix/rs": (0.63, 0.74), "funmatch": (0.66, 0.85), "supervised": (0.60, 0.70)}


def patience_summary(cell):
    p, e, seed = cell.point["policy"], cell.config.epochs, cell.config.seed
    acc = PATIENCE_ACC[p][(10, 100).index(e)] + 0.01 * (2 * seed - 1)
    out = {"last/test/acc": acc, "best/test/acc": acc, "last/train/loss": 0.1}
    return out if p == "supervised" else {**out, "teacher/test/acc": 0.90}  # label-only runs have no teacher


@pytest.fixture
def patience_store(tmp_path):
    store = RunStore(tmp_path / "patience_store")
    fake_runs(store, PATIENCE, "two", patience_summary)  # presets one and no_label_only read subsets of these runs
    return store


def _gap_rows(text):
    lines = text.splitlines()
    start = lines.index("## Fraction of the label-only-to-teacher gap closed")
    return [line for line in lines[start + 2:] if line.startswith("|")], lines[start + 2:]


def test_gap_table_two_seeds_by_hand(patience_store, tmp_path):
    """Each run's own fraction (acc - label-only mean) / (teacher - label-only mean), at its schedule; mean ± std over
    the seeds. funmatch at 100 epochs: (0.84 - 0.70) / 0.20 = 70%, (0.86 - 0.70) / 0.20 = 80%: 75.00 ± 7.07."""
    text = (report.render(PATIENCE, "two", store=patience_store, out_dir=tmp_path / "two") / "report.md").read_text()
    rows, after = _gap_rows(text)
    assert rows == ["| policy | 10 epochs (%) | 100 epochs (%) |", "|---|---|---|",
                    "| fix/rs | 10.00 ± 4.71 | 20.00 ± 7.07 |",  # 0.62, 0.64 against 0.60 of 0.30; 0.73, 0.75 of 0.20
                    "| funmatch | 20.00 ± 4.71 | 75.00 ± 7.07 |",
                    "| label-only (no teacher) | 0.00 ± 4.71 | 0.00 ± 7.07 |"]  # its own seeds around its mean
    note = next(line for line in after if line and not line.startswith("|"))
    assert "100% is the teacher's test accuracy, 0% the label-only student's" in note and "-:" not in note
    assert text.index("## Results") < text.index("## Fraction") < text.index("![patience]")


def test_gap_table_one_seed_has_no_plus_minus(patience_store, tmp_path):
    """n = 1: seed 0 alone, against the label-only seed 0 (59%, 69%): funmatch (0.65 - 0.59) / (0.90 - 0.59)."""
    text = (report.render(PATIENCE, "one", store=patience_store, out_dir=tmp_path / "one") / "report.md").read_text()
    rows, after = _gap_rows(text)
    assert rows[2:] == ["| fix/rs | 9.68 | 19.05 |", "| funmatch | 19.35 | 71.43 |",
                        "| label-only (no teacher) | 0.00 | 0.00 |"]
    assert "one run per cell, so no ±" in next(line for line in after if line and not line.startswith("|"))


def test_gap_table_left_out_without_a_label_only_student_or_teacher(patience_store, tmp_path):
    text = (report.render(PATIENCE, "no_label_only", store=patience_store, out_dir=tmp_path / "none")
            / "report.md").read_text()
    assert "## Results" in text and "## Fraction" not in text and "label-only-to-teacher" not in text
    assert "Right:" not in text  # the figure has no gap panel either
    runs, _, _ = report.study_frames(PATIENCE, "two", "local", patience_store)
    assert report.gap_table(runs, ["policy"]) != []
    assert report.gap_table(runs.drop(columns=["teacher/test/acc"]), ["policy"]) == []
    assert report.gap_table(runs.drop(columns=["epochs"]), ["policy"]) == []  # no schedule axis
    # a schedule the label-only student has not finished yet: no fraction there
    partial = runs[~((runs.policy == "supervised") & (runs.epochs == 100))]
    lines = report.gap_table(partial, ["policy"])
    assert lines[4] == "| fix/rs | 10.00 ± 4.71 | - |"
    assert "-: the policy or the label-only student has no finished run at that schedule yet." in lines[-2]


def test_patience_figure_has_a_gap_panel_with_labelled_references(patience_store):
    runs, hist, _ = report.study_frames(PATIENCE, "two", "local", patience_store)
    fig, caption = report.fig_patience(runs, hist, "epochs", "policy", axes=["policy", "epochs"],
                                       title=report.short_title(PATIENCE.question))
    acc, gap = fig.axes
    assert _title(fig) == "How do policies scale with schedule length?"
    assert acc.get_xscale() == gap.get_xscale() == "log"
    assert [t.get_text() for t in gap.get_xticklabels()] == ["10", "100"]
    lines = {line.get_label(): line for line in gap.lines if not line.get_label().startswith("_")}
    assert sorted(lines) == ["fix/rs", "funmatch"]  # the label-only student is 0 by definition: no line
    assert list(lines["funmatch"].get_ydata()) == pytest.approx([20.0, 75.0])
    assert list(lines["fix/rs"].get_ydata()) == pytest.approx([10.0, 20.0])
    assert len(gap.collections) == 2  # a seed band per line
    assert [t.get_text() for t in gap.texts] == ["teacher (100%)", "label-only (0%)"]
    assert sorted(line.get_ydata()[0] for line in gap.lines if line.get_label().startswith("_")) == [0, 100]
    low, high = gap.get_ylim()
    assert low < 0 and high > 100
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"funmatch", "fix/rs", "label-only (no teacher)", "teacher: 90.0%"} <= set(legend)
    assert "teacher 90.0%" in [t.get_text() for t in acc.texts]
    assert caption.startswith("Left: student test accuracy") and "Right: the fraction of the gap" in caption
    assert "100%: the teacher's accuracy, 0%: the label-only student's" in caption and "n = 2" in caption

    no_ref = runs[runs.policy != "supervised"]
    fig, caption = report.fig_patience(no_ref, hist, "epochs", "policy", axes=["policy", "epochs"], title="t")
    assert len(fig.axes) == 1 and caption.startswith("Student test accuracy") and "Right" not in caption
    assert "teacher: 90.0%" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_curves_use_a_log_axis_when_the_runs_were_evaluated_log_uniformly(tmp_path):
    """A patience study spaces its evaluations log-uniformly: its curves are drawn on a log epoch axis, so its early
    evaluations are not squeezed against zero; evenly spaced evaluations keep a linear axis."""
    store = RunStore(tmp_path / "store")
    history = lambda cell: [{"step": s, "epoch": s / 2, "test/acc": 0.5 + s / 1000} for s in (0, 2, 20, 200)]  # noqa: E731
    fake_runs(store, PATIENCE, "two", patience_summary, history)
    runs, hist, _ = report.study_frames(PATIENCE, "two", "local", store)
    assert set(runs["eval_spacing"]) == {"linear"}
    for spacing, scale in (("linear", "linear"), ("log", "log")):
        fig, caption = report.fig_curves(runs.assign(eval_spacing=spacing), hist, "epochs", "policy",
                                         axes=["policy", "epochs"])
        assert [ax.get_xscale() for ax in fig.axes] == [scale]
        assert ("spaced log-uniformly (log axis)" in caption) == (spacing == "log")


def test_loss_vs_acc_sizes_each_schedule_by_its_rank(tmp_path):
    """Marker area grows evenly from the shortest schedule to the longest, so 10 and 30 epochs stay as distinct as
    1,000 and 3,000 (areas proportional to the epochs would make everything below the longest look alike)."""
    study = dataclasses.replace(PATIENCE, axes=dict(policy=["fix/rs", "funmatch"], epochs=[10, 30, 1000, 3000]))
    store = RunStore(tmp_path / "store")
    fake_runs(store, study, "one", lambda cell: {"last/test/acc": 0.5, "last/train/loss": 0.1,
                                                  "teacher/test/acc": 0.9})
    runs, hist, _ = report.study_frames(study, "one", "local", store)
    fig, caption = report.fig_loss_vs_acc(runs, hist, "epochs", "policy", axes=["policy", "epochs"])
    legend = fig.axes[0].get_legend()
    areas = {t.get_text(): h.get_markersize() ** 2 for h, t in zip(legend.legend_handles, legend.get_texts())}
    steps = np.diff([areas[e] for e in ("10", "30", "1000", "3000")])
    assert steps == pytest.approx([steps[0]] * 3) and steps[0] > 0
    assert "marker size = schedule length" in caption


def test_teacher_line_names_each_teacher_and_each_ensemble():
    """One teacher: its accuracy alone, as before several teachers existed. Several ('a+b'): each teacher by name,
    members taken from the several-teacher runs' records, and each ensemble by name; label-only runs add nothing."""
    one = pd.DataFrame({"teacher": ["ta", "ta", None], "teacher/test/acc": [0.9, 0.9, np.nan]})
    assert report.teacher_accuracy(one) == "Teacher test accuracy: 90.00%."
    assert report.teacher_accuracy(one.assign(**{"teacher/test/acc": np.nan})) is None
    several = pd.DataFrame({"teacher": ["ta", "ta+tb", "ta+tb+tc", None],
                            "teacher/test/acc": [0.9, 0.91, 0.925, np.nan],
                            "teacher/ta/test/acc": [np.nan, 0.9, 0.9, np.nan],
                            "teacher/tb/test/acc": [np.nan, 0.89, 0.89, np.nan],
                            "teacher/tc/test/acc": [np.nan, np.nan, 0.915, np.nan]})
    assert report.teacher_accuracy(several) == (
        "Teachers' test accuracy: `ta` 90.00%, `tb` 89.00%, `tc` 91.50%; "
        "their ensembles' (mean probabilities): `ta+tb` 91.00%, `ta+tb+tc` 92.50%.")


def test_curves_of_two_axes_past_eight_lines_colour_one_axis_and_dash_the_other(tmp_path):
    """15 loss x policy lines: a colour per loss (the axis with more levels), a line style and marker per policy, so
    that every line differs from every other in colour or style; few lines keep one colour each."""
    losses, policies = ["kl", "dist", "kl(ls=2)", "dkd(temperature=4)", "kl + 0.5*label_ce"], ["funmatch", "same/ic",
                                                                                             "fix/rs"]
    zoo = Study(name="zoo", question="Which loss?", base=dict(STUDY.base), axes=dict(loss=losses, policy=policies),
                presets=dict(one=dict(seeds=1)), x="loss", hue="policy", figures=("curves",))
    store = RunStore(tmp_path / "store")
    acc = {(lo, p): 0.6 + 0.01 * i + 0.001 * j for i, lo in enumerate(losses) for j, p in enumerate(policies)}
    fake_runs(store, zoo, "one", lambda c: {"last/test/acc": acc[c.point["loss"], c.point["policy"]],
                                            "teacher/test/acc": 0.9},
              lambda c: [{"step": s, "epoch": e, "test/acc": acc[c.point["loss"], c.point["policy"]] * e / 4,
                          "test/agree_top1": 0.5} for s, e in ((0, 0.0), (4, 2.0), (8, 4.0))])
    runs, hist, _ = report.study_frames(zoo, "one", "local", store)
    fig, _ = report.fig_curves(runs, hist, "loss", "policy", axes=["loss", "policy"], title="Which loss?")
    lines = {ln.get_label(): (matplotlib.colors.to_hex(ln.get_color()), ln.get_linestyle(), ln.get_marker())
             for ln in fig.axes[0].lines if not ln.get_label().startswith("teacher")}
    assert len(lines) == 15 and len(set(lines.values())) == 15
    for lo in losses:
        assert len({lines[f"{lo}, {p}"][0] for p in policies}) == 1
    for p in policies:
        assert len({lines[f"{lo}, {p}"][1:] for lo in losses}) == 1
    assert len({lines[f"{lo}, funmatch"][0] for lo in losses}) == 5
    assert len({lines[f"kl, {p}"][1:] for p in policies}) == 3
    few, _ = report.fig_curves(runs[runs["loss"].isin(losses[:2])], hist, "loss", "policy", axes=["loss", "policy"])
    assert len({ln.get_color() for ln in few.axes[0].lines if not ln.get_label().startswith("teacher")}) == 6


def test_agreement_with_each_teacher_by_hand():
    """Per cell, mean ± std over seeds of the agreement with each teacher and with the ensemble: a one-teacher run
    fills its teacher's column, a several-teacher run each member's and the ensemble's; no section with one teacher."""
    runs = pd.DataFrame({
        "n_teachers": ["1", "1", "2", "2"], "status": "done", "teacher": ["ta", "ta", "ta+tb", "ta+tb"],
        "last/test/agree_top1": [0.80, 0.82, 0.90, 0.92],
        "last/test/agree_top1/ta": [np.nan, np.nan, 0.85, 0.87],
        "last/test/agree_top1/tb": [np.nan, np.nan, 0.70, 0.70]})
    lines = "\n".join(report.teacher_agreement_table(runs, ["n_teachers"])).splitlines()
    assert lines[0] == "## Agreement with each teacher"
    assert "| n_teachers | n | `ta` agree (%) | `tb` agree (%) | ensemble agree (%) |" in lines
    assert "| 1 | 2 | 81.00 ± 1.41 | - | - |" in lines
    assert "| 2 | 2 | 86.00 ± 1.41 | 70.00 ± 0.00 | 91.00 ± 1.41 |" in lines
    assert report.teacher_agreement_table(runs[runs.teacher == "ta"], ["n_teachers"]) == []


def test_several_teachers_reference_lines_differ_and_are_named_in_the_legend():
    runs = pd.DataFrame({"n_teachers": ["1", "2", "3"], "status": "done", "teacher": ["ta", "ta+tb", "ta+tb+tc"],
                         "last/test/acc": [0.80, 0.81, 0.82], "teacher/test/acc": [0.90, 0.91, 0.92]})
    fig, caption = report.fig_final(runs, pd.DataFrame(), "n_teachers", None)
    refs = [ln for ln in fig.axes[0].lines if ln.get_label().startswith(("teacher", "ensemble"))]
    assert [ln.get_label() for ln in refs] == ["teacher ta: 90.0%", "ensemble of 2: 91.0%", "ensemble of 3: 92.0%"]
    assert len({ln.get_linestyle() for ln in refs}) == 3
    assert [t.get_text() for t in fig.axes[0].texts] == ["82.0", "81.0", "80.0"]  # the means, best first; no names
    assert "ensemble of 3: 92.0%" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "each teacher and ensemble, by dash pattern" in caption
