"""The run directory: the contract between training, export and analysis.

    RUN_DIR/config.json    the settings that made the run (a resume with others is refused)
    RUN_DIR/run.json       the manifest: completed steps and the sha256 of their artifacts
    RUN_DIR/history.csv    one row per epoch of every phase
    RUN_DIR/metrics.json   measured figures, merged in by each step
    RUN_DIR/checkpoints/   per-phase epoch checkpoints (see fnet_tf.checkpoints)

Every file here is written atomically.
"""
import csv
import io
import os

from fnet_tf import fileio
from fnet_tf.errors import UserError


class RunDir:
    CONFIG, MANIFEST, HISTORY, METRICS = "config.json", "run.json", "history.csv", "metrics.json"

    def __init__(self, path):
        self.path = os.path.abspath(path)

    def file(self, name):
        return os.path.join(self.path, name)

    # --- config ------------------------------------------------------------------------
    def read_json(self, name, default=None):
        path = self.file(name)
        if not os.path.exists(path):
            return default
        return fileio.read_json(path)

    def config(self):
        return self.read_json(self.CONFIG)

    def bind_config(self, config, ignore=()):
        """Write ``config`` for a new run, or check it against the stored one on a resume.

        Settings present in both must be equal (except ``ignore``); settings new to this
        invocation (say, QAT flags added to a finished float run) are added.
        """
        stored = self.config()
        if stored is None:
            os.makedirs(self.path, exist_ok=True)
            fileio.write_json(self.file(self.CONFIG), config)
            return
        differ = sorted(k for k in set(stored) & set(config)
                        if k not in ignore and stored[k] != config[k])
        if differ:
            shown = ", ".join(f"--{k}={stored[k]!r} (now {config[k]!r})" for k in differ[:4])
            raise UserError(f"run directory {self.path} was made with other settings: {shown}; "
                            f"re-run with the same flags to resume, or pass a new --run_dir")
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
        path = self.file(self.HISTORY)
        if not os.path.exists(path):
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

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
