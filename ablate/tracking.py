"""The W&B sink: every run also goes to Weights & Biases, and W&B failing never stops a run.

Mode "auto" is online when credentials are present and offline otherwise
(`wandb sync` uploads later); "disabled" skips W&B entirely.
"""

from __future__ import annotations

import netrc
import os
import pathlib
import sys
import warnings

MODES = ("auto", "online", "offline", "disabled")


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown W&B mode {mode!r}; valid modes: {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_credentials() else "offline"


def _has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v
    return out


class WandbSink:
    """One W&B run per ablate run, resumed (not duplicated) under the same id."""

    _warned = False

    def __init__(self, mode: str = "auto", project: str = "ablate", entity: str | None = None,
                 directory: pathlib.Path | None = None):
        self.mode = resolve_mode(mode)
        self.project, self.entity = project, entity
        self.directory = pathlib.Path(directory) if directory else None
        self.run = None

    def _guard(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - W&B must never cost a run
            if not WandbSink._warned:
                print(f"warning: W&B {what} failed ({type(e).__name__}: {e}); runs go on and stay complete "
                      "in the local store. Later W&B errors are not reported again.", file=sys.stderr)
                WandbSink._warned = True
            self.run = None
            return None

    def start(self, run_id: str, config: dict, *, group: str, job_type: str, tags: list[str],
              name: str | None = None) -> None:
        if self.mode == "disabled":
            return
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("WANDB_DIR", str(self.directory))
            os.environ.setdefault("WANDB_CACHE_DIR", str(self.directory / ".cache"))
        os.environ.setdefault("WANDB_SILENT", "true")

        def init():
            import wandb

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return wandb.init(id=run_id, resume="allow", project=self.project, entity=self.entity,
                                  group=group, job_type=job_type, tags=tags, name=name or run_id,
                                  config=flatten(config), mode=self.mode,
                                  dir=str(self.directory) if self.directory else None, reinit="finish_previous")

        self.run = self._guard("init", init)

    def log(self, row: dict) -> None:
        if self.run is not None:
            self._guard("log", self.run.log, {k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    def finish(self, summary: dict, failed: bool = False) -> None:
        if self.run is None:
            return
        run = self.run

        def close():
            for k, v in summary.items():
                run.summary[k] = v
            run.finish(exit_code=1 if failed else 0)

        self._guard("finish", close)
        self.run = None
