"""The default distillation step of ablate, written again in PyTorch, as the benchmarks' reference point.

Written for `bench_step` only; nothing in ablate imports it. It mirrors, piece by piece:

* `ablate.models.resnet.ResNetV2` with `unit="basic", root="small"`: a 3x3 strided
  root convolution, pre-activation basic units (GroupNorm-ReLU, 3x3 conv,
  GroupNorm-ReLU, 3x3 conv, identity or 1x1 strided projection of the
  pre-activated input), GroupNorm-ReLU before the head, global mean pool and a
  zero-initialised dense head; every convolution is bias-free and weight-
  standardised (zero mean, unit biased variance per output channel, eps 1e-10),
  GroupNorm has eps 1e-5 and the same group counts;
* `ablate.views`: inception crops drawn per example (area in [min_area, 1],
  log-uniform aspect ratio in [3/4, 4/3], random position and flip) rendered by
  per-example bilinear interpolation matrices (`ry @ image @ rx^T`), and mixup
  with one folded Beta(p, p) coefficient per batch, mixing with the batch
  rolled by one; teacher and student see the very same mixed image (funmatch);
* `ablate.losses.kl` at T=1, averaged over the batch;
* `ablate.optim.paper_optimizer`: global-norm clipping at 1, Adam, then
  delta = -s(t) * (lr * adam + wd * theta) with decay on kernels only. That is
  AdamW with lr_t = lr * s(t) and weight_decay = wd / lr on kernels (AdamW
  multiplies its decay by lr_t, giving s(t) * wd); s(t) linear warmup then cosine.

Images are NCHW tensors in channels_last memory format (PyTorch's fast layout on CPU).
`TorchStep(..., device="cuda")` puts the models, the batches, the optimiser state and every tensor the
step creates (crop boxes and flips, interpolation matrices, the mixup coefficient) on that device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- model

class StdConv2d(nn.Conv2d):
    """A bias-free convolution whose kernel is weight-standardised at every call."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__(cin, cout, kernel, stride, padding, bias=False)

    def forward(self, x):
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(x, (w - mean) * torch.rsqrt(var + 1e-10), None, self.stride, self.padding)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """At most `groups` groups: fewer when they do not divide the channels (as ablate's `group_norm`)."""
    g = groups
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels, eps=1e-5)


class BasicUnit(nn.Module):
    def __init__(self, cin: int, nout: int, stride: int, groups: int):
        super().__init__()
        self.gn1 = group_norm(cin, groups)
        self.conv_proj = StdConv2d(cin, nout, 1, stride) if (cin != nout or stride != 1) else None
        self.conv1 = StdConv2d(cin, nout, 3, stride, 1)
        self.gn2 = group_norm(nout, groups)
        self.conv2 = StdConv2d(nout, nout, 3, 1, 1)

    def forward(self, x):
        residual = x
        x = F.relu(self.gn1(x))
        if self.conv_proj is not None:
            residual = self.conv_proj(x)
        x = self.conv1(x)
        x = F.relu(self.gn2(x))
        return self.conv2(x) + residual


class ResNetV2(nn.Module):
    def __init__(self, num_classes: int, depths, widths, root_width: int, root_stride: int, groups: int,
                 in_channels: int = 1):
        super().__init__()
        self.root = StdConv2d(in_channels, root_width, 3, root_stride, 1)
        units, cin = [], root_width
        for i, (depth, width) in enumerate(zip(depths, widths)):
            for j in range(depth):
                units.append(BasicUnit(cin, width, 2 if (i > 0 and j == 0) else 1, groups))
                cin = width
        self.units = nn.Sequential(*units)
        self.norm_pre_head = group_norm(cin, groups)
        self.head = nn.Linear(cin, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        x = self.units(self.root(x))
        x = F.relu(self.norm_pre_head(x))
        return self.head(x.mean(dim=(2, 3)))


def resnet_t(num_classes: int = 10) -> ResNetV2:
    """ablate's `resnet_t`: widths 32/64/128, one unit per stage, 8 groups."""
    return ResNetV2(num_classes, (1, 1, 1), (32, 64, 128), root_width=32, root_stride=2, groups=8)


def resnet_s(num_classes: int = 10) -> ResNetV2:
    """ablate's `resnet_s`: widths 12/24/48, one unit per stage, 4 groups."""
    return ResNetV2(num_classes, (1, 1, 1), (12, 24, 48), root_width=12, root_stride=2, groups=4)


MODELS = {"resnet_t": resnet_t, "resnet_s": resnet_s}


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flax_pairs(model: ResNetV2, tree) -> list[tuple[str, torch.Tensor, object]]:
    """(name, torch parameter, the matching leaf of a flax-shaped tree in torch layout) for every parameter.

    `tree` is a flax parameter tree of the same architecture, or any tree of
    the same structure (gradients, updates); kernels are transposed from HWIO
    to OIHW and dense (in, out) to (out, in).
    """
    out = []

    def conv(name, module, p):
        out.append((name + "/kernel", module.weight, np.asarray(p["kernel"]).transpose(3, 2, 0, 1)))

    def gn(name, module, p):
        out.append((name + "/scale", module.weight, np.asarray(p["scale"])))
        out.append((name + "/bias", module.bias, np.asarray(p["bias"])))

    conv("root_block/conv_root", model.root, tree["root_block/conv_root"])
    units = sorted(k for k in tree if k.startswith("block"))
    if len(units) != len(model.units):
        raise ValueError(f"{len(units)} units in the flax tree, {len(model.units)} in the torch model")
    for name, unit in zip(units, model.units):
        p = tree[name]
        gn(f"{name}/gn1", unit.gn1, p["gn1"])
        conv(f"{name}/conv1", unit.conv1, p["conv1"])
        gn(f"{name}/gn2", unit.gn2, p["gn2"])
        conv(f"{name}/conv2", unit.conv2, p["conv2"])
        if unit.conv_proj is not None:
            conv(f"{name}/conv_proj", unit.conv_proj, p["conv_proj"])
    gn("norm-pre-head", model.norm_pre_head, tree["norm-pre-head"])
    out.append(("head/kernel", model.head.weight, np.asarray(tree["head"]["kernel"]).T))
    out.append(("head/bias", model.head.bias, np.asarray(tree["head"]["bias"])))
    if len(out) != len(list(model.parameters())):
        raise ValueError("the flax tree does not cover every parameter of the torch model")
    return out


def load_flax_params(model: ResNetV2, params) -> None:
    """Copy a flax parameter tree of the same architecture into `model`."""
    with torch.no_grad():
        for _, param, value in flax_pairs(model, params):
            if tuple(param.shape) != value.shape:
                raise ValueError(f"shape {value.shape} does not fit {tuple(param.shape)}")
            param.copy_(torch.from_numpy(value.copy()))


# ----------------------------------------------------------------------------- views

def inception_crop(n: int, min_area: float = 0.25, aspect=(3 / 4, 4 / 3), device=None):
    """(boxes (n, 4) as y0, x0, h, w in [0, 1]; flips (n,) bool), distributed as `ablate.views.inception_crop`."""
    u = torch.rand(5, n, device=device)
    area = min_area + (1.0 - min_area) * u[0]
    lo, hi = math.log(aspect[0]), math.log(aspect[1])
    ratio = torch.exp(lo + (hi - lo) * u[1])
    w = torch.clamp(torch.sqrt(area * ratio), max=1.0)
    h = torch.clamp(torch.sqrt(area / ratio), max=1.0)
    y0, x0 = u[2] * (1 - h), u[3] * (1 - w)
    return torch.stack([y0, x0, h, w], dim=-1), u[4] < 0.5


def _interpolation(start, size, in_len: int, out_len: int):
    step = size * (in_len / out_len)
    coords = start[:, None] * in_len + (torch.arange(out_len, device=start.device) + 0.5) * step[:, None] - 0.5
    coords = coords.clamp(0.0, in_len - 1.0)
    return torch.relu(1.0 - (coords[..., None] - torch.arange(in_len, device=start.device)).abs())


def render(images_u8, boxes, flips, resolution: int):
    """uint8 NCHW images through their crop boxes at `resolution`, float32 in [-1, 1], channels_last."""
    _, _, h, w = images_u8.shape
    ry = _interpolation(boxes[:, 0], boxes[:, 2], h, resolution)
    rx = _interpolation(boxes[:, 1], boxes[:, 3], w, resolution)
    rx = torch.where(flips[:, None, None], rx.flip(1), rx)
    x = images_u8.float() * (2.0 / 255.0) - 1.0
    out = torch.einsum("byh,bchw,bxw->bcyx", ry, x, rx)
    return out.contiguous(memory_format=torch.channels_last)


def mixup_coefficient(p: float) -> float:
    """One coefficient per batch: a ~ Beta(p, p) folded to max(a, 1 - a); p = 0 gives 1."""
    if p <= 0:
        return 1.0
    a = float(torch.distributions.Beta(p, p).sample())
    return max(a, 1.0 - a)


def mixup_coefficient_on(p: float, device):
    """As `mixup_coefficient`, as a 0-d tensor drawn on `device` (no blocking host-to-device copy per step)."""
    if p <= 0:
        return torch.ones((), device=device)
    conc = torch.full((), float(p), device=device)
    a = torch.distributions.Beta(conc, conc, validate_args=False).sample()  # validation would sync with the host
    return torch.maximum(a, 1.0 - a)


def mix(x, coef: float):
    return coef * x + (1.0 - coef) * torch.roll(x, 1, dims=0)


# ----------------------------------------------------------------------------- loss and optimiser

def kl_loss(student_logits, teacher_logits, temperature: float = 1.0):
    t = temperature
    log_pt = F.log_softmax(teacher_logits / t, dim=-1)
    log_ps = F.log_softmax(student_logits / t, dim=-1)
    return t * t * torch.sum(log_pt.exp() * (log_pt - log_ps), dim=-1).mean()


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return step / max(warmup, 1)
    progress = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class PaperOptimizer:
    """clip(1) -> Adam -> * lr -> + wd * theta on kernels -> * -s(t), as AdamW with per-step lr."""

    def __init__(self, model: nn.Module, lr: float, wd: float, total_steps: int, warmup_steps: int,
                 clip: float = 1.0):
        kernels = [p for n, p in model.named_parameters() if _is_kernel(n)]
        others = [p for n, p in model.named_parameters() if not _is_kernel(n)]
        self.params = list(model.parameters())
        self.lr, self.total, self.warmup, self.clip = lr, total_steps, warmup_steps, clip
        groups = [{"params": kernels, "weight_decay": wd / lr}, {"params": others, "weight_decay": 0.0}]
        try:
            self.opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
            self.kind = "AdamW(fused)"
        except (RuntimeError, TypeError, ValueError):
            self.opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
            self.kind = "AdamW(foreach)"
        self.t = 0

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        lr_t = self.lr * warmup_cosine(self.t, self.total, self.warmup)
        for g in self.opt.param_groups:
            g["lr"] = lr_t
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.t += 1


def _is_kernel(name: str) -> bool:
    """Convolution and dense kernels are decayed; GroupNorm scales/biases and the head bias are not."""
    return name.endswith("weight") and not any(s in name for s in ("gn1", "gn2", "norm_pre_head"))


# ----------------------------------------------------------------------------- the step

class TorchStep:
    """funmatch: one inception crop + mixup shared by teacher and student, teacher forward, student
    forward/backward, KL at T=1, the paper's optimiser. `compile=True` runs the forward/loss through
    torch.compile (the optimiser stays eager: it is one fused kernel already). `device` ("cpu" or "cuda")
    holds the models, the batches, the optimiser state and everything the step creates; on cuda every
    `run(n)` ends with torch.cuda.synchronize()."""

    def __init__(self, batches_u8_nhwc, lr=3e-3, wd=1e-4, total_steps=10_000, warmup_frac=0.05,
                 mixup_p=1.0, min_area=0.25, resolution=28, compile: bool = False, teacher_params=None,
                 student_params=None, seed: int = 0, device="cpu"):
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.teacher, self.student = resnet_t(), resnet_s()
        if teacher_params is not None:
            load_flax_params(self.teacher, teacher_params)
        if student_params is not None:
            load_flax_params(self.student, student_params)
        self.teacher.eval().requires_grad_(False)
        self.teacher = self.teacher.to(self.device, memory_format=torch.channels_last)
        self.student = self.student.to(self.device, memory_format=torch.channels_last)
        # after the move: the optimiser's parameters (and so its state, created at the first step) are on device
        self.opt = PaperOptimizer(self.student, lr, wd, total_steps, round(warmup_frac * total_steps))
        self.batches = [torch.from_numpy(np.array(b["image"])).permute(0, 3, 1, 2).contiguous().to(self.device)
                        for b in batches_u8_nhwc]
        self.mixup_p, self.min_area, self.resolution = mixup_p, min_area, resolution
        self.loss_fn = torch.compile(self._loss) if compile else self._loss
        self.i = 0

    def _loss(self, images_u8, boxes, flips, coef):
        x = mix(render(images_u8, boxes, flips, self.resolution), coef)
        with torch.no_grad():
            zt = self.teacher(x)
        return kl_loss(self.student(x), zt)

    def run(self, n: int) -> float:
        loss = None
        for _ in range(n):
            images = self.batches[self.i % len(self.batches)]
            boxes, flips = inception_crop(images.shape[0], self.min_area, device=self.device)
            if self.device.type == "cpu":
                coef = torch.tensor(mixup_coefficient(self.mixup_p), dtype=torch.float32)
            else:
                coef = mixup_coefficient_on(self.mixup_p, self.device)
            loss = self.loss_fn(images, boxes, flips, coef)
            loss.backward()
            self.opt.step()
            self.i += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return float(loss.detach())
