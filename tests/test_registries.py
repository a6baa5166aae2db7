"""Tests generated from the registries: a registered model or quantization scheme is tested
without editing a test. Each pair builds, trains one step (QAT where the scheme trains),
converts to a verified full-integer file and runs in LiteRT on tiny random data.

The default suite runs every scheme with FactorizeNet and the default scheme with the zoo's
headline pair (FactorizeNet, ResNet-8); ``-m slow`` runs the whole product.
"""
import dataclasses

import numpy as np
import pytest

from fnet_tf.arch import architectures, whitening
from fnet_tf.arch.spec import build_model
from fnet_tf.core.errors import UserError
from fnet_tf.quantization.schemes import get_scheme, list_schemes
from fnet_tf.tflite import convert, measure
from fnet_tf.training import qat_plans

MODELS = architectures.list_models()
SCHEMES = list_schemes()
DEFAULT_MODEL, DEFAULT_SCHEME = "factorizenet", "int8"
# the default suite keeps the headline pair (its time is the project's CI budget); the other
# models' pairs run with -m slow (frostnet_cifar and airbench_cifar take 13-37 s each to
# QAT-wrap and convert even at a quarter width, measured on the 2-core VM)
DEFAULT_SUITE_MODELS = {"factorizenet", "resnet8"}
PAIRS = ([pytest.param(m, DEFAULT_SCHEME, id=f"{m}-{DEFAULT_SCHEME}",
                       marks=[] if m in DEFAULT_SUITE_MODELS else [pytest.mark.slow])
          for m in MODELS]
         + [pytest.param(DEFAULT_MODEL, s, id=f"{DEFAULT_MODEL}-{s}") for s in SCHEMES
            if s != DEFAULT_SCHEME]
         + [pytest.param(m, s, id=f"{m}-{s}", marks=pytest.mark.slow) for m in MODELS
            for s in SCHEMES if m != DEFAULT_MODEL and s != DEFAULT_SCHEME])


def _tiny_model(name, classes=4):
    """The registered model at a quarter width (its smallest sensible size), ``classes`` out."""
    spec = dataclasses.replace(architectures.model_spec(name, 0, 0.25), num_classes=classes)
    return build_model(spec)


@pytest.mark.parametrize("model_name,scheme_name", PAIRS)
def test_every_model_and_scheme_trains_converts_and_runs_in_litert(model_name, scheme_name):
    from fnet_tf.core.backend import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3)).astype(np.float32)
    labels = np.arange(8) % 4
    model = _tiny_model(model_name)
    whitening.prepare(model, images.astype(np.uint8))  # the whitened stems, where a model has one
    scheme = get_scheme(scheme_name)
    if scheme.qat and not architectures.model_spec(model_name).meta["qat"]:
        with pytest.raises(UserError, match="QAT cannot quantize layer"):  # declared float-only
            scheme.quantize(model)
        scheme = get_scheme("ptq")  # what the refusal points at
    with scheme.scope():
        trained = scheme.quantize(model)
        if scheme.qat:
            trained.compile(optimizer=keras.optimizers.SGD(1e-3),
                            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
            history = trained.fit(images, labels, batch_size=8, epochs=1, verbose=0)
            assert np.isfinite(history.history["loss"][0])
        content = convert.convert_int8(trained, lambda: ([images[i:i + 1]] for i in range(8)),
                                       scheme)
    stats = measure.graph_stats(content)
    assert stats["problems"] == [], stats["problems"]  # fully int8
    outputs = convert.predict(content, images[:2])
    assert outputs.shape == (2, 4) and np.isfinite(outputs).all()


@pytest.mark.parametrize("name", list(qat_plans.PLANS))
def test_every_qat_plan_derives_its_qat_recipe(name):
    from fnet_tf.training.recipe import Recipe

    plan = qat_plans.get_plan(name)
    float_recipe = Recipe(epochs=30, lr=0.2, warmup_epochs=2.0, lookahead=True)
    qat = plan.qat_recipe(float_recipe, qat_epochs=3)
    assert qat.epochs == 3 and not qat.lookahead
    assert qat.lr == pytest.approx(0.2 / plan.qat_lr_divisor)
    assert qat.warmup_epochs == (2.0 if plan.qat_warmup else 0.0)
    assert plan.qat_recipe(float_recipe, 3, qat_lr=0.05).lr == 0.05
    assert plan.float_epochs(30, 5) == (5 if plan.float_is_warmup else 30)
    if name != "finetune":  # a QAT recipe without QAT epochs is refused in one line
        assert any("--qat_epochs" in p for p in plan.problems(30, 0, None, None, "anneal", True))
