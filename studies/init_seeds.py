"""How far apart do function-matching runs land when only the student's initialisation changes?

Seeds here are `init_seed`s: every run sees seed 0's data order, views and
mixup, so the four runs train as one cohort (one teacher forward per step).
Compare their spread with `consistency --preset full`, whose seeds change the
data stream too.
"""

from ablate.study import Study

STUDY = Study(
    name="init_seeds",
    question="How much of the seed-to-seed spread comes from the student's initialisation alone?",
    base=dict(epochs=300, eval_spacing="linear"),
    axes=dict(policy=["funmatch"]),
    seeds=4,
    seed_field="init_seed",
    presets=dict(quick=dict(epochs=20, num_evals=4), full=dict(epochs=300)),
    figures=("final", "curves"),
)
