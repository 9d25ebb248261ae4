"""Shared by the paper's study files (each loads this by path: study files are not importable as modules).

The recipe of Beyer et al. (2022): BiT-M R152x2 teacher, BiT ResNet-50 (R50x1)
student from scratch, batch 512 (ImageNet 4096), Adam with a linear warmup of
1500 steps (ImageNet 5000) then cosine, inception crops down to 5% of the
area, mixup with p = 1, the whole train split, and per dataset the
(epochs, T, lr, wd) of the paper's fast / medium / long settings.
"""

from ablate.config import RunConfig, num_steps
from ablate.data.tfds import SPECS
from ablate.study import Study

SCHEDULE_FIELDS = ("epochs", "temperature", "lr", "wd", "warmup_frac")
ALL_POLICIES = ["fix/rs", "fix/cc", "fix/ic_ens", "ind/rc", "ind/ic", "same/rc", "same/ic", "funmatch"]


def warmup_frac(epochs: float, train_size: int, batch_size: int, warmup_steps: int) -> float:
    """The `warmup_frac` that gives exactly `warmup_steps` of warmup in a run of epochs * train_size / batch steps."""
    steps = num_steps(RunConfig(epochs=epochs, batch_size=batch_size), train_size)
    if warmup_steps >= steps:
        raise ValueError(f"{warmup_steps} warmup steps do not fit in a {steps}-step schedule")
    frac = float(f"{warmup_steps / steps:.6g}")
    assert round(frac * steps) == warmup_steps, (frac, steps, warmup_steps)
    return frac


def paper_study(name: str, dataset: str, teacher: str, question: str, table: dict, policies: list, *,
                batch_size: int = 512, warmup_steps: int = 1500, resolution: int = 128, **base) -> Study:
    """A policy x schedule study; `table` maps a preset name to (epochs, T, lr, wd).

    Without a preset the grid covers every schedule of `table` (the patience
    view); `--preset P` keeps one schedule. Cells are the same configs either
    way, so runs done under a preset count for the full grid and vice versa.
    """
    train_size = SPECS[dataset].sizes[0]
    schedules = {preset: dict(epochs=e, temperature=t, lr=lr, wd=wd,
                              warmup_frac=warmup_frac(e, train_size, batch_size, warmup_steps))
                 for preset, (e, t, lr, wd) in table.items()}
    zipped = {k: [s[k] for s in schedules.values()] for k in SCHEDULE_FIELDS}
    presets = {preset: {k: [v] for k, v in s.items()} for preset, s in schedules.items()}
    return Study(
        name=name,
        question=question,
        base=dict(dataset=dataset, teacher=teacher, model="bit_r50x1", loss="kl", batch_size=batch_size,
                  resolution=resolution, mixup_p=1.0, ic_min_area=0.05, subset_per_class=None, optimizer="adam",
                  clip=1.0, num_evals=20, eval_spacing="log", **base),  # schedules over decades, read on a log axis
        axes=dict(policy=policies),
        zipped=(zipped,),
        seeds=1,
        presets=presets,
        x="epochs",
        hue="policy",
        figures=("patience", "loss_vs_acc", "curves"),
    )
