"""What a user installs: the wheel carries every released model and the commands, and the device
scripts stay single files with no fnet_tf imports. (CI also installs the wheel into a fresh
virtualenv outside the checkout and runs the commands: .ci/run.)"""
import ast
import configparser
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

COMMANDS = ("fnet-train", "fnet-export", "fnet-analyze", "fnet-run", "fnet-regroup", "fnet-zoo")
DEVICE_SCRIPTS = ("run_tflite.py", "regroup.py")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", REPO,
                             "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = out.glob("fnet_tf-*.whl")
    return path


def test_every_released_model_is_in_the_wheel(wheel):
    models = os.path.join(REPO, "models")
    released = [n for n in sorted(os.listdir(models))
                if os.path.isfile(os.path.join(models, n, "model_int8.tflite"))]
    assert len(released) >= 9
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in released:
            for file in os.listdir(os.path.join(models, name)):
                packaged = f"fnet_tf/released/{name}/{file}"
                assert packaged in names, f"{packaged} is missing from {wheel.name}"
                with open(os.path.join(models, name, file), "rb") as f:
                    assert z.read(packaged) == f.read(), packaged
    print(f"{wheel.name}: {wheel.stat().st_size / 2**20:.2f} MiB")


def test_the_wheel_declares_the_commands(wheel):
    with zipfile.ZipFile(wheel) as z:
        (entry_points,) = [n for n in z.namelist() if n.endswith("entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(z.read(entry_points).decode())
    scripts = dict(parser["console_scripts"])
    assert set(COMMANDS) <= set(scripts)
    for command, target in scripts.items():  # each names a function its module defines
        module, _, attribute = target.partition(":")  # (read, not imported: CLIs define flags)
        with open(os.path.join(REPO, *module.split(".")) + ".py") as f:
            tree = ast.parse(f.read())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        defined |= {target.id for node in tree.body if isinstance(node, ast.Assign)
                    for target in node.targets if isinstance(target, ast.Name)}
        assert attribute in defined, f"{command}: {module} defines no {attribute}"


@pytest.mark.parametrize("script", DEVICE_SCRIPTS)
def test_device_scripts_are_single_files_and_the_checkout_paths_reach_them(script):
    packaged = os.path.join(REPO, "fnet_tf", "device", script)
    with open(packaged) as f:
        tree = ast.parse(f.read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert "fnet_tf" not in imported and "tensorflow" not in imported, imported
    assert imported <= {"argparse", "contextlib", "copy", "io", "os", "sys", "tempfile", "time", "zipfile",
                        "numpy", "ai_edge_litert", "tflite_runtime", "PIL", "flatbuffers"}, imported
    checkout = os.path.join(REPO, "export", script)
    assert os.path.realpath(checkout) == os.path.realpath(packaged)


def test_the_zoo_is_found_in_an_installed_package(tmp_path, monkeypatch):
    from fnet_tf.release import zoo

    packaged = tmp_path / "released" / "some-model"
    packaged.mkdir(parents=True)
    (packaged / zoo.MODEL_FILE).write_bytes(b"x")
    monkeypatch.delenv("FNET_TF_ZOO", raising=False)
    monkeypatch.setattr(zoo, "PACKAGED", str(tmp_path / "released"))
    assert zoo.load("some-model") == str(packaged / zoo.MODEL_FILE)
    monkeypatch.setattr(zoo, "PACKAGED", str(tmp_path / "not-installed"))
    assert zoo.zoo_dir() == zoo.CHECKOUT  # a checkout or editable install: models/ itself
