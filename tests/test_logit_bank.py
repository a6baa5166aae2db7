"""The teacher-logit bank (``fnet_tf.training.logit_bank``): computed once, reused, the student's view."""
import numpy as np
import pytest

from fnet_tf.data import datasets as data
from fnet_tf.training.logit_bank import LogitBank
from fnet_tf.training.recipe import Recipe


def _teacher(tmp_path):
    from fnet_tf.core.backend import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    path = str(tmp_path / "teacher.keras")
    model.save(path)
    return model, path


def test_bank_holds_the_teachers_flip_tta_logits_of_the_students_view(tmp_path):
    model, path = _teacher(tmp_path)
    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (40, 32, 32, 3)).astype(np.uint8),
                       rng.integers(0, 3, 40).astype(np.int32))
    recipe = Recipe(batch_size=16, cutout=8)
    bank = LogitBank(model, path, split, "tiny", recipe, 2, "flip", str(tmp_path / "cache"))
    images, labels, logits = bank.epoch(0, seed=5)
    expected = 0.5 * (model.predict(images.astype(np.float32), verbose=0)
                      + model.predict(images[:, :, ::-1].astype(np.float32), verbose=0))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    # each image keeps its own label through the augmentation and the student's order
    assert sorted(labels.tolist()) == sorted(split.labels.tolist())
    again, _, again_logits = bank.epoch(2, seed=5)  # epoch 2 reuses bank epoch 0 ...
    assert sorted(map(bytes, again)) == sorted(map(bytes, images))
    assert not np.array_equal(again, images)        # ... in another order

    def no_teacher(*args, **kwargs):
        raise AssertionError("the bank recomputed logits it holds")

    model.predict = no_teacher  # a second student with the same settings reads the files
    other = LogitBank(model, path, split, "tiny", recipe, 2, "flip", str(tmp_path / "cache"))
    _, _, reread = other.epoch(0, seed=5)
    np.testing.assert_array_equal(reread, logits)
    assert other.folder == bank.folder


def test_another_augmentation_is_another_bank(tmp_path):
    model, path = _teacher(tmp_path)
    split = data.Split(np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8, np.int32))
    a = LogitBank(model, path, split, "tiny", Recipe(cutout=0), 1, "none", str(tmp_path))
    b = LogitBank(model, path, split, "tiny", Recipe(cutout=8), 1, "none", str(tmp_path))
    c = LogitBank(model, path, split, "tiny", Recipe(cutout=0), 1, "flip", str(tmp_path))
    assert len({a.folder, b.folder, c.folder}) == 3


def test_an_oversized_cache_file_is_recomputed_not_read(tmp_path, monkeypatch):
    """A bank file larger than its array plus a header is not read (the read is bounded)."""
    import os

    model, path = _teacher(tmp_path)
    split = data.Split(np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8, np.int32))
    bank = LogitBank(model, path, split, "tiny", Recipe(batch_size=8), 1, "none", str(tmp_path))
    _, _, logits = bank.epoch(0, seed=0)
    cached = os.path.join(bank.folder, "epoch_0000.npy")
    with open(cached, "wb") as f:  # a huge array where 8 x 3 logits belong
        np.save(f, np.zeros((100_000, 3), np.float32))

    def no_load(*args, **kwargs):
        raise AssertionError("an oversized cache file was deserialized")

    monkeypatch.setattr(np, "load", no_load)
    _, _, again = bank.epoch(0, seed=0)
    np.testing.assert_allclose(again, logits, rtol=1e-6)
    assert os.path.getsize(cached) < 1000  # rewritten with the right logits


def test_a_mirrored_bank_flips_about_half_its_views_with_their_own_logits(tmp_path):
    """With flip-TTA logits, mirroring a view keeps its logit right: the student's mirrored views
    carry the teacher's logits of the mirror, and each epoch draws a new half."""
    model, path = _teacher(tmp_path)
    rng = np.random.default_rng(1)
    split = data.Split(rng.integers(0, 256, (64, 32, 32, 3)).astype(np.uint8),
                       rng.integers(0, 3, 64).astype(np.int32))
    recipe = Recipe(batch_size=16)
    plain = LogitBank(model, path, split, "tiny", recipe, 1, "flip", str(tmp_path))
    mirrored = LogitBank(model, path, split, "tiny", recipe, 1, "flip", str(tmp_path), mirror=True)
    assert mirrored.folder == plain.folder  # the same teacher work
    views, _, _ = plain.epoch(0, seed=3)
    images, _, logits = mirrored.epoch(0, seed=3)
    flipped = [not np.array_equal(a, b) for a, b in zip(images, views)]
    assert all(np.array_equal(a, b[:, ::-1]) for a, b, f in zip(images, views, flipped) if f)
    assert 16 <= sum(flipped) <= 48
    np.testing.assert_allclose(logits, model.predict(images[:, :, ::-1].astype(np.float32),
                                                     verbose=0) * 0.5
                               + model.predict(images.astype(np.float32), verbose=0) * 0.5,
                               rtol=1e-5, atol=1e-5)
    later, _, _ = mirrored.epoch(1, seed=3)  # bank epoch 0 again, another half mirrored
    assert sorted(map(bytes, later)) != sorted(map(bytes, images))


def test_a_bank_without_flip_tta_refuses_to_mirror(tmp_path):
    model, path = _teacher(tmp_path)
    split = data.Split(np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8, np.int32))
    with pytest.raises(ValueError, match="flip"):
        LogitBank(model, path, split, "tiny", Recipe(), 1, "none", str(tmp_path), mirror=True)


def test_fill_computes_only_the_bank_epochs_the_cache_lacks(tmp_path):
    """tools/teacher_bank.py fills a bank beside its student: what is there is not redone, and
    a student reads the filled epochs without running the teacher."""
    model, path = _teacher(tmp_path)
    split = data.Split(np.zeros((8, 32, 32, 3), np.uint8), np.zeros(8, np.int32))
    bank = LogitBank(model, path, split, "tiny", Recipe(batch_size=8), 3, "none", str(tmp_path))
    bank.epoch(1, seed=0)  # a student computed bank epoch 1
    assert bank.fill([2, 1, 0]) == [2, 0]
    assert bank.fill(range(3)) == []
    with pytest.raises(ValueError, match="outside"):
        bank.fill([3])

    def no_teacher(*args, **kwargs):
        raise AssertionError("the student recomputed a filled bank epoch")

    model.predict = no_teacher
    for epoch in range(3):
        bank.epoch(epoch, seed=0)


def test_the_bank_epochs_a_fill_names_are_read_or_refused_in_one_line():
    from fnet_tf.core.errors import UserError
    from fnet_tf.training.logit_bank import parse_bank_epochs

    assert parse_bank_epochs(None, 3) == [0, 1, 2]
    assert parse_bank_epochs("4-6,1", 20) == [4, 5, 6, 1]
    with pytest.raises(UserError, match="has 20"):
        parse_bank_epochs("19-20", 20)
    with pytest.raises(UserError, match="A-B"):
        parse_bank_epochs("x", 20)
