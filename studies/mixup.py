"""Paper finding 8: is more aggressive mixup better for function matching?"""

from ablate.study import Study

STUDY = Study(
    name="mixup",
    question="How strong should function matching's mixup be? Beta(p, p) with p in {0, 0.1, 0.5, 1}.",
    base=dict(policy="funmatch", epochs=300, eval_spacing="linear"),
    axes=dict(mixup_p=[0.0, 0.1, 0.5, 1.0]),
    seeds=3,
    presets=dict(
        quick=dict(epochs=20, seeds=1, num_evals=4),
        full=dict(epochs=300, seeds=3),
        # at 1,000 epochs with log-spaced evaluations, p = 1 (the default) is patience --preset long's funmatch run
        long=dict(epochs=1000, seeds=3, eval_spacing="log"),
    ),
    figures=("final", "curves"),
)
