"""Stage 2 of hyperparameter selection: weight decay per policy family at its selected lr (validation only)."""

from ablate.study import LABEL_ONLY, Study


STUDY = Study(
    name="hparams_wd",
    question="Which decoupled weight decay gives the best validation accuracy for each policy family?",
    base=dict(epochs=300, eval_spacing="linear"),
    axes=dict(policy=["funmatch", "fix/rs", LABEL_ONLY], wd=[1e-5, 1e-4, 1e-3]),
    seeds=1,
    presets=dict(quick=dict(epochs=20, num_evals=2, wd=[1e-5, 1e-3]), full=dict(epochs=300)),
    x="wd",
    hue="policy",
    figures=("validation",),
    metrics=("last/val/acc", "best/val/acc", "last/train/loss"),
)
