"""The supervised student that `studies/init.py` initialises from (run it first: `ablate run init_source`)."""

from ablate.study import LABEL_ONLY, Study

STUDY = Study(
    name="init_source",
    question="A label-only student on the training subset, used as the pretrained initialisation of `init`.",
    base=dict(**LABEL_ONLY.fields, epochs=100, eval_spacing="linear"),  # the label-only student, at its own selected lr
    seeds=1,
    figures=("final",),
)
