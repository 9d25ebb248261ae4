"""Benchmark 1: the distillation step (funmatch, resnet_t -> resnet_s, batch 128) in JAX vs PyTorch (CPU or GPU), and vs peak.

Contenders, timed alternately block by block, each framework in a process of its own (PyTorch's
OpenMP threads and XLA's thread pool never share a process; an idle contender waits on a pipe):

* `jax`: ablate's own jitted step (views render + teacher forward + student
  forward/backward + clipped Adam with decoupled weight decay), as ablate runs it: StdConv impl
  "xla" (`conv2d`: lax.conv_general_dilated, its gradients written out in NHWC) and ablate's
  per-channel-sum GroupNorm, in lanes where the process has them (on 2-4 cores: each batch's rows
  split over one thread per core, XLA single-threaded; ablate/lanes.py);
* `jax_no_lanes` (where `jax` runs in lanes): the same step as one program on XLA's own threads
  (ABLATE_LANES=1), ablate's default before 2026-11-27 afternoon;
* `jax_lax`: the same with StdConv impl "lax" (jax's own convolution gradients, ablate's default before
  2026-12-07 evening);
* `jax_matmul`: the same with StdConv impl "matmul" (convolutions as patches + one matmul);
* `jax_flaxgn`: the same with flax's `nn.GroupNorm` (two-pass variance) instead of ablate's (same
  parameters, same results to float32 rounding; ablate's default before 2026-11-26 afternoon, with
  impl "matmul");
* `torch_eager`: `benchmarks/torch_models.TorchStep`, channels_last, torch.set_num_threads(2);
  `torch_eager_1thread`: the same with 1 thread (OpenMP's 2-thread team suffers badly when
  the 2 cores are shared with other work);
* `torch_compile` (with --compile): the same through torch.compile (inductor), 2 threads;
* `..._passive` (with --omp-passive): the 2-thread PyTorch contenders with OMP_WAIT_POLICY=PASSIVE
  (OpenMP threads sleep at once at a barrier instead of spinning: kinder to a shared machine);
* `jax/NAME`, `jax_matmul/NAME` (with --xla-flags NAME=FLAGS): the JAX step under other XLA_FLAGS;
* `jnp_dot` (in a process on XLA's threads, without lanes), `np_matmul`, `torch_mm`: a 2048x2048 float32
  matmul each, the machine's practical peak.

With `--device gpu` (one CUDA GPU; jax and torch both with CUDA) every contender runs on the GPU: the JAX
worker checks that jax's default backend is the GPU, `TorchStep(device="cuda")` holds the models, batches,
optimiser state and everything the step creates on the GPU, and every timed block ends blocking on the
results (`jax.block_until_ready`, `torch.cuda.synchronize()`). Thread counts mean nothing there, so there is
one `torch_eager` (torch.set_num_threads(first --torch-threads count) for the host side), `torch_compile` with
--compile, and with --cudnn-benchmark `torch_eager_cudnnbench` (torch.backends.cudnn.benchmark=True: cuDNN
times its convolution algorithms at the first call of each shape, as XLA autotunes its own); no 1-thread or
passive variants. The peak is `jnp_dot` and `torch_mm` on the GPU (no `np_matmul`, a CPU figure) in
float32, but note that on recent NVIDIA GPUs float32 matmuls may run in TF32 depending on the framework's
defaults: JAX runs at its default precision (jax_default_matmul_precision unset: XLA may use TF32 for
float32 dots and convolutions), torch with torch.backends.cuda.matmul.allow_tf32 = False (strict float32
matmuls, torch's default) and cuDNN's own default for convolutions (torch.backends.cudnn.allow_tf32, True
by default); the settings are recorded in the result. XLA_PYTHON_CLIENT_PREALLOCATE=false (unless set) lets
the main process and the workers share the GPU's memory. The equivalence check runs JAX on its CPU device
either way (and PyTorch on the CPU): it checks the models, not the GPU's arithmetic. Results go to
results/step-DATE-gpu.json, the device names into the result (`jax_worker.device_kind`,
`torch_eager.device_name`, `machine.gpu`).

FLOPs of the step come from XLA's cost analysis of the compiled step
(`jit(step).lower(...).compile().cost_analysis()["flops"]`); the lowered
(pre-optimisation) count and the models' own FLOPs (teacher forward + 3x
student forward, from the lowered cost analysis of `model.apply` with impl
"xla", where XLA counts a convolution as 2 x MACs) are reported beside it.

    .venv/bin/python -m benchmarks.bench_step [--reps 5] [--block-s 2] [--compile] [--torch-threads 2,1] [--omp-passive]
                                              [--no-variants] [--xla-flags onednn=--xla_cpu_experimental_onednn_custom_call=true]
    python -m benchmarks.bench_step --device gpu --batch 1024 --torch-threads 2 --reps 5 [--compile] [--cudnn-benchmark]
"""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks import common

MATMUL_N = 2048


def model_flops(batch: int) -> dict:
    """FLOPs of one forward pass of each model on a batch (lowered cost analysis, convolutions as XLA convs)."""
    import jax
    import jax.numpy as jnp

    from ablate.models import build_model
    from ablate.models.resnet import conv_impl

    out = {}
    with conv_impl("xla"):
        for name in ("resnet_t", "resnet_s"):
            model = build_model(name, 10)
            x = jax.ShapeDtypeStruct((batch, 28, 28, 1), jnp.float32)
            params = jax.eval_shape(model.init, jax.random.key(0), x)
            lowered = jax.jit(model.apply).lower(params, x)
            cost = lowered.cost_analysis() or lowered.compile().cost_analysis()  # GPU: no lowered count
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            out[name] = float(cost["flops"])
    return out


GPU_BACKENDS = ("gpu", "cuda")  # what jax.default_backend() calls a CUDA GPU


def require_jax_gpu() -> str:
    """The device kind of JAX's first device, or a RuntimeError that says why JAX is not running on a GPU."""
    import jax

    backend = jax.default_backend()
    if backend not in GPU_BACKENDS:
        raise RuntimeError(f"--device gpu: jax's default backend is {backend!r}, not a GPU (jax {jax.__version__}, "
                           f"devices {jax.devices()}): install jax with CUDA (pip install 'jax[cuda12]') on a machine "
                           f"with a visible NVIDIA GPU, or run with --device cpu")
    return jax.devices()[0].device_kind


def require_torch_cuda() -> str:
    """torch.cuda.get_device_name(), or a RuntimeError that says why torch has no CUDA device."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"--device gpu: torch.cuda.is_available() is False (torch {torch.__version__}, built for "
                           f"CUDA {torch.version.cuda}): install torch with CUDA, or run with --no-torch")
    return torch.cuda.get_device_name()


def _matmuls(kinds, device: str = "cpu") -> dict:
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32) for _ in range(2))
    out = {}
    if "jnp" in kinds:
        import jax
        import jax.numpy as jnp

        ja, jb = jax.device_put(a), jax.device_put(b)
        dot = jax.jit(jnp.dot)

        def jnp_dot(n):
            for _ in range(n):
                r = dot(ja, jb)
            r.block_until_ready()

        out["jnp_dot"] = jnp_dot
    if "np" in kinds:
        def np_matmul(n):
            for _ in range(n):
                np.matmul(a, b)

        out["np_matmul"] = np_matmul
    if "torch" in kinds:
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        if device == "gpu":
            torch.backends.cuda.matmul.allow_tf32 = False  # strict float32 (torch's default)
            ta, tb = ta.cuda(), tb.cuda()

        def torch_mm(n):
            for _ in range(n):
                torch.mm(ta, tb)
            if ta.is_cuda:
                torch.cuda.synchronize()

        out["torch_mm"] = torch_mm
    return out


def jax_name(variant: str) -> str:
    """Contender name of a JAX variant "IMPL[+GROUPNORM]": jax (ablate's default), jax_matmul, jax_flaxgn."""
    return {"xla": "jax", "matmul": "jax_matmul", "xla+flax": "jax_flaxgn"}.get(
        variant, "jax_" + variant.replace("+", "_"))


def jax_worker(batch: int, impls=("xla",), device: str = "cpu"):
    """(In its own process) ablate's step for each variant "IMPL[+GROUPNORM]", plus jnp and numpy matmuls
    (jnp only on gpu)."""
    out, info = {}, {}
    if device == "gpu":
        import jax

        info["device_kind"] = require_jax_gpu()
        info["backend"] = jax.default_backend()
        info["default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    for variant in impls:
        impl, _, gn = variant.partition("+")
        js = common.make_jax_step("funmatch", batch, impl=impl, groupnorm=gn or "ablate")
        t0 = time.perf_counter()
        js.run(1)
        info[f"first_step_s/{variant}"] = time.perf_counter() - t0
        out[jax_name(variant)] = js.run
    from ablate import xla_flags

    info["lanes"] = xla_flags.lanes_in_effect
    # jnp's matmul only where XLA has every core: in lanes it runs single-threaded (the no-lanes process times it)
    kinds = ("jnp",) if device == "gpu" else ("jnp", "np") if xla_flags.lanes_in_effect == 1 else ("np",)
    out.update(_matmuls(kinds, device))
    return out, info


def torch_worker(batch: int, threads: int, compile: bool, teacher_params, student_params, matmul: bool,
                 device: str = "cpu", cudnn_benchmark: bool = False):
    """(In its own process) the PyTorch step with `threads` threads, eager or compiled, plus torch.mm;
    on device "gpu" all of it on cuda."""
    import torch

    from benchmarks import torch_models as tm

    torch.set_num_threads(threads)
    gpu = {}
    if device == "gpu":
        gpu["device_name"] = require_torch_cuda()
        torch.backends.cuda.matmul.allow_tf32 = False  # strict float32 matmuls (torch's default)
        torch.backends.cudnn.benchmark = cudnn_benchmark
        gpu.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32, cudnn_benchmark=torch.backends.cudnn.benchmark)
    batches = common.fashion_mnist_batches(batch, 4)
    step = tm.TorchStep(batches, compile=compile, teacher_params=teacher_params, student_params=student_params,
                        device="cuda" if device == "gpu" else "cpu")
    t0 = time.perf_counter()
    step.run(2)
    info = {"first_two_steps_s": time.perf_counter() - t0, "optimizer": step.opt.kind, "threads": threads, **gpu}
    out = {"step": step.run}
    if matmul:
        out.update(_matmuls(("torch",), device))
    return out, info


def equivalence(js: common.JaxStep) -> dict:
    """Same parameter counts; same logits, loss, gradients and one optimiser update given the same weights and input."""
    import jax

    # JAX on its CPU device even where the default device is a GPU (float32 without TF32, like PyTorch's CPU)
    try:
        cpu = jax.devices("cpu")[0]
    except RuntimeError:  # no CPU backend (JAX_PLATFORMS=cuda): the default device at full float32 precision
        with jax.default_matmul_precision("highest"):
            return {**_equivalence(js, jax.devices()[0]), "jax_device": jax.devices()[0].device_kind}
    with jax.default_device(cpu):
        return _equivalence(js, cpu)


def _equivalence(js, cpu) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    from ablate import optim, views
    from ablate.losses import kl
    from ablate.models import build_model
    from benchmarks import torch_models as tm

    out = {}
    x0 = jnp.zeros((1, 28, 28, 1))
    s_model, t_model = build_model("resnet_s", 10), build_model("resnet_t", 10)
    s_params = common.randomise_head(s_model.init(jax.random.key(5), x0)["params"], 6)
    t_params = jax.device_put(js.teacher_params, cpu)
    t_torch, s_torch = tm.resnet_t(), tm.resnet_s()
    out["params"] = {"resnet_t": {"flax": sum(a.size for a in jax.tree.leaves(t_params)), "torch": tm.num_params(t_torch)},
                     "resnet_s": {"flax": sum(a.size for a in jax.tree.leaves(s_params)), "torch": tm.num_params(s_torch)}}
    tm.load_flax_params(t_torch, t_params)
    tm.load_flax_params(s_torch, s_params)

    # one mixed view of a real batch, rendered by both implementations from the same crop boxes
    images = jax.device_put(js.batches[0]["image"], cpu)
    crops = views.inception_crop(jax.random.key(7), images.shape[0])
    coef = 0.7
    xj = views.mix(views.render(images, crops, 28), coef)
    xt = tm.mix(tm.render(torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).contiguous(),
                          torch.from_numpy(np.array(crops.boxes)), torch.from_numpy(np.array(crops.flips)), 28),
                coef)
    out["input_max_abs_diff"] = float(np.abs(np.asarray(xj) - xt.permute(0, 2, 3, 1).numpy()).max())

    zt_j = t_model.apply({"params": t_params}, xj)
    with torch.no_grad():
        zt_t = t_torch(xt)
    out["teacher_logits_max_abs_diff"] = float(np.abs(np.asarray(zt_j) - zt_t.numpy()).max())

    def loss_fn(p):
        return jnp.mean(kl(s_model.apply({"params": p}, xj), zt_j, None))

    loss_j, grads_j = jax.value_and_grad(loss_fn)(s_params)
    opt = optim.paper_optimizer(3e-3, 1e-4, total_steps=10, warmup_steps=0, clip=1.0)
    updates, _ = opt.update(grads_j, opt.init(s_params), s_params)

    topt = tm.PaperOptimizer(s_torch, 3e-3, 1e-4, total_steps=10, warmup_steps=0)
    zs_t = s_torch(xt)
    loss_t = tm.kl_loss(zs_t, zt_t)
    loss_t.backward()
    zs_j = s_model.apply({"params": s_params}, xj)
    out["student_logits_max_abs_diff"] = float(np.abs(np.asarray(zs_j) - zs_t.detach().numpy()).max())
    out["loss"] = {"jax": float(loss_j), "torch": float(loss_t.detach())}
    pairs_g = tm.flax_pairs(s_torch, grads_j)
    gmax = max(float(np.abs(g).max()) for _, _, g in pairs_g)
    out["grad_max_abs_diff_rel"] = max(float(np.abs(p.grad.numpy() - g).max()) for _, p, g in pairs_g) / gmax
    before = {name: p.detach().numpy().copy() for name, p, _ in tm.flax_pairs(s_torch, s_params)}
    topt.step()
    diffs = [np.abs((p.detach().numpy() - before[name]) - u) for name, p, u in tm.flax_pairs(s_torch, updates)]
    alld = np.concatenate([d.ravel() for d in diffs])
    out["update_max_abs_diff_over_lr"] = float(alld.max() / 3e-3)
    out["update_frac_within_1e-3_lr"] = float(np.mean(alld <= 1e-3 * 3e-3))
    same_params = all(v["flax"] == v["torch"] for v in out["params"].values())
    out["equivalent"] = bool(same_params and out["teacher_logits_max_abs_diff"] < 1e-4
                             and out["student_logits_max_abs_diff"] < 1e-4 and out["grad_max_abs_diff_rel"] < 1e-3
                             and out["update_frac_within_1e-3_lr"] > 0.99)
    return out


def main(argv=None) -> dict:
    ap = common.parser(__doc__, block_s=2.0, impls=None)  # --batch: every step, JAX and PyTorch
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                    help="where the steps and matmuls run (default cpu; gpu: one CUDA GPU, jax and torch with CUDA)")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="with --device gpu, also time torch_eager with torch.backends.cudnn.benchmark=True")
    ap.add_argument("--no-torch", action="store_true", help="JAX only")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (compiling takes 1-2 min here)")
    ap.add_argument("--torch-threads", default="2,1", help="eager PyTorch thread counts to time (default 2,1)")
    ap.add_argument("--omp-passive", action="store_true",
                    help="also time the 2-thread PyTorch contenders with OMP_WAIT_POLICY=PASSIVE")
    ap.add_argument("--no-variants", action="store_true", help="time ablate's default JAX step only (no jax_matmul, jax_flaxgn)")
    ap.add_argument("--xla-flags", action="append", default=[], metavar="NAME=FLAGS",
                    help="also time the JAX step in a process with XLA_FLAGS=FLAGS (repeatable)")
    args = ap.parse_args(argv)
    gpu = args.device == "gpu"
    if gpu:  # this process and the workers (spawned with this environment) share the GPU's memory
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    import jax

    if gpu:
        try:
            jax_device = require_jax_gpu()
        except RuntimeError as e:
            raise SystemExit(str(e)) from None
    elif jax.default_backend() != "cpu":
        raise SystemExit(f"--device cpu, but jax's default backend is {jax.default_backend()!r}: "
                         f"use --device gpu, or JAX_PLATFORMS=cpu")

    torch_ok = not args.no_torch
    if torch_ok:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch is not installed (python3 bootstrap.py bench installs it): JAX only")
            torch_ok = False
    if torch_ok and gpu:
        try:
            require_torch_cuda()
        except RuntimeError as e:
            raise SystemExit(str(e)) from None

    result: dict = {"config": vars(args)}
    where = f", on {jax_device}" if gpu else ""
    if gpu:
        result["jax_device_kind"] = jax_device
    print(f"ablate's funmatch step, batch {args.batch}{where}: cost analysis and equivalence (in this process)")
    js = common.make_jax_step("funmatch", args.batch)
    t0 = time.perf_counter()
    cost = common.cost_flops(jax.jit(js.fn), *js.args())  # the one-program step: the FLOPs of every lane together
    result["jax_compile_s"] = time.perf_counter() - t0
    mf = model_flops(args.batch)
    cost["model_flops"] = mf["resnet_t"] + 3 * mf["resnet_s"]
    cost["teacher_forward_flops"], cost["student_forward_flops"] = mf["resnet_t"], mf["resnet_s"]
    result["flops_per_step"] = cost
    print(f"  XLA cost analysis: {cost['compiled_flops'] / 1e9:.2f} GFLOP per step (compiled), "
          f"{cost['lowered_flops'] / 1e9:.2f} (lowered); model FLOPs (T fwd + 3 x S fwd) "
          f"{cost['model_flops'] / 1e9:.2f} GFLOP")
    t_params = jax.tree.map(np.asarray, js.teacher_params)
    s_params = jax.tree.map(np.asarray, js.state.params)
    if torch_ok:
        result["equivalence"] = eq = equivalence(js)
        print(f"  torch equivalent: {eq['equivalent']} (params {eq['params']}, logits diff "
              f"{eq['teacher_logits_max_abs_diff']:.1e}/{eq['student_logits_max_abs_diff']:.1e}, "
              f"grad rel diff {eq['grad_max_abs_diff_rel']:.1e}, update diff/lr {eq['update_max_abs_diff_over_lr']:.1e})")
    del js

    # every contender in its own process: PyTorch's OpenMP threads and XLA's thread pool never share one
    print("starting the contenders' processes (each compiles or warms up its own step)")
    workers, contenders = [], {}
    try:
        impls = ("xla",) if args.no_variants else ("xla", "lax", "matmul", "xla+flax")
        w = common.ProcessContenders("benchmarks.bench_step:jax_worker", batch=args.batch, impls=impls,
                                     device=args.device)
        workers.append(w)
        contenders.update(w.runners())
        result["jax_worker"] = w.info
        if w.info.get("lanes", 1) > 1:  # ablate's step in lanes; also the one-program step on XLA's threads
            w = common.ProcessContenders("benchmarks.bench_step:jax_worker", env={"ABLATE_LANES": "1"},
                                         batch=args.batch, impls=("xla",), device=args.device)
            workers.append(w)
            result["jax_worker/no_lanes"] = w.info
            contenders.update({"jax_no_lanes" if k == "jax" else k: run for k, run in w.runners().items()
                               if k != "np_matmul"})
        for spec in args.xla_flags:
            name, _, flags = spec.partition("=")
            w = common.ProcessContenders("benchmarks.bench_step:jax_worker", env={"XLA_FLAGS": flags},
                                         batch=args.batch, impls=impls, device=args.device)
            workers.append(w)
            result[f"jax_worker/{name}"] = {**w.info, "XLA_FLAGS": flags}
            contenders.update({f"{k}/{name}": run for k, run in w.runners().items() if k.startswith("jax")})
        if torch_ok:
            variants = []  # (name, threads, compile, env, cudnn_benchmark)
            if gpu:  # threads only serve the host side: one eager contender (and compiled, cuDNN-benchmarked)
                threads = int(args.torch_threads.split(",")[0] or 2)
                variants.append(("torch_eager", threads, False, {}, False))
                if args.cudnn_benchmark:
                    variants.append(("torch_eager_cudnnbench", threads, False, {}, True))
                if args.compile:
                    variants.append(("torch_compile", threads, True, {}, False))
                if args.omp_passive:
                    print("  --omp-passive means nothing with --device gpu: ignored")
            else:
                for threads in (int(t) for t in args.torch_threads.split(",") if t):
                    variants.append(("torch_eager" if threads == 2 else f"torch_eager_{threads}thread", threads, False,
                                     {}, False))
                if args.compile:
                    variants.append(("torch_compile", 2, True, {}, False))
                if args.omp_passive:
                    passive = {"OMP_WAIT_POLICY": "PASSIVE"}
                    variants += [(f"{name}_passive", threads, comp, passive, False)
                                 for name, threads, comp, _, _ in list(variants) if threads > 1]
            for name, threads, comp, env, cudnn_bench in variants:
                try:
                    w = common.ProcessContenders("benchmarks.bench_step:torch_worker", env=env, batch=args.batch,
                                                 threads=threads, compile=comp, teacher_params=t_params,
                                                 student_params=s_params, matmul=name == variants[0][0],
                                                 device=args.device, cudnn_benchmark=cudnn_bench)
                except RuntimeError as e:
                    result[f"{name}_error"] = str(e)[-800:]
                    print(f"  {name} failed: {str(e).strip().splitlines()[-1]}")
                    continue
                workers.append(w)
                result[name] = w.info
                on = f" on {w.info['device_name']}" if "device_name" in w.info else ""
                print(f"  {name}{on}: first two steps {w.info['first_two_steps_s']:.0f} s")
                for k, run in w.runners().items():
                    contenders[name if k == "step" else k] = run
        print(f"timing {', '.join(contenders)} alternately, {args.reps} reps of ~{args.block_s:g} s")
        times = common.alternate(contenders, args.reps, args.block_s)
    finally:
        for w in workers:
            w.close()

    mm_flops = 2 * MATMUL_N ** 3
    peak = {k: [mm_flops / t / 1e9 for t in times[k]] for k in ("jnp_dot", "np_matmul", "torch_mm") if k in times}
    best_peak = [max(vals) for vals in zip(*peak.values())]
    steps = [k for k in times if k.startswith(("jax", "torch_eager", "torch_compile"))]
    flops = cost["compiled_flops"]
    jax_names = [k for k in ("jax", "jax_no_lanes", "jax_matmul", "jax_flaxgn") if k in times]
    summary = {"images_per_s": {k: common.spread([args.batch / t for t in times[k]]) for k in steps},
               "peak_gflops": {k: common.spread(v) for k, v in peak.items()},
               # achieved rates use the FLOPs of the default program's cost analysis for every JAX variant
               "gflops_xla_count": {k: common.spread([flops / t / 1e9 for t in times[k]]) for k in jax_names},
               "gflops_model_count": {k: common.spread([cost["model_flops"] / t / 1e9 for t in times[k]])
                                      for k in jax_names},
               "fraction_of_peak": {k: common.spread([flops / t / 1e9 / p for t, p in zip(times[k], best_peak)])
                                    for k in jax_names},
               "time_over": {j: {k: common.ratio(times[k], times[j]) for k in steps if k != j} for j in jax_names}}
    result["times_s"] = times
    result["summary"] = summary

    print("\nresults (medians of per-repetition figures; absolute numbers move with the machine's load):")
    for k in steps:
        print(f"  {k:<20} {common.fmt(summary['images_per_s'][k], ' img/s', 0)}")
    for k, v in summary["peak_gflops"].items():
        print(f"  peak {k:<15} {common.fmt(v, ' GFLOP/s', 1)}")
    for k in jax_names:
        print(f"  {k} step {common.fmt(summary['gflops_xla_count'][k], ' GFLOP/s', 1)} (XLA count), "
              f"{summary['gflops_model_count'][k]['median']:.1f} GFLOP/s (model count), "
              f"{common.fmt(summary['fraction_of_peak'][k], '', 3)} of the best matmul of the same rep")
    for j in jax_names:
        for k, v in summary["time_over"][j].items():
            print(f"  time {k} / time {j}: {common.fmt(v)}")
    common.save("step", result, tag="gpu" if gpu else "")
    return result


if __name__ == "__main__":
    main()
