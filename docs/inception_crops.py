"""Render docs/inception_crops.png: inception-crop boxes on a Fashion-MNIST image, and their area and aspect-ratio
distributions against a NumPy port of TF's sample_distorted_bounding_box (the loop in tests/test_crops.py).

    python docs/inception_crops.py          # about a minute on one CPU core
"""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ablate import views  # noqa: E402
from ablate.data import load_dataset  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SIZE, MIN_AREA, N_PORT, N_OURS = 28, 0.25, 20_000, 200_000  # MIN_AREA: the default ic_min_area


def tf_port():
    spec = importlib.util.spec_from_file_location("test_crops", HERE.parent / "tests" / "test_crops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    port = tf_port()
    image = load_dataset("fashion_mnist").train.images[0, :, :, 0]
    shown = port.pixel_boxes(views.inception_crop(jax.random.key(1), (12, SIZE, SIZE, 1), MIN_AREA), SIZE)
    theirs = port.tf_boxes(N_PORT, SIZE, MIN_AREA, seed=1)
    ours = port.pixel_boxes(views.inception_crop(jax.random.key(2), (N_OURS, SIZE, SIZE, 1), MIN_AREA), SIZE)

    fig = plt.figure(figsize=(12.5, 4.4), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1, 1.75], wspace=0.02)
    left.suptitle(f"12 boxes (h x w at y, x) on a {SIZE} px image, min area {MIN_AREA}", fontsize=10)
    for ax, (y, x, h, w) in zip(left.subplots(3, 4).flat, shown):
        ax.imshow(image, cmap="gray", extent=(0, SIZE, SIZE, 0))  # pixel (i, j) covers [j, j+1] x [i, i+1]
        ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, lw=1.8, ec="tab:orange"))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{h}x{w} at {y},{x}", fontsize=7, labelpad=1)
    hist_axes = right.subplots(1, 2)

    def area(b):
        return b[:, 2] * b[:, 3] / SIZE ** 2

    def aspect(b):
        return b[:, 3] / b[:, 2]

    for k, (fn, label) in enumerate(((area, "area (fraction of the image)"), (aspect, "aspect ratio w / h"))):
        ax = hist_axes[k]
        bins = np.linspace(min(fn(theirs).min(), fn(ours).min()), max(fn(theirs).max(), fn(ours).max()), 41)
        ax.hist(fn(theirs), bins, density=True, histtype="stepfilled", alpha=0.35, color="tab:orange",
                label=f"TF's algorithm (NumPy port, {N_PORT:,})")
        ax.hist(fn(ours), bins, density=True, histtype="step", lw=1.6, color="tab:blue",
                label=f"ablate (JAX, {N_OURS:,})")
        ax.set_xlabel(label)
        ax.set_yticks([])
        if k == 0:
            ax.axvline(fn(theirs).mean(), color="tab:orange", ls="--", lw=1)
            ax.axvline(fn(ours).mean(), color="tab:blue", ls=":", lw=1.4)
            ax.set_title(f"mean area: TF {fn(theirs).mean():.3f}, ablate {fn(ours).mean():.3f}")
            ax.legend(loc="upper left", fontsize=8)
        else:
            ax.set_title(f"KS: area {port.ks(area(ours), area(theirs)):.3f}, "
                         f"aspect {port.ks(aspect(ours), aspect(theirs)):.3f}")
    out = HERE / "inception_crops.png"
    fig.savefig(out, dpi=90)
    print(f"wrote {out.name}")


if __name__ == "__main__":
    main()
