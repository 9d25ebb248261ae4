"""Load and save official BiT `.npz` checkpoints for `ablate.models.resnet.ResNetV2`.

Two key formats exist: the original BiT release (`resnet/block1/unit01/a/
standardized_conv2d/kernel`, ...) and big_vision's flat names, which are our own
parameter paths joined with '/' (`block1/unit01/conv1/kernel`). `load_bit_npz`
detects the format, maps names onto ours and checks every tensor before
returning, so a wrong checkpoint fails loudly rather than loading half a model.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

_BIT_CONV = {"a": "conv1", "b": "conv2", "c": "conv3"}
_BIT_GN = {"a": "gn1", "b": "gn2", "c": "gn3"}
_BIT_GN_PARAM = {"gamma": "scale", "beta": "bias"}
HEAD = ("head/kernel", "head/bias")


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message lists every problem at once."""


def flatten(params: Mapping) -> dict[str, Any]:
    """Our nested params -> {big_vision flat name: array}; module names already hold '/', so joining keys suffices."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}/{k}": v for k, v in flatten(value).items()})
        else:
            flat[key] = value
    return flat


def _rebuild(target: Mapping, get, prefix: str = "") -> dict:
    """A tree shaped like `target` whose leaf at flat name n is get(n, target_leaf)."""
    return {k: _rebuild(v, get, f"{prefix}{k}/") if isinstance(v, Mapping) else get(prefix + k, v)
            for k, v in target.items()}


def bit_to_big_vision(name: str) -> str | None:
    """Original BiT name -> big_vision name (None if it is not a BiT parameter name)."""
    name = re.sub(r"/standardized_conv2d_\d+/", "/standardized_conv2d/", name)  # some BiT files number the scope
    if name == "resnet/root_block/standardized_conv2d/kernel":
        return "root_block/conv_root/kernel"
    if m := re.fullmatch(r"resnet/group_norm/(gamma|beta)", name):
        return f"norm-pre-head/{_BIT_GN_PARAM[m[1]]}"
    if m := re.fullmatch(r"resnet/head/conv2d/(kernel|bias)", name):
        return f"head/{m[1]}"
    if m := re.fullmatch(r"resnet/(block\d+/unit\d+)/a/proj/standardized_conv2d/kernel", name):
        return f"{m[1]}/conv_proj/kernel"
    if m := re.fullmatch(r"resnet/(block\d+/unit\d+)/([abc])/standardized_conv2d/kernel", name):
        return f"{m[1]}/{_BIT_CONV[m[2]]}/kernel"
    if m := re.fullmatch(r"resnet/(block\d+/unit\d+)/([abc])/group_norm/(gamma|beta)", name):
        return f"{m[1]}/{_BIT_GN[m[2]]}/{_BIT_GN_PARAM[m[3]]}"
    return None


def big_vision_to_bit(name: str) -> str:
    """big_vision name -> original BiT name (inverse of `bit_to_big_vision`)."""
    inv_conv = {v: k for k, v in _BIT_CONV.items()}
    inv_gn = {v: k for k, v in _BIT_GN.items()}
    inv_p = {v: k for k, v in _BIT_GN_PARAM.items()}
    if name == "root_block/conv_root/kernel":
        return "resnet/root_block/standardized_conv2d/kernel"
    if m := re.fullmatch(r"norm-pre-head/(scale|bias)", name):
        return f"resnet/group_norm/{inv_p[m[1]]}"
    if m := re.fullmatch(r"head/(kernel|bias)", name):
        return f"resnet/head/conv2d/{m[1]}"
    if m := re.fullmatch(r"(block\d+/unit\d+)/conv_proj/kernel", name):
        return f"resnet/{m[1]}/a/proj/standardized_conv2d/kernel"
    if m := re.fullmatch(r"(block\d+/unit\d+)/(conv[123])/kernel", name):
        return f"resnet/{m[1]}/{inv_conv[m[2]]}/standardized_conv2d/kernel"
    if m := re.fullmatch(r"(block\d+/unit\d+)/(gn[123])/(scale|bias)", name):
        return f"resnet/{m[1]}/{inv_gn[m[2]]}/group_norm/{inv_p[m[3]]}"
    raise ValueError(f"{name!r} is not a BiT ResNetV2 parameter name")


def detect_format(keys) -> str:
    """'bit' if the keys use the original BiT names (prefix 'resnet/'), else 'big_vision'."""
    return "bit" if any(k.startswith("resnet/") for k in keys) else "big_vision"


def to_big_vision_names(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Checkpoint arrays -> ({big_vision name: array}, [foreign keys: not parameters of any BiT ResNet])."""
    if any(k.startswith("params/") for k in arrays):  # a whole big_vision train state: keep the params
        foreign = [k for k in arrays if not k.startswith("params/")]
        arrays = {k.removeprefix("params/"): v for k, v in arrays.items() if k.startswith("params/")}
    else:
        foreign = []
    if detect_format(arrays) == "big_vision":
        return dict(arrays), foreign
    out = {}
    for k, v in arrays.items():
        if (n := bit_to_big_vision(k)) is None:
            foreign.append(k)
        else:
            out[n] = v
    return out, foreign


def _squeezed(shape) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _fits(got, want) -> bool:
    """Same shape up to size-1 axes: GroupNorm (1,1,1,C) -> (C,), BiT head (1,1,C,K) -> (C,K)."""
    return tuple(got) == tuple(want) or _squeezed(got) == _squeezed(want)


def load_params(arrays: Mapping[str, np.ndarray], params: Mapping, *, skip_head: bool | None = None,
                strict: bool = True, source: str = "checkpoint") -> dict:
    """Map checkpoint `arrays` (either key format) onto the structure, shapes and dtypes of `params`.

    skip_head: None skips the head when the checkpoint lacks it or its class count
    differs from the model's; True/False force. A skipped head keeps the target's
    value (zeros if `params` is abstract, e.g. from `jax.eval_shape`), which is
    the zero init of our head. Missing, mis-shaped and (if `strict`) unexpected
    parameter tensors are all reported in one CheckpointError; with
    strict=False unexpected ones only warn, as do keys that are no BiT
    parameter at all (e.g. a train state's optimizer slots).
    """
    wrapped = set(params) == {"params"}
    target = flatten(params["params"] if wrapped else params)
    ckpt, foreign = to_big_vision_names(arrays)
    if skip_head is None:
        k = ckpt.get("head/kernel")
        skip_head = k is None or np.shape(k)[-1:] != tuple(target["head/kernel"].shape)[-1:]  # class count
    skipped = set(HEAD) if skip_head else set()
    missing = sorted(n for n in target if n not in ckpt and n not in skipped)
    bad = sorted(f"{n}: expected {tuple(target[n].shape)}, got {tuple(np.shape(ckpt[n]))}"
                 for n in target if n in ckpt and n not in skipped and not _fits(np.shape(ckpt[n]), target[n].shape))
    unexpected = sorted(n for n in ckpt if n not in target and n not in skipped)
    problems = ([f"missing {len(missing)} tensor(s): {', '.join(missing)}"] if missing else []) + \
               ([f"mis-shaped {len(bad)} tensor(s): {'; '.join(bad)}"] if bad else [])
    notes = [f"ignored {len(foreign)} non-parameter key(s): {', '.join(sorted(foreign))}"] if foreign else []
    if unexpected:  # parameters of another architecture (e.g. R101 units loaded into R50): an error when strict
        msg = f"unexpected {len(unexpected)} tensor(s) the model does not have: {', '.join(unexpected)}"
        (problems if strict else notes).append(msg)
    if problems:
        raise CheckpointError(f"{source} does not fit the model ({detect_format(arrays)} key format):\n  "
                              + "\n  ".join(problems + notes))
    for note in notes:
        warnings.warn(f"{source}: {note}", stacklevel=3)

    def get(name, leaf):
        if name in skipped:
            return leaf if isinstance(leaf, (jax.Array, np.ndarray)) else jnp.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(np.reshape(ckpt[name], leaf.shape), dtype=leaf.dtype)

    out = _rebuild(params["params"] if wrapped else params, get)
    return {"params": out} if wrapped else out


def load_bit_npz(path: str | os.PathLike, params: Mapping, *, skip_head: bool | None = None,
                 strict: bool = True) -> dict:
    """Load a BiT `.npz` (original or big_vision names, auto-detected) into a tree shaped like `params`."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read BiT checkpoint {os.fspath(path)}: {e}") from None
    return load_params(arrays, params, skip_head=skip_head, strict=strict, source=os.fspath(path))


def export_arrays(params: Mapping, fmt: str = "bit") -> dict[str, np.ndarray]:
    """Our params -> {name: array} in `fmt`: 'bit' (original names, GN (C,), head kernel (1,1,C,K)) or 'big_vision' (GN (1,1,1,C))."""
    if fmt not in ("bit", "big_vision"):
        raise ValueError(f"fmt must be 'bit' or 'big_vision', got {fmt!r}")
    out = {}
    for name, v in flatten(params["params"] if set(params) == {"params"} else params).items():
        v = np.asarray(v)
        if fmt == "big_vision":
            out[name] = v.reshape(1, 1, 1, -1) if re.search(r"(gn\d|norm-pre-head)/", name) else v
        else:
            out[big_vision_to_bit(name)] = v.reshape(1, 1, *v.shape) if name == "head/kernel" else v
    return out


def save_bit_npz(path: str | os.PathLike, params: Mapping, fmt: str = "bit") -> None:
    """Write `params` as an uncompressed `.npz` in the original BiT ('bit') or big_vision key format."""
    with open(path, "wb") as f:  # a file object stops numpy from appending '.npz' to the name
        np.savez(f, **export_arrays(params, fmt))
