"""Studies: a grid of run configs declared in a short Python file, and the runner that works through it."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import os
import pathlib
import traceback
from typing import Callable

from tqdm.auto import tqdm

from ablate.config import ConfigError, RunConfig, validate

FIGURES = ("final", "validation", "patience", "loss_vs_acc", "curves")


class StudyError(ValueError):
    """A study that cannot be loaded or expanded; raised before any run starts."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """An axis value that sets several fields at once, shown under one label."""

    label: str
    fields: dict


def variant(label: str, **fields) -> Variant:
    """E.g. `variant("supervised", policy="supervised", loss="label_ce", teacher=None)`."""
    return Variant(label, fields)


LABEL_ONLY = variant("supervised", policy="supervised", loss="label_ce", teacher=None, lr=0.1)
"""The embedded default's label-only student (no teacher), as a value of a `policy` axis.

Its learning rate, 0.1, is the label-only student's own choice on the validation split
(`studies/hparams.py`; the distilling students' 3e-2 gives it 0.9 points less there).
"""


SEED_FIELDS = ("seed", "init_seed")
"""What a study's seeds may vary: every source of randomness, or the student's initialisation alone."""


@dataclasses.dataclass(frozen=True)
class Study:
    """A named question answered by a grid of runs.

    `base` holds config fields shared by every cell; `axes` maps a field to the
    values it takes (cartesian product); each dict in `zipped` maps fields to
    equally long lists that vary together. `exclude` leaves out the cells whose
    axis values (labels, for variants) match all of one of its dicts: combinations
    that do not exist, such as a feature loss with a fixed teacher. `presets`
    override base fields, axis values (by field name) and `seeds`. `seed_field` says what the seeds
    vary: "seed" (data order, views, mixup and the student's initialisation) or
    "init_seed" (the student's initialisation alone, on the data stream of the
    cell's `seed`, 0 unless set: a cell's seeds then train as one cohort,
    sharing the teacher's forward pass).
    """

    name: str
    question: str
    base: dict = dataclasses.field(default_factory=dict)
    axes: dict = dataclasses.field(default_factory=dict)
    zipped: tuple = ()
    seeds: int = 1
    seed_field: str = "seed"
    presets: dict = dataclasses.field(default_factory=dict)
    exclude: tuple = ()  # dicts of axis values whose cells are left out, e.g. (dict(loss="at", policy="fix/rs"),)
    figures: tuple = ("final", "curves")
    x: str | None = None  # the axis on the figures' x axis (e.g. "epochs"); default: first axis
    hue: str | None = None  # the axis that colours lines (e.g. "policy"); default: the other axis
    metrics: tuple | None = None  # report.md's and runs.csv's metrics; default: test, val and train summaries

    def resolve(self, preset: str | None) -> "Study":
        """The study with a preset's overrides applied."""
        if preset is None:
            return self
        if preset not in self.presets:
            raise StudyError(f"study {self.name!r} has no preset {preset!r}; valid presets: "
                             f"{', '.join(sorted(self.presets)) or '(none)'}")
        over = dict(self.presets[preset])
        seeds = over.pop("seeds", self.seeds)
        axes = {k: over.pop(k) if k in over else v for k, v in self.axes.items()}
        zipped = tuple({k: over.pop(k) if k in over else v for k, v in z.items()} for z in self.zipped)
        return dataclasses.replace(self, base={**self.base, **over}, axes=axes, zipped=zipped, seeds=seeds)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One run of a study: its resolved config and the axis values that picked it."""

    config: RunConfig
    point: dict

    @property
    def run_id(self) -> str:
        return self.config.run_id


def cells(study: Study, preset: str | None = None) -> list[Cell]:
    """Expand a study into its cells, validated; the order is deterministic."""
    s = study.resolve(preset)
    _check_shape(s)
    # seeds vary slowest: a partial grid covers every cell once
    blocks = [[{s.seed_field: i} for i in range(s.seeds)]]
    blocks += [[{k: v} for v in vals] for k, vals in s.axes.items()]
    blocks += [[dict(zip(z, vals)) for vals in zip(*z.values())] for z in s.zipped]
    out = []
    for combo in itertools.product(*blocks):
        values, point = dict(s.base), {}
        for k, v in ((k, v) for d in combo for k, v in d.items()):
            if isinstance(v, Variant):
                values.update(v.fields)
                point[k] = v.label
            else:
                values[k] = point[k] = v
        if any(all(point.get(k) == v for k, v in ex.items()) for ex in s.exclude):
            continue  # left out before validation: an excluded combination may be an invalid config
        try:
            cfg = RunConfig.from_dict(values)
            validate(cfg)
        except ConfigError as e:
            where = ", ".join(f"{k}={v!r}" for k, v in point.items())
            raise StudyError(f"study {s.name!r}, cell ({where}): {e}") from None
        out.append(Cell(cfg, point))
    seen = {}
    for c in out:
        if c.run_id in seen:
            raise StudyError(f"study {s.name!r}: cells {seen[c.run_id]} and {c.point} resolve to the same config")
        seen[c.run_id] = c.point
    return out


def _check_shape(s: Study) -> None:
    if not isinstance(s.axes, dict):
        raise StudyError(f"study {s.name!r}: axes must be a dict of field -> list of values")
    for k, v in s.axes.items():
        if not isinstance(v, (list, tuple)) or not v:
            raise StudyError(f"study {s.name!r}: axis {k!r} must be a non-empty list, got {v!r}")
    if not isinstance(s.zipped, (list, tuple)) or not all(isinstance(z, dict) for z in s.zipped):
        raise StudyError(f"study {s.name!r}: zipped must be a tuple of dicts of field -> list of values "
                         f"(e.g. zipped=(dict(lr=[0.1, 0.03], wd=[0, 1e-4]),)), got {s.zipped!r}")
    for z in s.zipped:
        for k, v in z.items():
            if not isinstance(v, (list, tuple)) or not v:
                raise StudyError(f"study {s.name!r}: zipped axis {k!r} must be a non-empty list, got {v!r}")
        lengths = {k: len(v) for k, v in z.items()}
        if len(set(lengths.values())) > 1:
            raise StudyError(f"study {s.name!r}: zipped axes must have equal lengths, got {lengths}")
    axes = [*s.axes, *(k for z in s.zipped for k in z)]
    if not isinstance(s.exclude, (list, tuple)) or not all(isinstance(ex, dict) and ex for ex in s.exclude):
        raise StudyError(f"study {s.name!r}: exclude must be a tuple of non-empty dicts of axis -> value, e.g. "
                         f"exclude=(dict(loss='at', policy='fix/rs'),), got {s.exclude!r}")
    unknown = sorted({k for ex in s.exclude for k in ex} - set(axes))
    if unknown:
        raise StudyError(f"study {s.name!r}: exclude names {', '.join(unknown)}, which are not axes; "
                         f"valid: {', '.join(axes)}")
    if not isinstance(s.seeds, int) or s.seeds < 1:
        raise StudyError(f"study {s.name!r}: seeds must be a positive int, got {s.seeds!r}")
    if s.seed_field not in SEED_FIELDS:
        raise StudyError(f"study {s.name!r}: seed_field must be one of {', '.join(SEED_FIELDS)}, "
                         f"got {s.seed_field!r}")
    varied = [*s.axes, *(k for z in s.zipped for k in z)]
    if s.seed_field in varied:
        raise StudyError(f"study {s.name!r}: {s.seed_field!r} is both an axis and what `seeds` varies; "
                         f"drop the axis and set seeds=N (cells get {s.seed_field} 0..N-1)")
    if not isinstance(s.figures, (list, tuple)):
        raise StudyError(f"study {s.name!r}: figures must be a tuple of names, e.g. ('final',), got {s.figures!r}")
    bad = [f for f in s.figures if f not in FIGURES]
    if bad:
        raise StudyError(f"study {s.name!r}: unknown figure(s) {bad}; valid figures: {', '.join(FIGURES)}")


def shard(items: list, spec: str | None) -> list:
    """The K-th of N disjoint slices ("K/N", 1-based); together the N slices cover `items` once."""
    if not spec:
        return items
    try:
        k, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise StudyError(f"--shard must look like K/N (e.g. 2/4), got {spec!r}") from None
    if not (n >= 1 and 1 <= k <= n):
        raise StudyError(f"--shard K/N needs 1 <= K <= N, got {spec!r}")
    return items[k - 1::n]


# ----------------------------------------------------------------------------- finding and loading

def study_dirs() -> list[pathlib.Path]:
    """Where study names are looked up: $ABLATE_STUDIES, ./studies, and the studies shipped with ablate."""
    dirs = [pathlib.Path(p) for p in os.environ.get("ABLATE_STUDIES", "").split(os.pathsep) if p]
    dirs += [pathlib.Path("studies"), pathlib.Path(__file__).resolve().parent.parent / "studies"]
    out = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def available_studies() -> list[str]:
    names = set()
    for d in study_dirs():
        for p in d.rglob("*.py"):
            if p.name != "__init__.py" and not p.name.startswith("_"):
                names.add(p.relative_to(d).with_suffix("").as_posix())
    return sorted(names)


def find_study(name: str) -> pathlib.Path:
    if name.endswith(".py"):
        p = pathlib.Path(name)
        if not p.is_file():
            raise StudyError(f"study file {name} does not exist")
        return p
    for d in study_dirs():
        p = d / f"{name}.py"
        if p.is_file():
            return p
    raise StudyError(f"unknown study {name!r}; valid studies: {', '.join(available_studies()) or '(none)'} "
                     f"(looked in {', '.join(str(d) for d in study_dirs()) or 'no studies folder'})")


def load_study(name: str) -> Study:
    """Import a study file (only the one named, or one in a studies folder) and return its STUDY."""
    path = find_study(name)
    spec = importlib.util.spec_from_file_location(f"ablate_study_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception:
        raise StudyError(f"study file {path} failed to import:\n{traceback.format_exc()}") from None
    study = getattr(module, "STUDY", None)
    if not isinstance(study, Study):
        raise StudyError(f"study file {path} must define STUDY = ablate.study.Study(...), "
                         f"found {type(study).__name__}")
    return study


# ----------------------------------------------------------------------------- running

@dataclasses.dataclass
class Outcome:
    ran: int = 0
    skipped: int = 0
    failed: int = 0
    busy: int = 0


def cohorts(cells_: list[Cell], key: Callable[[Cell], str | None], size: int) -> list[list[Cell]]:
    """Cells in grid order, each joined by up to `size` - 1 later cells with the same key (None: alone)."""
    keys = [key(c) for c in cells_]
    out, taken = [], set()
    for i, cell in enumerate(cells_):
        if i in taken:
            continue
        cohort, k = [cell], keys[i]
        for j in range(i + 1, len(cells_)):
            if len(cohort) >= size or k is None:
                break
            if j not in taken and keys[j] == k:
                taken.add(j)
                cohort.append(cells_[j])
        out.append(cohort)
    return out


def run_cells(cells_: list[Cell], run_cohort: Callable[[list[Cell]], list[str]], is_done: Callable[[str], bool],
              progress: bool = True, desc: str = "grid", cohort_key: Callable[[Cell], str | None] | None = None,
              cohort_size: int = 1) -> Outcome:
    """Run every cell that is not done, one bar over the grid; cells with one `cohort_key` train together.

    `run_cohort` trains a list of cells and returns each one's status: "done",
    "failed", "busy" (another process holds the cell) or "skipped" (another
    process finished it first). A damaged run folder is not done: its cell
    runs again and its files are rewritten.
    """
    todo = [c for c in cells_ if not is_done(c.run_id)]
    outcome = Outcome(skipped=len(cells_) - len(todo))
    bar = tqdm(total=len(cells_), initial=outcome.skipped, desc=desc, unit="run", disable=not progress,
               dynamic_ncols=True, position=0)
    say = tqdm.write if progress else functools.partial(print, flush=True)  # above the bar, or a plain log line
    counted = itertools.count(outcome.skipped + 1)
    try:
        for cohort in cohorts(todo, cohort_key or (lambda c: None), cohort_size):
            for cell, status in zip(cohort, run_cohort(cohort)):
                field = {"done": "ran", "failed": "failed", "busy": "busy", "skipped": "skipped"}[status]
                setattr(outcome, field, getattr(outcome, field) + 1)
                point = " ".join(f"{k}={v}" for k, v in cell.point.items())
                said = {"busy": "being run elsewhere", "skipped": "finished elsewhere"}.get(status, status)
                say(f"[{next(counted)}/{len(cells_)}] run {cell.run_id} ({point}): {said}")
            bar.update(len(cohort))
            bar.set_postfix(ran=outcome.ran, skipped=outcome.skipped, failed=outcome.failed)
    finally:
        bar.close()
    return outcome
