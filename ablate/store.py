"""The local run store: one folder per run id with config, metric history, status and summary.

Every file is written atomically (temporary file, fsync, then rename), so a
reader never sees half a file; a cell is claimed with an exclusive lock file,
created with its content in one step, so two processes never run it at once and
a killed process never leaves a lock that looks alive. A file damaged from the
outside is reported with its path: the run shows as "damaged" in reports and is
rewritten when the run is run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import time
from typing import Any, Iterable

import pandas as pd

DONE, RUNNING, FAILED, DAMAGED = "done", "running", "failed", "damaged"
RUN_FILES = ("config.json", "status.json", "history.json", "summary.json")


class StoreError(RuntimeError):
    """A run folder that cannot be read or written; the message names the path."""


class StoreLocationError(StoreError):
    """The store's own folder is unusable as given (a file, unwritable, missing): the user's input, not a fault."""


STORE_HINT = "choose another folder with --store or $ABLATE_STORE"


def write_json(path: pathlib.Path, obj: Any) -> None:
    """Write JSON atomically: a crash leaves the old file or the new one, never a mix.

    An unwritable or full folder raises StoreError naming the path; the old file
    (if any) is left as it was and the temporary file is removed.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=float)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(f"cannot write {path}: {e.strerror or e}") from None
    _fsync_dir(path.parent)


def _fsync_dir(folder: pathlib.Path) -> None:
    """Make a rename durable (best effort: not every file system supports it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_json(path: pathlib.Path, default: Any = None, kind: type | None = None) -> Any:
    """Read JSON, or `default` when the file is missing; a damaged file raises StoreError naming it.

    With `kind` (dict or list), valid JSON of another shape counts as damaged too.
    """
    try:
        obj = json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is damaged ({e})") from None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from None
    if kind is not None and not isinstance(obj, kind):
        raise StoreError(f"{path} is damaged (expected a JSON {kind.__name__}, found {type(obj).__name__})")
    return obj


def _proc_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), to tell it from a later process with the same pid."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class RunStore:
    """Runs under `root/<run_id>/`: config.json, status.json, history.json, summary.json, checkpoints/."""

    def __init__(self, root: pathlib.Path | str):
        self.root = pathlib.Path(root)

    def run_dir(self, run_id: str) -> pathlib.Path:
        return self.root / run_id

    def ckpt_dir(self, run_id: str) -> pathlib.Path:
        return self.run_dir(run_id) / "checkpoints"

    def has_checkpoint(self, run_id: str) -> bool:
        return self.ckpt_dir(run_id).exists()

    def check_writable(self) -> None:
        """Fail early, naming the folder and what to do, when the store cannot be created or written."""
        self._check_not_a_file()
        probe = self.root / f".probe.{os.getpid()}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise StoreLocationError(f"cannot write run store {self.root}: {e.strerror or e}; {STORE_HINT}") from None

    def check_readable(self) -> None:
        """Fail, naming the folder, when there is no store to read runs from (before a report of nothing)."""
        self._check_not_a_file()
        if not self.root.exists():
            raise StoreLocationError(f"run store {self.root} does not exist: no runs have been logged there; "
                                     f"{STORE_HINT}")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StoreLocationError(f"cannot read run store {self.root}: Permission denied; {STORE_HINT}")

    def _check_not_a_file(self) -> None:
        for folder in (self.root, *self.root.parents):
            if folder.exists():
                if not folder.is_dir():
                    what = ("it cannot be the run store" if folder == self.root
                            else f"the run store {self.root} cannot be made inside it")
                    raise StoreLocationError(f"{folder} is a file, not a folder, so {what}; {STORE_HINT}")
                return

    # -- writing (the caller holds the cell's lock)
    def start(self, run_id: str, config: dict, meta: dict) -> list[pathlib.Path]:
        """Mark a run as running; returns the damaged files it found and removed (they get rewritten)."""
        d = self.run_dir(run_id)
        try:
            d.mkdir(parents=True, exist_ok=True)
            for tmp in d.glob(".*.tmp"):  # left by a process killed mid-write; never read
                tmp.unlink(missing_ok=True)
        except OSError as e:
            raise StoreError(f"cannot write run folder {d}: {e.strerror or e}") from None
        damaged = []
        for name in RUN_FILES:
            try:
                read_json(d / name, kind=list if name == "history.json" else dict)
            except StoreError:
                damaged.append(d / name)
                (d / name).unlink(missing_ok=True)
        status = read_json(d / "status.json", {}, kind=dict)
        write_json(d / "config.json", {"config": config, "meta": meta})
        write_json(d / "status.json", {"state": RUNNING, "host": socket.gethostname(), "pid": os.getpid(),
                                       "started": time.time(), "attempts": status.get("attempts", 0) + 1})
        return damaged

    def log(self, run_id: str, row: dict) -> None:
        path = self.run_dir(run_id) / "history.json"
        history = read_json(path, [], kind=list)
        write_json(path, [r for r in history if r["step"] != row["step"]] + [row])

    def truncate(self, run_id: str, step: int) -> None:
        """Forget history after `step` (a run resumed from its checkpoint at that step)."""
        path = self.run_dir(run_id) / "history.json"
        write_json(path, [r for r in read_json(path, [], kind=list) if r["step"] <= step])

    def finish(self, run_id: str, summary: dict) -> None:
        """Mark a run done and drop its lock at once (a process killed later leaves no lock on a done run)."""
        d = self.run_dir(run_id)
        write_json(d / "summary.json", summary)
        self._set_status(run_id, DONE, finished=time.time())
        self.release(run_id)

    def fail(self, run_id: str, reason: str, step: int | None = None) -> None:
        self._set_status(run_id, FAILED, reason=reason, failed_step=step, finished=time.time())
        self.release(run_id)

    def _set_status(self, run_id: str, state: str, **extra) -> None:
        path = self.run_dir(run_id) / "status.json"
        try:
            old = read_json(path, {}, kind=dict)
        except StoreError:
            old = {}
        write_json(path, {**old, "state": state, **extra})

    # -- claiming
    def claim(self, run_id: str) -> bool:
        """Take the lock of a cell; False when a live process holds it. Stale locks are broken.

        The lock is written to a temporary file and linked into place, so it
        exists only with its owner in it: a process killed at any moment leaves
        either no lock or one naming a dead process.
        """
        d = self.run_dir(run_id)
        lock = d / "lock"
        tmp = d / f".lock.{os.getpid()}.tmp"
        try:
            d.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                       "start": _proc_start(os.getpid())}))
        except OSError as e:
            raise StoreError(f"cannot write run folder {d}: {e.strerror or e}") from None
        try:
            for _ in range(2):
                try:
                    try:
                        os.link(tmp, lock)
                    except FileExistsError:
                        raise
                    except OSError:  # no hard links here: exclusive create, then fill in
                        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                        with os.fdopen(fd, "w") as f:
                            f.write(tmp.read_text())
                    return True
                except FileExistsError:
                    if not self._stale(lock):
                        return False
                    lock.unlink(missing_ok=True)
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def drop_stale_lock(self, run_id: str) -> None:
        """Break a lock whose process is gone: `finish` marks a run done, then drops its lock, and a process
        killed between the two leaves a dead lock on a done run, which no claim would otherwise come back to."""
        lock = self.run_dir(run_id) / "lock"
        if lock.exists() and self._stale(lock):
            lock.unlink(missing_ok=True)

    def release(self, run_id: str) -> None:
        """Drop the lock if this process holds it."""
        lock = self.run_dir(run_id) / "lock"
        try:
            owner = json.loads(lock.read_text())
        except (OSError, ValueError):
            return
        if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            lock.unlink(missing_ok=True)

    @staticmethod
    def _stale(lock: pathlib.Path) -> bool:
        try:
            owner = json.loads(lock.read_text())
        except FileNotFoundError:
            return True
        except (OSError, ValueError):  # not written by claim(): break it once it is a minute old
            with contextlib.suppress(OSError):
                return time.time() - lock.stat().st_mtime > 60
            return True
        if owner.get("host") != socket.gethostname():
            return False
        pid = owner.get("pid")
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except (PermissionError, TypeError):
            return False
        start = owner.get("start")
        return start is not None and _proc_start(pid) not in (None, start)  # the pid now names another process

    # -- reading
    def status(self, run_id: str) -> dict | None:
        return read_json(self.run_dir(run_id) / "status.json", kind=dict)

    def state(self, run_id: str) -> str | None:
        """done, running, failed, damaged (a file cannot be read), or None (never started)."""
        try:
            s = self.status(run_id)
        except StoreError:
            return DAMAGED
        return None if s is None else s.get("state")

    def is_done(self, run_id: str) -> bool:
        """Finished, with every file readable; a damaged run is not done (running it again rewrites it)."""
        d = self.run_dir(run_id)
        try:
            s = self.status(run_id)
            if not s or s.get("state") != DONE or read_json(d / "summary.json", kind=dict) is None:
                return False
            read_json(d / "config.json", kind=dict)
            read_json(d / "history.json", kind=list)
            return True
        except StoreError:
            return False

    def history(self, run_id: str) -> list[dict]:
        return read_json(self.run_dir(run_id) / "history.json", [], kind=list)

    def run_ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "config.json").exists())

    def record(self, run_id: str) -> dict:
        """One run as a flat dict: config fields, meta (study, axes), status and summary.

        A run whose files cannot be read comes back as status "damaged", with the
        path and the problem as its reason.
        """
        d = self.run_dir(run_id)
        try:
            cfg = read_json(d / "config.json", {}, kind=dict)
            status = read_json(d / "status.json", {}, kind=dict)
            summary = read_json(d / "summary.json", {}, kind=dict)
            read_json(d / "history.json", [], kind=list)
            config, meta = cfg.get("config", {}), cfg.get("meta", {})
            if not isinstance(config, dict) or not isinstance(meta, dict):
                raise StoreError(f"{d / 'config.json'} is damaged (no config/meta dicts)")
        except StoreError as e:
            return {"run_id": run_id, "status": DAMAGED, "reason": str(e), "failed_step": None}
        row = {"run_id": run_id, **config,
               **{f"meta/{k}": v for k, v in meta.items() if not isinstance(v, (dict, list))},
               "status": status.get("state", "unknown"), "reason": status.get("reason"),
               "failed_step": status.get("failed_step")}
        row.update(summary)
        return row

    def frame(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """All (or the given) runs as a DataFrame, one row per run; damaged runs have status "damaged"."""
        ids = self.run_ids() if run_ids is None else [r for r in run_ids if (self.run_dir(r) / "config.json").exists()]
        return pd.DataFrame([self.record(r) for r in ids])

    def history_frame(self, run_ids: Iterable[str]) -> pd.DataFrame:
        """Metric histories of the given runs, long format with a run_id column (damaged histories left out)."""
        rows = []
        for r in run_ids:
            try:
                rows += [{"run_id": r, **h} for h in self.history(r) if isinstance(h, dict)]
            except StoreError:
                continue
        return pd.DataFrame(rows)
