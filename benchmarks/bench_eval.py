"""Benchmark: one evaluation of the student (val 5,000 + test 10,000 images), chunk by chunk vs one program per split.

`chunked` is the evaluation as it was: 1,000-image chunks sent from the host,
each through the jitted model (split over lanes on a few CPU cores).
`resident` is `ablate.evaluate.predict` now: each split on the device once
per process, the model mapped over it in one jitted call (per lane). Both
give the same logits (checked first); the two are timed alternately in one
process, and the figure is the median of time chunked / time resident.

    .venv/bin/python -m benchmarks.bench_eval [--reps 5] [--block-s 4] [--model resnet_s]
"""

from __future__ import annotations

import time

from benchmarks import common


def main(argv=None) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ablate import xla_flags
    from ablate.evaluate import predict_chunked, predict_split
    from ablate.models import build_model

    ap = common.parser(__doc__, block_s=4.0, impls=None)
    ap.add_argument("--model", default="resnet_s", help="the student evaluated (default resnet_s)")
    args = ap.parse_args(argv)
    data = common._fashion_mnist()
    model = build_model(args.model, data.num_classes)
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    params = jax.device_put(common.randomise_head(params, 1))
    splits = (data.val, data.test)

    def evaluation(predict):
        def run(n: int) -> None:
            for _ in range(n):
                for split in splits:
                    predict(model, params, split, data.eval_view, 28)  # returns numpy: finished
        return run

    contenders = {"chunked": evaluation(predict_chunked), "resident": evaluation(predict_split)}
    first_call_s, max_diff = {}, 0.0
    for name, fn in (("chunked", predict_chunked), ("resident", predict_split)):
        t0 = time.perf_counter()
        for split in splits:
            fn(model, params, split, data.eval_view, 28)
        first_call_s[name] = time.perf_counter() - t0  # compilation (or the persistent cache) and the first copy
    for split in splits:
        a = predict_chunked(model, params, split, data.eval_view, 28)
        b = predict_split(model, params, split, data.eval_view, 28)
        max_diff = max(max_diff, float(np.max(np.abs(a - b) / (np.abs(a) + 1e-6))))
    print(f"{args.model} on val + test ({sum(len(s) for s in splits):,} images), lanes {xla_flags.lanes_in_effect}; "
          f"largest relative logit difference {max_diff:.2g}; first calls: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in first_call_s.items()))
    print(f"timing chunked and resident alternately, {args.reps} reps of ~{args.block_s:g} s")
    times = common.alternate(contenders, args.reps, args.block_s)
    r = common.ratio(times["chunked"], times["resident"])
    images = sum(len(s) for s in splits)
    summary = {"chunked_over_resident": r, "max_relative_logit_diff": max_diff, "first_call_s": first_call_s,
               "s_per_evaluation": {k: common.spread(v) for k, v in times.items()},
               "images_per_s": {k: images / common.spread(v)["median"] for k, v in times.items()},
               "lanes": xla_flags.lanes_in_effect, "backend": jax.default_backend()}
    print(f"  time chunked / time resident = {common.fmt(r)}; "
          + ", ".join(f"{k} {v:,.0f} img/s" for k, v in summary["images_per_s"].items()))
    common.save("eval", {"config": vars(args), "times_s": times, "summary": summary})
    return summary


if __name__ == "__main__":
    main()
