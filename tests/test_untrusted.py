"""Files from others: model files that carry code, decompression bombs, low-agreement exports.

Each hostile input must get exit code 2 and one ``error:`` line (no traceback), run none of its
code (the marker file a Lambda or a SavedModel function would write never appears), stay under
500 MB of peak memory, and leave nothing half-written behind.
"""
import io
import os
import shutil
import sys
import tarfile
import zipfile

import numpy as np
import pytest

from conftest import REPO, run_module

TO_TFLITE = os.path.join(REPO, "export", "to_tflite.py")
RUN_TFLITE = os.path.join(REPO, "export", "run_tflite.py")
RELEASED = os.path.join(REPO, "models", "factorizenet-l7", "model_int8.tflite")
MAX_PEAK_MB = 500
BOMB_BYTES = 1 << 30  # what each bomb expands to: 1 GiB of zeros, ~1 MB compressed


def _one_line_error(result, *needles):
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# The measured command runs under a small launcher: a child forked straight from this (large,
# TensorFlow-holding) pytest process would count the parent's pages in its peak RSS.
_LAUNCHER = ("import os, subprocess, sys\n"
             "child = subprocess.Popen(sys.argv[1:])\n"
             "_, status, usage = os.wait4(child.pid, 0)\n"
             "sys.stderr.write(f'\\npeak-rss-kb {usage.ru_maxrss}\\n')\n"
             "sys.exit(os.waitstatus_to_exitcode(status))\n")


def _peak_mb(args, env=None):
    """(result, peak RSS in MB) of ``python ARGS``: wait4 on that process, by the launcher."""
    result = run_module(["-c", _LAUNCHER, sys.executable, *args], env=env)
    lines = result.stderr.rstrip().splitlines()
    assert lines and lines[-1].startswith("peak-rss-kb "), result.stderr[-2000:]
    peak = int(lines[-1].split()[1]) / 1024  # Linux: kilobytes
    result.stderr = "\n".join(lines[:-1]) + "\n"
    return result, peak


# --- models that carry code ---------------------------------------------------------------

def _marker_lambda(marker):
    """A Lambda whose code writes ``marker``: self-contained, as an attacker's file would be."""
    return eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]")


def _model_with(keras, layer):
    inputs = keras.Input((32, 32, 3))
    x = layer(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Model files whose loading would write ``marker`` (it is deleted after saving them)."""
    from fnet_tf.core.backend import keras, tf

    root = tmp_path_factory.mktemp("hostile")
    marker = root / "MARKER"
    evil = _model_with(keras, keras.layers.Lambda(_marker_lambda(marker), name="evil_lambda"))
    files = {"h5": root / "evil.h5", "keras": root / "evil.keras", "keras_tf": root / "evil_keras_sm"}
    evil.save(files["h5"])
    evil.save(files["keras"])
    evil.save(files["keras_tf"], save_format="tf")

    class WritesFile(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, x):
            tf.io.write_file(str(marker), "ran")
            return tf.reduce_mean(x, [1, 2])

    files["saved_model"] = root / "writes_file_sm"
    tf.saved_model.save(WritesFile(), str(files["saved_model"]))

    @keras.utils.register_keras_serializable(package="someone")
    class Doubles(keras.layers.Layer):
        def call(self, x):
            return 2.0 * x

    files["custom"] = root / "custom.keras"
    _model_with(keras, Doubles(name="doubles")).save(files["custom"])
    benign = _model_with(keras, keras.layers.Lambda(lambda x: x * 1.0, name="my_scale"))
    files["benign_lambda"] = root / "mine.keras"
    benign.save(files["benign_lambda"])
    if marker.exists():
        marker.unlink()  # saving traced the Lambda once; from here on nothing may run it
    return files, marker


@pytest.mark.parametrize("kind,needle", [
    ("h5", "'evil_lambda' is a Lambda layer"), ("keras", "'evil_lambda' is a Lambda layer"),
    ("keras_tf", "'evil_lambda' is a Lambda layer"), ("saved_model", "WriteFile"),
    ("custom", "'doubles' has class Doubles"),
])
def test_model_files_with_code_are_refused_and_never_run(hostile, kind, needle, tiny_tree):
    files, marker = hostile
    result = run_module([TO_TFLITE, str(files[kind]), "--data", tiny_tree, "--check_images", "8"])
    line = _one_line_error(result, needle, "--trust_model_code")
    assert ("Python code" in line) or ("file-system" in line)
    assert not marker.exists(), "the file's code ran"
    assert not list(files[kind].parent.glob("*_int8.tflite"))


def test_a_foreign_run_directory_holding_a_lambda_is_refused(hostile, tmp_path):
    from fnet_tf.run.rundir import RunDir

    files, marker = hostile
    run = RunDir(tmp_path / "foreign")
    run.bind_config({"model": "factorizenet", "level": 7, "data": "nowhere"})
    shutil.copy(files["keras"], run.file("model_float.keras"))
    run.complete("float", [run.file("model_float.keras")])
    result = run_module([TO_TFLITE, run.path, "--data", str(tmp_path), "--check_images", "0"])
    _one_line_error(result, "Lambda", "--trust_model_code")
    assert not marker.exists()


def test_trust_model_code_loads_a_model_you_made(hostile, tiny_tree):
    files, _ = hostile
    out = files["benign_lambda"].parent / "mine_int8.tflite"
    refused = run_module([TO_TFLITE, str(files["benign_lambda"]), "--data", tiny_tree])
    _one_line_error(refused, "'my_scale' is a Lambda layer")
    result = run_module([TO_TFLITE, str(files["benign_lambda"]), "--data", tiny_tree,
                         "--trust_model_code", "--check_images", "16", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file()


def test_keras_safe_mode_refusal_says_unsafe_not_corrupt(hostile, monkeypatch):
    from fnet_tf.run import artifacts
    from fnet_tf.run import model_safety
    from fnet_tf.core.errors import UserError

    files, marker = hostile
    monkeypatch.setattr(model_safety, "check_model_file", lambda path: 0)  # only Keras is left
    with pytest.raises(UserError, match="unsafe to load") as caught:
        artifacts.load_keras_model(str(files["keras"]))
    assert "corrupt" not in str(caught.value)
    assert not marker.exists()


def test_our_own_models_and_keras_applications_pass_the_inspection(tmp_path):
    from fnet_tf.arch import architectures
    from fnet_tf.run import model_safety
    from fnet_tf.core.backend import keras

    ours = architectures.create_model("factorizenet", level=3, width=0.25)
    theirs = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=10,
                                            alpha=0.35)
    for name, model in (("ours", ours), ("mobilenet", theirs)):
        for suffix, kwargs in ((".keras", {}), (".h5", {}), ("_sm", {"save_format": "tf"})):
            path = str(tmp_path / f"{name}{suffix}")
            model.save(path, **kwargs)
            assert model_safety.check_model_file(path) > 10, path


# --- decompression bombs --------------------------------------------------------------------

def _write_zeros(stream, nbytes, chunk=1 << 22):
    block = bytes(chunk)
    for start in range(0, nbytes, chunk):
        stream.write(block[:min(chunk, nbytes - start)])


def _tflite_with_labels_bomb(path):
    from fnet_tf.tflite import convert as export

    with open(RELEASED, "rb") as f:
        content = f.read()
    flatbuffer = content[:len(content) - len(_appended(content))]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open(export.LABELS_FILE, "w", force_zip64=True) as member:
            _write_zeros(member, BOMB_BYTES)
    path.write_bytes(flatbuffer + buf.getvalue())
    return path


def _appended(content):
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        start = min(info.header_offset for info in z.infolist())
    return content[start:]


def _npz_bomb(path, name="images"):
    header = {"descr": "|u1", "fortran_order": False,
              "shape": (BOMB_BYTES // 3072, 32, 32, 3)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open(f"{name}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            _write_zeros(member, BOMB_BYTES // 3072 * 3072)
    return path


def test_a_labels_bomb_in_a_tflite_is_refused_in_bounded_memory(tmp_path, tiny_tree):
    bomb = _tflite_with_labels_bomb(tmp_path / "model.tflite")
    assert bomb.stat().st_size < 8 << 20
    image = os.path.join(tiny_tree, "test", "class0", "0000.jpg")
    result, peak = _peak_mb([RUN_TFLITE, str(bomb), image])
    _one_line_error(result, "labels.txt", "1 MB limit")
    print(f"labels bomb ({bomb.stat().st_size / 2**20:.1f} MB -> 1 GiB): peak {peak:.0f} MB")
    assert peak < MAX_PEAK_MB


def test_a_pixel_bomb_image_is_refused_before_decoding(tmp_path):
    from PIL import Image

    bomb = tmp_path / "huge.png"
    Image.new("L", (9000, 6000)).save(bomb)  # 54 M pixels of zeros: a few hundred KB
    result, peak = _peak_mb([RUN_TFLITE, RELEASED, str(bomb)])
    _one_line_error(result, "huge.png", "9000x6000 pixels")
    print(f"pixel bomb ({bomb.stat().st_size / 2**10:.0f} KB -> 54 M pixels): peak {peak:.0f} MB")
    assert peak < MAX_PEAK_MB


def test_a_batch_bomb_is_refused_before_decompressing(tmp_path):
    bomb = _npz_bomb(tmp_path / "batch.npz")
    result, peak = _peak_mb([RUN_TFLITE, RELEASED, "--batch", str(bomb)])
    _one_line_error(result, "batch.npz", "--max_batch_mb limit of 256 MB")
    print(f"npz bomb ({bomb.stat().st_size / 2**20:.1f} MB -> 1 GiB): peak {peak:.0f} MB")
    assert peak < MAX_PEAK_MB
    reference = _npz_bomb(tmp_path / "reference.npz")  # --compare-with is bounded the same way
    ok_batch = tmp_path / "ok.npz"
    np.savez(ok_batch, images=np.zeros((2, 32, 32, 3), np.uint8))
    result = run_module([RUN_TFLITE, RELEASED, "--batch", str(ok_batch), "--compare-with",
                         str(reference)])
    _one_line_error(result, "reference.npz", "limit")


def test_a_batch_within_the_limit_still_runs(tmp_path):
    batch = tmp_path / "ok.npz"
    np.savez_compressed(batch, images=np.full((3, 32, 32, 3), 128, np.uint8),
                        labels=np.array([0, 1, 2]))
    result = run_module([RUN_TFLITE, RELEASED, "--batch", str(batch), "--max_batch_mb", "1"])
    assert result.returncode == 0, result.stderr
    assert "3 images: top-1 accuracy" in result.stdout
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _one_line_error(run_module([RUN_TFLITE, RELEASED, "--batch", str(pickled)]),
                    "Python objects")


class _Zeros:
    """A file of ``size`` zero bytes that is never in memory at once."""

    def __init__(self, size):
        self.left = size

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def _tar_bomb(path):
    with tarfile.open(path, "w:gz") as t:
        for split in ("train", "test"):
            info = tarfile.TarInfo(f"bomb/{split}/a/0000.jpg")
            info.size = BOMB_BYTES // 2
            t.addfile(info, _Zeros(info.size))
    return path


def _zip_bomb(path):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for split in ("train", "test"):
            with z.open(f"bomb/{split}/a/0000.jpg", "w", force_zip64=True) as member:
                _write_zeros(member, BOMB_BYTES // 2)
    return path


@pytest.mark.parametrize("make", [_tar_bomb, _zip_bomb], ids=["tar.gz", "zip"])
def test_a_dataset_archive_bomb_is_refused_before_extracting(tmp_path, make):
    bomb = make(tmp_path / ("bomb.tar.gz" if make is _tar_bomb else "bomb.zip"))
    cache = tmp_path / "cache"
    result, peak = _peak_mb(["-c", "import sys; from fnet_tf.core import cli; from fnet_tf.data import datasets as data; "
                             "from fnet_tf.core.errors import UserError\n"
                             "try: data.load(sys.argv[1], cache_dir=sys.argv[2])\n"
                             "except UserError as e: cli._fail(e)", str(bomb), str(cache)])
    _one_line_error(result, bomb.name, "200x the archive's own size")
    print(f"{bomb.name} ({bomb.stat().st_size / 2**20:.1f} MB -> 1 GiB): peak {peak:.0f} MB")
    assert peak < MAX_PEAK_MB
    assert not (cache / "extracted").exists() or not os.listdir(cache / "extracted")
    # the training CLI says the same, in one line, and leaves no cache behind
    train = run_module(["-m", "fnet_tf.train", "--data", str(bomb), "--cache_dir", str(cache),
                        "--run_dir", str(tmp_path / "run"), "--val_split", "0", "--epochs", "1"])
    _one_line_error(train, "200x the archive's own size")
    assert not (cache / "extracted").exists() or not os.listdir(cache / "extracted")


def test_archives_with_links_or_more_than_the_free_space_are_refused(tmp_path, tiny_tree,
                                                                     monkeypatch):
    from fnet_tf.data import datasets as data
    from fnet_tf.core.errors import UserError

    linked = tmp_path / "linked.tar.gz"
    with tarfile.open(linked, "w:gz") as t:
        t.add(tiny_tree, arcname="tiny")
        info = tarfile.TarInfo("tiny/train/class0/link.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(info)
    with pytest.raises(UserError, match="holds a symlink"):
        data.load(str(linked), cache_dir=str(tmp_path / "cache"))

    zipped = tmp_path / "linked.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        info = zipfile.ZipInfo("tiny/train/class0/link.jpg")
        info.external_attr = (0o120777 << 16)
        z.writestr(info, "/etc/passwd")
    with pytest.raises(UserError, match="holds a symlink"):
        data.load(str(zipped), cache_dir=str(tmp_path / "cache"))

    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(tiny_tree, arcname="tiny")
    monkeypatch.setattr(data, "_free_bytes", lambda directory: data.FREE_SPACE_RESERVE + 1000)
    with pytest.raises(UserError, match="free in the cache"):
        data.load(str(archive), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "extracted").exists()


def test_keras3_weights_bomb_is_refused(tmp_path):
    from fnet_tf.core.errors import UserError
    from fnet_tf.run.portable_weights import read_weights

    bomb = _npz_bomb(tmp_path / "float_weights.npz", name="b0_conv/0")
    with pytest.raises(UserError, match="refusing to decompress"):
        read_weights(str(bomb), max_bytes=64 << 20)


# --- the exporter's agreement guard ---------------------------------------------------------

@pytest.fixture(scope="module")
def low_agreement_model(tmp_path_factory):
    """A model whose logits differ by far less than one int8 step of its output: one logit is
    pinned at -1000, so the output scale is ~4 and the other nine logits (spread ~0.01) all
    round to the same int8 value. Its INT8 file picks class 0 for every image."""
    from fnet_tf.core.backend import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, logits)
    kernel, bias = model.get_layer("logits").get_weights()
    bias[9] = -1000.0
    model.get_layer("logits").set_weights([kernel * 1e-3, bias])
    path = tmp_path_factory.mktemp("low") / "low.keras"
    model.save(path)
    return path


def test_low_agreement_export_warns_with_the_worst_layers(low_agreement_model, tiny_tree):
    result = run_module([TO_TFLITE, str(low_agreement_model), "--data", tiny_tree,
                         "--check_images", "80"])
    assert result.returncode == 0, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "lowest INT8 SQNR" in warnings[0], result.stderr[-2000:]
    assert "python -m fnet_tf.analyze" in warnings[0] and "dB" in warnings[0]
    assert low_agreement_model.with_name("low_int8.tflite").is_file()


def test_min_agreement_fails_and_writes_nothing(low_agreement_model, tiny_tree, tmp_path):
    out = tmp_path / "never.tflite"
    result = run_module([TO_TFLITE, str(low_agreement_model), "--data", tiny_tree,
                         "--check_images", "80", "--min_agreement", "0.9", "--out", str(out)])
    _one_line_error(result, "below --min_agreement 0.9", "nothing written")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    bad = run_module([TO_TFLITE, str(low_agreement_model), "--data", tiny_tree,
                      "--min_agreement", "1.5"])
    _one_line_error(bad, "--min_agreement")


def test_a_trained_model_exports_without_the_warning(qat_run):
    result = run_module([TO_TFLITE, qat_run, "--check_images", "80", "--min_agreement", "0.9",
                         "--out", os.path.join(qat_run, "guarded_int8.tflite")])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: the INT8 file agrees" not in result.stderr


def test_a_crafted_deeply_nested_config_is_one_line(tmp_path):
    from fnet_tf.run import model_safety
    from fnet_tf.core.errors import UserError

    path = tmp_path / "deep.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="deep.keras"):
        model_safety.check_model_file(str(path))


# --- run directories from others ------------------------------------------------------------

def _foreign_run(path):
    """A run directory someone else made: a finished float step (its model file a stand-in that
    nothing here loads), one history row and metrics. At ``OUT/trials/base``, so both
    ``fnet_tf.train --run_dir`` and ``fnet_tf.tune --report --out OUT`` read it."""
    from fnet_tf.run.rundir import RunDir

    run = RunDir(path)
    run.bind_config({"model": "factorizenet", "level": 0})
    with open(run.file("model_float.keras"), "wb") as f:
        f.write(b"a stand-in: never loaded")
    run.complete("float", [run.file("model_float.keras")])
    run.append_history({"phase": "float", "epoch": 1, "val_accuracy": "0.5", "seconds": "1.0"})
    run.update_metrics("float", {"val_accuracy": 0.5, "mean_epoch_seconds": 1.0})
    return run


def _outside(run):
    """A file beside the run directory (what a hostile run.json points at)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(run.path))), "outside")
    with open(path, "w") as f:
        f.write("someone's private file\n")
    return path


def _with_artifact(rel):
    def write(run):
        from fnet_tf.core import fileio

        target = _outside(run)
        rel_path = rel(run, target) if callable(rel) else rel
        fileio.write_json(run.file("run.json"), {"steps": {"float": {"artifacts": {
            rel_path: fileio.sha256_file(target)}}}})
    return write


def _symlink_out(run):
    from fnet_tf.core import fileio

    target = _outside(run)
    os.remove(run.file("model_float.keras"))
    os.symlink(target, run.file("model_float.keras"))
    fileio.write_json(run.file("run.json"), {"steps": {"float": {"artifacts": {
        "model_float.keras": fileio.sha256_file(target)}}}})


def _write(name, content):
    def write(run):
        with open(run.file(name), "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
    return write


def _oversized(name, limit):
    def write(run):
        from fnet_tf.core import fileio

        with open(run.file(name), "ab") as f:
            f.truncate(getattr(fileio, limit) + 1)  # sparse: no disk, no time
    return write


_NESTED = "[" * 100_000 + "]" * 100_000
_DIGEST = "0" * 64

# (id, corruption, command: train / tune / export, words the one error line holds)
HOSTILE_RUNS = [
    ("manifest-list", _write("run.json", "[]"), "train", ("run.json", "not an object")),
    ("manifest-huge", _oversized("run.json", "JSON_LIMIT"), "train", ("run.json", "16 MB limit")),
    ("manifest-no-steps", _write("run.json", '{"steps": [1]}'), "train", ("run.json", "'steps'")),
    ("artifact-dotdot", _with_artifact("../../../outside"), "train",
     ("run.json", "outside the run directory")),
    ("artifact-absolute", _with_artifact(lambda run, target: target), "export",
     ("run.json", "outside the run directory")),
    ("artifact-symlink-out", _symlink_out, "train", ("run.json", "outside the run directory")),
    ("artifact-digest-not-hex", _write("run.json", '{"steps": {"float": {"artifacts": '
                                       '{"model_float.keras": "%s"}}}}' % ("z" * 64)),
     "train", ("run.json", "not a sha256")),
    ("scheme-not-a-string", _write("run.json", '{"steps": {"qat": {"artifacts": {}, "scheme": '
                                   '["int8"]}}}'), "export", ("run.json", "'scheme'")),
    ("config-list", _write("config.json", "[1, 2]"), "train", ("config.json", "not an object")),
    ("config-nested", _write("config.json", _NESTED), "train", ("config.json", "nested")),
    ("config-not-utf8", _write("config.json", b'{"model": "\xff\xfe"}'), "export",
     ("config.json", "UTF-8")),
    ("config-corrupt", _write("config.json", '{"model": '), "train", ("config.json", "corrupt")),
    ("metrics-list", _write("metrics.json", "[]"), "train", ("metrics.json", "not an object")),
    ("metrics-not-a-number", _write("metrics.json", '{"float": {"test_accuracy": "x"}}'), "train",
     ("metrics.json", "not a number")),
    ("history-epoch-x", _write("history.csv", "phase,epoch,val_accuracy\nfloat,x,0.5\n"), "tune",
     ("history.csv", "epoch 'x'")),
    ("history-extra-field", _write("history.csv", "phase,epoch\nfloat,1,2,3\n"), "tune",
     ("history.csv", "more fields")),
    ("history-huge", _oversized("history.csv", "CSV_LIMIT"), "tune",
     ("history.csv", "64 MB limit")),
    ("history-not-utf8", _write("history.csv", b"phase,epoch\n\xff,1\n"), "tune",
     ("history.csv", "UTF-8")),
]


def _command(kind, run, tmp_path):
    out = os.path.dirname(os.path.dirname(run.path))
    if kind == "train":  # --data: an empty folder, so nothing could ever download
        return ["-m", "fnet_tf.train", "--run_dir", run.path, "--data", str(tmp_path),
                "--epochs", "1", "--qat_epochs", "0"]
    if kind == "tune":
        return ["-m", "fnet_tf.tune", "--report", "--out", out]
    return [TO_TFLITE, run.path, "--data", str(tmp_path), "--check_images", "0"]


def test_the_foreign_run_directory_itself_is_accepted(tmp_path):
    run = _foreign_run(tmp_path / "out" / "trials" / "base")
    result = run_module(_command("train", run, tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "already complete" in result.stdout


@pytest.mark.parametrize("corrupt,kind,needles", [case[1:] for case in HOSTILE_RUNS],
                         ids=[case[0] for case in HOSTILE_RUNS])
def test_a_hostile_run_directory_is_one_line(tmp_path, corrupt, kind, needles):
    run = _foreign_run(tmp_path / "out" / "trials" / "base")
    corrupt(run)
    result = run_module(_command(kind, run, tmp_path))
    line = _one_line_error(result, *needles)
    assert "delete it" in line or "run again" in line, line
    assert not os.path.exists(run.file("model_int8.tflite"))


def test_an_escaping_artifact_is_refused_before_it_is_hashed(tmp_path, monkeypatch):
    from fnet_tf.core import fileio
    from fnet_tf.core.errors import UserError

    run = _foreign_run(tmp_path / "out" / "trials" / "base")
    _with_artifact(lambda run, target: target)(run)
    hashed = []
    monkeypatch.setattr(fileio, "sha256_file", lambda path, *a: hashed.append(path))
    for check in (run.is_complete, run.verified):
        with pytest.raises(UserError, match="outside the run directory"):
            check("float")
    assert hashed == []
    assert run.inside("model_float.keras") == run.file("model_float.keras")
    for rel in ("", "..", "../x", "a/../../x", "/etc/passwd", "a\0b", 3):
        assert run.inside(rel) is None, rel


def test_a_run_directory_reached_through_a_symlink_still_reads(tmp_path):
    run = _foreign_run(tmp_path / "real" / "run")
    os.symlink(tmp_path / "real", tmp_path / "link")
    from fnet_tf.run.rundir import RunDir

    linked = RunDir(tmp_path / "link" / "run")
    assert linked.is_complete("float")
    assert linked.history()[0]["epoch"] == "1" and linked.config()["model"] == "factorizenet"
    assert run.manifest() == linked.manifest()


def test_bounded_json_reader(tmp_path):
    from fnet_tf.core import fileio
    from fnet_tf.core.errors import UserError

    path = tmp_path / "a.json"
    path.write_text('{"x": [1, 2.5, "y"]}')
    assert fileio.read_json(path) == {"x": [1, 2.5, "y"]}
    with pytest.raises(UserError, match=r"a.json is 20 bytes, over the 10 bytes limit"):
        fileio.read_json(path, limit=10)
    with open(path, "ab") as f:
        f.truncate(fileio.JSON_LIMIT + 1)
    with pytest.raises(UserError, match="over the 16 MB limit"):
        fileio.read_json(path)
    for content, needle in ((_NESTED, "nested too deeply"), ('{"x": ', "corrupt JSON"),
                            (b'"\xc3\x28"', "not UTF-8"), ("1" * 5000, "corrupt JSON")):
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(UserError, match=needle) as caught:
            fileio.read_json(path)
        assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    with pytest.raises(UserError, match="not a regular file"):
        fileio.read_json("/dev/zero")
    with pytest.raises(UserError, match="cannot read .*missing.json"):
        fileio.read_json(tmp_path / "missing.json")


def test_bounded_csv_reader(tmp_path):
    from fnet_tf.core import fileio
    from fnet_tf.core.errors import UserError

    path = tmp_path / "t.csv"
    path.write_text('a,b\n1,"x,\ny"\n\n3,4\n')
    assert fileio.read_csv(path) == [{"a": "1", "b": "x,\ny"}, {"a": "3", "b": "4"}]
    path.write_text("")
    assert fileio.read_csv(path) == []
    for content, needle in (("a,b\n1,2,3\n", "more fields"), ("a,b\n1\n", "fewer fields"),
                            ("a\n" + "x" * 200_000 + "\n", "not valid CSV"),
                            ("a,b\n" + "1,2\n" * 10, "over the 20 bytes limit")):
        path.write_text(content)
        with pytest.raises(UserError, match=needle) as caught:
            fileio.read_csv(path, limit=20 if "limit" in needle else fileio.CSV_LIMIT)
        assert "\n" not in str(caught.value) and "t.csv" in str(caught.value)


def test_layer_stats_checkpoint_meta_and_keras3_result_are_checked(tmp_path):
    from fnet_tf.core import fileio
    from fnet_tf.analysis.callback import read_stats
    from fnet_tf.run.checkpoints import EpochCheckpoints
    from fnet_tf.core.errors import UserError
    from fnet_tf.run.portable_weights import RESULT, read_result

    stats = tmp_path / "layer_stats.jsonl"
    stats.write_text('{"phase": "float", "epoch": 1, "weights": {}}\n{"phase": "flo')  # torn
    assert [e["epoch"] for e in read_stats(str(stats))] == [1]
    for line in ('[1, 2]}', '{"phase": "float", "epoch": "x"}', _NESTED[:5000] + "}"):
        stats.write_text(line + "\n")
        with pytest.raises(UserError, match="layer_stats.jsonl is malformed"):
            read_stats(str(stats))

    checkpoint = tmp_path / "epoch-0001"
    checkpoint.mkdir()
    (tmp_path / "secret").write_text("not the checkpoint's")
    digest = fileio.sha256_file(tmp_path / "secret")
    for meta, needle in (([1], "malformed"), ({"files": {"../secret": digest}}, "not a file of"),
                         ({"files": {"/etc/passwd": digest}}, "not a file of")):
        fileio.write_json(checkpoint / "meta.json", meta)
        assert needle in EpochCheckpoints._problem(str(checkpoint))
    os.symlink(tmp_path / "secret", checkpoint / "ckpt.index")
    fileio.write_json(checkpoint / "meta.json", {"files": {"ckpt.index": digest}})
    assert "symlink" in EpochCheckpoints._problem(str(checkpoint))

    (tmp_path / RESULT).write_text('{"model": "factorizenet", "level": 7, "width": 0.5}')
    assert read_result(str(tmp_path))["level"] == 7
    for content in ("[]", '{"model": 3, "level": 7}', '{"model": "resnet8"}'):
        (tmp_path / RESULT).write_text(content)
        with pytest.raises(UserError, match="is malformed"):
            read_result(str(tmp_path))
