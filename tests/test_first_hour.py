"""The first hour as a user (issue 37): every ordinary mistake is recoverable with the command
the error prints, help lists the flags, and commands refuse what they cannot measure."""
import os

import pytest

from conftest import REPO, last_line, make_image_tree, run_module

TRAIN = ["-m", "fnet_tf.train", "--model", "factorizenet", "--level", "5", "--width", "0.25",
         "--batch_size", "8", "--verbose", "0", "--layer_stats=false"]


def _one_error_line(result):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


def test_a_failed_first_run_does_not_block_its_correction(tiny_tree, tmp_path):
    run_dir = tmp_path / "l7"
    failed = run_module([*TRAIN, "--data", tiny_tree, "--epochs", "1", "--run_dir", str(run_dir)])
    assert "--val_split 5000 must be between 0 and the" in _one_error_line(failed)
    assert not (run_dir / "config.json").exists()  # nothing committed before the data checked out
    fixed = run_module([*TRAIN, "--data", tiny_tree, "--epochs", "1", "--val_split", "20",
                        "--run_dir", str(run_dir)])
    assert fixed.returncode == 0, fixed.stderr[-2000:]


def test_a_run_that_never_finished_an_epoch_restarts_with_new_settings(tiny_tree, tmp_path):
    run_dir = tmp_path / "r"
    os.makedirs(run_dir)
    (run_dir / "config.json").write_text('{"model": "factorizenet", "level": 5, "lr": 0.9}')
    fixed = run_module([*TRAIN, "--data", tiny_tree, "--epochs", "1", "--val_split", "0",
                        "--run_dir", str(run_dir)])
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert "never completed an epoch: starting it again with the new settings" in fixed.stdout


def test_a_trained_run_refuses_changes_and_names_the_command_that_resumes_it(tiny_tree,
                                                                              tmp_path):
    run_dir = tmp_path / "r"
    first = run_module([*TRAIN, "--data", tiny_tree, "--epochs", "1", "--val_split", "0",
                        "--run_dir", str(run_dir)])
    assert first.returncode == 0, first.stderr[-2000:]
    changed = run_module([*TRAIN, "--data", tiny_tree, "--epochs", "2", "--val_split", "0",
                          "--run_dir", str(run_dir)])
    line = _one_error_line(changed)
    assert "--epochs=1 (now 2)" in line and f"fnet-train --run_dir {run_dir}" in line
    # the exporter's hint, as it prints it: the recorded flags fill in what is not given
    resumed = run_module(["-m", "fnet_tf.train", "--run_dir", str(run_dir), "--qat_epochs", "1",
                          "--verbose", "0"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "flags not given are its recorded settings" in resumed.stdout
    again = run_module(["-m", "fnet_tf.train", "--run_dir", str(run_dir)])
    assert again.returncode == 0 and "already complete" in again.stdout


@pytest.mark.parametrize("command", [
    ["-m", "fnet_tf.train"], [os.path.join("export", "to_tflite.py")], ["-m", "fnet_tf.analyze"],
    ["-m", "fnet_tf.sweep"], ["-m", "fnet_tf.zoo"]])
@pytest.mark.parametrize("asked", ["--help", "--helpshort"])
def test_help_lists_the_flags(command, asked):
    result = run_module([*command, asked])
    assert result.returncode == 0, result.stderr[-2000:]
    if command != ["-m", "fnet_tf.zoo"]:  # fnet-zoo takes words, not flags
        assert "--data" in result.stdout and "--threads" in result.stdout
    assert "usage: fnet-" in result.stdout


def test_a_flag_error_points_at_a_help_that_works():
    line = _one_error_line(run_module(["-m", "fnet_tf.train", "--epoch", "3"]))
    assert "see --help" in line


def test_a_single_class_folder_is_refused(tmp_path):
    tree = make_image_tree(str(tmp_path), 4, 2, classes=("only",))
    line = _one_error_line(run_module([*TRAIN, "--data", tree, "--epochs", "1",
                                       "--val_split", "0", "--run_dir", str(tmp_path / "r")]))
    assert "has one class (only): a classifier needs at least two" in line


def test_analyze_refuses_a_float_tflite_and_every_export_carries_labels(qat_run, tiny_archive,
                                                                       tmp_path):
    out = tmp_path / "m_int8.tflite"
    exported = run_module([os.path.join("export", "to_tflite.py"), qat_run, "--float32",
                           "--check_images", "500", "--out", str(out)])
    manifest = open(os.path.join(qat_run, "run.json")).read()
    assert str(tmp_path) not in manifest and "m_int8" not in manifest  # not the run's file
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "on 80 test images" in exported.stdout  # the count used, not the flag's 500
    floats = tmp_path / "model_float32.tflite"
    assert f"wrote {floats}" in exported.stdout
    from fnet_tf.device.run_tflite import read_labels

    assert read_labels(str(floats))[:2] == ["class0", "class1"]
    line = _one_error_line(run_module(["-m", "fnet_tf.analyze", str(floats), "--data",
                                       tiny_archive]))
    assert "is a float .tflite" in line and "fnet-analyze measures INT8 files" in line


def test_the_device_runner_takes_options_between_the_model_and_the_images(qat_run, tiny_tree,
                                                                         tmp_path):
    tflite = str(tmp_path / "m_int8.tflite")  # the shared run is read, not written
    exported = run_module([os.path.join("export", "to_tflite.py"), qat_run, "--out", tflite,
                           "--check_images", "0"])
    assert exported.returncode == 0, exported.stderr[-2000:]
    image = os.path.join(tiny_tree, "test", "class3", "0000.jpg")
    result = run_module([os.path.join("export", "run_tflite.py"), tflite, "--top", "2", image])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].count(",") == 1  # two classes shown


def test_a_failed_sweep_point_is_fixed_by_rerunning_with_the_fix(tiny_archive, tmp_path):
    out = tmp_path / "sweep"
    base = ["-m", "fnet_tf.sweep", "--model", "factorizenet", "--levels", "5", "--width", "0.25",
            "--data", tiny_archive, "--out", str(out), "--epochs", "1", "--qat_epochs", "1",
            "--batch_size", "8", "--check_images", "20", "--latency_runs", "5",
            "--ptq_per_tensor=false"]
    failed = run_module(base)  # the default --val_split 5000 does not fit 120 images
    assert failed.returncode != 0 and "Traceback" not in failed.stderr[-3000:]
    fixed = run_module([*base, "--val_split", "0"])
    assert fixed.returncode == 0, fixed.stderr[-3000:]
