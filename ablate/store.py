"""The local run store: one folder per run id with config, metric history, status and summary.

Every file is written atomically (temporary file, then rename), so a reader
never sees half a file; a cell is claimed with an exclusive lock file so two
processes never run it at once.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import time
from typing import Any, Iterable

import pandas as pd

DONE, RUNNING, FAILED = "done", "running", "failed"


def write_json(path: pathlib.Path, obj: Any) -> None:
    """Write JSON atomically: a crash leaves the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=float)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: pathlib.Path, default: Any = None) -> Any:
    """Read JSON, or `default` when the file is missing; a damaged file raises StoreError naming it."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path} is damaged ({e})") from None


class StoreError(RuntimeError):
    """A run folder that cannot be read or written; the message names the path."""


class RunStore:
    """Runs under `root/<run_id>/`: config.json, status.json, history.json, summary.json, checkpoints/."""

    def __init__(self, root: pathlib.Path | str):
        self.root = pathlib.Path(root)

    def run_dir(self, run_id: str) -> pathlib.Path:
        return self.root / run_id

    def ckpt_dir(self, run_id: str) -> pathlib.Path:
        return self.run_dir(run_id) / "checkpoints"

    # -- writing
    def start(self, run_id: str, config: dict, meta: dict) -> None:
        d = self.run_dir(run_id)
        try:
            d.mkdir(parents=True, exist_ok=True)
            write_json(d / "config.json", {"config": config, "meta": meta})
            status = read_json(d / "status.json", {}) or {}
            write_json(d / "status.json", {**status, "state": RUNNING, "host": socket.gethostname(),
                                           "pid": os.getpid(), "started": time.time(),
                                           "attempts": status.get("attempts", 0) + 1})
        except OSError as e:
            raise StoreError(f"cannot write run folder {d}: {e.strerror or e}") from None

    def log(self, run_id: str, row: dict) -> None:
        path = self.run_dir(run_id) / "history.json"
        history = read_json(path, [])
        write_json(path, [r for r in history if r["step"] != row["step"]] + [row])

    def truncate(self, run_id: str, step: int) -> None:
        """Forget history after `step` (a run resumed from its checkpoint at that step)."""
        path = self.run_dir(run_id) / "history.json"
        write_json(path, [r for r in read_json(path, []) if r["step"] <= step])

    def finish(self, run_id: str, summary: dict) -> None:
        d = self.run_dir(run_id)
        write_json(d / "summary.json", summary)
        self._set_status(run_id, DONE, finished=time.time())

    def fail(self, run_id: str, reason: str, step: int | None = None) -> None:
        self._set_status(run_id, FAILED, reason=reason, failed_step=step, finished=time.time())

    def _set_status(self, run_id: str, state: str, **extra) -> None:
        path = self.run_dir(run_id) / "status.json"
        write_json(path, {**(read_json(path, {}) or {}), "state": state, **extra})

    # -- claiming
    def claim(self, run_id: str) -> bool:
        """Take the lock of a cell; False when a live process holds it. Stale locks are broken."""
        lock = self.run_dir(run_id) / "lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if not self._stale(lock):
                    return False
                lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)
            return True
        return False

    def release(self, run_id: str) -> None:
        (self.run_dir(run_id) / "lock").unlink(missing_ok=True)

    @staticmethod
    def _stale(lock: pathlib.Path) -> bool:
        try:
            owner = json.loads(lock.read_text())
        except (OSError, ValueError):
            return time.time() - lock.stat().st_mtime > 60 if lock.exists() else True
        if owner.get("host") != socket.gethostname():
            return False
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    # -- reading
    def status(self, run_id: str) -> dict | None:
        return read_json(self.run_dir(run_id) / "status.json")

    def is_done(self, run_id: str) -> bool:
        s = self.status(run_id)
        return bool(s) and s.get("state") == DONE and (self.run_dir(run_id) / "summary.json").exists()

    def history(self, run_id: str) -> list[dict]:
        return read_json(self.run_dir(run_id) / "history.json", [])

    def run_ids(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "config.json").exists())

    def record(self, run_id: str) -> dict:
        """One run as a flat dict: config fields, meta (study, axes), status and summary."""
        d = self.run_dir(run_id)
        cfg = read_json(d / "config.json", {})
        status = read_json(d / "status.json", {}) or {}
        row = {"run_id": run_id, **cfg.get("config", {}),
               **{f"meta/{k}": v for k, v in cfg.get("meta", {}).items() if not isinstance(v, (dict, list))},
               "status": status.get("state", "unknown"), "reason": status.get("reason"),
               "failed_step": status.get("failed_step")}
        row.update(read_json(d / "summary.json", {}) or {})
        return row

    def frame(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """All (or the given) runs as a DataFrame, one row per run."""
        ids = self.run_ids() if run_ids is None else [r for r in run_ids if (self.run_dir(r) / "config.json").exists()]
        return pd.DataFrame([self.record(r) for r in ids])

    def history_frame(self, run_ids: Iterable[str]) -> pd.DataFrame:
        """Metric histories of the given runs, long format with a run_id column."""
        rows = [{"run_id": r, **h} for r in run_ids for h in self.history(r)]
        return pd.DataFrame(rows)
