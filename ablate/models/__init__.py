"""Model registry: each entry builds a flax module for a class count."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ablate.registry import Registry

if TYPE_CHECKING:  # flax is imported by the builders, when a model is built: `ablate list` needs no jax
    import flax.linen as nn

MODELS: Registry = Registry("model")


def build_model(name: str, num_classes: int) -> nn.Module:
    return MODELS.get(name)(num_classes)


def params_fingerprint(params) -> str:
    """A content hash of a parameter tree (names and values): equal for equal parameters, wherever they came from."""
    import hashlib

    import jax
    import numpy as np

    h = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda kv: jax.tree_util.keystr(kv[0])):
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def apply_with_features(model: nn.Module, params, x):
    """(logits, the output of each stage in order): the forward pass keeping what the model `sow`s as "stage1",
    "stage2", ... in its "intermediates" collection, for losses on intermediate activations (attention transfer)."""
    logits, state = model.apply({"params": params}, x, mutable=["intermediates"])
    stages = state.get("intermediates", {})
    if not stages:
        raise ValueError(f"model {type(model).__name__} exposes no intermediate activations: a loss on features "
                         "needs models that sow each stage's output as 'stage1', 'stage2', ... "
                         "(self.sow('intermediates', 'stage1', x))")
    return logits, tuple(stages[k][0] for k in sorted(stages, key=lambda k: int(k.removeprefix("stage"))))


@MODELS.register("resnet_t")
def resnet_t(num_classes: int) -> nn.Module:
    """Default teacher for 28 px images: basic ResNetV2, widths 32/64/128, one unit per stage (~308k params)."""
    from ablate.models.resnet import ResNetV2

    return ResNetV2(num_classes, (1, 1, 1), (32, 64, 128), unit="basic", root="small",
                    root_width=32, root_stride=2, groups=8)


@MODELS.register("resnet_t_deep")
def resnet_t_deep(num_classes: int) -> nn.Module:
    """Deeper teacher for 28 px images: resnet_t with two units per stage (~696k params)."""
    from ablate.models.resnet import ResNetV2

    return ResNetV2(num_classes, (2, 2, 2), (32, 64, 128), unit="basic", root="small",
                    root_width=32, root_stride=2, groups=8)


@MODELS.register("resnet_s")
def resnet_s(num_classes: int) -> nn.Module:
    """Default student for 28 px images: basic ResNetV2, widths 12/24/48, one unit per stage (~44k params)."""
    from ablate.models.resnet import ResNetV2

    return ResNetV2(num_classes, (1, 1, 1), (12, 24, 48), unit="basic", root="small",
                    root_width=12, root_stride=2, groups=4)


@MODELS.register("resnet_xs")
def resnet_xs(num_classes: int) -> nn.Module:
    """Tiny model for tests and smoke runs: widths 8/16/32, one unit per stage (~20k params)."""
    from ablate.models.resnet import ResNetV2

    return ResNetV2(num_classes, (1, 1, 1), (8, 16, 32), unit="basic", root="small",
                    root_width=8, root_stride=2, groups=4)


def _bit(depths, width):
    def build(num_classes: int) -> nn.Module:
        from ablate.models.resnet import ResNetV2

        return ResNetV2(num_classes, depths, tuple(64 * width * 2**i for i in range(4)),
                        unit="bottleneck", root="bit", root_width=64 * width)

    return build


_BIT_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
for _depth, _blocks in _BIT_DEPTHS.items():
    for _width in (1, 2, 3, 4):
        _build = _bit(_blocks, _width)
        _build.__doc__ = f"BiT ResNetV2-{_depth}x{_width} (GroupNorm, weight standardisation, zero-init head)."
        MODELS.register(f"bit_r{_depth}x{_width}")(_build)


def _cifar_resnet(depth: int, widths: tuple[int, ...]):
    def build(num_classes: int) -> nn.Module:
        from ablate.models.cifar import CifarResNet

        return CifarResNet(num_classes, depth, widths)

    build.__doc__ = (f"CIFAR ResNet-{depth} of CRD/mdistiller: stem {widths[0]}, stages "
                     f"{'/'.join(map(str, widths[1:]))}, basic blocks, GroupNorm instead of BatchNorm, zero-init head.")
    return build


def _wrn(depth: int, widen_factor: int):
    def build(num_classes: int) -> nn.Module:
        from ablate.models.cifar import WideResNet

        return WideResNet(num_classes, depth, widen_factor)

    build.__doc__ = (f"WRN-{depth}-{widen_factor} of CRD/mdistiller for 32 px images: pre-activation, GroupNorm "
                     "instead of BatchNorm, no dropout, zero-init head.")
    return build


# CRD's / mdistiller's CIFAR-100 teacher/student pairs (resnet32x4 -> resnet8x4, wrn_40_2 -> wrn_16_2)
MODELS.register("resnet8x4")(_cifar_resnet(8, (32, 64, 128, 256)))
MODELS.register("resnet32x4")(_cifar_resnet(32, (32, 64, 128, 256)))
MODELS.register("wrn_16_2")(_wrn(16, 2))
MODELS.register("wrn_40_2")(_wrn(40, 2))


@MODELS.register("mobilenet_s")
def mobilenet_s(num_classes: int) -> nn.Module:
    """MobileNetV2-style student (Sandler et al., CVPR 2018): widths 16/24/32, t=4, GroupNorm (~45k params)."""
    from ablate.models.small import MobileNetS

    return MobileNetS(num_classes)


@MODELS.register("vit_s")
def vit_s(num_classes: int) -> nn.Module:
    """Small ViT student (Dosovitskiy et al., ICLR 2021): 4 px patches, width 40, 3 blocks, mean pool (~53k params)."""
    from ablate.models.small import ViTS

    return ViTS(num_classes)
