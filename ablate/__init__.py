"""ablate: ablation studies of knowledge distillation in JAX (Beyer et al., CVPR 2022)."""

__version__ = "0.1.0"

from ablate import xla_flags as _xla_flags

_xla_flags.apply()  # before jax starts its backend: XLA reads XLA_FLAGS once


def _enable_compilation_cache() -> None:
    """Compile each program shape once per machine, not once per run (persistent XLA cache)."""
    import os

    if os.environ.get("ABLATE_NO_COMPILATION_CACHE"):
        return
    import jax

    from ablate import paths

    jax.config.update("jax_compilation_cache_dir", str(paths.cache_dir() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


_enable_compilation_cache()
