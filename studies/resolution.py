"""Teacher at a higher input resolution than the student: both see the same crop, each at its own size."""

from ablate.study import Study, variant

STUDY = Study(
    name="resolution",
    question="Does a teacher at 1.5x the student's resolution distil as well as one at the same resolution?",
    base=dict(policy="funmatch", epochs=300, eval_spacing="linear"),
    axes=dict(teacher=[variant("28px", teacher="fmnist_t"), variant("42px", teacher="fmnist_t_hr")]),
    seeds=2,
    presets=dict(quick=dict(epochs=20, seeds=1, num_evals=4), full=dict(epochs=300, seeds=2)),
    figures=("final", "curves"),
)
