"""XLA options ablate sets before jax starts its backend, and why.

They depend on how many CPU cores the process may use (its affinity mask, or
$ABLATE_XLA_CORES where set), and on whether it trains in *lanes*
(ablate/lanes.py: each batch's rows split over one thread per core):

* one core (a process pinned to one core with taskset, or started with
  ABLATE_XLA_CORES=1), or a few in lanes (2 to MAX_DEFAULT_LANES cores, the
  default there): each core runs its own work single-threaded
  (`--xla_cpu_multi_thread_eigen=false`), and single-threaded, jax's default
  YNNPACK path is the faster one (a funmatch step 1.2x XLA's Eigen
  convolutions on one core, benchmarks/README.md, "Workers: one core each"),
  so ablate keeps it. Two lanes on two cores: a funmatch step 1.09x the
  one-program step on XLA's threads below (benchmarks/bench_step.py,
  `jax_no_lanes`).
* several cores without lanes (more than MAX_DEFAULT_LANES, where lanes are
  not measured, or ABLATE_LANES=1): jaxlib 0.10 hands CPU convolutions (and
  some reductions) to YNNPACK by default, and on the small-channel
  convolutions of ablate's models that path parallelises poorly: XLA's own
  Eigen convolutions are 1.2-1.3x faster per funmatch training step on a
  2-core Xeon, and about 3x on one 3x3 convolution's forward and backward
  (benchmarks/bench_xla_options.py, benchmarks/README.md). So ablate turns
  the YNNPACK fusions off.

Results agree with jax's default within float32 rounding
(tests/test_xla_flags.py); they are not bit-identical to runs made under other
flags, thread counts or lanes (each run records its XLA_FLAGS, cores and
lanes in its metadata). The flags only concern the CPU backend; on a GPU they
change nothing.

A flag already in the user's XLA_FLAGS wins over ours, and
ABLATE_XLA_DEFAULTS=0 leaves XLA_FLAGS untouched (and so trains without lanes,
unless those flags make XLA single-threaded). $ABLATE_LANES sets the number
of lanes (1: none, XLA's own threads).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Mapping, MutableMapping

# flag name -> value ablate uses ("" = the empty list: no YNNPACK fusion of any op kind)
DEFAULTS: Mapping[str, str] = {"--xla_cpu_experimental_ynn_fusion_type": ""}
MULTI_THREAD = "--xla_cpu_multi_thread_eigen"
ONE_CORE_DEFAULTS: Mapping[str, str] = {MULTI_THREAD: "false"}  # also in lanes: each thread is like a one-core process
MAX_DEFAULT_LANES = 4  # lanes were measured on 2 cores only; above 4 the default stays XLA's own threads
OPT_OUT = "ABLATE_XLA_DEFAULTS"
CORES = "ABLATE_XLA_CORES"  # the cores to pick defaults for, instead of the affinity mask's count
LANES = "ABLATE_LANES"  # how many lanes (threads, each with a slice of the batch) a step runs in
in_effect: str | None = None  # XLA_FLAGS of this process's jax backend, as far as `apply` knows (run metadata)
cores_in_effect: int | None = None  # the cores ablate's defaults were picked for (run metadata)
lanes_in_effect: int = 1  # lanes this process may train in: > 1 only where XLA runs single-threaded (ablate/lanes.py)
given: str | None = None  # XLA_FLAGS as this process was started with it, before ablate's defaults (None: unset)


def usable_cpus() -> list[int]:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks (macOS): every core
        return list(range(os.cpu_count() or 1))


def defaults_for(cores: int, lanes: int = 1) -> Mapping[str, str]:
    """ablate's flags for a process that may use `cores` CPU cores and train in `lanes` lanes."""
    return ONE_CORE_DEFAULTS if cores == 1 or lanes > 1 else DEFAULTS


def lanes_for(cores: int, environ: Mapping[str, str] = os.environ) -> int:
    """$ABLATE_LANES when it is a whole number >= 1 (a warning otherwise), else one lane per core for
    2..MAX_DEFAULT_LANES cores and none (1) otherwise."""
    given_lanes = _whole_number(environ, LANES)
    if given_lanes is not None:
        return given_lanes
    return cores if 2 <= cores <= MAX_DEFAULT_LANES else 1


def _whole_number(environ: Mapping[str, str], name: str) -> int | None:
    """`environ[name]` when it is a whole number >= 1; None when unset or empty, and a warning when it is not one."""
    text = environ.get(name, "").strip()
    if text:
        if text.isdigit() and int(text) >= 1:
            return int(text)
        warnings.warn(f"{name}={text!r} is not a whole number >= 1; ignored", stacklevel=4)
    return None


def _values(xla_flags: str) -> dict[str, str]:
    """flag name -> value (the last one given) in an XLA_FLAGS string."""
    return dict((f.split("=", 1) + [""])[:2] for f in xla_flags.split())


def with_defaults(xla_flags: str, defaults: Mapping[str, str] = DEFAULTS) -> str:
    """`xla_flags` plus each default whose flag name it does not already set."""
    given = _values(xla_flags)
    added = [f"{name}={value}" for name, value in defaults.items() if name not in given]
    return " ".join([xla_flags.strip(), *added]).strip()


def _backend_started() -> bool:
    """Whether jax has created its backends already (XLA_FLAGS is read once, then)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def apply(environ: MutableMapping[str, str] = os.environ, cores: int | None = None) -> str:
    """Put ablate's defaults for `cores` (default: $ABLATE_XLA_CORES, else the cores this process may use) into
    `environ["XLA_FLAGS"]` (unless opted out); returns the flags in effect.

    Warns when jax's backend already started under other flags: the defaults then
    only apply to processes started from here on.
    """
    global in_effect, given, cores_in_effect, lanes_in_effect
    given = environ.get("XLA_FLAGS")
    current = given or ""
    in_effect = current
    cores_in_effect = cores if cores is not None else cores_for(environ)
    user_threads = _values(current).get(MULTI_THREAD) == "true"  # the user wants XLA's threads: lanes would not pay
    lanes = 1 if user_threads else lanes_for(cores_in_effect, environ)
    if environ.get(OPT_OUT, "1").strip() != "0":
        defaults = defaults_for(cores_in_effect, lanes)
        wanted = with_defaults(current, defaults)
        if wanted != current:
            environ["XLA_FLAGS"] = wanted  # for this process's children even where it is too late for this one
            if _backend_started():
                warnings.warn(f"jax's backend started before ablate was imported, so ablate's XLA defaults "
                              f"({with_defaults('', defaults)}) are not in effect in this "
                              f"process; import ablate before running any jax code (or set {OPT_OUT}=0 to "
                              f"silence this). See ablate/xla_flags.py.", stacklevel=3)
            else:
                in_effect = wanted
    # lanes only pay with one XLA thread each
    lanes_in_effect = lanes if _values(in_effect).get(MULTI_THREAD) == "false" else 1
    return in_effect


def cores_for(environ: Mapping[str, str] = os.environ) -> int:
    """$ABLATE_XLA_CORES when it is a whole number >= 1 (a warning otherwise), else the cores this process may use."""
    cores = _whole_number(environ, CORES)
    return len(usable_cpus()) if cores is None else cores


def as_given(environ: Mapping[str, str] = os.environ) -> dict:
    """`environ` with XLA_FLAGS as this process was started with it: for a child whose ablate picks its own
    defaults (e.g. a benchmark's contender process, benchmarks/common.py)."""
    env = dict(environ)
    if given is None:
        env.pop("XLA_FLAGS", None)
    else:
        env["XLA_FLAGS"] = given
    return env
