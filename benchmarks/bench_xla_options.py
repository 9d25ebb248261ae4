"""Options of XLA's CPU backend that might speed up the step: library fusions, vector width, bfloat16.

Two parts, each timed alternately in one run:

* `flags`: ablate's funmatch step (batch 128, the default models) in one
  process per XLA_FLAGS setting, each with ABLATE_XLA_DEFAULTS=0 so that the
  process runs exactly the flags listed: `jax_default` (no flags: jaxlib's
  YNNPACK convolutions), `ablate` (ablate's flags without lanes,
  `ablate.xla_flags`: YNNPACK fusions off, so XLA's Eigen convolutions, on
  XLA's threads), `ablate_lanes` (ablate's default on 2-4 cores: the same,
  single-threaded, the step in one lane per core, ablate/lanes.py), XNNPACK / oneDNN
  convolutions instead, 512-bit vectors, XNNPACK graph fusion, and the
  YNNPACK / oneDNN / XNNPACK library fusions of dots, elementwise ops and
  reductions; on top of ablate's: XLA's older loop emitters instead of its
  fusion emitters, its older (non-thunk) runtime, oneDNN, fast math. Figure: jax_default time / time (> 1 is faster than jax's default).
* `bf16`: a 2048^2 matmul and one 3x3 convolution of the teacher's middle
  stage (128 x 14 x 14 x 64 -> 64 channels), forward and backward, in float32
  and bfloat16 (this CPU has AMX-BF16 and AVX512-BF16), under ablate's flags.
  Figure: float32 time / bfloat16 time.

    .venv/bin/python -m benchmarks.bench_xla_options [--reps 5] [--block-s 1] [--only ablate,...] [--no-dtypes]
"""

from __future__ import annotations

from ablate import xla_flags
from benchmarks import common

ABLATE = xla_flags.with_defaults("")
FLAGS = {
    "jax_default": "",
    "ablate": ABLATE,
    "ablate_lanes": xla_flags.with_defaults("", xla_flags.defaults_for(2, lanes=2)),
    "xnn_conv": f"{ABLATE} --xla_cpu_experimental_xnn_fusion_type=individual_convolution",
    "onednn_conv": f"{ABLATE} --xla_cpu_experimental_onednn_fusion_type=individual_convolution",
    "xnn_conv_dot": f"{ABLATE} --xla_cpu_experimental_xnn_fusion_type=individual_convolution,individual_dot",
    "ablate_vw512": f"{ABLATE} --xla_cpu_prefer_vector_width=512",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
    "xnn_graph_fusion": "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "ynn_fusions": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "onednn_fusions": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
    "xnn_fusions": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    "ablate_no_fusion_emitters": f"{ABLATE} --xla_cpu_use_fusion_emitters=false",
    "ablate_legacy_runtime": f"{ABLATE} --xla_cpu_use_thunk_runtime=false",
    "ablate_onednn": f"{ABLATE} --xla_cpu_use_onednn=true",
    "ablate_fast_math": f"{ABLATE} --xla_cpu_enable_fast_math=true",
}
BASE = "jax_default"


def dtype_programs():
    """(In its own process) matmul and conv forward/backward in float32 and bfloat16."""
    import jax
    import jax.numpy as jnp

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    out = {}
    for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        a = jax.random.normal(jax.random.key(0), (2048, 2048)).astype(dt)
        x = jax.random.normal(jax.random.key(1), (128, 14, 14, 64)).astype(dt)
        w = jax.random.normal(jax.random.key(2), (3, 3, 64, 64)).astype(dt)
        progs = {"matmul": (jax.jit(lambda a: a @ a), (a,)),
                 "conv_fwd": (jax.jit(conv), (x, w)),
                 "conv_fwd_bwd": (jax.jit(jax.grad(lambda x, w: conv(x, w).astype(jnp.float32).sum(), (0, 1))),
                                  (x, w))}
        for prog, (fn, args) in progs.items():
            jax.block_until_ready(fn(*args))

            def run(n, fn=fn, args=args):
                r = None
                for _ in range(n):
                    r = fn(*args)
                jax.block_until_ready(r)

            out[f"{prog}/{name}"] = run
    return out, {}


def step_program(batch: int):
    """(In its own process, under the XLA_FLAGS it was started with) ablate's funmatch step."""
    js = common.make_jax_step("funmatch", batch)
    js.run(1)
    return {"step": js.run}, {}


def main(argv=None) -> dict:
    ap = common.parser(__doc__, block_s=1.0, impls=None)
    ap.add_argument("--only", default=",".join(FLAGS), help=f"flag settings to time (default all: {','.join(FLAGS)})")
    ap.add_argument("--no-dtypes", action="store_true", help="skip the float32 / bfloat16 part")
    args = ap.parse_args(argv)
    chosen = [BASE] + [n for n in args.only.split(",") if n and n != BASE]
    if unknown := [n for n in chosen if n not in FLAGS]:
        ap.error(f"unknown flag setting(s) {', '.join(unknown)}; valid: {', '.join(FLAGS)}")
    procs, contenders, failed = [], {}, {}
    for name in chosen:
        flags = FLAGS[name]
        try:
            p = common.ProcessContenders("benchmarks.bench_xla_options:step_program",
                                         env={"XLA_FLAGS": flags, xla_flags.OPT_OUT: "0"}, batch=args.batch)
        except RuntimeError as e:
            failed[name] = str(e).strip().splitlines()[-1]
            print(f"  {name}: does not run ({failed[name]})")
            continue
        procs.append(p)
        contenders[f"step/{name}"] = p.runners()["step"]
    if not args.no_dtypes:
        dtypes = common.ProcessContenders("benchmarks.bench_xla_options:dtype_programs")
        procs.append(dtypes)
        contenders.update(dtypes.runners())
    print(f"timing {len(contenders)} programs alternately, {args.reps} reps of ~{args.block_s:g} s")
    try:
        times = common.alternate(contenders, args.reps, args.block_s, log=lambda s: None)
    finally:
        for p in procs:
            p.close()
    summary = {}
    for k, v in times.items():
        base = f"step/{BASE}" if k.startswith("step/") else k.rsplit("/", 1)[0] + "/f32"
        summary[k] = {"ms": common.spread([1e3 * t for t in v]), "speedup": common.ratio(times[base], v)}
        print(f"  {k:<26} {summary[k]['ms']['median']:8.2f} ms  speed-up vs {base}: {common.fmt(summary[k]['speedup'])}")
    common.save("xla_options", {"config": vars(args), "flags": {n: FLAGS[n] for n in chosen}, "failed": failed, "times_s": times,
                                "summary": summary})
    return summary


if __name__ == "__main__":
    main()
