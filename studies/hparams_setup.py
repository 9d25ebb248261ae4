"""Stage 3 of selection: labelled-subset size and student size, judged on validation by distillation's headroom.

The studies compare distillation policies, so the embedded default should sit
where distillation matters: the largest validation gain of function matching
over the label-only student, among set-ups whose 300-epoch funmatch run fits
the 2-hour budget of the full consistency + patience studies.
"""

from ablate.study import LABEL_ONLY, Study, variant

STUDY = Study(
    name="hparams_setup",
    question="At which labelled-subset size and student size does distillation gain most over labels alone?",
    base=dict(epochs=300, eval_spacing="linear"),
    axes=dict(setup=[variant("20/class", subset_per_class=20), variant("50/class", subset_per_class=50),
                     variant("100/class", subset_per_class=100),
                     variant("50/class resnet_xs", subset_per_class=50, model="resnet_xs")],
              policy=["funmatch", LABEL_ONLY]),
    seeds=1,
    presets=dict(quick=dict(epochs=20, num_evals=2), full=dict(epochs=300)),
    x="setup",
    hue="policy",
    figures=("validation",),
    metrics=("last/val/acc", "best/val/acc", "wall_s"),
)
