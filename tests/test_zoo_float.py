"""The released float weights, derived from each INT8 file: ``fnet_tf.zoo.keras_model``."""
import os
import shutil
import tarfile
import zipfile

import numpy as np
import pytest

from conftest import SHARED_ARCHIVE
from fnet_tf.release import zoo
from fnet_tf.core import fileio
from fnet_tf.release import float_weights as zoo_float
from fnet_tf.core.errors import UserError

RELEASED = [n for n in zoo.names() if os.path.isfile(zoo.float_weights_path(n))]
needs_zoo = pytest.mark.skipif(not RELEASED, reason="no released float weights")
needs_archive = pytest.mark.skipif(not os.path.isfile(SHARED_ARCHIVE),
                                   reason="../shared/data archive absent")
# one of each kind of layer: grouped convs, a shortcut conv with a bias, depthwise + concat
VARIED = [n for n in ("factorizenet-l3", "resnet8", "frostnet_cifar") if n in RELEASED]


def archive_images(split, per_class):
    """The first ``per_class`` images of each class of the shared archive's ``split``, read
    straight from the archive (decoded as ``fnet_tf.data.datasets`` decodes them), with their labels:
    a few hundred images without decoding all 60,000."""
    from PIL import Image

    from fnet_tf.data.datasets import CIFAR10_CLASSES
    from fnet_tf.device.run_tflite import fit_image

    taken = {c: [] for c in CIFAR10_CLASSES}
    with tarfile.open(SHARED_ARCHIVE, "r:gz") as archive:
        for member in archive:
            parts = member.name.split("/")  # cifar10/<split>/<class>/NNNN.jpg
            if not (member.isfile() and len(parts) == 4 and parts[1] == split
                    and parts[2] in taken and len(taken[parts[2]]) < per_class):
                continue
            with Image.open(archive.extractfile(member)) as im:
                taken[parts[2]].append(np.asarray(fit_image(im, 32, 32), np.uint8))
            if all(len(found) == per_class for found in taken.values()):
                break
    images = np.concatenate([np.stack(taken[c]) for c in CIFAR10_CLASSES])
    labels = np.repeat(np.arange(len(CIFAR10_CLASSES)), per_class)
    return images, labels


def int8_top1(name, images):
    from fnet_tf.tflite import convert as export

    with open(zoo.load(name), "rb") as f:
        return export.predict(f.read(), images).argmax(1)


def _one_line(error):
    assert "\n" not in str(error.value), str(error.value)
    return str(error.value)


@needs_zoo
@pytest.mark.parametrize("name", RELEASED)
def test_every_released_model_builds_and_predicts(name):
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    assert zoo.keras_model(name).predict(images, verbose=0).shape == (2, 10)


@needs_zoo
@pytest.mark.parametrize("name", VARIED)
def test_a_new_classifier_a_feature_map_and_another_image_size(name):
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    released = zoo.keras_model(name)
    five = zoo.keras_model(name, num_classes=5)
    assert five.predict(images, verbose=0).shape == (2, 5)
    # a fresh head drawn from the seed, on the released features
    assert np.array_equal(five.get_layer("logits").get_weights()[0],
                          zoo.keras_model(name, num_classes=5).get_layer("logits").get_weights()[0])
    assert not np.array_equal(five.get_layer("logits").get_weights()[0], zoo.keras_model(
        name, num_classes=5, seed=1).get_layer("logits").get_weights()[0])
    assert not np.any(five.get_layer("logits").get_weights()[1])
    for layer in released.layers:
        if layer.name != "logits":
            for a, b in zip(layer.get_weights(), five.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)
    features = zoo.keras_model(name, include_top=False)
    maps = features.predict(images, verbose=0)
    assert maps.ndim == 4 and maps.shape[0] == 2
    assert "logits" not in [layer.name for layer in features.layers]
    np.testing.assert_allclose(released.get_layer("logits")(maps.mean(axis=(1, 2))).numpy(),
                               released.predict(images, verbose=0), rtol=1e-4, atol=1e-4)
    large = zoo.keras_model(name, image_size=(64, 64))
    assert large.input_shape == (None, 64, 64, 3)
    assert large.predict(np.zeros((2, 64, 64, 3), np.float32), verbose=0).shape == (2, 10)


@needs_zoo
def test_bad_arguments_are_one_line_errors():
    name = RELEASED[0]
    for kwargs, needle in ((dict(num_classes=0), "num_classes"),
                           (dict(image_size=64), "image_size"),
                           (dict(image_size=(64, 64.5)), "image_size")):
        with pytest.raises(UserError, match=needle) as error:
            zoo.keras_model(name, **kwargs)
        _one_line(error)
    with pytest.raises(UserError, match=f"choose one of .*{name}") as error:
        zoo.keras_model("no-such-model")
    _one_line(error)


@needs_zoo
@needs_archive
def test_the_released_weights_agree_with_the_int8_file():
    name = "factorizenet-l3" if "factorizenet-l3" in RELEASED else RELEASED[0]
    images, labels = archive_images("test", 30)
    float_top1 = zoo.keras_model(name).predict(images.astype(np.float32), verbose=0).argmax(1)
    agreement = np.mean(float_top1 == int8_top1(name, images))
    print(f"{name}: top-1 agreement {100 * agreement:.1f}% on {len(images)} test images, "
          f"float top-1 {100 * np.mean(float_top1 == labels):.1f}%")
    assert agreement >= 0.97


@needs_zoo
@needs_archive
def test_derived_bn_adds_the_folded_bias_in_train_mode_too():
    """The file with unnamed weight tensors (ternary_hybrid emits no FakeQuant op) and grouped
    convs, derived again: inference agrees with the INT8 file, and on the calibration batch
    itself train-mode BN (the batch's own statistics) computes what inference does."""
    from fnet_tf.arch.architectures import model_spec

    name = next((n for n in ("factorizenet-l3-hybrid60", "factorizenet-l3") if n in RELEASED),
                RELEASED[0])
    card = zoo.metrics(name)
    calibration, _ = archive_images("train", 30)
    model = zoo_float.derive(zoo.load(name), model_spec(card["model"], card["level"],
                                                        card["width"]), calibration)
    test, _ = archive_images("test", 30)
    float_top1 = model.predict(test.astype(np.float32), verbose=0).argmax(1)
    assert np.mean(float_top1 == int8_top1(name, test)) >= 0.97
    batch = calibration.astype(np.float32)
    inference = model(batch, training=False).numpy()
    np.testing.assert_allclose(model(batch, training=True).numpy(), inference,
                               atol=1e-3 * np.abs(inference).max())


@needs_zoo
def test_a_file_of_another_model_is_refused():
    from fnet_tf.arch.architectures import model_spec

    images = np.zeros((4, 32, 32, 3), np.uint8)
    name = RELEASED[0]
    card = zoo.metrics(name)
    other = "resnet8" if card["model"] != "resnet8" else "factorizenet"
    with pytest.raises(UserError, match="another model") as error:
        zoo_float.derive(zoo.load(name), model_spec(other), images)
    _one_line(error)
    narrower = model_spec(card["model"], card["level"], 0.25)
    with pytest.raises(UserError, match="does not fit|another model") as error:
        zoo_float.derive(zoo.load(name), narrower, images)
    _one_line(error)


def _npz_header_only(path, shape):
    """An .npz whose one array declares ``shape`` of float32 and holds nothing."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("b0_conv/0.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return path


@needs_zoo
def test_a_malformed_or_oversized_weights_file_is_a_one_line_error(tmp_path, monkeypatch):
    name = "resnet8" if "resnet8" in RELEASED else RELEASED[0]
    folder = tmp_path / name
    folder.mkdir()
    for file in (zoo.MODEL_FILE, zoo.METRICS):
        shutil.copyfile(os.path.join(zoo.zoo_dir(), name, file), folder / file)
    monkeypatch.setenv("FNET_TF_ZOO", str(tmp_path))
    weights = folder / zoo_float.FILE
    with pytest.raises(UserError, match="no float weights yet") as error:
        zoo.keras_model(name)
    _one_line(error)
    weights.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UserError, match="sha256 differs") as error:  # not the recorded file
        zoo.keras_model(name)
    _one_line(error)
    card = fileio.read_json(str(folder / zoo.METRICS))
    del card["float_weights"]  # no recorded sha256: the file's own checks answer
    fileio.write_json(str(folder / zoo.METRICS), card)
    with pytest.raises(UserError, match="corrupt") as error:
        zoo.keras_model(name)
    _one_line(error)
    _npz_header_only(weights, (1 << 28, 16))  # declares 16 GiB
    with pytest.raises(UserError, match="refusing to decompress") as error:
        zoo_float.read(str(weights))
    _one_line(error)
    np.savez(weights, **{"b0_conv/0": np.array(["text"])})
    with pytest.raises(UserError, match="not float weights") as error:
        zoo_float.read(str(weights))
    _one_line(error)
    np.savez(weights, **{"b0_conv/0": np.zeros((1, 1, 3, 2), np.float32)})
    with pytest.raises(UserError, match="b0_conv") as error:  # a shape of another model
        zoo.keras_model(name)
    _one_line(error)


@pytest.mark.slow
@needs_zoo
@needs_archive
def test_each_cards_float_top1_is_re_measured_from_the_released_weights():
    """The acceptance check: every card's float top-1 of its released float weights, measured
    again on the whole test split, within 0.1 point."""
    from fnet_tf.data import datasets as data

    test = data.load(SHARED_ARCHIVE).test
    for name in RELEASED:
        recorded = zoo.metrics(name)["float_weights"]
        assert recorded["test_images"] == len(test)
        scores = zoo.keras_model(name).predict(test.images.astype(np.float32), batch_size=250,
                                               verbose=0)
        measured = float(np.mean(scores.argmax(1) == test.labels))
        print(f"{name}: float top-1 {100 * measured:.2f}% (card: "
              f"{100 * recorded['float_accuracy']:.2f}%)")
        assert abs(measured - recorded["float_accuracy"]) <= 0.001, name
