"""Hyperparameter selection on the validation split (never on test), as the paper selected on a minival."""

from ablate.study import Study, variant

STUDY = Study(
    name="hparams",
    question="Which learning rate and weight decay give the best validation accuracy for each policy family?",
    base=dict(epochs=100),
    axes=dict(policy=["funmatch", "fix/rs", variant("supervised", policy="supervised", loss="label_ce", teacher=None)],
              lr=[1e-3, 3e-3, 1e-2]),
    seeds=1,
    presets=dict(quick=dict(epochs=20, lr=[3e-3, 1e-2], num_evals=2), full=dict(epochs=100)),
    x="lr",
    hue="policy",
    figures=("final",),
)
