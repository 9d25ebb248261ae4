"""Stage 1 of hyperparameter selection: learning rate per policy family at the longest schedule, on validation only.

Cells at the default lr are the seed-0 cells of `consistency --preset full` (same config, same run).
"""

from ablate.study import LABEL_ONLY, Study

STUDY = Study(
    name="hparams",
    question="Which learning rate gives the best validation accuracy for each policy family?",
    base=dict(epochs=300, eval_spacing="linear"),  # as consistency: its default-lr cells are consistency's runs
    axes=dict(policy=["funmatch", "fix/rs", LABEL_ONLY], lr=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]),
    seeds=1,
    presets=dict(quick=dict(epochs=20, lr=[3e-3, 1e-2], num_evals=2), full=dict(epochs=300)),
    x="lr",
    hue="policy",
    figures=("validation",),
    metrics=("last/val/acc", "best/val/acc", "last/train/loss"),
)
