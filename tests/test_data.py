"""Data loading, caching, validation split, augmentation, calibration samples."""
import os
import shutil
import tarfile

import numpy as np
import pytest

from conftest import CLASSES, SHARED_ARCHIVE, make_image_tree
from fnet_tf.data import datasets as data
from fnet_tf.core.errors import UserError


def test_archive_loads_and_is_cached(tiny_archive, tmp_path):
    first = data.load(tiny_archive, cache_dir=str(tmp_path))
    assert first.classes == CLASSES
    assert len(first.train) == 120 and len(first.test) == 80
    assert first.train.images.dtype == np.uint8 and first.train.images.shape[1:] == (32, 32, 3)
    assert np.bincount(first.train.labels).tolist() == [12] * 10
    assert os.path.isfile(os.path.join(tmp_path, "extracted", os.listdir(
        os.path.join(tmp_path, "extracted"))[0], ".complete"))
    shutil.rmtree(os.path.join(tmp_path, "extracted"))  # the decoded cache alone suffices now
    second = data.load(tiny_archive, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(first.train.images, second.train.images)


def test_folder_tree_loads(tiny_tree, tmp_path):
    d = data.load(tiny_tree, cache_dir=str(tmp_path))
    assert len(d.train) == 120 and d.classes == CLASSES


def test_validation_split_is_stratified_and_disjoint(tiny_tree, tmp_path):
    d = data.load(tiny_tree, cache_dir=str(tmp_path), val_split=20)
    assert len(d.train) == 100 and len(d.val) == 20
    assert np.bincount(d.val.labels).tolist() == [2] * 10
    with pytest.raises(UserError, match="--val_split"):
        data.load(tiny_tree, cache_dir=str(tmp_path), val_split=500)


def test_missing_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.load(str(tmp_path / "nope.tar.gz"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="cannot read dataset"):
        data.load(str(tmp_path / "file.txt"))


def test_corrupt_archive_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08 not really gzip" * 10)
    with pytest.raises(UserError, match="corrupt"):
        data.load(str(bad), cache_dir=str(tmp_path / "c"))


def test_missing_class_folder_is_a_user_error(tmp_path):
    tree = make_image_tree(str(tmp_path), 2, 1, classes=("a", "b"))
    shutil.rmtree(os.path.join(tree, "test", "b"))
    with pytest.raises(UserError, match="different class folders"):
        data.load(tree, cache_dir=str(tmp_path / "c"))


def test_unreadable_image_is_skipped_and_counted(tmp_path, capsys):
    tree = make_image_tree(str(tmp_path), 3, 1, classes=("a", "b"))
    with open(os.path.join(tree, "train", "a", "9999.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    d = data.load(tree, cache_dir=str(tmp_path / "c"))
    assert d.skipped == 1 and len(d.train) == 6
    assert "skipped 1 unreadable" in capsys.readouterr().err


def test_tree_without_train_test_is_a_user_error(tmp_path):
    (tmp_path / "x" / "a").mkdir(parents=True)
    archive = tmp_path / "x.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(tmp_path / "x", arcname="x")
    with pytest.raises(UserError, match="no train/ and test/"):
        data.load(str(archive), cache_dir=str(tmp_path / "c"))


def test_augmentation_shapes_and_determinism():
    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    a = data.augment_batch(images, np.random.default_rng(1), cutout=8)
    b = data.augment_batch(images, np.random.default_rng(1), cutout=8)
    assert a.shape == images.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, images)
    # a crop of the zero-padded image: every output pixel is an input pixel or padding
    plain = data.augment_batch(images, np.random.default_rng(2), pad=0, flip=False)
    np.testing.assert_array_equal(plain, images)


def test_epoch_order_depends_only_on_seed_and_epoch(tiny_tree, tmp_path):
    d = data.load(tiny_tree, cache_dir=str(tmp_path))
    one = [y for _, y in data.epoch_batches(d.train, 32, seed=3, epoch=5)]
    two = [y for _, y in data.epoch_batches(d.train, 32, seed=3, epoch=5)]
    other = [y for _, y in data.epoch_batches(d.train, 32, seed=3, epoch=6)]
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    assert not all(np.array_equal(a, b) for a, b in zip(one, other))
    assert sum(len(y) for y in one) == len(d.train)


def test_representative_dataset_yields_float_training_images(tiny_tree, tmp_path):
    d = data.load(tiny_tree, cache_dir=str(tmp_path))
    samples = list(data.representative_dataset(d.train, num_samples=7)())
    assert len(samples) == 7
    assert samples[0][0].shape == (1, 32, 32, 3) and samples[0][0].dtype == np.float32


@pytest.mark.skipif(not os.path.exists(SHARED_ARCHIVE), reason="../shared/data archive absent")
def test_shared_cifar10_archive():
    d = data.load(SHARED_ARCHIVE, val_split=5000)
    assert d.classes == data.CIFAR10_CLASSES
    assert (len(d.train), len(d.val), len(d.test)) == (45000, 5000, 10000)
    assert np.bincount(d.test.labels).tolist() == [1000] * 10
    assert np.bincount(d.val.labels).tolist() == [500] * 10
