"""Epoch checkpoints: newest whole one wins; corrupt ones are skipped or refused."""
import os

import numpy as np
import pytest

from fnet_tf.arch import architectures
from fnet_tf.core.backend import keras
from fnet_tf.run.checkpoints import EpochCheckpoints
from fnet_tf.core.errors import UserError


def _model_and_optimizer():
    model = architectures.create_model("factorizenet", 5, width=0.25)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def test_save_restore_roundtrip_and_keep(tmp_path):
    model, opt = _model_and_optimizer()
    ck = EpochCheckpoints(str(tmp_path), keep=2)
    for epoch in (1, 2, 3):
        ck.save(epoch, model, opt)
    assert sorted(os.listdir(tmp_path)) == ["epoch-0002", "epoch-0003"]
    epoch, path = ck.latest()
    assert epoch == 3
    fresh, fresh_opt = _model_and_optimizer()
    ck.restore(path, fresh, fresh_opt)
    for a, b in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_corrupt_newest_is_skipped(tmp_path, capsys):
    model, opt = _model_and_optimizer()
    ck = EpochCheckpoints(str(tmp_path))
    ck.save(1, model, opt)
    ck.save(2, model, opt)
    data = tmp_path / "epoch-0002" / "ckpt.data-00000-of-00001"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert ck.latest()[0] == 1
    assert "skipping corrupt checkpoint" in capsys.readouterr().err


def test_all_corrupt_is_a_user_error(tmp_path):
    model, opt = _model_and_optimizer()
    ck = EpochCheckpoints(str(tmp_path))
    ck.save(1, model, opt)
    os.remove(tmp_path / "epoch-0001" / "meta.json")
    with pytest.raises(UserError, match="every checkpoint"):
        ck.latest()


def test_checkpoint_of_another_model_is_refused(tmp_path):
    model, opt = _model_and_optimizer()
    ck = EpochCheckpoints(str(tmp_path))
    path = ck.save(1, model, opt)
    other = architectures.create_model("resnet8")
    other_opt = keras.optimizers.SGD(0.1, momentum=0.9)
    with pytest.raises(UserError, match="does not fit this model"):
        ck.restore(path, other, other_opt)


def test_empty_directory_means_start_from_scratch(tmp_path):
    assert EpochCheckpoints(str(tmp_path / "none")).latest() == (0, None)
