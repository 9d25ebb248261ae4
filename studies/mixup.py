"""Paper finding 8: is more aggressive mixup better for function matching?"""

from ablate.study import Study

STUDY = Study(
    name="mixup",
    question="How strong should function matching's mixup be? Beta(p, p) with p in {0, 0.1, 0.5, 1}.",
    base=dict(policy="funmatch", epochs=300, eval_spacing="linear"),
    axes=dict(mixup_p=[0.0, 0.1, 0.5, 1.0]),
    seeds=3,
    presets=dict(quick=dict(epochs=20, seeds=1, num_evals=4), full=dict(epochs=300, seeds=3)),
    figures=("final", "curves"),
)
