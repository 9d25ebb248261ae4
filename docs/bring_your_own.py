"""Bring your own dataset, student and teacher: each registered by name in the study file that uses them.

    ablate run docs/bring_your_own.py --preset quick

The dataset keeps Fashion-MNIST's five upper-body garments (relabelled 0-4); the student is a small plain CNN;
the teacher is trained from its recipe the first time a run needs it, then cached like the default teachers.
"""

import dataclasses

import numpy as np

from ablate.config import RunConfig
from ablate.data import DATASETS, ArraySource, DatasetSplits, load_dataset
from ablate.models import MODELS
from ablate.study import Study
from ablate.teacher_registry import register_teacher

TOPS = (0, 2, 3, 4, 6)  # T-shirt/top, pullover, dress, coat, shirt


@DATASETS.register("fmnist_tops")
def fmnist_tops() -> DatasetSplits:
    """Fashion-MNIST's five upper-body garments, relabelled 0-4 (a dataset from a study file)."""
    full = load_dataset("fashion_mnist")
    relabel = np.full(10, -1, np.int32)
    relabel[list(TOPS)] = np.arange(len(TOPS))

    def keep(split: ArraySource) -> ArraySource:
        rows = np.flatnonzero(relabel[split.labels] >= 0)
        return ArraySource(split.images[rows], relabel[split.labels[rows]])

    return dataclasses.replace(full, name="fmnist_tops", num_classes=len(TOPS), train=keep(full.train),
                               val=keep(full.val), test=keep(full.test),
                               class_names=tuple(full.class_names[c] for c in TOPS))


@MODELS.register("plain_cnn")
def plain_cnn(num_classes: int):
    """Two 3x3 convolutions and a zero-initialised head (a model from a study file)."""
    import flax.linen as nn
    import jax.numpy as jnp

    class PlainCNN(nn.Module):
        num_classes: int

        @nn.compact
        def __call__(self, x):
            for i, width in enumerate((16, 32)):
                x = nn.relu(nn.Conv(width, (3, 3), strides=2)(x))
                self.sow("intermediates", f"stage{i + 1}", x)  # what feature losses (`at`) read
            return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros)(jnp.mean(x, axis=(1, 2)))

    return PlainCNN(num_classes)


register_teacher("tops_t", RunConfig(dataset="fmnist_tops", teacher=None, model="resnet_xs", policy="supervised",
                                     loss="label_ce", subset_per_class=300, epochs=4, batch_size=100, lr=1e-2,
                                     num_evals=1),
                 "resnet_xs on 1,500 images of fmnist_tops, 4 epochs (a teacher from a study file).")

STUDY = Study(
    name="bring_your_own",
    question="Does function matching beat a fixed teacher with my own dataset, student and teacher?",
    base=dict(dataset="fmnist_tops", teacher="tops_t", model="plain_cnn", subset_per_class=40, epochs=100),
    axes=dict(policy=["fix/rs", "funmatch"]),
    presets=dict(quick=dict(epochs=4, subset_per_class=10, batch_size=25, num_evals=1)),
)
