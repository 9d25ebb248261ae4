"""Benchmark 4: the input pipeline (`ablate.stream.batches`, indexed ds[step] as the trainer does) vs the step.

Pipelines, over the real Fashion-MNIST training data, batch 128:

* `subset`: a student's default training set (50 per class = 500 examples, in memory, gathered by index);
* `full`: the full 55k training split (as a teacher trains), gathered by index;
* `full_per_record`: the same split through a source without `gather`, so
  grain fetches and stacks one record at a time (the path of sources that are
  not in-memory arrays, e.g. TFDS);
* each also `+shard`: plus `DataParallel.shard`, the host-to-device placement the trainer does.

Each is timed alternately with ablate's funmatch step (both StdConv impls);
figure: pipeline images/s over step images/s, target >= 10x.

    .venv/bin/python -m benchmarks.bench_input [--reps 5] [--block-s 1] [--impls matmul,xla]
"""

from __future__ import annotations

import dataclasses

from benchmarks import common

TARGET = 10.0


@dataclasses.dataclass(frozen=True)
class PerRecord:
    """A source that only offers records one at a time (hides `gather`)."""

    parent: object

    @property
    def labels(self):
        return self.parent.labels

    def __len__(self):
        return len(self.parent)

    def __getitem__(self, i):
        return self.parent[i]


def pipeline(source, cfg, shard: bool):
    from ablate import parallel
    from ablate.stream import batches

    total = 100_000
    ds = batches(source, cfg, total)
    dp = parallel.DataParallel()
    state = {"i": 0}

    def run(n):
        import jax

        out = None
        for _ in range(n):
            b = ds[state["i"] % total]
            out = dp.shard(b) if shard else b
            state["i"] += 1
        if shard:
            jax.block_until_ready(out)

    return run


def main(argv=None) -> dict:
    ap = common.parser(__doc__, block_s=1.0)
    args = ap.parse_args(argv)

    from ablate.config import RunConfig
    from ablate.data import load_dataset
    from ablate.stream import student_source

    data = load_dataset("fashion_mnist")
    cfg = RunConfig(batch_size=args.batch)
    sources = {"subset": student_source(cfg, data), "full": data.train, "full_per_record": PerRecord(data.train)}
    contenders = {}
    for name, src in sources.items():
        contenders[name] = pipeline(src, cfg, shard=False)
        contenders[f"{name}+shard"] = pipeline(src, cfg, shard=True)
    for impl in args.impls.split(","):
        print(f"compiling the funmatch step (impl={impl})")
        js = common.make_jax_step("funmatch", args.batch, impl=impl)
        js.run(1)
        contenders[f"step/{impl}"] = js.run
    print(f"timing {', '.join(contenders)} alternately, {args.reps} reps of ~{args.block_s:g} s")
    times = common.alternate(contenders, args.reps, args.block_s, log=lambda s: None)

    steps = [k for k in times if k.startswith("step/")]
    fastest_step = [min(times[k][i] for k in steps) for i in range(args.reps)]
    summary = {"images_per_s": {k: common.spread([args.batch / t for t in v]) for k, v in times.items()},
               "pipeline_over_fastest_step": {}}
    print("\nimages/s (median) and pipeline throughput / fastest step's throughput, per rep:")
    for k in times:
        line = f"  {k:<22} {summary['images_per_s'][k]['median']:>10.0f} img/s"
        if not k.startswith("step/"):
            r = common.ratio(fastest_step, times[k])
            summary["pipeline_over_fastest_step"][k] = {**r, "met": r["median"] >= TARGET}
            line += f"   {common.fmt(r)}  {'met' if r['median'] >= TARGET else 'NOT met'} (target >= {TARGET:g}x)"
        print(line)
    common.save("input", {"config": vars(args), "times_s": times, "summary": summary})
    return summary


if __name__ == "__main__":
    main()
