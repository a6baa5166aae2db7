"""Cheap distillation: a teacher's logits computed once for a bank of augmented epochs.

Distilling with the teacher in the loop runs its forward pass on every augmented batch, which
for a teacher ~10-25x a student's MACs costs more than the student's whole training step. A
bank instead holds the teacher's logits for ``K`` augmented copies of the training split
(``fnet_tf.data.datasets.epoch_batches`` with a fixed bank seed, the student's crop/cutout settings
and batch size), computed once, on first use, and kept in the data cache, where every student
trained with the same teacher, data and augmentation reuses them (another seed included).

Student epoch ``e`` trains on bank epoch ``e mod K``: the same augmented images the teacher
saw (teacher and student see the same view), in an order drawn from the student's seed and
``e``, so each cycle visits them in a new order. With ``tta="flip"`` a logit is the mean of the
teacher's logits on the image and on its mirror (the teacher's flip test-time augmentation).
Such a logit is the mirror's logit as well, so with ``mirror=True`` each student epoch mirrors a
random half of its views (drawn from the student's seed and ``e``): the student sees twice the
bank's views for the same teacher work, each view's orientation drawn anew every cycle.
"""
import hashlib
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from fnet_tf.core import fileio
from fnet_tf.core.errors import UserError
from fnet_tf.data import datasets as data_lib
from fnet_tf.run.artifacts import FLOAT_MODEL, is_run_dir
from fnet_tf.run.portable_weights import WEIGHTS

BANK_SEED = 1000  # the bank's augmentation seed: one bank serves every student seed
TTA_MODES = ("none", "flip")
NPY_HEADER_MAX = 4096  # bytes a .npy header may take before the array (it is 128 in practice)


def parse_bank_epochs(text, size):
    """The bank epochs ``text`` names ('A-B', 'A,B' or None: all of 0..size-1); UserError
    for anything else (``tools/teacher_bank.py --bank_epochs``)."""
    if not text:
        return list(range(size))
    chosen = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise UserError(f"--bank_epochs {text!r}: pass 'A-B' or 'A,B,C' (0-based numbers)")
        chosen.extend(range(int(first), int(last or first) + 1))
    outside = [e for e in chosen if e >= size]
    if outside:
        raise UserError(f"--bank_epochs {text!r} names bank epoch {outside[0]}, but the bank has "
                        f"{size} (0..{size - 1})")
    return chosen


@dataclass(frozen=True)
class BankKey:
    """Everything the bank's logits depend on."""

    teacher_sha256: str
    data: str
    train_images: int
    image_shape: tuple
    batch_size: int
    crop_pad: int
    crop_mode: str
    cutout: int
    tta: str

    def digest(self):
        text = json.dumps(self.__dict__, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def teacher_file(path):
    """The file whose bytes identify a teacher: a run's float model, or the file itself."""

    if is_run_dir(path):
        return os.path.join(path, FLOAT_MODEL)
    if os.path.isdir(path):  # a Keras 3 --out folder
        return os.path.join(path, WEIGHTS)
    return path


class LogitBank:
    """The teacher's logits for ``size`` augmented epochs of ``split`` (see the module)."""

    def __init__(self, teacher, teacher_path, split, dataset_source, recipe, size, tta,
                 cache_dir=None, mirror=False):
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        if mirror and tta != "flip":
            raise ValueError("mirror=True needs flip-invariant logits (tta='flip')")
        self.teacher, self.split, self.recipe, self.size, self.tta, self.mirror = (
            teacher, split, recipe, int(size), tta, bool(mirror))
        key = BankKey(fileio.sha256_file(teacher_file(teacher_path)), dataset_source,
                      len(split), tuple(int(v) for v in split.images.shape[1:]),
                      recipe.batch_size, recipe.crop_pad, recipe.crop_mode,
                      recipe.cutout, tta)
        self.folder = os.path.join(cache_dir or data_lib.default_cache_dir(), "teacher_banks",
                                   key.digest())
        os.makedirs(self.folder, exist_ok=True)
        fileio.write_json(os.path.join(self.folder, "key.json"), key.__dict__)

    def _augmented(self, bank_epoch):
        batches = list(data_lib.epoch_batches(
            self.split, self.recipe.batch_size, seed=BANK_SEED, epoch=bank_epoch,
            cutout=self.recipe.cutout, crop_pad=self.recipe.crop_pad,
            crop_mode=self.recipe.crop_mode))
        return (np.concatenate([b[0] for b in batches]),
                np.concatenate([b[1] for b in batches]).astype(np.int32))

    def _path(self, bank_epoch):
        return os.path.join(self.folder, f"epoch_{bank_epoch:04d}.npy")

    def _logits(self, bank_epoch, images):
        path = self._path(bank_epoch)
        expected = (len(images), int(self.teacher.output_shape[-1]))
        # a cached file larger than its array plus a .npy header is not ours: recomputed, not read
        if os.path.isfile(path) and os.path.getsize(path) <= 4 * expected[0] * expected[1] + NPY_HEADER_MAX:
            logits = np.load(path, allow_pickle=False)
            if logits.shape == expected and logits.dtype == np.float32:
                return logits
        started = time.time()
        logits = self.teacher.predict(images.astype(np.float32), batch_size=500, verbose=0)
        if self.tta == "flip":
            mirrored = images[:, :, ::-1].astype(np.float32)
            logits = 0.5 * (logits + self.teacher.predict(mirrored, batch_size=500, verbose=0))
        logits = np.asarray(logits, np.float32)
        with fileio.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, logits)
        print(f"[bank] teacher logits for augmented epoch {bank_epoch + 1}/{self.size} "
              f"({self.tta} TTA): {time.time() - started:.0f}s, kept in {self.folder}",
              flush=True)
        return logits

    def fill(self, bank_epochs):
        """Compute the logits of each of ``bank_epochs`` the cache lacks, in that order, so
        another process (``tools/teacher_bank.py``) can fill a bank beside the student that
        reads it; returns the bank epochs computed here."""
        computed = []
        for bank_epoch in bank_epochs:
            if not 0 <= bank_epoch < self.size:
                raise ValueError(f"bank epoch {bank_epoch} is outside 0..{self.size - 1}")
            if not os.path.isfile(self._path(bank_epoch)):
                self._logits(bank_epoch, self._augmented(bank_epoch)[0])
                computed.append(bank_epoch)
        return computed

    def epoch(self, epoch, seed):
        """(images, labels, teacher logits) of student epoch ``epoch``, in the student's order."""
        bank_epoch = epoch % self.size
        images, labels = self._augmented(bank_epoch)
        logits = self._logits(bank_epoch, images)
        order = np.random.default_rng([seed, epoch, 2]).permutation(len(labels))
        images, labels, logits = images[order], labels[order], logits[order]
        if self.mirror:
            flip = np.random.default_rng([seed, epoch, 3]).random(len(labels)) < 0.5
            images[flip] = images[flip, :, ::-1]
        return images, labels, logits
