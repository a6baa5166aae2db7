"""The first hour as a user (issue 37): every ordinary mistake is recoverable with the command
the error prints, help lists the flags, and commands refuse what they cannot measure."""
import json
import os
import shutil
import signal
import subprocess
import sys

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
    floats = tmp_path / "m_float32.tflite"  # named after --out
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


# --- the device runner's ordinary mistakes (the released int8 model: 10 classes, embedded labels)

RUN_TFLITE = os.path.join("export", "run_tflite.py")
RELEASED = os.path.join(REPO, "models", "factorizenet-l7", "model_int8.tflite")


def _shown(result):
    """The classes printed for the one image classified."""
    assert result.returncode == 0, result.stderr[-2000:]
    return last_line(result.stdout).split(": ", 1)[1].split(", ")


def test_the_device_runner_refuses_top_0_and_caps_top_at_the_class_count(tiny_tree):
    image = os.path.join(tiny_tree, "test", "class3", "0000.jpg")
    for top in ("0", "-2"):
        line = _one_error_line(run_module([RUN_TFLITE, RELEASED, image, "--top", top]))
        assert f"--top must be 1 or more, got {top}" in line
    assert len(_shown(run_module([RUN_TFLITE, RELEASED, image, "--top", "50"]))) == 10


def test_the_device_runner_refuses_a_labels_file_of_another_class_count(tiny_tree, tmp_path):
    image = os.path.join(tiny_tree, "test", "class3", "0000.jpg")
    for count in (3, 11):
        labels = tmp_path / f"labels{count}.txt"
        labels.write_text("".join(f"name{i}\n" for i in range(count)))
        line = _one_error_line(run_module([RUN_TFLITE, RELEASED, image, "--labels", str(labels)]))
        assert f"has {count} names but the model has 10 outputs" in line
    labels = tmp_path / "labels10.txt"
    labels.write_text("".join(f"name{i}\n" for i in range(10)))
    shown = _shown(run_module([RUN_TFLITE, RELEASED, image, "--labels", str(labels)]))
    assert all(entry.startswith("name") for entry in shown)


def test_the_device_runner_says_a_folder_is_a_folder(tiny_tree):
    folder = os.path.join(tiny_tree, "test", "class3")
    line = _one_error_line(run_module([RUN_TFLITE, RELEASED, folder]))
    assert "is a folder" in line and os.path.join(folder, "*.jpg") in line


def test_the_device_runner_takes_helpshort_and_gives_flag_errors_in_one_line(tiny_tree):
    for asked in ("--help", "--helpshort"):
        result = run_module([RUN_TFLITE, asked])
        assert result.returncode == 0, result.stderr[-2000:]
        assert "usage:" in result.stdout and "--threads" in result.stdout
    image = os.path.join(tiny_tree, "test", "class3", "0000.jpg")
    for args, needle in (([RELEASED, "--topp", "3", image], "unrecognized arguments: --topp"),
                         ([RELEASED, "--top", "x", image], "argument --top: invalid int value"),
                         ([], "the following arguments are required: model")):
        line = _one_error_line(run_module([RUN_TFLITE, *args]))
        assert needle in line and line.endswith("(see --help)")


def test_the_device_runner_takes_threads_0_as_all_cores():
    result = run_module([RUN_TFLITE, RELEASED, "--benchmark", "3", "--threads", "0"])
    assert result.returncode == 0, result.stderr[-2000:]
    cores = os.cpu_count() or 1
    assert f"{cores} thread" + ("" if cores == 1 else "s") in result.stdout
    line = _one_error_line(run_module([RUN_TFLITE, RELEASED, "--benchmark", "3", "--threads",
                                       "-1"]))
    assert "--threads must be 0 (all cores) or a positive count, got -1" in line


def test_a_run_resumes_and_exports_from_another_directory(tiny_tree, tmp_path):
    """--data typed relative to where the user stood is recorded as the folder it named."""
    home = tmp_path / "home"
    shutil.copytree(tiny_tree, home / "data")
    run_dir = tmp_path / "r"
    first = run_module([*TRAIN, "--data", "data", "--epochs", "1", "--val_split", "0",
                        "--run_dir", str(run_dir)], cwd=str(home))
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads((run_dir / "config.json").read_text())["data"] == str(home / "data")
    elsewhere = run_module(["-m", "fnet_tf.train", "--run_dir", str(run_dir), "--qat_epochs",
                            "1", "--verbose", "0"], cwd=str(tmp_path))
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    # the same command as typed at first, from the first directory: the same run, complete
    again = run_module([*TRAIN, "--data", "data", "--epochs", "1", "--val_split", "0",
                        "--qat_epochs", "1", "--run_dir", str(run_dir)], cwd=str(home))
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr[-2000:]


def test_the_exporter_sends_a_stopped_run_back_to_the_command_that_resumes_it(tiny_archive,
                                                                               tmp_path):
    run_dir = tmp_path / "r"
    args = [*TRAIN, "--data", tiny_archive, "--val_split", "0", "--run_dir", str(run_dir)]
    export = ["-m", "fnet_tf.to_tflite", str(run_dir), "--check_images", "10"]
    stopped = run_module([*args, "--epochs", "2", "--qat_epochs", "1"],
                         env={"FNET_TF_CRASH_AT": "atomic-dir/epoch-0002:1"})  # float epoch 2
    assert stopped.returncode != 0
    line = _one_error_line(run_module(export))
    assert "float training did not finish" in line and f"--run_dir {run_dir}" in line
    assert not (run_dir / "model_int8.tflite").exists()
    resumed = run_module(["-m", "fnet_tf.train", "--run_dir", str(run_dir), "--verbose", "0"],
                         env={"FNET_TF_CRASH_AT": "atomic-dir/epoch-0001:1"})  # QAT epoch 1
    assert resumed.returncode != 0
    line = _one_error_line(run_module(export))
    assert "QAT did not finish" in line and "--scheme ptq" in line  # not a silent PTQ file
    finished = run_module(["-m", "fnet_tf.train", "--run_dir", str(run_dir), "--verbose", "0"])
    assert finished.returncode == 0, finished.stderr[-2000:]
    exported = run_module(export)
    assert exported.returncode == 0 and "scheme int8" in exported.stdout, exported.stderr[-2000:]
    assert "Statistics for quantized inputs" not in exported.stderr  # the converter's notices
    assert "fully_quantize" not in exported.stderr


def test_the_exporter_refuses_an_out_that_is_not_a_file_name(qat_run, tmp_path):
    for out in (str(tmp_path) + os.sep, str(tmp_path), str(tmp_path / "model")):
        line = _one_error_line(run_module(["-m", "fnet_tf.to_tflite", qat_run, "--out", out]))
        assert "is not a .tflite file name" in line and "model_int8.tflite" in line


def test_a_sweep_refuses_to_reuse_a_point_trained_with_other_settings(tiny_archive, tmp_path):
    base = ["-m", "fnet_tf.sweep", "--model", "factorizenet", "--levels", "5", "--width", "0.25",
            "--data", tiny_archive, "--out", str(tmp_path / "sweep"), "--qat_epochs", "1",
            "--batch_size", "8", "--val_split", "0", "--check_images", "20",
            "--latency_runs", "5", "--ptq_per_tensor=false"]
    first = run_module([*base, "--epochs", "1"])
    assert first.returncode == 0, first.stderr[-3000:]
    line = _one_error_line(run_module([*base, "--epochs", "2"]))
    assert "--epochs=1 (now 2)" in line and "pass a new --out" in line
    report = run_module([*base, "--epochs", "1"])  # the recorded settings re-report
    assert report.returncode == 0 and "train complete, reusing" in report.stdout


def test_ctrl_c_while_tensorflow_builds_is_interrupted_not_a_traceback(tmp_path):
    """A Ctrl-C inside TensorFlow's Python code can surface as another exception (an assert
    in a half-traced function): the command says "interrupted" and exits 130 all the same."""
    script = tmp_path / "command.py"
    script.write_text(
        "import os, signal\n"
        "from fnet_tf.core import cli\n"
        "def main(argv):\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    except KeyboardInterrupt:\n"
        "        assert False, 'half-made state'\n"
        "cli.run(main)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                          signal.SIG_DFL))
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "interrupted"


def test_an_analyzed_file_reports_the_invokes_it_timed(qat_run, tiny_archive, tmp_path):
    model, out = tmp_path / "m_int8.tflite", tmp_path / "a"
    exported = run_module(["-m", "fnet_tf.to_tflite", qat_run, "--out", str(model),
                           "--check_images", "0"])
    assert exported.returncode == 0, exported.stderr[-2000:]
    result = run_module(["-m", "fnet_tf.analyze", str(model), "--data", tiny_archive, "--out",
                         str(out), "--latency_runs", "5", "--limit", "20", "--threads", "1"])
    assert result.returncode == 0, result.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert "over 5 invokes" in report and "1 thread," in report
