"""Paper Fig. 3: which teacher-input policy distils best at a long schedule?"""

from ablate.study import LABEL_ONLY, Study

POLICIES = ["fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic", "same/rc", "same/ic", "funmatch",
            LABEL_ONLY]

STUDY = Study(
    name="consistency",
    question="Must the teacher see exactly the student's view? Fixed vs independent vs consistent vs function matching.",
    base=dict(epochs=300, eval_spacing="linear"),  # evaluations evenly spaced over the schedule
    axes=dict(policy=POLICIES),
    seeds=3,
    presets=dict(
        quick=dict(epochs=500, subset_per_class=20, seeds=1, num_evals=3),
        full=dict(epochs=300, seeds=3),
        # the paper compares policies at long schedules; log-spaced evaluations as in patience, so the five policies
        # that patience --preset long runs at 1,000 epochs are its runs, reused, and only the other four train
        long=dict(epochs=1000, seeds=3, eval_spacing="log"),
    ),
    figures=("final", "loss_vs_acc", "curves"),
)
