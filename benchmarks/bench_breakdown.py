"""Where the funmatch step's time goes: its parts jitted separately, for each StdConv impl, timed alternately.

Parts (batch 128, resnet_t -> resnet_s, the same inputs as the whole step):

* `views`: crops drawn, rendered by interpolation matrices, mixup (`ablate.step.make_inputs`);
* `teacher_fwd`: the teacher's forward pass on the mixed view;
* `student_fwd_bwd`: the student's loss and gradients (`jax.value_and_grad`, KL at T=1);
* `optimizer`: the paper's optimiser update and `apply_updates`;
* `step`: the whole jitted step (what the trainer runs), for comparison with the sum of the parts.

Each is timed for StdConv impl "matmul" and "xla", and a `step` with the
teacher on one impl and the student on the other is timed too (`--mixed`).
Everything runs as one program per part on XLA's threads (ABLATE_LANES=1
unless set: in lanes XLA is single-threaded, ablate/lanes.py, and the parts
would not add up to a step).

    .venv/bin/python -m benchmarks.bench_breakdown [--reps 5] [--block-s 1] [--impls xla,matmul] [--mixed]
"""

from __future__ import annotations

import os

os.environ.setdefault("ABLATE_LANES", "1")  # before ablate is imported (by benchmarks.common): see above

from benchmarks import common  # noqa: E402


class _Impl:
    """A model whose apply traces under a given StdConv impl (so teacher and student can differ)."""

    def __init__(self, model, impl):
        self.model, self.impl = model, impl

    def apply(self, *a, **k):
        from ablate.models.resnet import conv_impl

        with conv_impl(self.impl):
            return self.model.apply(*a, **k)


def parts(impl: str, batch: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from ablate.losses import LossSpec
    from ablate.policies import POLICIES
    from ablate.step import make_inputs

    js = common.make_jax_step("funmatch", batch, impl=impl)
    cfg = js.cfg
    policy = POLICIES.get("funmatch")
    from ablate import optim
    from ablate.models import build_model

    s_model, t_model = _Impl(build_model("resnet_s", 10), impl), _Impl(build_model("resnet_t", 10), impl)
    opt = optim.paper_optimizer(cfg.lr, cfg.wd, 10_000, 500, cfg.clip)
    spec = LossSpec.parse("kl")
    b = js.batches[0]
    key = jax.random.key(0)
    labels = jax.nn.one_hot(b["label"], 10)

    @jax.jit
    def views(images, labels, key):
        return make_inputs(policy, cfg, images, labels, key, 28, 28)

    @jax.jit
    def teacher_fwd(tp, x):
        return t_model.apply({"params": tp}, x)

    @jax.jit
    def student_fwd_bwd(params, x, zt, labels):
        return jax.value_and_grad(lambda p: jnp.mean(spec(s_model.apply({"params": p}, x), zt, labels)))(params)

    @jax.jit
    def update(grads, opt_state, params):
        u, s = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, u), s

    xs, xt, mixed, _ = views(b["image"], labels, key)
    zt = teacher_fwd(js.teacher_params, xt)
    params = jax.tree.map(jnp.copy, js.state.params)  # js.run donates its own state
    opt_state = opt.init(params)
    _, grads = student_fwd_bwd(params, xs, zt, mixed)

    def loop(fn, *args):
        def run(n):
            out = None
            for _ in range(n):
                out = fn(*args)
            jax.block_until_ready(out)
        return run

    return {f"views/{impl}": loop(views, b["image"], labels, key),
            f"teacher_fwd/{impl}": loop(teacher_fwd, js.teacher_params, xt),
            f"student_fwd_bwd/{impl}": loop(student_fwd_bwd, params, xs, zt, mixed),
            f"optimizer/{impl}": loop(update, grads, opt_state, params),
            f"step/{impl}": js.run}


def mixed_step(teacher_impl: str, student_impl: str, batch: int):
    """The whole step with the teacher traced under one impl and the student under another."""
    import jax

    from ablate.models import build_model
    from ablate.step import make_train_step
    from ablate import optim

    js = common.make_jax_step("funmatch", batch)
    cfg = js.cfg
    opt = optim.paper_optimizer(cfg.lr, cfg.wd, 10_000, 500, cfg.clip)
    fn = make_train_step(cfg, _Impl(build_model("resnet_s", 10), student_impl),
                         _Impl(build_model("resnet_t", 10), teacher_impl), opt, 10, 28, 28)
    js.step = jax.jit(fn, donate_argnums=(0,))
    return js.run


def main(argv=None) -> dict:
    ap = common.parser(__doc__, block_s=1.0)
    ap.add_argument("--mixed", action="store_true", help="also time teacher/student on different impls")
    args = ap.parse_args(argv)
    impls = args.impls.split(",")

    contenders = {}
    for impl in impls:
        print(f"compiling the parts with StdConv impl={impl}")
        contenders.update(parts(impl, args.batch))
    if args.mixed:
        for t_impl, s_impl in (("xla", "matmul"), ("matmul", "xla")):
            print(f"compiling the step with teacher impl={t_impl}, student impl={s_impl}")
            contenders[f"step/teacher_{t_impl}+student_{s_impl}"] = mixed_step(t_impl, s_impl, args.batch)
    print(f"timing {len(contenders)} programs alternately, {args.reps} reps of ~{args.block_s:g} s")
    times = common.alternate(contenders, args.reps, args.block_s, log=lambda s: None)

    base = times[f"step/{impls[0]}"]
    summary = {k: {"ms": common.spread([1e3 * t for t in v]), "of_step": common.ratio(v, base)}
               for k, v in times.items()}
    for impl in impls:
        total = [sum(times[f"{p}/{impl}"][i] for p in ("views", "teacher_fwd", "student_fwd_bwd", "optimizer"))
                 for i in range(args.reps)]
        summary[f"sum_of_parts/{impl}"] = {"ms": common.spread([1e3 * t for t in total]),
                                           "of_step": common.ratio(total, base)}
    print(f"\nmedian ms per call, and per-rep ratio to step/{impls[0]} (median, IQR):")
    for k, v in summary.items():
        print(f"  {k:<40} {v['ms']['median']:8.1f} ms   {common.fmt(v['of_step'])}")
    common.save("breakdown", {"config": vars(args), "times_s": times, "summary": summary})
    return summary


if __name__ == "__main__":
    main()
