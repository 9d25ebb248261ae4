"""Dataset registry: each entry returns the splits of one dataset (see `ablate.data.base`)."""

from ablate.data.base import DATASETS, ArraySource, DatasetSplits, DataError, balanced_subset, load_dataset
from ablate.data import fashion_mnist as _fashion_mnist  # noqa: F401  (registers fashion_mnist)

__all__ = ["DATASETS", "ArraySource", "DatasetSplits", "DataError", "balanced_subset", "load_dataset"]
from ablate.data import tfds as _tfds  # noqa: F401,E402  (registers the paper's TFDS datasets)
