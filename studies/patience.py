"""Paper Figs. 4-5: does function matching keep improving with schedule length while fixed teachers overfit?"""

from ablate.study import LABEL_ONLY, Study

STUDY = Study(
    name="patience",
    question="How do policies scale with schedule length? Fixed teachers should overfit, function matching keep rising.",
    # evaluations log-uniform over steps: on a log axis a 1,000-epoch run's early steps are sampled as well as a
    # 10-epoch run's (so the 300-epoch cells are not consistency's runs, which space theirs evenly)
    base=dict(eval_spacing="log"),
    axes=dict(
        policy=["fix/rs", "fix/ic_ens", "same/ic", "funmatch",
                LABEL_ONLY],
        epochs=[10, 30, 100, 300],
    ),
    seeds=3,
    presets=dict(
        quick=dict(epochs=[50, 150, 500], subset_per_class=20, seeds=1, num_evals=3),
        full=dict(epochs=[10, 30, 100, 300], seeds=3),
        long=dict(epochs=[10, 30, 100, 300, 1000, 3000], seeds=3),  # full plus 1,000 and 3,000 epochs (reuses full's runs)
    ),
    x="epochs",
    hue="policy",
    figures=("patience", "loss_vs_acc", "curves"),
)
