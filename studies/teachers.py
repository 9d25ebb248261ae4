"""Several teachers: does function matching from two or three teachers, summed or ensembled, beat one teacher?

The teachers: fmnist_t, fmnist_t_s1 (its recipe, another seed) and fmnist_t_deep (two units per stage), all on the
same view of each example. The first run trains the teachers not cached yet (`ablate teacher train NAME`:
fmnist_t_s1 29 min, fmnist_t_deep 45 min, measured on 2 CPU cores shared with another job). The one-teacher cells are the `consistency` study's
funmatch cells (the same run ids): a store that has those reuses them.
"""

from ablate.study import Study, variant

STUDY = Study(
    name="teachers",
    question="Does function matching from two or three teachers beat one teacher, with their losses summed or "
             "with their ensemble (mean probabilities) as the target?",
    base=dict(policy="funmatch", epochs=300, eval_spacing="linear"),
    axes=dict(
        teachers=[variant("1", teacher="fmnist_t"),
                  variant("2", teacher="fmnist_t+fmnist_t_s1"),
                  variant("3", teacher="fmnist_t+fmnist_t_s1+fmnist_t_deep")],
        teacher_mix=["sum", "ensemble"],
    ),
    exclude=(dict(teachers="1", teacher_mix="ensemble"),),  # one teacher: nothing to mix (the same run as sum)
    seeds=3,
    presets=dict(
        quick=dict(epochs=100, subset_per_class=20, seeds=1, num_evals=3),
        full=dict(epochs=300, seeds=3),
    ),
    x="teachers",
    hue="teacher_mix",
    figures=("final", "curves"),
)
