"""The W&B sink: every run also goes to Weights & Biases, and W&B failing never stops a run.

Mode "auto" is online when credentials are present and offline otherwise
(`wandb sync` uploads later); "disabled" skips W&B entirely.

When W&B fails (no network, bad credentials, a service error), the user is told
once, in one line, with credentials masked; an online run that cannot start
falls back to offline files for this and every later run of the process, so
nothing is lost, and `wandb init` never waits longer than
$ABLATE_WANDB_INIT_TIMEOUT seconds (default 30).
"""

from __future__ import annotations

import netrc
import os
import pathlib
import re
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


def init_timeout() -> float:
    """Seconds `wandb.init` may take before W&B counts as unreachable."""
    try:
        return float(os.environ.get("ABLATE_WANDB_INIT_TIMEOUT", 30))
    except ValueError:
        return 30.0


def secrets() -> list[str]:
    """The W&B credentials this process could know: $WANDB_API_KEY and the netrc password."""
    out = [os.environ.get("WANDB_API_KEY", "")]
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
        out.append(auth[2] if auth else "")
    except (OSError, netrc.NetrcParseError):
        pass
    return [s for s in out if len(s) >= 4]


def scrub(text: str) -> str:
    """`text` with every W&B credential masked (for messages that may echo a request or a setting)."""
    for secret in secrets():
        text = text.replace(secret, "****")
    return text


def one_line(text: str, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", scrub(str(text))).strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


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

    _warned = False  # one warning per process, whatever fails and however often
    _fallback: str | None = None  # "offline" once online W&B failed, "disabled" once offline failed too

    def __init__(self, mode: str = "auto", project: str = "ablate", entity: str | None = None,
                 directory: pathlib.Path | None = None):
        self.mode = resolve_mode(mode)
        self.project, self.entity = project, entity
        self.directory = pathlib.Path(directory) if directory else None
        self.run = None

    @classmethod
    def _warn(cls, message: str) -> None:
        if not cls._warned:
            print(f"warning: {one_line(message, 600)}", file=sys.stderr)
            cls._warned = True

    def _guard(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - W&B must never cost a run
            self._warn(f"W&B {what} failed ({type(e).__name__}: {one_line(e)}); runs go on and stay complete in "
                       "the local store. Later W&B errors are not reported again.")
            self.run = None
            return None

    def start(self, run_id: str, config: dict, *, group: str, job_type: str, tags: list[str],
              name: str | None = None) -> None:
        mode = self.mode if self.mode == "disabled" else (WandbSink._fallback or self.mode)
        if mode == "disabled":
            return
        if self.directory:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                self._warn(f"W&B folder {self.directory} cannot be created ({e.strerror or e}); W&B is off for "
                           "this process, runs stay complete in the local store.")
                WandbSink._fallback = "disabled"
                return
            os.environ.setdefault("WANDB_DIR", str(self.directory))
            os.environ.setdefault("WANDB_CACHE_DIR", str(self.directory / ".cache"))
        os.environ.setdefault("WANDB_SILENT", "true")

        def init(mode):
            wandb = _import_wandb(self.directory)

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return wandb.init(id=run_id, resume="allow", project=self.project, entity=self.entity,
                                  group=group, job_type=job_type, tags=tags, name=name or run_id,
                                  config=flatten(config), mode=mode,
                                  dir=str(self.directory) if self.directory else None, reinit="create_new",
                                  settings=wandb.Settings(init_timeout=init_timeout()))

        try:
            self.run = init(mode)
            return
        except Exception as e:  # noqa: BLE001 - W&B must never cost a run
            error = f"{type(e).__name__}: {one_line(e)}"
        _teardown()
        if mode == "online":
            where = self.directory or "the wandb folder"
            self._warn(f"W&B online logging failed ({error}); logging to offline files in {where} instead "
                       "(upload them later with `wandb sync`). Runs go on and stay complete in the local store.")
            WandbSink._fallback = "offline"
            try:
                self.run = init("offline")
                return
            except Exception as e:  # noqa: BLE001
                error = f"{type(e).__name__}: {one_line(e)}"
                _teardown()
        self._warn(f"W&B {mode} logging failed ({error}); W&B is off for this process. Runs go on and stay "
                   "complete in the local store.")
        WandbSink._fallback = "disabled"

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


def _import_wandb(directory: pathlib.Path | None):
    """Import wandb, whose modules make temporary folders (`tmp*wandb-media`, `tmp*wandb-artifacts`) that only a
    clean exit removes: they are made under `directory`/tmp, so a killed run leaves them there, not in the system's
    temporary folder."""
    import contextlib
    import importlib
    import tempfile

    if "wandb" in sys.modules or directory is None:
        import wandb

        return wandb
    before = tempfile.tempdir
    try:
        (directory / "tmp").mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(directory / "tmp")
        import wandb

        for module in ("wandb.sdk.data_types._private", "wandb.sdk.artifacts.artifact"):  # each makes its folder
            with contextlib.suppress(ImportError):  # on import; another wandb version may have moved them
                importlib.import_module(module)
    finally:
        tempfile.tempdir = before
    return wandb


def _teardown() -> None:
    """Forget a W&B run that failed to start, so the next init (same id, other mode) is not refused as in use."""
    try:
        import wandb

        wandb.teardown()
    except Exception:  # noqa: BLE001
        pass
