"""Benchmark: the funmatch training step of each student family, and MobileNetS's convolutions before and after.

ablate's own funmatch step (`common.make_jax_step`: teacher resnet_t, batch 128, Adam, in lanes where this process
has them) with each student: resnet_s, mobilenet_s, vit_s, and `mobilenet_s_grouped`, MobileNetS with its
convolutions as they were before 2026-12-07 (`lax.conv_general_dilated`: the depthwise ones grouped, one group a
channel, and jax's gradients of them; the 1x1 ones as convolutions), against ablate's (depthwise: shifted slices
with written-out gradients, `ablate.models.small.depthwise_conv2d`; 1x1: one matmul over the channels). Same
parameter trees. Timed alternately; figures: time mobilenet_s_grouped / time mobilenet_s, and each family's step
time / resnet_s's.

    .venv/bin/python -m benchmarks.bench_families [--reps 5] [--block-s 5] [--batch 128]
"""

from __future__ import annotations

import contextlib

from benchmarks import common


@contextlib.contextmanager
def grouped_convs():
    """MobileNetS built with its former convolutions while jax traces inside this block (parameters unchanged)."""
    import flax.linen as nn
    import jax

    from ablate.models import small
    from ablate.models.resnet import NHWC

    class GroupedDepthwise(nn.Module):
        kernel: int = 3
        stride: int = 1

        @nn.compact
        def __call__(self, x):
            c, p = x.shape[-1], self.kernel // 2
            w = self.param("kernel", small.conv_init, (self.kernel, self.kernel, 1, c))
            return jax.lax.conv_general_dilated(x, w, (self.stride,) * 2, ((p, p), (p, p)), dimension_numbers=NHWC,
                                                feature_group_count=c)

    class ConvPointwise(nn.Module):
        features: int

        @nn.compact
        def __call__(self, x):
            w = self.param("kernel", small.conv_init, (1, 1, x.shape[-1], self.features))
            return jax.lax.conv_general_dilated(x, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=NHWC)

    saved = small.DepthwiseConv, small.PointwiseConv
    small.DepthwiseConv, small.PointwiseConv = GroupedDepthwise, ConvPointwise
    try:
        yield
    finally:
        small.DepthwiseConv, small.PointwiseConv = saved


def main(argv=None) -> dict:
    ap = common.parser(__doc__, block_s=5.0, impls=None)
    args = ap.parse_args(argv)

    steps = {}
    for name, student, ctx in (("resnet_s", "resnet_s", contextlib.nullcontext),
                               ("mobilenet_s", "mobilenet_s", contextlib.nullcontext),
                               ("mobilenet_s_grouped", "mobilenet_s", grouped_convs),
                               ("vit_s", "vit_s", contextlib.nullcontext)):
        with ctx():
            step = common.make_jax_step("funmatch", args.batch, student=student)
        step.step = common.traced_under(ctx, step.step)  # jax traces at the first call
        steps[name] = step
        print(f"built {name}", flush=True)
    times = common.alternate({k: s.run for k, s in steps.items()}, args.reps, args.block_s)
    result = {"batch": args.batch, "ms_per_step": {k: common.spread([1e3 * t for t in v]) for k, v in times.items()},
              "grouped_over_slices": common.ratio(times["mobilenet_s_grouped"], times["mobilenet_s"]),
              "over_resnet_s": {k: common.ratio(v, times["resnet_s"]) for k, v in times.items() if k != "resnet_s"}}
    for k, v in result["ms_per_step"].items():
        print(f"{k:<22} {v['median']:8.1f} ms a step")
    print(f"mobilenet_s_grouped / mobilenet_s: {common.fmt(result['grouped_over_slices'])}")
    for k, v in result["over_resnet_s"].items():
        print(f"{k} / resnet_s: {common.fmt(v)}")
    common.save("families", result)
    return result


if __name__ == "__main__":
    main()
