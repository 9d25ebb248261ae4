"""ablate: ablation studies of knowledge distillation in JAX (Beyer et al., CVPR 2022)."""

__version__ = "0.1.0"

from ablate import xla_flags as _xla_flags

_xla_flags.apply()  # before jax starts its backend: XLA reads XLA_FLAGS once


def _enable_compilation_cache() -> None:
    """Compile each program shape once per machine, not once per run: jax's persistent cache in <cache>/xla.

    jax reads its options from JAX_* environment variables when it is imported, so they are set there and
    importing ablate does not import jax (`ablate -h` and `ablate list` compute nothing and stay quick). They
    override values a parent process passed down, as the options set on jax did before, so a child with
    another $ABLATE_CACHE gets its own folder; ABLATE_NO_COMPILATION_CACHE=1 leaves the cache off, also one
    a parent passed down. Where jax was imported before ablate, its options are set on it directly.
    """
    import os
    import sys

    from ablate import paths

    options = {"jax_compilation_cache_dir": str(paths.cache_dir() / "xla"),
               "jax_persistent_cache_min_compile_time_secs": 0.5}
    off = bool(os.environ.get("ABLATE_NO_COMPILATION_CACHE"))
    for name, value in options.items():
        if off:
            os.environ.pop(name.upper(), None)
        else:
            os.environ[name.upper()] = str(value)
    jax = sys.modules.get("jax")
    if jax is not None and not off:  # it has read its environment already
        for name, value in options.items():
            jax.config.update(name, value)


_enable_compilation_cache()
