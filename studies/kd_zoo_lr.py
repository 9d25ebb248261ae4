"""The learning-rate check of `kd_zoo`: is the distilling students' 3e-2 (chosen for KL, studies/hparams.py) also
right for each other loss? Function matching, validation split only, 100 epochs, one seed (the losses are kd_zoo's)."""

from ablate.study import Study

STUDY = Study(
    name="kd_zoo_lr",
    question="Which learning rate gives each KD loss its best validation accuracy under function matching?",
    base=dict(policy="funmatch", epochs=100, eval_spacing="linear"),
    axes=dict(loss=["kl", "dkd(temperature=4)", "dist", "kl(ls=2)", "kl + at"], lr=[1e-2, 3e-2, 1e-1]),
    seeds=1,
    presets=dict(quick=dict(epochs=20, num_evals=2, lr=[3e-2, 1e-1]), full=dict(epochs=100)),
    x="lr",
    hue="loss",
    figures=("validation",),
    metrics=("last/val/acc", "best/val/acc", "last/train/loss"),
)
