"""Which distillation loss and temperature work best for function matching?"""

from ablate.study import Study

STUDY = Study(
    name="loss",
    question="Which loss and temperature distil best under function matching (KL at T=1 is the paper's choice)?",
    base=dict(policy="funmatch", epochs=300, eval_spacing="linear"),
    axes=dict(loss=["kl", "reverse_kl", "mse_logits", "hard", "kl + 0.1*label_ce"], temperature=[1.0, 2.0, 5.0]),
    seeds=2,
    presets=dict(quick=dict(epochs=20, seeds=1, temperature=[1.0, 5.0], num_evals=4),
                 full=dict(epochs=300, seeds=2)),
    x="loss",
    hue="temperature",
    figures=("final", "curves"),
)
