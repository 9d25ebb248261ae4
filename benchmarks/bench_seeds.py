"""Benchmark 3: S runs at once in one compiled program (a cohort, or jax.vmap), or as two processes, vs one after another.

* cohort: what `ablate run` does with cells that differ only in student-side
  fields (lr, wd, loss, temperature, model, init_seed, ...): `make_cohort_step`
  over S students (here S seeds of the student's initialisation, `init_seed`,
  as a study with `seed_field="init_seed"` makes), the views and the teacher's
  forward computed once per step, each student's update unrolled; compared
  with S calls of the plain step, for S = 2, 4 and 8 and an on-the-fly
  (funmatch) and a fixed-teacher (fix/rs) policy.
  Figure: throughput ratio S x time(step) / time(cohort step).
* vmap: ablate's funmatch step under `jax.vmap` over the TrainState, the batch
  and the key (the teacher's parameters shared), jitted once, for S = 2 and 4;
  compared with S calls of the plain step. Figure: throughput ratio
  S x time(step) / time(vmapped step) (> 1: vectorising pays). Measured for both
  StdConv impls: with "xla", vmap over the parameters turns every convolution
  into a grouped one (S groups); with "matmul", into batched matmuls.
* two processes: two Python processes each running the step loop at the same
  time vs one alone; figure: total throughput ratio 2 x time(alone) / time(both).

The plain and cohort steps run as ablate runs them (in lanes on 2-4 cores,
ablate/lanes.py); the vmapped step is one program, single-threaded in such a
process: run with ABLATE_LANES=1 to compare vmap on XLA's threads.

    .venv/bin/python -m benchmarks.bench_seeds [--reps 5] [--block-s 1.5] [--seeds 2,4] [--impls xla,matmul]
                                               [--cohorts 2,4,8] [--policies funmatch,fix/rs] [--no-vmap]
                                               [--no-processes]
"""

from __future__ import annotations


from benchmarks import common


class VmappedStep:
    """S copies of the training state stepped together by one vmapped, jitted program."""

    def __init__(self, s: int, impl: str, batch: int):
        import jax
        import jax.numpy as jnp

        steps = [common.make_jax_step("funmatch", batch, impl=impl, seed=k) for k in range(s)]
        self.s = s
        self.state = jax.tree.map(lambda *x: jnp.stack(x), *[st.state for st in steps])
        self.teacher_params = steps[0].teacher_params
        nb = len(steps[0].batches)
        self.batches = [jax.tree.map(lambda *x: jnp.stack(x), *[st.batches[(i + k) % nb] for k, st in enumerate(steps)])
                        for i in range(nb)]
        self.step = jax.jit(jax.vmap(steps[0].fn, in_axes=(0, None, None, 0, 0)), donate_argnums=(0,))
        self.base_key = jax.random.key(0)
        self.i = 0

    def run(self, n: int) -> None:
        import jax

        loss = None
        for _ in range(n):
            keys = jax.random.split(jax.random.fold_in(self.base_key, self.i), self.s)
            self.state, loss = self.step(self.state, self.teacher_params, None,
                                         self.batches[self.i % len(self.batches)], keys)
            self.i += 1
        jax.block_until_ready((self.state, loss))


def warm(name: str, run, contenders: dict, compile_s: dict) -> None:
    """Run one step (compiling it), record how long that took, and enter `run` as a timed contender."""
    import time

    t0 = time.perf_counter()
    run(1)
    compile_s[name] = time.perf_counter() - t0
    contenders[name] = run


def time_alternately(contenders: dict, args) -> dict:
    print(f"timing {', '.join(contenders)} alternately, {args.reps} reps of ~{args.block_s:g} s")
    return common.alternate(contenders, args.reps, args.block_s)


def vmap_part(args) -> dict:
    seeds = [int(s) for s in args.seeds.split(",")]
    impls = args.impls.split(",")
    contenders, compile_s = {}, {}
    for impl in impls:
        warm(f"single/{impl}", common.make_jax_step("funmatch", args.batch, impl=impl).run, contenders, compile_s)
        for s in seeds:
            print(f"compiling the step vmapped over {s} seeds (impl={impl})")
            warm(f"vmap{s}/{impl}", VmappedStep(s, impl, args.batch).run, contenders, compile_s)
    times = time_alternately(contenders, args)
    summary = {}
    for impl in impls:
        for s in seeds:
            r = common.ratio([s * t for t in times[f"single/{impl}"]], times[f"vmap{s}/{impl}"])
            summary[f"vmap{s}/{impl}"] = {"throughput_vs_sequential": r}
            print(f"  S={s}, impl={impl}: vmapped throughput / sequential = {common.fmt(r)}")
    if len(impls) > 1:
        for s in seeds:
            best_seq = [s * min(times[f"single/{i}"][k] for i in impls) for k in range(args.reps)]
            best_vmap = [min(times[f"vmap{s}/{i}"][k] for i in impls) for k in range(args.reps)]
            r = common.ratio(best_seq, best_vmap)
            summary[f"vmap{s}/best_impl_each"] = {"throughput_vs_sequential": r}
            print(f"  S={s}, fastest impl of each: {common.fmt(r)}")
    return {"times_s": times, "compile_s": compile_s, "summary": summary}


def cohort_part(args) -> dict:
    sizes = [int(s) for s in args.cohorts.split(",")]
    contenders, compile_s = {}, {}
    for policy in args.policies.split(","):
        for s in [1, *sizes]:
            print(f"compiling the {policy} step for a cohort of {s}")
            warm(f"{policy}/cohort{s}", common.make_jax_step(policy, args.batch, cohort=s).run, contenders, compile_s)
    times = time_alternately(contenders, args)
    summary = {}
    for policy in args.policies.split(","):
        for s in sizes:
            r = common.ratio([s * t for t in times[f"{policy}/cohort1"]], times[f"{policy}/cohort{s}"])
            summary[f"{policy}/cohort{s}"] = {"throughput_vs_sequential": r}
            print(f"  {policy}, cohort of {s}: throughput / sequential = {common.fmt(r)}")
    return {"times_s": times, "compile_s": compile_s, "summary": summary}


def process_part(args) -> dict:
    impls = args.impls.split(",")
    workers = []
    try:
        for _ in range(2):
            workers.append(common.ProcessContenders("benchmarks.bench_step:jax_worker", batch=args.batch,
                                                    impls=tuple(impls)))
        a, b = workers
        contenders = {}
        for impl in impls:
            name = "jax" if impl == "xla" else f"jax_{impl}"

            def both(n, name=name):
                a.start(name, n)
                b.start(name, n)
                a.wait(name)
                b.wait(name)

            contenders[f"one_process/{impl}"] = lambda n, name=name: a.call(name, n)
            contenders[f"two_processes/{impl}"] = both
        times = time_alternately(contenders, args)
    finally:
        for w in workers:
            w.close()
    summary = {}
    for impl in impls:
        r = common.ratio([2 * t for t in times[f"one_process/{impl}"]], times[f"two_processes/{impl}"])
        summary[impl] = {"total_throughput_two_vs_one": r}
        print(f"  impl={impl}: two processes' total throughput / one process = {common.fmt(r)}")
    return {"times_s": times, "summary": summary}


def main(argv=None) -> dict:
    ap = common.parser(__doc__, block_s=1.5)
    ap.add_argument("--seeds", default="2,4", help="numbers of seeds vmapped at once (default 2,4)")
    ap.add_argument("--cohorts", default="2,4,8", help="cohort sizes (default 2,4,8)")
    ap.add_argument("--policies", default="funmatch,fix/rs", help="policies of the cohort part (default funmatch,fix/rs)")
    ap.add_argument("--no-vmap", action="store_true", help="skip the vmapped-seeds comparison")
    ap.add_argument("--no-processes", action="store_true", help="skip the two-process comparison")
    args = ap.parse_args(argv)
    result = {"config": vars(args), "cohort": cohort_part(args)}
    if not args.no_vmap:
        result["vmap"] = vmap_part(args)
    if not args.no_processes:
        result["processes"] = process_part(args)
    common.save("seeds", result)
    return result


if __name__ == "__main__":
    main()
