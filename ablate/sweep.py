"""W&B sweeps over a study's grid: one sweep parameter, the cell's run id, so each agent run is one cell.

`ablate sweep STUDY [--preset P]` writes a grid sweep whose only parameter
`cell` takes every run id of the (resolved) study; the sweep's command runs
`ablate run STUDY --preset P --cell=<run id>`. The agent expands the command's
macros: `${env}` -> /usr/bin/env, `${program}` -> the config's `program`
("ablate", found on PATH), `${args}` -> `--cell=<run id>`. Start it with
`wandb sweep sweep.yaml` and any number of `wandb agent ENTITY/PROJECT/SWEEP_ID`.

Under an agent, wandb.init ignores the run id, project and entity ablate passes
and uses the sweep's, so every cell's W&B run belongs to the sweep (named by
the ablate run id); the local run store still keys results by run id, so a
cell that is already done is skipped and an interrupted one resumes.
"""

from __future__ import annotations

import json
import shlex

from ablate.study import Cell, StudyError

PARAMETER = "cell"
METRIC = "best/val/acc"


def select_cell(grid: list[Cell], run_id: str, study: str = "", preset: str | None = None) -> list[Cell]:
    """The one cell of `grid` whose run id is `run_id`; otherwise a StudyError listing the valid ids."""
    hit = [c for c in grid if c.run_id == run_id]
    if hit:
        return hit
    where = f"study {study!r}" + (f" (preset {preset!r})" if preset else "")
    listing = "\n".join(f"  {c.run_id}  " + " ".join(f"{k}={v}" for k, v in c.point.items()) for c in grid)
    raise StudyError(f"{where} has no cell {run_id!r}; valid run ids:\n{listing}")


def sweep_config(study_arg: str, study, grid: list[Cell], preset: str | None = None, *,
                 project: str | None = None, entity: str | None = None, program: str = "ablate",
                 extra_args: tuple[str, ...] = ("--no-progress",)) -> dict:
    """A W&B grid-sweep config over the run ids of `grid`; `study_arg` is the study as typed on the command line."""
    command = ["${env}", "${program}", "run", study_arg]
    if preset:
        command += ["--preset", preset]
    command += [*extra_args, "${args}"]
    config = {
        "name": f"{study.name}" + (f"-{preset}" if preset else ""),
        "description": study.question,
        "program": program,
        "method": "grid",
        "metric": {"name": METRIC, "goal": "maximize"},
        "parameters": {PARAMETER: {"values": [c.run_id for c in grid]}},
        "command": command,
    }
    if project:
        config["project"] = project
    if entity:
        config["entity"] = entity
    return config


def dumps(config: dict, fmt: str = "yaml") -> str:
    """The sweep config as YAML (what `wandb sweep` reads) or JSON."""
    if fmt == "json":
        return json.dumps(config, indent=2) + "\n"
    if fmt != "yaml":
        raise ValueError(f"format must be 'yaml' or 'json', got {fmt!r}")
    import yaml

    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1000)


def agent_command_line(config: dict, run_id: str) -> str:
    """The command a W&B agent runs for one cell, with the macros expanded as the agent does (for checking)."""
    macros = {"${env}": ["/usr/bin/env"], "${program}": [config["program"]], "${args}": [f"--{PARAMETER}={run_id}"]}
    return shlex.join([x for c in config["command"] for x in macros.get(c, [c])])
