#!/usr/bin/env python3
"""Carry unfinished training from one session's machine to the next, in a commit.

    python tools/park.py save sweeps/tuned-lr0.2-e80       # -> results/in-progress/tuned-lr0.2-e80.tar.gz
    python tools/park.py restore results/in-progress/tuned-lr0.2-e80.tar.gz   # -> sweeps/tuned-lr0.2-e80

Run directories live in gitignored folders (``runs/``, ``sweeps/``) on a machine that ends with
the session, so an 80-epoch run that a session cannot finish would be lost with it. ``save``
packs the resume state of every run directory under DIR (everything but TensorBoard logs and
every checkpoint except the newest whole one of each unfinished phase: about 1 MB a small run,
small enough to commit); ``restore`` puts it back at the path it came from, with each file's
modification time, and the same training or sweep command resumes from the last whole epoch
(bitwise as if never interrupted: the seeded data order and the optimizer state are in the
checkpoint). Both write atomically.

A *finished* run (every export it recorded verified, and the analyzer's output newer than its
int8 file: all a sweep does with a run) travels as its results only: exports, analysis,
metrics, history, config and run.json, without the Keras models the exports were made from
(``model_float.keras``, ``model_qat.weights.h5``: megabytes each, and nothing reads them once
the run is analyzed). The sweep reuses such a run without retraining it; a tool that needs its
Keras model (re-exporting, ``analyze`` of a re-exported file) says the model is missing. Pass
``--keep_finished_models`` to carry them anyway.

A teacher's logit bank (``--teacher_bank``: tens of MB, an hour or more of teacher work) lives in
the data cache, outside the run directory. ``save_bank FOLDER`` (the folder a student's log
names) parks it as ``results/in-progress/bank-<its key>.tar.gz``; ``restore`` of that archive
puts its files back into this machine's cache (the files it lacks: a bank file is fixed by its
key), where every student with that teacher, data and augmentation finds them.
"""
import datetime
import io
import json
import os
import re
import sys
import tarfile
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from fnet_tf.core import cli  # noqa: E402
from fnet_tf.core.errors import UserError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "save: the archive (default results/in-progress/<DIR name>.tar.gz).")
flags.DEFINE_string("to", None, "restore: where to put the directory (default: where it was).")
flags.DEFINE_bool("keep_finished_models", False,
                  "save: also carry a finished run's Keras models (by default a finished run "
                  "travels as its results only).")

MANIFEST = "PARKED.json"
MAX_MANIFEST_BYTES = 1 << 20  # a run's summary is a few hundred bytes
ROOT = "parked"  # the archive's top folder; the manifest says where it came from
_EPOCH_DIR = re.compile(r"^epoch-\d{4,}$")
_SKIPPED_DIRS = ("tensorboard", "__pycache__")
_SAFE = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # entries are checked too
_BANK_FILE = re.compile(r"^(key\.json|epoch_\d{4}\.npy)$")
_BANK_KEY = re.compile(r"^[0-9a-f]{24}$")


def _run_dirs(directory):
    return sorted(root for root, _, files in os.walk(directory) if "config.json" in files)


def is_finished(run_dir):
    """Every export the run recorded is verified and the analyzer has described its int8 file:
    the sweep needs nothing more from the run's Keras models."""
    from fnet_tf.search import sweep_report
    from fnet_tf.run.rundir import RunDir

    run = RunDir(run_dir)
    exports = [step for step in run.manifest()["steps"] if step.startswith("export:")]
    return (bool(exports) and all(run.is_complete(step) for step in exports)
            and sweep_report.analysis_complete(run_dir))


def _results_only_runs(runs):
    """The finished runs of ``runs``, which travel without their Keras models (none with
    --keep_finished_models)."""
    return set() if FLAGS.keep_finished_models else {r for r in runs if is_finished(r)}


def _training_artifacts(run_dirs):
    """The models of the non-export steps (``model_float.keras``, ``model_qat.weights.h5``)."""
    from fnet_tf.run.rundir import RunDir

    return {os.path.abspath(os.path.join(run_dir, rel))
            for run_dir in run_dirs
            for step, entry in RunDir(run_dir).manifest()["steps"].items()
            if not step.startswith("export:")
            for rel in entry["artifacts"]}


def _kept_checkpoints(directory):
    """The newest whole checkpoint of each phase folder (``checkpoints/<phase>/epoch-N``) whose
    phase is not complete: a finished phase resumes from its model, never its checkpoints."""
    from fnet_tf.run.checkpoints import EpochCheckpoints
    from fnet_tf.run.rundir import RunDir

    kept = set()
    for root, dirs, _ in os.walk(directory):
        if not any(_EPOCH_DIR.match(d) for d in dirs):
            continue
        checkpoints, phase = os.path.split(root)
        if (os.path.basename(checkpoints) == "checkpoints"
                and RunDir(os.path.dirname(checkpoints)).is_complete(phase)):
            continue
        _, newest = EpochCheckpoints(root).latest()
        if newest:
            kept.add(os.path.abspath(newest))
    return kept


def _files_to_park(directory, results_only):
    kept_checkpoints = _kept_checkpoints(directory)
    dropped_models = _training_artifacts(results_only)
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS and not d.endswith(".tmp")
                         and not (_EPOCH_DIR.match(d)
                                  and os.path.abspath(os.path.join(root, d)) not in kept_checkpoints))
        for name in sorted(files):
            path = os.path.join(root, name)
            if (not (name.startswith(".") and ".tmp" in name)  # a half-written atomic file
                    and os.path.abspath(path) not in dropped_models):
                yield path


def _run_summary(run_dir, directory, results_only):
    from fnet_tf.run.rundir import RunDir

    run = RunDir(run_dir)
    config = run.config() or {}
    epochs = {}
    for row in run.history():
        epochs[row.get("phase", "float")] = int(row["epoch"])
    return {"run": os.path.relpath(run_dir, directory),
            "completed_steps": sorted(run.manifest()["steps"]),
            "results_only": results_only,
            "epochs_done": epochs,
            "epochs_planned": {"float": config.get("epochs"), "qat": config.get("qat_epochs")}}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _add_manifest(tar, manifest):
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    info = tarfile.TarInfo(MANIFEST)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def save(directory):
    from fnet_tf.core import fileio

    if not os.path.isdir(directory):
        raise UserError(f"{directory!r} is not a directory: pass a run or sweep directory")
    runs = _run_dirs(directory)
    if not runs:
        raise UserError(f"no run directory (with a config.json) under {directory!r}: nothing to park")
    results_only = _results_only_runs(runs)
    name = os.path.basename(os.path.abspath(directory))
    out = FLAGS.out or os.path.join("results", "in-progress", f"{name}.tar.gz")
    manifest = {"path": os.path.relpath(os.path.abspath(directory)),
                "parked_at": _now(),
                "runs": [_run_summary(r, directory, r in results_only) for r in runs]}
    with fileio.atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tar:
        _add_manifest(tar, manifest)
        for path in _files_to_park(directory, results_only):
            tar.add(path, arcname=os.path.join(ROOT, os.path.relpath(path, directory)),
                    recursive=False)
    for run in manifest["runs"]:
        done = ", ".join(f"{phase} epoch {n} of {run['epochs_planned'].get(phase)}"
                         for phase, n in run["epochs_done"].items()) or "no epoch yet"
        trimmed = " (finished: results only, without its Keras models)" if run["results_only"] else ""
        print(f"{run['run']}: {done}; steps done: {', '.join(run['completed_steps']) or 'none'}"
              f"{trimmed}")
    print(f"parked {cli.count(len(runs), 'run')} of {directory} in {out} ({os.path.getsize(out) / 1e6:.1f} MB); "
          f"restore with: python tools/park.py restore {out}")
    return 0


def save_bank(folder):
    from fnet_tf.core import fileio

    key = os.path.basename(os.path.normpath(folder))
    if not (os.path.isfile(os.path.join(folder, "key.json")) and _BANK_KEY.match(key)):
        raise UserError(f"{folder!r} is not a teacher bank folder (teacher_banks/<key> with a "
                        f"key.json): pass the folder a student's log names after 'teacher "
                        f"logits from a bank of ... in'")
    names = sorted(n for n in os.listdir(folder) if _BANK_FILE.match(n))
    epochs = sum(n.endswith(".npy") for n in names)
    out = FLAGS.out or os.path.join("results", "in-progress", f"bank-{key}.tar.gz")
    manifest = {"bank": key, "bank_epochs": epochs, "parked_at": _now()}
    with fileio.atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tar:
        _add_manifest(tar, manifest)
        for name in names:
            tar.add(os.path.join(folder, name), arcname=f"{ROOT}/{name}", recursive=False)
    print(f"parked the bank {key} ({cli.count(epochs, 'bank epoch')}) in {out} "
          f"({os.path.getsize(out) / 1e6:.1f} MB); restore with: python tools/park.py restore {out}")
    return 0


def _restore_bank(archive, tar, members, manifest):
    """The bank's files the cache lacks, each written atomically into ``teacher_banks/<key>``."""
    from fnet_tf.core import fileio
    from fnet_tf.data import datasets as data_lib

    key = manifest.get("bank")
    files = [m for m in members if m.name != MANIFEST and m.isfile()]
    if (not isinstance(key, str) or not _BANK_KEY.match(key)
            or not all(_BANK_FILE.match(m.name[len(ROOT) + 1:]) for m in files)):
        raise UserError(f"{archive!r} is not a bank written by tools/park.py save_bank; "
                        f"refusing to unpack it")
    target = FLAGS.to or os.path.join(data_lib.default_cache_dir(), "teacher_banks", key)
    os.makedirs(target, exist_ok=True)
    added = 0
    with tar:
        for m in files:
            path = os.path.join(target, m.name[len(ROOT) + 1:])
            if os.path.exists(path):
                continue
            with fileio.atomic_path(path) as tmp, tar.extractfile(m) as src, open(tmp, "wb") as f:
                f.write(src.read(m.size))
            added += 1
    print(f"restored {cli.count(added, 'file')} of the bank {key} into {target} "
          f"({len(files) - added} there already); students read it from there")
    return 0


def _open_archive(path):
    """The archive's members and manifest, after its listing passed the dataset loader's
    bounds (``data.check_archive``: declared size, entry count, links, paths) and with the
    manifest read up to ``MAX_MANIFEST_BYTES``: the archive may come from elsewhere."""
    from fnet_tf.data import datasets as data_lib

    if not os.path.isfile(path):
        raise UserError(f"{path!r} does not exist: pass an archive written by tools/park.py save")
    try:
        data_lib.check_archive(path, FLAGS.to or ".", what="parked archive")
        tar = tarfile.open(path, "r:gz")
        members = tar.getmembers()
        manifest_file = tar.extractfile(MANIFEST)
        if manifest_file is None:  # a folder or link by that name
            raise KeyError(MANIFEST)
        text = manifest_file.read(MAX_MANIFEST_BYTES + 1)
        if len(text) > MAX_MANIFEST_BYTES:
            raise UserError(f"{path!r}: its {MANIFEST} is over the {MAX_MANIFEST_BYTES >> 20} MB "
                            f"limit; not written by tools/park.py, refusing to unpack it")
        manifest = json.loads(text)
    except (tarfile.TarError, OSError, EOFError, KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path!r} is not a whole parked archive ({type(e).__name__}): take it "
                        f"again from git, or save the run again") from None
    for m in members:
        if m.name == MANIFEST:
            continue
        parts = m.name.split("/")
        if (parts[0] != ROOT or ".." in parts or os.path.isabs(m.name)
                or not (m.isfile() or m.isdir())):
            raise UserError(f"{path!r} holds an unsafe entry {m.name!r}: not written by "
                            f"tools/park.py; refusing to unpack it")
    return tar, members, manifest


def restore(archive):
    from fnet_tf.core import fileio

    tar, members, manifest = _open_archive(archive)
    if "bank" in manifest:
        return _restore_bank(archive, tar, members, manifest)
    target = FLAGS.to or manifest.get("path")
    if not target:
        raise UserError(f"{archive!r} does not say where it came from: pass --to DIR")
    if os.path.exists(target) and os.listdir(target):
        raise UserError(f"{target!r} already exists and is not empty: move it away (it may hold "
                        f"newer epochs), or pass --to another directory")
    with tar, fileio.atomic_dir(target) as tmp:
        with tempfile.TemporaryDirectory(dir=tmp) as unpack:
            for m in members:
                if m.name != MANIFEST:
                    tar.extract(m, unpack, set_attrs=False, **_SAFE)
                    # the sweep compares the analysis's time with its model's (a bounded mtime:
                    # the archive is a file from elsewhere)
                    if m.isfile() and isinstance(m.mtime, (int, float)) and 0 <= m.mtime < 2**33:
                        os.utime(os.path.join(unpack, m.name), (m.mtime, m.mtime))
            for entry in os.listdir(os.path.join(unpack, ROOT)):
                os.replace(os.path.join(unpack, ROOT, entry), os.path.join(tmp, entry))
    for run in manifest["runs"]:
        done = ", ".join(f"{phase} epoch {n}" for phase, n in run["epochs_done"].items())
        print(f"{run['run']}: {done or 'no epoch yet'}")
    print(f"restored {cli.count(len(manifest['runs']), 'run')} into {target} (parked {manifest['parked_at']}); "
          f"run the same training or sweep command to resume")
    return 0


def main(argv):
    commands = {"save": save, "save_bank": save_bank, "restore": restore}
    if len(argv) != 3 or argv[1] not in commands:
        raise UserError("usage: python tools/park.py save DIR | save_bank BANK_FOLDER | "
                        "restore ARCHIVE.tar.gz")
    return commands[argv[1]](argv[2])


if __name__ == "__main__":
    cli.run(main)
