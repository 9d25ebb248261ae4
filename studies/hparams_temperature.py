"""Stage 2 of hyperparameter selection: the KL temperature of function matching, at the selected lr (validation only)."""

from ablate.study import Study

STUDY = Study(
    name="hparams_temperature",
    question="Which softmax temperature of the KL loss gives the best validation accuracy?",
    base=dict(epochs=300, eval_spacing="linear"),
    axes=dict(policy=["funmatch"], temperature=[1.0, 2.0, 5.0]),
    seeds=1,
    presets=dict(quick=dict(epochs=20, num_evals=2, temperature=[1.0, 5.0]), full=dict(epochs=300)),
    x="temperature",
    hue="policy",
    figures=("validation",),
    metrics=("last/val/acc", "best/val/acc", "last/train/loss"),
)
