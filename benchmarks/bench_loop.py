"""Benchmark: the training loop, one dispatch a step vs blocks of steps in one program (`ablate.step.make_multi_step`).

Whole `ablate.train.train` calls of a default funmatch run (resnet_t -> resnet_s, batch 128, 500 images, ~100
steps, one evaluation on 1,000-image splits, so the loop dominates), timed alternately in one process:
`per_step` dispatches each step as one jitted program (no lanes), `blocks` runs the steps between evaluations in
one program (the training set on the device, batches and views drawn inside), and `lanes` is the per-step loop
in lanes, the default on a few CPU cores; `blocks_lax` is `blocks` with jax's own convolution gradients
(StdConv impl "lax", ablate's default before 2026-12-07 evening), which XLA's CPU backend runs ~3x slower
inside a loop. The figures are medians of time per_step / time blocks, time lanes / time blocks and
time blocks_lax / time blocks. With `--seeds S`, also `seeds`, S runs of seeds 0..S-1 trained as one seed
cohort (vmapped over the runs in one program of blocks, `ablate.step.make_seed_multi_step`, as on an
accelerator), against `seeds_alone`, the same S runs in blocks one after another: time seeds_alone / time seeds.
The teacher has random weights: throughput does not depend on what it learnt.

    .venv/bin/python -m benchmarks.bench_loop [--reps 5] [--block-s 20] [--epochs 25] [--batch 128] [--seeds 8]

On a GPU, `--seeds 8` measures the issue "Long schedules made cheap"'s accelerator targets in one run: blocks vs
one dispatch a step for a single run (>= 5x) and 8 seeds as one cohort vs one after another (>= 5x).
"""

from __future__ import annotations

import collections
import dataclasses

from benchmarks import common


def main(argv=None) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ablate.lanes
    from ablate import step as step_lib
    from ablate import xla_flags
    from ablate.config import RunConfig
    from ablate.evaluate import Frozen
    from ablate.models import build_model
    from ablate.models.resnet import conv_impl
    from ablate.train import Member, train, train_cohort

    ap = common.parser(__doc__, block_s=20.0, impls=None)
    ap.add_argument("--epochs", type=float, default=25.0, help="epochs over 500 images (25: 97 steps at batch 128)")
    ap.add_argument("--seeds", type=int, default=0,
                    help="also time S runs of seeds 0..S-1 as one seed cohort vs one after another (default 0: not)")
    args = ap.parse_args(argv)
    data = common._fashion_mnist()
    data = dataclasses.replace(data, val=data.val.take(np.arange(1000)), test=data.test.take(np.arange(1000)))
    t_model = build_model("resnet_t", 10)
    t_params = common.randomise_head(t_model.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)))["params"], 2)
    teacher = Frozen(t_model, jax.device_put(t_params), 28)
    cfg = RunConfig(policy="funmatch", subset_per_class=50, epochs=args.epochs, num_evals=1, batch_size=args.batch)
    lanes = ablate.lanes.count

    programs = {"xla": step_lib._PROGRAMS, "lax": collections.OrderedDict()}  # each impl keeps its own programs

    def loop(multi: bool, in_lanes: bool, impl: str = "xla"):
        def run(n: int) -> None:
            ablate.lanes.count = lanes if in_lanes else (lambda batch: 1)
            step_lib._PROGRAMS = programs[impl]
            try:
                with conv_impl(impl):  # programs are traced at their first use: under this impl
                    for _ in range(n):
                        train(cfg, data, teacher=teacher, progress=False, use_multi_step=multi)
            finally:
                ablate.lanes.count = lanes
                step_lib._PROGRAMS = programs["xla"]
        return run

    def seeds(together: bool):
        def run(n: int) -> None:
            runs = [cfg.replace(seed=k) for k in range(args.seeds)]
            for _ in range(n):
                if together:  # vmapped over the runs in one program of blocks (`make_seed_multi_step`)
                    train_cohort([Member(c) for c in runs], data, teacher=teacher, progress=False)
                else:
                    for c in runs:
                        train(c, data, teacher=teacher, progress=False, use_multi_step=True)
        return run

    contenders = {"per_step": loop(False, False), "blocks": loop(True, False), "lanes": loop(False, True),
                  "blocks_lax": loop(True, False, "lax")}
    if args.seeds:
        contenders.update({"seeds": seeds(True), "seeds_alone": seeds(False)})
    for fn in contenders.values():
        fn(1)  # compile (or load from the persistent cache) outside the timing
    print(f"timing {', '.join(contenders)} alternately, {args.reps} reps of ~{args.block_s:g} s "
          f"(lanes in this process: {xla_flags.lanes_in_effect})")
    times = common.alternate(contenders, args.reps, args.block_s)
    summary = {"per_step_over_blocks": common.ratio(times["per_step"], times["blocks"]),
               "lanes_over_blocks": common.ratio(times["lanes"], times["blocks"]),
               "blocks_lax_over_blocks": common.ratio(times["blocks_lax"], times["blocks"]),
               **({"seeds_alone_over_seeds": common.ratio(times["seeds_alone"], times["seeds"]),
                   "seeds": args.seeds} if args.seeds else {}),
               "s_per_run": {k: common.spread(v) for k, v in times.items()},
               "lanes": xla_flags.lanes_in_effect, "backend": jax.default_backend()}
    print(f"  time per_step / time blocks = {common.fmt(summary['per_step_over_blocks'])}; "
          f"time lanes / time blocks = {common.fmt(summary['lanes_over_blocks'])}; "
          f"time blocks_lax / time blocks = {common.fmt(summary['blocks_lax_over_blocks'])}")
    if args.seeds:
        print(f"  {args.seeds} seeds: time one after another / time as one seed cohort = "
              f"{common.fmt(summary['seeds_alone_over_seeds'])}")
    common.save("loop", {"config": vars(args), "times_s": times, "summary": summary})
    return summary


if __name__ == "__main__":
    main()
