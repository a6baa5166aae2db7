#!/usr/bin/env python3
"""Check that INT8 models answer the same on arm64 (a Raspberry Pi-class userland) as on x86.

    python tools/arm64_check.py --data ../shared/data/cifar10-jpeg.tar.gz            # every zoo model
    python tools/arm64_check.py --data ... --models factorizenet-l3,path/to/model_int8.tflite
    python tools/arm64_check.py --data ... --update_zoo      # also write the result into the cards

The first run builds, once, an arm64 Debian userland outside the repo (``--rootfs``, default
``~/.cache/fnet_tf/arm64-rootfs``): Debian bookworm's arm64 python3.11 and the libraries it
needs (``apt-get download`` + ``dpkg -x``, no root and no binfmt needed), PyPI's aarch64 wheels
of numpy, Pillow and the LiteRT interpreter, and ``qemu-aarch64-static`` (the system's, or
Debian's package unpacked beside the userland). Then, for every model, ``export/run_tflite.py``
runs a fixed batch of test images (evenly spread over the test split) on x86 with this
machine's LiteRT, and again under ``qemu-aarch64-static -cpu cortex-a72`` (the Raspberry Pi 4's
core) with the arm64 LiteRT, each dumping its raw int8 outputs; the two dumps are compared:
top-1 agreement, the largest difference in output steps (LSB), the share of bit-exact outputs.

LiteRT 2.x aarch64 wheels crash under qemu 7.2 at interpreter creation; 1.4.0 runs (its XNNPACK
int8 kernels are the NEON ones a Pi uses). Emulated time is not device latency and is never
reported as such.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from fnet_tf.core import cli  # noqa: E402
from fnet_tf.core.errors import UserError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "export", "run_tflite.py")

FLAGS = flags.FLAGS
flags.DEFINE_list("models", [], "Zoo model names or .tflite paths (default: every zoo model).")
flags.DEFINE_string("data", None, "Dataset whose test split gives the fixed batch of images.")
flags.DEFINE_integer("images", 1000, "Test images in the batch (evenly spread over the split).")
flags.DEFINE_string("rootfs", os.environ.get("FNET_TF_ARM64_ROOTFS", os.path.join(
    os.path.expanduser("~"), ".cache", "fnet_tf", "arm64-rootfs")),
    "Where the arm64 userland is built once and reused ($FNET_TF_ARM64_ROOTFS).")
flags.DEFINE_string("litert", "1.4.0", "ai-edge-litert version of the arm64 userland.")
flags.DEFINE_string("cpu", "cortex-a72", "CPU qemu emulates (cortex-a72: Raspberry Pi 4).")
flags.DEFINE_bool("xnnpack", True, "Run with LiteRT's default XNNPACK delegate on both sides "
                  "(--noxnnpack: TFLite's builtin kernels, as on builds without it).")
flags.DEFINE_bool("build_only", False, "Only build (or check) the arm64 userland.")
flags.DEFINE_bool("update_zoo", False, "Write each zoo model's result into its metrics.json "
                  "and card.md.")
flags.DEFINE_string("out", None, "Also write all results to this JSON file.")
flags.DEFINE_string("keep", None, "Also keep batch.npz and each model's x86 dump "
                    "(<name>.x86.npy) in this folder, to check a real board with "
                    "run_tflite.py --batch batch.npz --compare-with <name>.x86.npy.")
flags.DEFINE_string("cache_dir", None, "Dataset cache directory.")

# Debian bookworm arm64 packages that python3.11 and the wheels need at run time.
DEBIAN_PACKAGES = (
    "libc6", "libgcc-s1", "libstdc++6", "python3.11", "python3.11-minimal",
    "libpython3.11-minimal", "libpython3.11-stdlib", "libexpat1", "zlib1g", "libssl3", "libffi8",
    "libbz2-1.0", "liblzma5", "libsqlite3-0", "libuuid1", "libncursesw6", "libtinfo6",
    "libcrypt1")
WHEELS = ("numpy==2.4.6", "Pillow==13.0.0")  # the versions this check was first run with
GUEST_PYTHON = "/usr/bin/python3.11"
VERSIONS = "versions.json"  # written last: its presence marks a complete userland


def _run(cmd, what, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise UserError(f"{what} failed ({lines[-1][:200] if lines else f'exit {proc.returncode}'})")
    return proc.stdout


def _apt_download(packages, arch, state, dest):
    """Download Debian packages of ``arch`` with apt's own sources but a private state."""
    for sub in ("lists/partial", "cache/archives/partial"):
        os.makedirs(os.path.join(state, sub), exist_ok=True)
    options = [f"-oAPT::Architecture={arch}", f"-oAPT::Architectures::={arch}",
               f"-oDir::State={state}", "-oDir::State::status=/dev/null",
               f"-oDir::Cache={os.path.join(state, 'cache')}", "-oDebug::NoLocking=1",
               "-oAPT::Sandbox::User=root", "-qq"]
    _run(["apt-get", *options, "update"], f"apt-get update ({arch} package lists)")
    os.makedirs(dest, exist_ok=True)
    _run(["apt-get", *options, "download", *packages], f"apt-get download ({arch})", cwd=dest)
    return sorted(glob.glob(os.path.join(dest, "*.deb")))


def _qemu(rootfs):
    local = os.path.join(rootfs, "qemu", "usr", "bin", "qemu-aarch64-static")
    return local if os.path.isfile(local) else shutil.which("qemu-aarch64-static")


def build_rootfs(rootfs, litert):
    """Build the arm64 userland into ``rootfs`` (whole or not at all); return its versions."""
    marker = os.path.join(rootfs, VERSIONS)
    if os.path.isfile(marker):  # built before
        with open(marker) as f:
            versions = json.load(f)
        if versions.get("ai_edge_litert") == litert and _qemu(rootfs):
            return versions
        raise UserError(f"{rootfs} holds LiteRT {versions.get('ai_edge_litert')}, not {litert}: "
                        f"remove it or pass another --rootfs")
    for tool in ("apt-get", "dpkg", "dpkg-deb"):
        if not shutil.which(tool):
            raise UserError(f"building the arm64 userland needs {tool} (a Debian 12 host, "
                            f"whose apt sources serve the arm64 packages): run this on one, or "
                            f"copy a built --rootfs here")
    print(f"building the arm64 userland in {rootfs} (once; 20-60 s) ...", flush=True)
    partial = rootfs + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    root = os.path.join(partial, "root")
    debs = _apt_download(DEBIAN_PACKAGES, "arm64", os.path.join(partial, "apt-arm64"),
                         os.path.join(partial, "debs"))
    for deb in debs:
        _run(["dpkg-deb", "-x", deb, root], f"unpacking {os.path.basename(deb)}")
    if not shutil.which("qemu-aarch64-static"):
        host = _run(["dpkg", "--print-architecture"], "dpkg --print-architecture").strip()
        for deb in _apt_download(["qemu-user-static"], host, os.path.join(partial, "apt-host"),
                                 os.path.join(partial, "qemu-deb")):
            _run(["dpkg-deb", "-x", deb, os.path.join(partial, "qemu-all")], "unpacking qemu")
        kept = os.path.join(partial, "qemu", "usr", "bin")
        os.makedirs(kept)
        os.replace(os.path.join(partial, "qemu-all", "usr", "bin", "qemu-aarch64-static"),
                   os.path.join(kept, "qemu-aarch64-static"))  # the other targets: 400 MB
    wheels = os.path.join(partial, "wheels")
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version",
          "3.11", "--implementation", "cp", "--platform", "manylinux2014_aarch64", "--platform",
          "manylinux_2_17_aarch64", "--platform", "manylinux_2_28_aarch64", "-d", wheels,
          f"ai-edge-litert=={litert}", *WHEELS], "pip download of the aarch64 wheels")
    site = os.path.join(root, "site")
    for wheel in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site)
    for leftover in ("debs", "apt-arm64", "apt-host", "qemu-deb", "qemu-all", "wheels"):
        shutil.rmtree(os.path.join(partial, leftover), ignore_errors=True)
    versions = _guest_versions(partial)
    with open(os.path.join(partial, VERSIONS), "w") as f:
        json.dump(versions, f, indent=1)
    shutil.rmtree(rootfs, ignore_errors=True)
    os.replace(partial, rootfs)
    print(f"arm64 userland ready: {versions}", flush=True)
    return versions


def _guest(rootfs, args, what):
    """Run the arm64 python with ``args`` under qemu; guest paths are inside ``root``."""
    qemu = _qemu(rootfs)
    if not qemu:
        raise UserError(f"no qemu-aarch64-static in {rootfs} or on PATH: remove {rootfs} to "
                        f"rebuild it, or apt-get install qemu-user-static")
    root = os.path.join(rootfs, "root")
    env = {"PYTHONPATH": "/site", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp",
           "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        return _run([qemu, "-cpu", FLAGS.cpu, "-L", root,
                     os.path.join(root, GUEST_PYTHON.lstrip("/")), *args], what, env=env)
    except UserError as e:
        if "signal 11" in str(e) or "Segmentation" in str(e):
            raise UserError(f"{e}: this LiteRT build crashes under qemu (2.x does under qemu "
                            f"7.2); use --litert 1.4.0 with a fresh --rootfs") from None
        raise UserError(f"{e} (if the userland is damaged, delete {rootfs} to rebuild it)") from None


def _guest_versions(rootfs):
    probe = ("import json, platform, numpy, PIL; from importlib.metadata import version; "
             "from ai_edge_litert.interpreter import Interpreter; "
             "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), "
             "'numpy': numpy.__version__, 'pillow': PIL.__version__, "
             "'ai_edge_litert': version('ai-edge-litert')}))")
    versions = json.loads(_guest(rootfs, ["-c", probe], "the arm64 python").strip().splitlines()[-1])
    qemu = _run([_qemu(rootfs), "--version"], "qemu --version").splitlines()[0]
    versions["qemu"] = qemu.split("version")[-1].split()[0] if "version" in qemu else qemu
    return versions


def _load_runner():
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_tflite", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_models(items):
    """[(name, path, zoo name or None)] for zoo names and .tflite paths."""
    from fnet_tf.release import zoo

    items = items or zoo.names()
    if not items:
        raise UserError("no models: the zoo is empty; pass --models NAME_OR_PATH,...")
    models = []
    for item in items:
        if item.endswith(".tflite"):
            if not os.path.isfile(item):
                raise UserError(f"--models {item!r} does not exist")
            models.append((_file_model_name(item), item, None))
        else:
            models.append((item, zoo.load(item), item))
    names = [name for name, _, _ in models]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise UserError(f"two models would be called {clash[0]!r} (results and --keep dumps are "
                        f"named by model): rename one of the files")
    return models


def _file_model_name(path):
    """A .tflite's name: its stem, or its folder's for a zoo-style ``<name>/model_int8.tflite``."""
    from fnet_tf.release import zoo

    stem = os.path.splitext(os.path.basename(path))[0]
    if stem == os.path.splitext(zoo.MODEL_FILE)[0]:
        return os.path.basename(os.path.dirname(os.path.abspath(path))) or stem
    return stem


def fixed_batch(data, count, cache_dir=None):
    """``count`` test images evenly spread over the test split, and their labels."""
    from fnet_tf.data import datasets as data_lib

    data_lib.check_source(data)
    test = data_lib.load(data, cache_dir=cache_dir).test
    if not 1 <= count <= len(test):
        raise UserError(f"--images must be in 1..{len(test)}, got {count}")
    index = np.unique(np.linspace(0, len(test) - 1, count).round().astype(int))
    return test.images[index].astype(np.uint8), test.labels[index], test


def check_model(rootfs, work, name, path, labels, runner):
    """Run one model on x86 and under emulated arm64; compare the raw outputs."""
    from fnet_tf.core import fileio

    shutil.copyfile(path, os.path.join(work, "model.tflite"))
    x86_out, arm_out = os.path.join(work, "x86.npy"), os.path.join(work, "arm64.npy")
    for stale in (x86_out, arm_out):
        if os.path.exists(stale):
            os.remove(stale)
    kernels = [] if FLAGS.xnnpack else ["--no-xnnpack"]
    _run([sys.executable, RUNNER, os.path.join(work, "model.tflite"), "--batch",
          os.path.join(work, "batch.npz"), "--dump-logits", x86_out, *kernels], f"{name} on x86")
    started = time.time()
    # qemu -L looks a path up in the userland first and falls back to the host's, so the
    # guest reads and writes the host's work folder under the same names.
    printed = _guest(rootfs, [os.path.join(work, "run_tflite.py"), os.path.join(work, "model.tflite"),
                              "--batch", os.path.join(work, "batch.npz"), "--dump-logits", arm_out,
                              "--compare-with", x86_out, *kernels], f"{name} under emulated arm64")
    emulated_seconds = time.time() - started
    if FLAGS.keep:
        shutil.copyfile(x86_out, os.path.join(FLAGS.keep, f"{name}.x86.npy"))
    x86, arm64 = np.load(x86_out), np.load(arm_out)
    result = runner.compare_outputs(arm64, x86)
    result.update(x86_accuracy=float(np.mean(x86.argmax(1) == labels)),
                  arm64_accuracy=float(np.mean(arm64.argmax(1) == labels)),
                  sha256=fileio.sha256_file(path), guest_report=printed.strip().splitlines()[-1],
                  emulated_wall_seconds=round(emulated_seconds, 1))
    return result


def update_zoo(zoo_name, check):
    from fnet_tf.release import zoo
    from fnet_tf.core import fileio
    from fnet_tf.release import card as model_card

    folder = os.path.dirname(zoo.load(zoo_name))
    metrics = fileio.read_json(os.path.join(folder, zoo.METRICS))
    if metrics.get("sha256") != check["sha256"]:
        raise UserError(f"{zoo_name}'s metrics.json describes another file than its "
                        f"{zoo.MODEL_FILE}: release it again with tools/release.py")
    metrics["arm64"] = check
    fileio.write_json(os.path.join(folder, zoo.METRICS), metrics)
    fileio.write_text(os.path.join(folder, zoo.CARD), model_card.card_text(metrics))


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])!r}: flags only")
    if not FLAGS.build_only:
        if not FLAGS.data:
            raise UserError("--data is required: the dataset whose test images are compared "
                            "(e.g. ../shared/data/cifar10-jpeg.tar.gz)")
        if FLAGS.update_zoo and not FLAGS.xnnpack:
            raise UserError("--update_zoo records the default kernels (XNNPACK) in the cards: "
                            "drop --noxnnpack, or --update_zoo")
        models = resolve_models(FLAGS.models)
        images, labels, test = fixed_batch(FLAGS.data, FLAGS.images, FLAGS.cache_dir)
    versions = build_rootfs(FLAGS.rootfs, FLAGS.litert)
    if FLAGS.build_only:
        print(json.dumps(versions))
        return 0
    from importlib.metadata import version

    runner = _load_runner()
    x86_litert = version("ai-edge-litert")
    results = []
    work = tempfile.mkdtemp(prefix="fnet-tf-arm64-")
    try:
        np.savez(os.path.join(work, "batch.npz"), images=images, labels=labels)
        shutil.copyfile(RUNNER, os.path.join(work, "run_tflite.py"))  # what the guest runs
        if FLAGS.keep:
            os.makedirs(FLAGS.keep, exist_ok=True)
            shutil.copyfile(os.path.join(work, "batch.npz"), os.path.join(FLAGS.keep, "batch.npz"))
        for i, (name, path, zoo_name) in enumerate(models, 1):
            check = check_model(FLAGS.rootfs, work, name, path, labels, runner)
            check.update(name=name, cpu=FLAGS.cpu, xnnpack=FLAGS.xnnpack,
                         arm64_litert=versions["ai_edge_litert"],
                         arm64_numpy=versions["numpy"], qemu=versions["qemu"],
                         x86_litert=x86_litert, data=os.path.basename(FLAGS.data),
                         test_images_total=len(test))
            results.append(check)
            print(f"[{i}/{len(models)}] {name}: arm64 (emulated {FLAGS.cpu}) vs x86: "
                  f"{runner.describe_comparison(check)}; accuracy arm64 "
                  f"{100 * check['arm64_accuracy']:.2f}% / x86 {100 * check['x86_accuracy']:.2f}%",
                  flush=True)
            if FLAGS.update_zoo and zoo_name:
                update_zoo(zoo_name, check)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if FLAGS.out:
        from fnet_tf.core import fileio

        fileio.write_json(FLAGS.out, {"versions": versions, "x86_litert": x86_litert,
                                      "images": len(images), "results": results})
    worst = min(r["top1_agreement"] for r in results)
    print(f"lowest top-1 agreement {100 * worst:.2f}% over {cli.count(len(results), 'model')}; largest "
          f"difference {max(r['max_diff_lsb'] for r in results)} LSB")
    return 0


if __name__ == "__main__":
    cli.run(main)
