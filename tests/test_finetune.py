"""Fine-tuning a trained model on other images at another size (``--init_from ... --epochs N``,
``--image_size``, ``--freeze_epochs``), and the one resize rule."""
import json
import os

import numpy as np
import pytest

from conftest import REPO, last_line, make_image_tree, run_module

FIVE = tuple(f"kind{i}" for i in range(5))


@pytest.fixture(scope="module")
def five_class_64px(tmp_path_factory):
    """A 5-class folder of 64x64 images (none of them CIFAR's classes), a few of another size
    and shape, which loading must bring to 64x64 by the resize rule."""
    from PIL import Image

    root = make_image_tree(str(tmp_path_factory.mktemp("five")), train_per_class=16,
                           test_per_class=6, classes=FIVE, seed=3)
    for split in ("train", "test"):
        for cls in FIVE:
            folder = os.path.join(root, split, cls)
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                with Image.open(path) as im:
                    big = im.resize((64, 64))
                big.save(path)
            with Image.open(path) as im:  # the last one: wider than tall, another size
                im.resize((96, 72)).save(path.replace(".jpg", "_wide.png"))
    return root


def test_mixed_sizes_are_resized_by_the_one_rule(five_class_64px):
    from PIL import Image

    from fnet_tf.data import datasets as data
    from fnet_tf.device.run_tflite import fit_image, load_image

    dataset = data.load(five_class_64px, image_size=(64, 64))
    assert dataset.image_shape == (64, 64, 3)
    wide = os.path.join(five_class_64px, "train", FIVE[0],
                        sorted(n for n in os.listdir(os.path.join(five_class_64px, "train",
                                                                  FIVE[0])) if "_wide" in n)[0])
    names = sorted(n for n in os.listdir(os.path.join(five_class_64px, "train", FIVE[0])))
    index = names.index(os.path.basename(wide))  # class 0's images come first, in file order
    with Image.open(wide) as im:
        expected = np.asarray(fit_image(im, 64, 64))
    np.testing.assert_array_equal(dataset.train.images[index], expected)
    # the device runner gives the board the same pixels
    np.testing.assert_array_equal(load_image(wide, 64, 64).astype(np.uint8), expected)


def test_fit_image_resizes_the_shorter_side_then_center_crops():
    from PIL import Image

    from fnet_tf.device.run_tflite import fit_image

    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, 30:50] = 255  # a white band in the middle third of a 2:1 image
    out = np.asarray(fit_image(Image.fromarray(pixels), 20, 20))
    assert out.shape == (20, 20, 3)
    assert out[:, 0].max() < 30 and out[:, -1].max() < 30  # the sides were cropped away
    assert out[:, 10].min() > 200                          # the centre kept


def test_augmentation_lengths_scale_with_the_image():
    from fnet_tf.data import datasets as data

    assert data.scaled_to(4, (32, 32, 3)) == 4
    assert data.scaled_to(4, (96, 128, 3)) == 12
    assert data.scaled_to(8, (64, 64, 3)) == 16


def test_macs_at_64_pixels_equal_a_hand_count():
    from fnet_tf.arch import architectures
    from fnet_tf.arch.spec import summarize

    spec = architectures.model_spec("factorizenet", 0, 1.0, image_size=(64, 64))
    # two 3x3 convs a stage (32, 64, 128 filters), 2x2 pooling between stages: 64, 32, 16 px
    hand = (64 * 64 * 9 * (3 * 32 + 32 * 32) + 32 * 32 * 9 * (32 * 64 + 64 * 64)
            + 16 * 16 * 9 * (64 * 128 + 128 * 128) + 128 * 10)
    assert summarize(spec)["macs"] == hand
    assert summarize(architectures.model_spec("factorizenet", 0, 1.0))["macs"] * 4 == hand + 3 * (
        128 * 10)  # 4x the pixels, 4x the conv MACs; the dense layer is the same


def test_odd_sizes_pool_as_keras_does():
    from fnet_tf.arch import architectures
    from fnet_tf.arch.spec import build_model, summarize

    spec = architectures.model_spec("resnet8", 0, 1.0, image_size=(50, 38))
    model = build_model(spec)
    assert summarize(spec)["params"] == model.count_params()
    spec = architectures.model_spec("factorizenet", 3, 1.0, image_size=(25, 25))
    model = build_model(spec)
    assert model.output_shape == (None, 10)
    assert summarize(spec)["params"] == model.count_params()


def test_a_released_model_fine_tunes_at_64_px_and_exports(five_class_64px, tmp_path):
    """The issue's acceptance: a released model fine-tuned on a tiny 5-class folder of 64x64
    images exports a verified full-int8 file, input [1, 64, 64, 3], 5 outputs, which fnet-run
    and fnet-analyze read."""
    run_dir = tmp_path / "ft"
    trained = run_module(["-m", "fnet_tf.train", "--init_from", "zoo:factorizenet-l7",
                          "--data", five_class_64px, "--image_size", "64", "--epochs", "2",
                          "--freeze_epochs", "1", "--qat_epochs", "1", "--batch_size", "16",
                          "--val_split", "0", "--lr", "0.02", "--run_dir", str(run_dir),
                          "--verbose", "0", "--layer_stats=false"])
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "the float weights released with factorizenet-l7" in trained.stdout
    assert "new 5-class classifier" in trained.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["float"]["init_from"] == "zoo:factorizenet-l7"
    assert metrics["float"]["classifier"] == "new 5-class classifier"
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["model"], config["level"], config["image_size"]) == ("factorizenet", 7, [64, 64])
    exported = run_module([os.path.join(REPO, "export", "to_tflite.py"), str(run_dir),
                           "--check_images", "30"])
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "input int8 [1, 64, 64, 3]" in exported.stdout
    from ai_edge_litert.interpreter import Interpreter

    tflite = str(run_dir / "model_int8.tflite")
    interpreter = Interpreter(tflite)
    assert list(interpreter.get_output_details()[0]["shape"]) == [1, 5]
    image = os.path.join(five_class_64px, "test", FIVE[2], "0000.jpg")
    ran = run_module([os.path.join(REPO, "export", "run_tflite.py"), tflite, image])
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert any(cls in ran.stdout for cls in FIVE)  # the labels travel in the file
    analyzed = run_module(["-m", "fnet_tf.analyze", str(run_dir), "--latency_runs", "5",
                           "--out", str(tmp_path / "analysis")])
    assert analyzed.returncode == 0, analyzed.stderr[-2000:]
    report = json.loads((tmp_path / "analysis" / "metrics.json").read_text())
    assert report["num_images"] == 5 * 7  # 6 + the wide one, per class


def test_freeze_body_trains_the_classifier_alone():
    """While frozen only the classifier moves (BN's statistics too stay); afterwards every
    layer trains again, and a layer frozen before (a whitening stem) stays frozen."""
    from fnet_tf.training import finetune
    from fnet_tf.core.backend import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="stem", trainable=False)(inputs)
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(4, 3, name="conv")(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(32, 8, 8, 3)).astype(np.float32)
    labels = keras.utils.to_categorical(rng.integers(0, 3, 32), 3)

    def fit():
        model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
        model.fit(images, labels, batch_size=8, epochs=1, verbose=0)

    start = {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers}
    before = finetune.freeze_body(model)
    fit()
    for name in ("stem", "conv", "bn"):
        for old, new in zip(start[name], model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(old, new)
    assert not np.array_equal(start["logits"][0], model.get_layer("logits").get_weights()[0])
    finetune.restore_trainable(model, before)
    fit()
    assert not np.array_equal(start["conv"][0], model.get_layer("conv").get_weights()[0])
    np.testing.assert_array_equal(start["stem"][0], model.get_layer("stem").get_weights()[0])


def test_a_users_model_gets_a_new_head_and_loses_its_softmax():
    from fnet_tf.training import finetune
    from fnet_tf.core.backend import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="probs")(x))
    start = finetune.users_model_start(model, 5, "theirs.keras")
    assert start.model.output_shape == (None, 5) and start.head.startswith("new 5-class")
    assert start.model.layers[-1].get_config()["activation"] == "linear"
    same = finetune.users_model_start(model, 10, "theirs.keras")
    assert "softmax dropped" in same.head
    probe = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    logits = same.model.predict(probe, verbose=0)  # the same weights, without the softmax
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True),
                               model.predict(probe, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("args, expected", [
    (["--freeze_epochs", "2", "--epochs", "1"], "--freeze_epochs trains a new classifier"),
    (["--image_size", "96x", "--epochs", "1"], "--image_size '96x' is not an image size"),
    (["--image_size", "4", "--epochs", "1"], "--image_size 4,4 is out of range"),
    (["--init_from", "zoo:no-such-model", "--epochs", "1"], "no released model 'no-such-model'"),
    (["--init_from", "zoo:factorizenet-l7", "--model", "resnet8", "--epochs", "1"],
     "--init_from zoo:factorizenet-l7 is model 'factorizenet', not --model 'resnet8'"),
])
def test_fine_tuning_mistakes_are_one_line(args, expected, tiny_tree, tmp_path):
    result = run_module(["-m", "fnet_tf.train", "--data", tiny_tree, "--run_dir",
                         str(tmp_path / "r"), *args])
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in last_line(result.stderr), result.stderr[-500:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_commands_take_a_released_model_by_name(tiny_tree, tmp_path):
    """``fnet-export zoo:NAME --scheme ptq_per_tensor`` quantizes its float weights again;
    ``fnet-analyze zoo:NAME`` measures its INT8 file beside them."""
    exported = run_module([os.path.join(REPO, "export", "to_tflite.py"), "zoo:factorizenet-l7",
                           "--scheme", "ptq_per_tensor", "--data", tiny_tree,
                           "--check_images", "40"], cwd=str(tmp_path))
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (tmp_path / "factorizenet-l7_int8.tflite").is_file()
    assert "scheme ptq_per_tensor" in exported.stdout
    analyzed = run_module(["-m", "fnet_tf.analyze", "zoo:factorizenet-l7", "--data", tiny_tree,
                           "--latency_runs", "5", "--out", str(tmp_path / "a")])
    assert analyzed.returncode == 0, analyzed.stderr[-2000:]
    assert (tmp_path / "a" / "metrics.json").is_file()
