"""export/run_tflite.py's batch comparison mode and tools/arm64_check.py (the arm64 device check)."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import REPO, SHARED_ARCHIVE, last_line, run_module

RUN_TFLITE = os.path.join(REPO, "export", "run_tflite.py")
ARM64_CHECK = os.path.join(REPO, "tools", "arm64_check.py")
MODEL = os.path.join(REPO, "models", "factorizenet-l7", "model_int8.tflite")
ROOTFS = os.environ.get("FNET_TF_ARM64_ROOTFS",
                        os.path.expanduser("~/.cache/fnet_tf/arm64-rootfs"))


@pytest.fixture
def batch(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "batch.npz")
    np.savez(path, images=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 12))
    return path


def _ok(result):
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _error(result, message):
    assert result.returncode == 2, result.stdout + result.stderr
    assert last_line(result.stderr).startswith("error: ") and message in last_line(result.stderr)
    assert "Traceback" not in result.stderr


def test_dump_then_compare_with_itself_is_bit_exact(tmp_path, batch):
    dump = str(tmp_path / "x86.npy")
    _ok(run_module([RUN_TFLITE, MODEL, "--batch", batch, "--dump-logits", dump]))
    outputs = np.load(dump)
    assert outputs.shape == (12, 10) and outputs.dtype == np.int8
    assert not os.path.exists(dump + ".partial.npy")
    out = _ok(run_module([RUN_TFLITE, MODEL, "--batch", batch, "--compare-with", dump]))
    assert ("top-1 agreement 100.00% on 12 images, max diff 0 LSB, bit-exact 100.00% of outputs"
            in out)


def test_builtin_kernels_run_without_xnnpack(tmp_path, batch):
    dump = str(tmp_path / "builtin.npy")
    _ok(run_module([RUN_TFLITE, MODEL, "--batch", batch, "--no-xnnpack", "--dump-logits", dump]))
    assert np.load(dump).shape == (12, 10)


def test_compare_reports_disagreement_and_lsb_difference(tmp_path, batch):
    dump = str(tmp_path / "x86.npy")
    _ok(run_module([RUN_TFLITE, MODEL, "--batch", batch, "--dump-logits", dump]))
    reference = np.load(dump).astype(np.int16)
    reference[0, (reference[0].argmax() + 1) % 10] = 127  # another class wins image 0
    reference[1, 0] += 3 if reference[1, 0] < 120 else -3  # image 1: 3 steps off, same top-1
    changed = str(tmp_path / "changed.npy")
    np.save(changed, reference.astype(np.int8))
    out = _ok(run_module([RUN_TFLITE, MODEL, "--batch", batch, "--compare-with", changed]))
    line = next(x for x in out.splitlines() if "agreement" in x)
    assert "top-1 agreement 91.67% on 12 images" in line  # 11 of 12
    assert "max diff" in line and "(83.33% of images)" in line  # images 0 and 1 differ
    assert "bit-exact 98.33% of outputs" in line  # 2 of 120 values


def test_batch_mode_errors(tmp_path, batch):
    wrong = str(tmp_path / "wrong.npy")
    np.save(wrong, np.zeros((2, 28, 28, 3), np.uint8))
    _error(run_module([RUN_TFLITE, MODEL, "--batch", wrong]), "takes [N, 32, 32, 3]")
    _error(run_module([RUN_TFLITE, MODEL, "--dump-logits", str(tmp_path / "o.npy")]),
           "work on a --batch file")
    _error(run_module([RUN_TFLITE, MODEL, "--batch", str(tmp_path / "none.npz")]),
           "does not exist")
    text = tmp_path / "text.npz"
    text.write_text("not numpy")
    _error(run_module([RUN_TFLITE, MODEL, "--batch", str(text)]), "not a readable")
    short = str(tmp_path / "short.npy")
    np.save(short, np.zeros((3, 5), np.int8))
    _error(run_module([RUN_TFLITE, MODEL, "--batch", batch, "--compare-with", short]),
           "dump both from the same model and batch")


def test_arm64_check_refuses_bad_input_in_one_line(tmp_path):
    _error(run_module([ARM64_CHECK, "--models", "factorizenet-l99", "--data", SHARED_ARCHIVE]),
           "no released model 'factorizenet-l99'")
    _error(run_module([ARM64_CHECK, "--models", "factorizenet-l7"]), "--data is required")
    _error(run_module([ARM64_CHECK, "--models", str(tmp_path / "gone.tflite"),
                       "--data", SHARED_ARCHIVE]), "does not exist")


def test_arm64_check_names_files_by_stem_and_refuses_a_clash(tmp_path):
    """x_regrouped.tflite is called by its stem; two files of one name would overwrite each
    other's results and --keep dumps, so that is refused before anything runs."""
    model = open(os.path.join(REPO, "models", "factorizenet-l7", "model_int8.tflite"), "rb").read()
    for rel in ("a/same.tflite", "b/same.tflite"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(model)
    _error(run_module([ARM64_CHECK, "--models", f"{tmp_path / 'a/same.tflite'},"
                       f"{tmp_path / 'b/same.tflite'}", "--data", SHARED_ARCHIVE]),
           "two models would be called 'same'")


def test_card_keeps_an_arm64_check_only_for_the_same_file(tmp_path):
    from fnet_tf.core import fileio
    from fnet_tf.release import card as model_card

    metrics = fileio.read_json(os.path.join(REPO, "models", "factorizenet-l7", "metrics.json"))
    check = {"sha256": metrics["sha256"], "top1_agreement": 0.999, "images": 1000,
             "max_diff_lsb": 1, "bit_exact_outputs": 0.995, "arm64_litert": "1.4.0",
             "qemu": "7.2.22", "x86_litert": "2.3.0"}
    fileio.write_json(str(tmp_path / "metrics.json"), {**metrics, "arm64": check})
    assert model_card.kept_arm64_check(str(tmp_path), metrics) == {"arm64": check}
    assert model_card.kept_arm64_check(str(tmp_path), {**metrics, "sha256": "other"}) == {}
    card = model_card.card_text({**metrics, "arm64": check})
    assert ("| arm64 (emulated Cortex-A72) | top-1 agreement 99.90% on 1,000 test images, max "
            "diff 1 LSB, bit-exact 99.50% of outputs" in card)
    assert "ms" not in card.split("arm64 (emulated")[1].splitlines()[0]  # never a latency


def test_released_cards_carry_the_arm64_figures_of_their_own_file():
    from fnet_tf.release import zoo
    from fnet_tf.core import fileio

    for name in zoo.names():
        metrics = fileio.read_json(os.path.join(zoo.zoo_dir(), name, zoo.METRICS))
        check = metrics.get("arm64")
        assert check, f"{name} has no arm64 check: python tools/arm64_check.py --update_zoo"
        assert check["sha256"] == fileio.sha256_file(zoo.load(name))
        with open(os.path.join(zoo.zoo_dir(), name, zoo.CARD)) as f:
            assert f"top-1 agreement {100 * check['top1_agreement']:.2f}%" in f.read()


@pytest.mark.slow
def test_arm64_answers_like_x86(tmp_path):
    """The released level-7 file under an emulated Cortex-A72 against x86, 300 test images."""
    if not os.path.isfile(os.path.join(ROOTFS, "versions.json")):
        if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
            pytest.skip(f"no arm64 userland at {ROOTFS} and no apt-get to build one "
                        f"(python tools/arm64_check.py --build_only on a Debian host)")
    if not os.path.isfile(SHARED_ARCHIVE):
        pytest.skip(f"{SHARED_ARCHIVE} is absent")
    out = str(tmp_path / "arm64.json")
    keep = tmp_path / "for-a-board"
    _ok(run_module([ARM64_CHECK, "--models", "factorizenet-l7", "--data", SHARED_ARCHIVE,
                    "--images", "300", "--rootfs", ROOTFS, "--out", out, "--keep", str(keep)],
                   timeout=1200))
    board = _ok(run_module([RUN_TFLITE, MODEL, "--batch", str(keep / "batch.npz"),
                            "--compare-with", str(keep / "factorizenet-l7.x86.npy")]))
    assert "top-1 agreement 100.00% on 300 images, max diff 0 LSB" in board  # x86 vs itself
    with open(out) as f:
        result = json.load(f)["results"][0]
    assert result["images"] == 300
    assert result["top1_agreement"] >= 0.995 and result["max_diff_lsb"] <= 2
    assert abs(result["arm64_accuracy"] - result["x86_accuracy"]) <= 0.005
    assert "top-1 agreement" in result["guest_report"]  # run_tflite.py compared on arm64 too
