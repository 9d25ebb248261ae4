"""The reproduction table's verdicts follow from the numbers they are given (synthetic run frames)."""

import pandas as pd

from ablate import findings

ACC = findings.ACC


def frame(rows):
    """Runs as `findings` reads them: one row per finished run."""
    return pd.DataFrame([dict(zip(("policy", "epochs", "seed", "last/test/acc", "last/train/loss"), r)) for r in rows])


def two_seeds(rows):
    """Each one-seed row twice, as seeds 0 and 1 a tenth of a point apart (verdicts need two seeds per group)."""
    return [(p, e, s, a + d, l) for p, e, _, a, l in rows for s, d in ((0, -0.0005), (1, 0.0005))]


def patience_runs(fix_rs, fix_ens, funmatch, same_ic, loss_rs=0.001, loss_ens=0.1):
    """Two seeds per (policy, epochs) around the given mean accuracies at 100 and 300 epochs."""
    rows = []
    for policy, accs, loss in (("fix/rs", fix_rs, loss_rs), ("fix/ic_ens", fix_ens, loss_ens),
                               ("funmatch", funmatch, 0.15), ("same/ic", same_ic, 0.1)):
        for epochs, acc in zip((100, 300), accs):
            rows += [(policy, epochs, s, acc + d, loss) for s, d in ((0, -0.001), (1, 0.001))]
    return frame(rows)


def test_finding1_order_and_separation():
    rows = []
    for policy, acc in (("fix/rs", 0.76), ("fix/ic_ens", 0.80), ("ind/ic", 0.81), ("same/ic", 0.82), ("funmatch", 0.83)):
        rows += [(policy, 300, s, acc + d, 0.1) for s, d in ((0, -0.002), (1, 0.0), (2, 0.002))]
    text, verdict = findings.finding1(frame(rows))
    assert verdict == "holds" and "funmatch (best: funmatch) 83.00" in text
    swapped = frame([(p, e, s, a - 0.02 if p == "ind/ic" else a, l) for p, e, s, a, l in rows])
    assert findings.finding1(swapped)[1].startswith("partly: order is funmatch > consistent > fixed > independent")


def test_finding2_needs_every_fixed_policy_to_stall():
    both_stall = patience_runs(fix_rs=(0.75, 0.755), fix_ens=(0.80, 0.805), funmatch=(0.75, 0.83), same_ic=(0.76, 0.83))
    assert findings.finding2(both_stall)[1] == "holds"
    one_rises = patience_runs(fix_rs=(0.75, 0.755), fix_ens=(0.75, 0.81), funmatch=(0.75, 0.83), same_ic=(0.76, 0.83))
    text, verdict = findings.finding2(one_rises)
    assert verdict == "partly" and "stalled (gain < a quarter of funmatch's): fix/rs" in text
    fixed_not_lowest = patience_runs(fix_rs=(0.75, 0.80), fix_ens=(0.75, 0.81), funmatch=(0.75, 0.83),
                                     same_ic=(0.76, 0.83), loss_rs=0.5, loss_ens=0.5)
    assert findings.finding2(fixed_not_lowest)[1] == "does not hold"


def test_finding4_trailing_at_a_shorter_schedule_then_catching_up():
    rows = []
    for policy, accs in (("funmatch", (0.40, 0.70, 0.84)), ("same/ic", (0.38, 0.72, 0.83)), ("fix/rs", (0.45, 0.74, 0.76))):
        for epochs, acc in zip((10, 100, 300), accs):
            rows.append((policy, epochs, 0, acc, 0.1))
    rows = two_seeds(rows)
    text, verdict = findings.finding4(frame(rows))
    assert verdict == "holds" and "100: -2.00" in text
    never_trails = frame([(p, e, s, a + (0.05 if p == "funmatch" else 0), l) for p, e, s, a, l in rows])
    assert findings.finding4(never_trails)[1] == "partly"  # rankings still change, but funmatch never trails


def test_finding3_gap_closed_against_label_only_and_teacher():
    """The gap closed at each schedule: (funmatch - label-only) / (teacher - label-only); at 300 epochs the seeds
    0.8795 and 0.8805 against 0.79 of 0.12: 74.58% and 75.42%, 75 ± 0.6."""
    rows = [("funmatch", e, 0, a, 0.1) for e, a in ((30, 0.5), (100, 0.75), (300, 0.88))]
    rows += [("supervised", e, 0, a, 0.3) for e, a in ((30, 0.45), (100, 0.74), (300, 0.79))]
    runs = frame(two_seeds(rows)).assign(**{"teacher/test/acc": 0.91})
    text, verdict = findings.finding3(runs)
    assert verdict == "holds"
    assert "gap closed: 30: 11%, 100: 6%, 300: 75 ± 0.6% (n=2; label-only n=2); judged at 300 epochs;" in text
    assert "funmatch 3.00 points below the teacher: not within 0.5 points (the paper's claim), under 90%" in text
    runs.loc[(runs.policy == "funmatch") & (runs.epochs == 300), "last/test/acc"] = 0.81
    text, verdict = findings.finding3(runs)
    assert verdict == "partly" and "300: 17 ± 0.0%" in text  # still rising, but closes only 17% of the gap
    runs.loc[(runs.policy == "funmatch") & (runs.epochs == 300), "last/test/acc"] = [0.905, 0.907]
    text, verdict = findings.finding3(runs)  # 0.116 / 0.12 = 96.7%, 0.4 points below the teacher
    assert verdict == "holds" and "300: 97 ± 1.2%" in text
    assert "funmatch 0.40 points below the teacher: within 0.5 points (the paper's claim), at least 90%" in text
    one = findings.finding3(frame(rows).assign(**{"teacher/test/acc": 0.91}))
    assert one[1] == "direction only (n=1): as claimed" and "300: 75% (n=1; label-only n=1)" in one[0]
    assert "±" not in one[0]


def test_findings_2_to_4_judge_at_the_longest_schedule_every_compared_policy_has_finished():
    """The store fills progressively: 1,000-epoch runs of some policies only. Findings 2-4 then judge at 300 epochs
    and say so; 1,000 epochs would change each verdict (fix/rs rises, funmatch falls behind the label-only student
    and same/ic)."""
    base = patience_runs(fix_rs=(0.75, 0.755), fix_ens=(0.80, 0.805), funmatch=(0.75, 0.83), same_ic=(0.76, 0.82))
    extra = frame([("fix/rs", 1000, s, 0.86, 0.001) for s in (0, 1)] + [("funmatch", 1000, 0, 0.60, 0.15)])
    runs = pd.concat([base, extra], ignore_index=True)
    text, verdict = findings.finding2(runs)
    assert verdict == "holds"
    assert text.startswith("lowest train loss at 300 epochs (the longest schedule every compared policy has "
                           "finished runs at; 1000 only partly finished): fix/rs")
    assert "gain over the last 3x of schedule (100 to 300): fix/ic_ens +0.50, fix/rs +0.50, funmatch +8.00" in text
    rest = frame([(p, 1000, s, 0.86, 0.1) for p in ("fix/ic_ens", "same/ic") for s in (0, 1)]
                 + [("funmatch", 1000, 1, 0.60, 0.15)])
    text, verdict = findings.finding2(pd.concat([runs, rest], ignore_index=True))  # 1000 epochs finished by all
    assert verdict == "partly" and text.startswith("lowest train loss at 1000 epochs: fix/rs")

    text, verdict = findings.finding4(runs)  # funmatch 1 point behind same/ic at 100, 1 ahead at 300
    assert verdict == "holds" and text.startswith("funmatch - same/ic by epochs: 100: -1.00, 300: +1.00;")
    assert "between 100 and 300 epochs (the longest schedule" in text and "1000" not in text.split(";")[0]

    sup = frame([("supervised", e, s, a, 0.3) for e, a in ((100, 0.70), (300, 0.72)) for s in (0, 1)])
    labelled = pd.concat([runs, sup], ignore_index=True).assign(**{"teacher/test/acc": 0.90})
    text, verdict = findings.finding3(labelled)  # (0.83 - 0.72) / (0.90 - 0.72) = 61%; seeds 60.6, 61.7
    assert verdict == "holds" and "gap closed: 100: 25%, 300: 61 ± 0.8% (n=2; label-only n=2)" in text
    assert "judged at 300 epochs (the longest schedule every compared policy has finished runs at; 1000 only " \
           "partly finished)" in text
    assert "funmatch by epochs: 100: 75.00, 300: 83.00;" in text  # not the 1000-epoch run's 60.00


def test_finding8_needs_the_strongest_mixup_to_win_beyond_noise():
    rows = [(None, 300, s, a + d, 0.1, p) for p, a in ((0.0, 0.80), (0.5, 0.82), (1.0, 0.84))
            for s, d in ((0, -0.002), (1, 0.002))]
    runs = pd.DataFrame(rows, columns=["policy", "epochs", "seed", "last/test/acc", "last/train/loss", "mixup_p"])
    assert findings.finding8(runs)[1] == "holds"
    runs["last/test/acc"] = [0.834, 0.830, 0.835, 0.831, 0.833, 0.829]  # 0.5 ahead, but only by noise
    text, verdict = findings.finding8(runs)
    assert verdict == "does not hold (no p is better)" and "within the seed spread" in text
    runs["last/test/acc"] = [0.800, 0.804, 0.838, 0.842, 0.840, 0.844]  # p=1 best, but only by noise over p=0.5
    text, verdict = findings.finding8(runs)
    assert verdict == "does not hold (no p is better)" and "p=1 leads p=0.5 by 0.20, within the seed spread" in text


def test_finding6_counts_only_what_transfers_to_unseen_classes():
    def runs(ood_acc):
        rows = [("fashion_mnist", 0.86), ("fashion_mnist", 0.87), ("fashion_mnist_ood", ood_acc),
                ("fashion_mnist_ood", ood_acc + 0.01)]
        return pd.DataFrame(rows, columns=["dataset", "last/test/acc"])

    assert findings.finding6(runs(0.62))[1] == "holds"  # well above the 40% of test images of seen classes
    text, verdict = findings.finding6(runs(0.40))
    assert verdict.startswith("partly: in-domain is best") and "40% of test images" in text


def test_finding7_from_labels_or_run_ids():
    rows = [(init, e, a) for init, accs in (("scratch", (0.50, 0.84)), ("supervised", (0.75, 0.845)))
            for e, a in zip((30, 300), accs) for _ in range(2)]  # two seeds each
    labelled = pd.DataFrame(rows, columns=["init", "epochs", "last/test/acc"])
    text, verdict = findings.finding7(labelled)
    assert verdict == "holds" and "30: +25.00" in text and "300: +0.50" in text
    raw = labelled.assign(init=labelled["init"].map({"scratch": None, "supervised": "546042862542"}))
    assert findings.finding7(raw) == (text, verdict)


def test_study_presets_read_one_study_at_another_preset(tmp_path, capsys):
    """`--study-preset patience=long` reads patience at `long` (1,000 and 3,000 epochs added), every other study at --preset;
    a malformed or unknown override, a preset some study lacks, or an unknown source is a usage error before
    anything is read."""
    from ablate.cli import main
    from ablate.store import RunStore

    text = findings.table("full", RunStore(tmp_path / "store"), study_presets={"patience": "long"})
    rows = [line for line in text.splitlines() if line.startswith("| 2 ") or line.startswith("| 1 ")]
    assert "`patience` (long) | 0/90 " in rows[1]  # 5 policies x 6 schedules x 3 seeds, none run in this store
    assert "`consistency` (full) | 0/27 " in rows[0]
    for bad, message in (("patience", "must look like STUDY=PRESET"), ("nope=long", "no finding reads"),
                         ("patience=nope", "study 'patience' has no preset 'nope'; valid presets: full, long, quick")):
        assert main(["findings", "--store", str(tmp_path / "store"), "--study-preset", bad]) == 2
        assert message in capsys.readouterr().err
    # ood has no `long` preset (patience, consistency and mixup do)
    assert main(["findings", "--store", str(tmp_path / "store"), "--preset", "long"]) == 2
    assert "study 'ood' has no preset 'long'; valid presets: full, quick" in capsys.readouterr().err
    assert main(["findings", "--store", str(tmp_path / "store"), "--source", "foo"]) == 2
    assert "unknown source 'foo'" in capsys.readouterr().err


def test_one_seed_gives_the_direction_only_and_no_spread():
    """With one seed per group no verdict holds: it says `direction only (n=1)` and which way the numbers point,
    and numbers carry no ± (there is no spread to show)."""
    rows = [(p, 300, 0, a, 0.1) for p, a in (("fix/ic_ens", 0.7937), ("ind/ic", 0.7969), ("same/ic", 0.8157),
                                              ("funmatch", 0.8246), ("supervised", 0.7619))]
    text, verdict = findings.finding1(frame(rows))
    assert verdict == "direction only (n=1): as claimed"
    assert "fixed (best: fix/ic_ens) 79.37 (n=1)" in text and "±" not in text
    assert "closest step of the claimed order: independent - fixed +0.32 points" in text
    swapped = frame([(p, e, s, 0.78 if p == "ind/ic" else a, l) for p, e, s, a, l in rows])
    assert findings.finding1(swapped)[1] == ("direction only (n=1): partly as claimed: "
                                             "order is funmatch > consistent > fixed > independent")
    text, verdict = findings.finding5(frame(rows))
    assert verdict == "direction only (n=1): as claimed" and text.startswith("funmatch 82.46 (n=1), label-only")
    mixup = pd.DataFrame([(p, a) for p, a in ((0.0, 0.80), (0.5, 0.84), (1.0, 0.83))], columns=["mixup_p", ACC])
    assert findings.finding8(mixup)[1] == "direction only (n=1): not as claimed (best p=0.5)"
    # one group with two seeds is not enough: the fewest seeds of any compared group count
    uneven = frame(rows + [("funmatch", 300, 1, 0.8250, 0.1)])
    assert findings.finding1(uneven)[1] == "direction only (n=1): as claimed"


def test_the_findings_table_states_n_and_judges_on_last_with_best_beside(tmp_path):
    """The table reads `last/test/acc`; its last column applies the same rule to `best/test/acc`; one seed per cell
    gives `direction only (n=1)` in both."""
    from ablate.store import RunStore
    from ablate.study import load_study
    from tests.helpers import fake_runs

    def summary(cell):  # funmatch best on `last`, the label-only student best on `best`
        acc = {"funmatch": 0.83, "same/ic": 0.82, "ind/ic": 0.81, "fix/ic_ens": 0.80}.get(cell.point["policy"], 0.7)
        return {ACC: acc, "best/test/acc": 0.9 if cell.point["policy"] == "supervised" else acc,
                "last/train/loss": 0.1}

    store = RunStore(tmp_path / "store")
    fake_runs(store, load_study("consistency"), "quick", summary)
    text = findings.table("quick", store)
    header, _, *rows = text.splitlines()
    assert "last test top-1 %" in header and header.rstrip(" |").endswith("same rule on best/test/acc")
    row1 = next(r for r in rows if r.startswith("| 1 "))
    assert "funmatch (best: funmatch) 83.00 (n=1)" in row1 and "±" not in row1
    assert "**direction only (n=1): as claimed** | direction only (n=1): as claimed |" in row1
    row5 = next(r for r in rows if r.startswith("| 5 "))
    assert row5.endswith("| **direction only (n=1): as claimed** | direction only (n=1): not as claimed |")
    assert "A verdict needs at least 2 finished seeds" in text
