"""report.md, its figures and `ablate compare` on synthetic run stores (no training): n and ± as the seeds allow,
one ranking metric (`last`) with `best` beside it, figures titled and labelled with display names."""

import matplotlib
import pandas as pd
import pytest

from ablate import report
from ablate.cli import build_parser, main
from ablate.store import RunStore
from ablate.study import Study, variant
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
