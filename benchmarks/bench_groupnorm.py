"""What GroupNorm and weight standardisation cost in the default models, and what a cheaper GroupNorm saves.

Programs (batch 128, 28 px): the student's loss and gradients (`resnet_s`,
KL at T=1) and the teacher's forward pass (`resnet_t`), each with ablate's
`group_norm` swapped while tracing for:

* `flax`: ablate's own (flax `nn.GroupNorm`, `use_fast_variance=False`), the baseline;
* `none`: no normalisation at all (a lower bound: what GroupNorm costs);
* `fastvar`: flax `nn.GroupNorm` with `use_fast_variance=True`;
* `perchannel`: per-channel sums over (H, W) first, then summed over each
  group's channels, the variance in a second pass, and scale and shift folded
  into one per-(example, channel) multiply-add (same result as `flax` to ~1e-6);
* `perchannel1`: the same with a one-pass variance (E[x^2] - E[x]^2);
* `no_ws`: `flax` GroupNorm but no weight standardisation.

Timed alternately; figure: time / time of `flax`, per model and StdConv impl.

    .venv/bin/python -m benchmarks.bench_groupnorm [--reps 5] [--block-s 0.7] [--impls xla]
"""

from __future__ import annotations

import argparse
import contextlib

from benchmarks import common

VARIANTS = ("flax", "none", "fastvar", "perchannel", "perchannel1", "no_ws")


def _modules():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Identity(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x

    class PerChannelGroupNorm(nn.Module):
        """GroupNorm over NHWC from per-channel sums; parameters named like flax's (scale, bias)."""

        num_groups: int
        two_pass: bool = True
        epsilon: float = 1e-5

        @nn.compact
        def __call__(self, x):
            c, g = x.shape[-1], self.num_groups
            n = x.shape[1] * x.shape[2] * (c // g)
            scale = self.param("scale", nn.initializers.ones, (c,))
            bias = self.param("bias", nn.initializers.zeros, (c,))

            def group_sum(per_channel):  # (B, C) -> (B, G)
                return per_channel.reshape(-1, g, c // g).sum(-1)

            mean_g = group_sum(jnp.sum(x, axis=(1, 2))) / n
            mean_c = jnp.repeat(mean_g, c // g, axis=-1)
            if self.two_pass:
                var_g = group_sum(jnp.sum(jnp.square(x - mean_c[:, None, None, :]), axis=(1, 2))) / n
            else:
                var_g = group_sum(jnp.sum(jnp.square(x), axis=(1, 2))) / n - jnp.square(mean_g)
            a = scale * jnp.repeat(jax.lax.rsqrt(var_g + self.epsilon), c // g, axis=-1)
            return x * a[:, None, None, :] + (bias - mean_c * a)[:, None, None, :]

    return Identity, PerChannelGroupNorm


@contextlib.contextmanager
def variant(kind: str):
    """Swap ablate's group_norm (and standardize, for no_ws) while tracing inside this block."""
    import flax.linen as nn

    from ablate.models import resnet

    identity, per_channel = _modules()
    original_gn, original_std = resnet.group_norm, resnet.standardize

    def groups(c, g):
        while c % g:
            g -= 1
        return g

    if kind == "none":
        resnet.group_norm = lambda c, g, name: identity(name=name)
    elif kind == "fastvar":
        resnet.group_norm = lambda c, g, name: nn.GroupNorm(num_groups=groups(c, g), epsilon=1e-5,
                                                            use_fast_variance=True, name=name)
    elif kind in ("perchannel", "perchannel1"):
        resnet.group_norm = lambda c, g, name: per_channel(groups(c, g), kind == "perchannel", name=name)
    elif kind == "no_ws":
        resnet.standardize = lambda w, eps=1e-10: w
    try:
        yield
    finally:
        resnet.group_norm, resnet.standardize = original_gn, original_std


def program(model_name: str, impl: str, kind: str, backward: bool, batch: int):
    import jax
    import jax.numpy as jnp

    from ablate.losses import kl
    from ablate.models import build_model

    model = build_model(model_name, 10)
    x = jax.random.normal(jax.random.key(0), (batch, 28, 28, 1))
    zt = jax.random.normal(jax.random.key(2), (batch, 10))
    with common.conv_impl(impl), variant(kind):
        params = common.randomise_head(model.init(jax.random.key(1), x[:1])["params"], 3)

    def forward(p, x):
        with common.conv_impl(impl), variant(kind):
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


def check_perchannel() -> float:
    """Largest difference between the per-channel GroupNorm and flax's on random activations."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    _, per_channel = _modules()
    x = jax.random.normal(jax.random.key(0), (4, 7, 7, 24)) * 3 + 1
    ref = nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=False).init_with_output(jax.random.key(1), x)[0]
    return max(float(jnp.abs(per_channel(4, two).init_with_output(jax.random.key(1), x)[0] - ref).max())
               for two in (True, False))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--block-s", type=float, default=0.7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--impls", default="xla", help="StdConv impls (default xla, the faster one here)")
    args = ap.parse_args(argv)

    diff = check_perchannel()
    print(f"per-channel GroupNorm vs flax: max abs difference {diff:.1e}")
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
    common.save("groupnorm", {"config": vars(args), "perchannel_max_abs_diff": diff, "times_s": times,
                              "summary": summary})
    return summary


if __name__ == "__main__":
    main()
