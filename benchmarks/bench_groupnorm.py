"""What GroupNorm and weight standardisation cost in the default models, and what ablate's GroupNorm saves.

Programs (batch 128, 28 px): the student's loss and gradients (`resnet_s`,
KL at T=1) and the teacher's forward pass (`resnet_t`), each with ablate's
`group_norm` swapped while tracing for:

* `flax`: flax's `nn.GroupNorm` (`use_fast_variance=False`), the baseline;
* `ablate`: ablate's own `GroupNorm` (per-channel sums over (H, W) first, then
  over each group's channels; one-pass variance E[x^2] - E[x]^2; scale and shift
  folded into one multiply-add; same result as `fastvar` to ~1e-6);
* `fastvar`: flax `nn.GroupNorm` with `use_fast_variance=True` (flax's default);
* `ablate_twopass`: ablate's GroupNorm with `fast_variance=False` (two-pass
  variance, as `flax`; ablate's default until 2026-11-26 evening);
* `none`: no normalisation at all (a lower bound: what GroupNorm costs);
* `no_ws`: ablate's GroupNorm but no weight standardisation.

Timed alternately; figure: time / time of `flax`, per model and StdConv impl.

    .venv/bin/python -m benchmarks.bench_groupnorm [--reps 5] [--block-s 0.7] [--impls xla]
"""

from __future__ import annotations

import contextlib

from benchmarks import common

VARIANTS = ("flax", "ablate", "fastvar", "ablate_twopass", "none", "no_ws")


@contextlib.contextmanager
def variant(kind: str):
    """Swap ablate's group_norm (and standardize, for no_ws) while tracing inside this block."""
    import flax.linen as nn

    from ablate.models import resnet

    original_gn, original_std = resnet.group_norm, resnet.standardize

    def groups(c, g):
        while c % g:
            g -= 1
        return g

    if kind == "none":
        resnet.group_norm = lambda c, g, name: (lambda x: x)
    elif kind in ("flax", "fastvar"):
        resnet.group_norm = lambda c, g, name: nn.GroupNorm(num_groups=groups(c, g), epsilon=1e-5,
                                                            use_fast_variance=kind == "fastvar", name=name)
    elif kind == "ablate_twopass":
        resnet.group_norm = lambda c, g, name: resnet.GroupNorm(groups(c, g), 1e-5, fast_variance=False, name=name)
    elif kind == "no_ws":
        resnet.standardize = lambda w, eps=1e-10: w
    elif kind != "ablate":
        raise ValueError(f"unknown GroupNorm variant {kind!r}; valid: {VARIANTS}")
    try:
        yield
    finally:
        resnet.group_norm, resnet.standardize = original_gn, original_std


def program(model_name: str, impl: str, kind: str, backward: bool, batch: int):
    import jax
    import jax.numpy as jnp

    from ablate.losses import kl
    from ablate.models import build_model
    from ablate.models.resnet import conv_impl

    model = build_model(model_name, 10)
    x = jax.random.normal(jax.random.key(0), (batch, 28, 28, 1))
    zt = jax.random.normal(jax.random.key(2), (batch, 10))
    with conv_impl(impl), variant(kind):
        params = common.randomise_head(model.init(jax.random.key(1), x[:1])["params"], 3)

    def forward(p, x):
        with conv_impl(impl), variant(kind):
            return model.apply({"params": p}, x)

    if backward:
        fn = jax.jit(jax.value_and_grad(lambda p, x: jnp.mean(kl(forward(p, x), zt, None))))
    else:
        fn = jax.jit(forward)
    fn(params, x)

    def run(n):
        out = None
        for _ in range(n):
            out = fn(params, x)
        jax.block_until_ready(out)

    return run


def check_ablate_groupnorm() -> float:
    """Largest difference between ablate's GroupNorm and flax's on random activations."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from ablate.models.resnet import GroupNorm

    x = jax.random.normal(jax.random.key(0), (4, 7, 7, 24)) * 3 + 1
    ref, variables = nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=True).init_with_output(
        jax.random.key(1), x)
    return float(jnp.abs(GroupNorm(4).apply(variables, x) - ref).max())


def main(argv=None) -> dict:
    ap = common.parser(__doc__, block_s=0.7, impls="xla")
    args = ap.parse_args(argv)

    diff = check_ablate_groupnorm()
    print(f"ablate's GroupNorm vs flax's: max abs difference {diff:.1e}")
    contenders = {}
    for impl in args.impls.split(","):
        for model, backward in (("resnet_s", True), ("resnet_t", False)):
            for kind in VARIANTS:
                label = f"{model}_{'fwd_bwd' if backward else 'fwd'}/{impl}/{kind}"
                contenders[label] = program(model, impl, kind, backward, args.batch)
    print(f"timing {len(contenders)} programs alternately, {args.reps} reps of ~{args.block_s:g} s")
    times = common.alternate(contenders, args.reps, args.block_s, log=lambda s: None)
    summary = {}
    for k, v in times.items():
        base = k.rsplit("/", 1)[0] + "/flax"
        summary[k] = {"ms": common.spread([1e3 * t for t in v]), "over_flax": common.ratio(v, times[base])}
        print(f"  {k:<36} {summary[k]['ms']['median']:7.1f} ms  {common.fmt(summary[k]['over_flax'])}")
    common.save("groupnorm", {"config": vars(args), "ablate_vs_flax_max_abs_diff": diff, "times_s": times,
                              "summary": summary})
    return summary


if __name__ == "__main__":
    main()
