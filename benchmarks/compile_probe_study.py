"""A study for `bench_study --study benchmarks/compile_probe_study.py`: 8 short cells (2 policies x 2 schedules x 2
seeds) whose steps are 2 programs, to count what a study traces and compiles per cell."""

from ablate.study import Study

STUDY = Study(name="compile_probe", question="What does a study compile per cell?",
              base=dict(eval_spacing="log", num_evals=2),
              axes=dict(policy=["fix/rs", "funmatch"], epochs=[2, 4]), seeds=2)
