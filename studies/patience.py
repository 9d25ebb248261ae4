"""Paper Figs. 4-5: does function matching keep improving with schedule length while fixed teachers overfit?"""

from ablate.study import Study, variant

STUDY = Study(
    name="patience",
    question="How do policies scale with schedule length? Fixed teachers should overfit, function matching keep rising.",
    axes=dict(
        policy=["fix/rs", "fix/ic_ens", "same/ic", "funmatch",
                variant("supervised", policy="supervised", loss="label_ce", teacher=None)],
        epochs=[10, 30, 100, 300],
    ),
    seeds=3,
    presets=dict(
        quick=dict(epochs=[50, 150, 500], subset_per_class=20, seeds=1, num_evals=3),
        full=dict(epochs=[10, 30, 100, 300], seeds=3),
    ),
    x="epochs",
    hue="policy",
    figures=("patience", "loss_vs_acc", "curves"),
)
