"""Epoch checkpoints that survive ``kill -9`` at any moment.

Each checkpoint is a directory ``epoch-NNNN`` holding a ``tf.train.Checkpoint`` of the model
and optimizer (weights, slots, step counter: the LR schedule's position) and ``meta.json``
with the sha256 of every file. It is written under a temporary name and renamed, and
``meta.json`` is checked on restore, so a torn or corrupted checkpoint is never chosen: the
newest valid one wins and the bad one is reported.
"""
import glob
import os
import re
import shutil
import sys

from fnet_tf.core import backend, fileio
from fnet_tf.core.errors import UserError

_NAME = re.compile(r"^epoch-(\d{4,})$")


class EpochCheckpoints:
    def __init__(self, directory, keep=2):
        self.directory = directory
        self.keep = keep

    def _epochs(self):
        if not os.path.isdir(self.directory):
            return []
        found = [(int(m.group(1)), os.path.join(self.directory, d))
                 for d in os.listdir(self.directory) if (m := _NAME.match(d))]
        return sorted(found, reverse=True)

    def save(self, epoch, model, optimizer, **meta):
        tf = backend.tf

        path = os.path.join(self.directory, f"epoch-{epoch:04d}")
        with fileio.atomic_dir(path) as tmp:
            tf.train.Checkpoint(model=model, optimizer=optimizer).write(os.path.join(tmp, "ckpt"))
            files = {name: fileio.sha256_file(os.path.join(tmp, name))
                     for name in sorted(os.listdir(tmp))}
            fileio.write_json(os.path.join(tmp, "meta.json"),
                              {"epoch": epoch, "files": files, **meta})
        for _, old in self._epochs()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in glob.glob(os.path.join(self.directory, ".epoch-*.tmp")):
            shutil.rmtree(stale, ignore_errors=True)
        return path

    @staticmethod
    def _problem(path):
        """Why checkpoint ``path`` cannot be used, or None if it is whole."""
        try:
            meta = fileio.read_json(os.path.join(path, "meta.json"))  # bounded: may be foreign
        except UserError:
            return "its meta.json is missing or corrupt"
        files = meta.get("files") if isinstance(meta, dict) else None
        if not isinstance(files, dict):
            return "its meta.json is malformed"
        for name, digest in files.items():
            if (name in ("", ".", "..") or os.sep in name or "\0" in name
                    or not isinstance(digest, str)):
                return f"its meta.json lists {name!r:.80}, not a file of the checkpoint"
            file = os.path.join(path, name)
            if os.path.islink(file):
                return f"{name} is a symlink"
            if not os.path.isfile(file):
                return f"{name} is missing"
            if fileio.sha256_file(file) != digest:
                return f"{name} does not match its checksum"
        return None if files else "it lists no files"

    def latest(self):
        """(epoch, path) of the newest whole checkpoint, or (0, None). Corrupt ones are
        reported and skipped; if every checkpoint is corrupt that is an error."""
        candidates = self._epochs()
        for epoch, path in candidates:
            problem = self._problem(path)
            if problem is None:
                return epoch, path
            print(f"warning: skipping corrupt checkpoint {path} ({problem})", file=sys.stderr)
        if candidates:
            raise UserError(f"every checkpoint in {self.directory} is corrupt: delete that folder "
                            f"to restart this phase from scratch")
        return 0, None

    @staticmethod
    def restore(path, model, optimizer):
        tf = backend.tf

        optimizer.build(model.trainable_variables)
        try:
            status = tf.train.Checkpoint(model=model, optimizer=optimizer).read(
                os.path.join(path, "ckpt"))
            status.assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            first = str(e).strip().splitlines()[0][:160]
            raise UserError(f"checkpoint {path} does not fit this model ({first}): it belongs to "
                            f"another run; pass a new --run_dir") from None
