"""TFDS-backed datasets: registration under tfds.testing.mock_data, and the real ArrayRecord read path on a tiny dataset."""

import io
import os
import pickle
import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from ablate.data import tfds as T
from ablate.data.base import DATASETS, DataError, load_dataset


class AblateTinyImages(tfds.core.GeneratorBasedBuilder):
    """12 train / 4 test JPEGs of varying size; written without TensorFlow (JPEG bytes are stored as given)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=5), "file_name": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(12, 0), "test": self._generate_examples(4, 1)}

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            img = rng.integers(0, 256, (20 + 3 * i, 30, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG")
            yield i, {"image": buf.getvalue(), "label": (7 * i + seed) % 5, "file_name": f"{i}.jpg"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    AblateTinyImages(data_dir=d, file_format="array_record").download_and_prepare()
    return d


def check_source(src, n, size, num_classes):
    assert len(src) == n
    labels = src.labels
    assert labels.shape == (n,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < num_classes
    for i in (0, n - 1):
        r = src[i]
        assert r["image"].shape == (size, size, 3) and r["image"].dtype == np.uint8
        assert r["label"] == labels[i] and r["index"] == i
    batch = next(iter(grain.MapDataset.source(src).batch(4)))
    assert batch["image"].shape == (min(4, n), size, size, 3) and batch["label"].shape == (min(4, n),)


def test_import_needs_neither_tensorflow_nor_tfds():
    code = ("import sys, ablate.data.tfds; "
            "assert 'tensorflow' not in sys.modules and 'tensorflow_datasets' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(T.SPECS))
def test_registered_datasets_with_mock_data(name, monkeypatch):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    spec = T.SPECS[name]
    assert name in DATASETS
    with tfds.testing.mock_data(num_examples=6):  # fakes every split, sliced or not, with 6 records
        d = load_dataset(name)
        size = spec.source_size
        assert (d.num_classes, d.resolution, d.eval_view, d.image_shape) == (spec.num_classes, spec.resolution, "cc",
                                                                             (size, size, 3))
        assert len(d.class_names) == spec.num_classes
        assert [s.split for s in (d.train, d.val, d.test)] == list(spec.splits)
        for src in (d.train, d.val, d.test):
            check_source(src, 6, size, spec.num_classes)
        assert pickle.loads(pickle.dumps(d.val))[3]["label"] == d.val[3]["label"]


def test_source_sizes():
    assert {n: s.source_size for n, s in T.SPECS.items()} == {
        "oxford_flowers102": 160, "oxford_iiit_pet": 160, "food101": 160, "sun397": 160, "imagenet2012": 280,
        "cifar10": 40, "cifar100": 40}


def test_real_array_record_path(tiny_dir, monkeypatch):
    monkeypatch.setitem(T.SPECS, "tiny", T.TfdsSpec("ablate_tiny_images", ("train[:75%]", "train[75%:]", "test"), 5, 16))
    monkeypatch.setenv("TFDS_DATA_DIR", tiny_dir)  # picked up when data_dir is not given
    d = T.load_tfds("tiny")
    assert (len(d.train), len(d.val), len(d.test)) == (9, 3, 4) and d.image_shape == (20, 20, 3)
    for src, n in ((d.train, 9), (d.val, 3), (d.test, 4)):
        check_source(src, n, 20, 5)
    full = np.array([d.train.source[i]["label"] for i in range(9)])
    np.testing.assert_array_equal(d.train.labels, full)  # undecoded label read agrees with full decoding
    assert sorted(np.concatenate([d.train.labels, d.val.labels])) == sorted((7 * i) % 5 for i in range(12))
    clone = pickle.loads(pickle.dumps(d.test))
    np.testing.assert_array_equal(clone[2]["image"], d.test[2]["image"])
    squash = T.load_tfds("tiny", data_dir=tiny_dir, source_size=24, fit="squash")
    assert squash.train[5]["image"].shape == (24, 24, 3)
    # teacher-target cache keys: the same labels read at another size or fit, or another subset with the same
    # labels, are other content
    from ablate.teachers import source_id
    from ablate.stream import _Subset

    crop = T.load_tfds("tiny", data_dir=tiny_dir, source_size=24)
    ids = {source_id(crop.train)["content"], source_id(squash.train)["content"], source_id(d.train)["content"]}
    assert len(ids) == 3 and source_id(crop.train) == source_id(T.load_tfds("tiny", data_dir=tiny_dir,
                                                                             source_size=24).train)
    same_labels = [i for i in range(9) if d.train.labels[i] == d.train.labels[0]]
    assert len(same_labels) >= 2
    a, b = _Subset(d.train, np.array(same_labels[:1])), _Subset(d.train, np.array(same_labels[1:2]))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert source_id(a) != source_id(b)


def test_missing_dataset_is_a_clear_data_error_and_leaves_no_temporary_folder(tmp_path):
    import tempfile

    before = set(os.listdir(tempfile.gettempdir()))
    with pytest.raises(DataError, match=r"(?s)does not exist.*tfds build oxford_flowers102 .*--file_format=array_record"):
        load_dataset("oxford_flowers102", data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"ILSVRC2012_img_train.tar .*downloads/manual"):
        load_dataset("imagenet2012", data_dir=str(tmp_path))
    assert set(os.listdir(tempfile.gettempdir())) == before  # TFDS's own tmp*tfds folders are removed too


def test_fit_image():
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, 10:20] = 200  # the central square is bright, the sides dark
    assert (T.fit_image(wide, 10, "crop") == 200).all()
    squashed = T.fit_image(wide, 10, "squash")
    assert squashed.shape == (10, 10, 3) and squashed[:, 0].max() < 50 and squashed[:, 5].min() > 150
    gray = T.fit_image(np.full((8, 6), 7, np.uint8), 4)
    assert gray.shape == (4, 4, 3) and (gray == 7).all()
    assert T.fit_image(np.ones((5, 5, 4), np.uint8), 5).shape == (5, 5, 3)
    with pytest.raises(ValueError, match="fit"):
        T.fit_image(wide, 10, "pad")
