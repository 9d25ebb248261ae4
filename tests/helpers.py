"""Helpers shared by several test modules."""


def tiny_study(base: dict | None = None, **fields) -> str:
    """A study file whose cells are tiny funmatch runs (resnet_xs student, fmnist_xs teacher, 100 images, 8 steps,
    unless `base` says otherwise)."""
    base = {**dict(teacher="fmnist_xs", model="resnet_xs", subset_per_class=10, batch_size=50, epochs=4, num_evals=2),
            **(base or {})}
    return f"from ablate.study import Study\n\nSTUDY = Study(base={base!r}, **{fields!r})\n"


def no_time(row: dict, *drop: str) -> dict:
    """A run's record, summary or history row without its wall-clock figures (and the keys `drop`)."""
    return {k: v for k, v in row.items() if "time/" not in k and k != "wall_s" and k not in drop}


def fake_runs(store, study, preset, summary_of, history_of=lambda cell: [{"step": 0, "epoch": 0.0}]) -> list:
    """A finished run in `store` for every cell of a study's grid, without training: `summary_of(cell)` gives its
    summary, `history_of(cell)` its history rows. Returns the cells."""
    from ablate.study import cells

    grid = cells(study, preset)
    for cell in grid:
        store.start(cell.run_id, cell.config.to_dict(), {"study": study.name})
        for row in history_of(cell):
            store.log(cell.run_id, row)
        store.finish(cell.run_id, summary_of(cell))
    return grid
