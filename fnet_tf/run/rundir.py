"""The run directory: the contract between training, export and analysis.

    RUN_DIR/config.json    the settings that made the run (a resume with others is refused)
    RUN_DIR/run.json       the manifest: completed steps and the sha256 of their artifacts
    RUN_DIR/history.csv    one row per epoch of every phase
    RUN_DIR/metrics.json   measured figures, merged in by each step
    RUN_DIR/checkpoints/   per-phase epoch checkpoints (see fnet_tf.run.checkpoints)

Every file here is written atomically. A run directory may come from someone else, so every
file is read like a model file: with a size bound (``fileio.read_json``/``read_csv``) and its
content checked (``RunDir.read_json``, ``RunDir.history``); a malformed one is a one-line
UserError naming it, and an artifact path in run.json that leaves the run directory is
refused before anything is hashed.
"""
import csv
import io
import os
import re

from fnet_tf.core import fileio
from fnet_tf.core.errors import UserError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_EPOCH = re.compile(r"[0-9]{1,9}")
_NUMERIC_SUFFIXES = ("_accuracy", "_loss", "_seconds")


def same_setting(stored, given):
    """Whether two values of one setting agree: equal, or two spellings of one existing path
    (``data/x`` typed in the checkout and its absolute form, say)."""
    if stored == given:
        return True
    return (isinstance(stored, str) and isinstance(given, str) and os.path.exists(stored)
            and os.path.exists(given) and os.path.realpath(stored) == os.path.realpath(given))


def local_or_name(value):
    """A setting that names a file or a registered thing, as stored in config.json: an
    existing path made absolute (so the run resumes, exports and analyzes from any directory),
    anything else (``tfds:cifar10``, ``zoo:NAME``) as given."""
    return os.path.abspath(value) if isinstance(value, str) and os.path.exists(value) else value


def _malformed(path, problem):
    return UserError(f"{path} is malformed ({problem}): fnet_tf never writes that; delete "
                     f"it, or the run directory, and run again")


def _object_problem(value):
    return None if isinstance(value, dict) else f"a JSON {type(value).__name__}, not an object"


def _metrics_problem(metrics):
    """metrics.json: {section: {figure: value}}, the accuracies, losses and times numbers."""
    if not isinstance(metrics, dict):
        return _object_problem(metrics)
    for section, values in metrics.items():
        if not isinstance(values, dict):
            return f"section {section!r} is not an object"
        for key, value in values.items():
            if key.endswith(_NUMERIC_SUFFIXES) and value is not None and (
                    isinstance(value, bool) or not isinstance(value, (int, float))):
                return f"{section}.{key} is {value!r:.40}, not a number"
    return None


class RunDir:
    CONFIG, MANIFEST, HISTORY, METRICS = "config.json", "run.json", "history.csv", "metrics.json"

    def __init__(self, path):
        self.path = os.path.abspath(path)

    def file(self, name):
        return os.path.join(self.path, name)

    # --- reading: bounded and checked ------------------------------------------------------
    def _check(self, name, value):
        """What is wrong with the content of ``name`` (a file of the run directory), or None."""
        if name == self.CONFIG:
            return _object_problem(value)
        if name == self.MANIFEST:
            return self._manifest_problem(value)
        if name == self.METRICS:
            return _metrics_problem(value)
        return None

    def read_json(self, name, default=None):
        """The JSON file ``name`` of the run directory (``default`` if there is none), read
        with fileio's size bound; config.json, run.json and metrics.json are checked."""
        path = self.file(name)
        if not os.path.lexists(path):
            return default
        value = fileio.read_json(path)
        problem = self._check(name, value)
        if problem:
            raise _malformed(path, problem)
        return value

    def inside(self, rel):
        """The absolute path of ``rel`` if it names a file inside the run directory (after
        symlinks), else None: an absolute path, a '..' that climbs out, or a symlink to a file
        elsewhere."""
        if not isinstance(rel, str) or not rel or "\0" in rel or os.path.isabs(rel):
            return None
        path = os.path.normpath(os.path.join(self.path, rel))
        if not path.startswith(self.path.rstrip(os.sep) + os.sep):
            return None
        root = os.path.realpath(self.path)
        if not os.path.realpath(path).startswith(root.rstrip(os.sep) + os.sep):
            return None
        return path

    def _manifest_problem(self, manifest):
        """run.json: {"steps": {step: {"artifacts": {relative path: sha256 hex}, ...}}}."""
        if not isinstance(manifest, dict):
            return _object_problem(manifest)
        steps = manifest.get("steps")
        if not isinstance(steps, dict):
            return "no 'steps' object"
        for step, entry in steps.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("artifacts"), dict):
                return f"step {step!r} has no 'artifacts' object"
            for key, kind in (("scheme", str), ("options", dict)):
                if key in entry and not isinstance(entry[key], kind):
                    return f"step {step!r} has a {key!r} that is not a {kind.__name__}"
            for rel, digest in entry["artifacts"].items():
                if not self.inside(rel):
                    return (f"step {step!r} lists artifact {rel!r:.80}, which is outside the run "
                            f"directory (an absolute path, '..' or a symlink out)")
                if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                    return f"artifact {rel!r:.80} has {digest!r:.80}, not a sha256 in hex"
        return None

    def config(self):
        return self.read_json(self.CONFIG)

    def has_progress(self):
        """Whether the run holds anything a restart would lose: a completed step or an epoch
        checkpoint. A run that failed before its first epoch has none."""
        if self.manifest()["steps"]:
            return True
        root = self.file("checkpoints")
        return os.path.isdir(root) and any(
            os.path.isdir(os.path.join(root, phase)) and os.listdir(os.path.join(root, phase))
            for phase in os.listdir(root))

    def config_changes(self, config, ignore=()):
        """The settings (but ``ignore``) that ``config`` changes in the stored config.json."""
        stored = self.config() or {}
        return sorted(k for k in set(stored) & set(config)
                      if k not in ignore and not same_setting(stored[k], config[k]))

    def check_config(self, config, ignore=(), resume_command="the flags it was started with"):
        """Before any work: refuse ``config`` if it changes the settings of a run that has
        progress (UserError naming the changes and ``resume_command``). Writes nothing."""
        differ = self.config_changes(config, ignore)
        if differ and self.has_progress():
            stored = self.config()
            shown = ", ".join(f"--{k}={stored[k]!r} (now {config[k]!r})" for k in differ[:4])
            raise UserError(f"run directory {self.path} was made with other settings: {shown}; "
                            f"resume it with {resume_command}, or pass a new --run_dir")

    def bind_config(self, config, ignore=()):
        """Write ``config`` for a new run, or check it against the stored one on a resume.

        Settings present in both must be equal (except ``ignore``), unless the run never
        completed an epoch: then it starts again with the new settings (a note says so).
        Settings new to this invocation (say, QAT flags added to a finished float run) are
        added.
        """
        stored = self.config()
        if stored is None:
            os.makedirs(self.path, exist_ok=True)
            fileio.write_json(self.file(self.CONFIG), config)
            return
        differ = self.config_changes(config, ignore)
        if differ:
            self.check_config(config, ignore)
            print(f"note: {self.path} never completed an epoch: starting it again with the new "
                  f"settings ({', '.join('--' + k for k in differ[:4])})", flush=True)
            fileio.write_json(self.file(self.CONFIG), config)
            return
        added = {k: v for k, v in config.items() if k not in stored}
        if added:
            fileio.write_json(self.file(self.CONFIG), {**stored, **added})

    # --- manifest -----------------------------------------------------------------------
    def manifest(self):
        return self.read_json(self.MANIFEST, {"steps": {}})

    def complete(self, step, artifacts, **info):
        """Record ``step`` as complete with the sha256 of each artifact (paths in the run dir)."""
        manifest = self.manifest()
        manifest["steps"][step] = {
            "artifacts": {os.path.relpath(p, self.path): fileio.sha256_file(p) for p in artifacts},
            **info,
        }
        fileio.write_json(self.file(self.MANIFEST), manifest)

    def _artifact_problem(self, step):
        """(recorded, problem): whether ``step`` is in run.json, and what is wrong with its
        artifacts (a missing file or a sha256 mismatch), or None."""
        entry = self.manifest()["steps"].get(step)
        if not entry:
            return False, None
        for rel, digest in entry["artifacts"].items():
            path = self.file(rel)
            if not os.path.isfile(path):
                return True, (f"{path} is missing though run.json records step {step!r}: "
                              f"re-run that step")
            if fileio.sha256_file(path) != digest:
                return True, (f"{path} does not match its sha256 in run.json (corrupt or "
                              f"replaced): delete it and re-run step {step!r}")
        return True, None

    def is_complete(self, step):
        """True when ``step`` is recorded and every artifact exists with its recorded sha256."""
        recorded, problem = self._artifact_problem(step)
        return recorded and problem is None

    def verified(self, step):
        """Like ``is_complete``, but a recorded step whose artifact is missing or altered is an
        error naming the file (a tool must not quietly fall back to another model)."""
        recorded, problem = self._artifact_problem(step)
        if problem:
            raise UserError(problem)
        return recorded

    # --- history and metrics ----------------------------------------------------------------
    def append_history(self, row):
        rows = self.history()
        rows.append({k: row[k] for k in row})
        fields = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        fileio.write_text(self.file(self.HISTORY), buf.getvalue())

    def history(self):
        """The rows of history.csv (strings, as written), read with fileio's size bound; every
        row has an integer ``epoch`` and, where the column exists, a ``phase``."""
        path = self.file(self.HISTORY)
        if not os.path.lexists(path):
            return []
        rows = fileio.read_csv(path)
        for number, row in enumerate(rows, 1):
            if not _EPOCH.fullmatch(row.get("epoch") or ""):
                raise _malformed(path, f"row {number}: epoch {row.get('epoch')!r:.40} is not an "
                                       f"integer")
        return rows

    def truncate_history(self, phase, epochs):
        """Drop rows of ``phase`` past ``epochs`` (epochs done after the last checkpoint)."""
        rows = self.history()
        kept = [r for r in rows if not (r.get("phase") == phase and int(r["epoch"]) > epochs)]
        if len(kept) != len(rows):
            os.remove(self.file(self.HISTORY))
            for r in kept:
                self.append_history(r)

    def update_metrics(self, section, values):
        metrics = self.read_json(self.METRICS, {})
        metrics[section] = values
        fileio.write_json(self.file(self.METRICS), metrics)
