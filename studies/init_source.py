"""The supervised student that `studies/init.py` initialises from (run it first: `ablate run init_source`)."""

from ablate.study import Study

STUDY = Study(
    name="init_source",
    question="A label-only student on the training subset, used as the pretrained initialisation of `init`.",
    base=dict(policy="supervised", loss="label_ce", teacher=None, epochs=100, lr=3e-3),  # see init.py
    seeds=1,
    figures=("final",),
)
