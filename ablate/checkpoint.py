"""Checkpoints: a run's state saved with orbax at each evaluation and restored on start; parameters on disk."""

from __future__ import annotations

import pathlib
import re
import shutil
import sys

import jax
import orbax.checkpoint as ocp

from ablate import parallel


def restore_all(members, managers, states, trackers):
    """Each member's state and tracker from its checkpoint (a damaged one is reported and discarded); one start step."""
    states, starts = list(states), []
    for j, (member, manager) in enumerate(zip(members, managers)):
        start = 0
        if manager is not None and manager.latest_step() is not None:
            try:
                states[j], trackers[j] = _restore(manager, states[j], trackers[j])
            except Exception as e:  # noqa: BLE001 - a truncated or corrupted checkpoint: report, discard, start afresh
                managers[j] = _discard(manager, member.ckpt_dir, e)
            else:
                start = int(states[j].step)
            member.on_resume and member.on_resume(start)
        starts.append(start)
    if len(set(starts)) > 1:
        for manager in managers:
            if manager is not None:
                manager.close()
        raise ValueError(f"a cohort's runs must resume from one step, but their checkpoints are at steps {starts}; "
                         "resume them one by one")
    return tuple(states), starts


def open_manager(ckpt_dir: pathlib.Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(pathlib.Path(ckpt_dir).absolute(),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))


def save(manager, step, state, tracker):
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               tracker=ocp.args.JsonSave(tracker)))


def _restore(manager, state, tracker):
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), tracker=ocp.args.JsonRestore()))
    return restored["state"], restored["tracker"]


def _discard(manager, ckpt_dir, error):
    """Report a checkpoint that cannot be restored (with its path), delete it, and return a fresh manager."""
    step = manager.latest_step()
    if parallel.is_leader():
        print(f"warning: checkpoint {pathlib.Path(ckpt_dir) / str(step)} is damaged ({short_reason(error)}); "
              "discarding it and restarting the run from scratch", file=sys.stderr)
    try:
        manager.close()
    except Exception:  # noqa: BLE001
        pass
    if parallel.is_leader():
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    parallel.barrier("ablate: damaged checkpoint discarded")
    return open_manager(ckpt_dir)


def short_reason(error: BaseException, limit: int = 160) -> str:
    """An exception as one short line: its type and first line, without the bracketed annotations
    (`[source locations='...']`, `[tensorstore_spec='...']`) and object reprs that orbax/TensorStore errors carry."""
    text = re.split(r"\s\[[\w ]+=", str(error), maxsplit=1)[0]  # the annotations start with " [name="
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    text = re.sub(r"<[^<>]* object at 0x[0-9a-f]+>", "...", text).strip()
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def save_params(path: pathlib.Path, params) -> None:
    """Save a parameter tree with orbax, waiting until it is committed."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(pathlib.Path(path).absolute(), params, force=True)


def load_params(path: pathlib.Path, template):
    """Restore a parameter tree saved by `save_params`, shaped like `template`, replicated over every device."""
    replicated = parallel.DataParallel().replicated  # on several hosts: each restores its own devices' copies
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), template)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(pathlib.Path(path).absolute(), template)
