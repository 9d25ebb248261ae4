"""XLA options ablate sets before jax starts its backend, and why.

jaxlib 0.10 hands CPU convolutions (and some reductions) to YNNPACK by
default. On the small-channel convolutions of ablate's models that path is
slower than XLA's own Eigen convolutions: 1.2-1.3x per funmatch training
step on a 2-core Xeon, and about 3x on one 3x3 convolution's forward and
backward (benchmarks/bench_xla_options.py, benchmarks/README.md). So ablate
turns the YNNPACK fusions off. Results agree with jax's default within float32
rounding (tests/test_xla_flags.py); they are not bit-identical to runs made
under the default. The flags only concern the CPU backend; on a GPU they
change nothing.

A flag already in the user's XLA_FLAGS wins over ours, and
ABLATE_XLA_DEFAULTS=0 leaves XLA_FLAGS untouched.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Mapping, MutableMapping

# flag name -> value ablate uses ("" = the empty list: no YNNPACK fusion of any op kind)
DEFAULTS: Mapping[str, str] = {"--xla_cpu_experimental_ynn_fusion_type": ""}
OPT_OUT = "ABLATE_XLA_DEFAULTS"
in_effect: str | None = None  # XLA_FLAGS of this process's jax backend, as far as `apply` knows (run metadata)


def with_defaults(xla_flags: str, defaults: Mapping[str, str] = DEFAULTS) -> str:
    """`xla_flags` plus each default whose flag name it does not already set."""
    given = {f.split("=", 1)[0] for f in xla_flags.split()}
    added = [f"{name}={value}" for name, value in defaults.items() if name not in given]
    return " ".join([xla_flags.strip(), *added]).strip()


def _backend_started() -> bool:
    """Whether jax has created its backends already (XLA_FLAGS is read once, then)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def apply(environ: MutableMapping[str, str] = os.environ) -> str:
    """Put ablate's defaults into `environ["XLA_FLAGS"]` (unless opted out); returns the flags in effect.

    Warns when jax's backend already started under other flags: the defaults then
    only apply to processes started from here on (e.g. ablate's study workers).
    """
    global in_effect
    current = environ.get("XLA_FLAGS", "")
    in_effect = current
    if environ.get(OPT_OUT, "1").strip() == "0":
        return current
    wanted = with_defaults(current)
    if wanted != current:
        environ["XLA_FLAGS"] = wanted
        if _backend_started():
            warnings.warn(f"jax's backend started before ablate was imported, so ablate's XLA defaults "
                          f"({with_defaults('')}) are not in effect in this "
                          f"process; import ablate before running any jax code (or set {OPT_OUT}=0 to "
                          f"silence this). See ablate/xla_flags.py.", stacklevel=3)
            return current
    in_effect = wanted
    return wanted
