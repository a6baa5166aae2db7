"""CIFAR-10 and image-folder data: loading, caching, augmentation, calibration samples.

``--data`` accepts:
- ``cifar10``: the ``tensorflow-datasets`` loader (needs internet on first use);
- an image-folder tree ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (``ROOT`` may
  also hold a single folder that has them, such as ``cifar10/``);
- a ``.tar.gz``/``.tgz``/``.tar``/``.zip`` of such a tree (e.g.
  ``../shared/data/cifar10-jpeg.tar.gz``), extracted once into the cache directory.

Decoded images are kept as uint8 arrays in memory (CIFAR-10 is 150 MB) and cached on disk as
``.npy`` files keyed by the archive's sha256 (or the tree's file listing), so the second load
takes about a second and no epoch waits for JPEG decoding. Images of another size than the
model's input (``--image_size``, 32x32 by default) are brought to it by one rule, the device
runner's ``fit_image``: resized so the shorter side fits, then center-cropped (``RESIZE_RULE``).
Images are raw pixels 0..255: the models normalise in their first conv + BN, so a device
feeds ``pixel - 128`` to an INT8 model.
"""
import dataclasses
import hashlib
import os
import shutil
import stat
import sys
import tarfile
import zipfile
import zlib

import numpy as np

from fnet_tf.core import fileio
from fnet_tf.core.errors import UserError
from fnet_tf.core.wording import count
from fnet_tf.device.run_tflite import fit_image

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
ARCHIVE_EXTENSIONS = (".tar.gz", ".tgz", ".tar", ".zip")
CACHE_VERSION = 2  # bump when the decoded arrays change (2: the one resize rule, fit_image)
# An archive from someone else is listed (headers only) before anything is extracted: it may
# not expand to more than the cache's free space, nor more than MAX_EXPANSION times its own
# size (real image archives expand 1-3x; a decompression bomb of zeros ~1000x), nor hold more
# than MAX_ARCHIVE_MEMBERS entries, links or special files.
MAX_ARCHIVE_MEMBERS = 2_000_000
MAX_EXPANSION = 200
FREE_SPACE_RESERVE = 256 << 20
MAX_IMAGE_PIXELS = 16_000_000  # a dataset image declaring more is skipped, never decoded


def default_cache_dir():
    return os.environ.get("FNET_TF_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fnet_tf")


@dataclasses.dataclass
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8, raw pixels
    labels: np.ndarray  # (N,) int32

    def __len__(self):
        return len(self.labels)

    def take(self, indices):
        return Split(self.images[indices], self.labels[indices])


@dataclasses.dataclass
class Dataset:
    train: Split
    test: Split
    classes: tuple
    source: str
    val: Split = None
    skipped: int = 0  # unreadable image files left out

    @property
    def image_shape(self):
        return tuple(self.train.images.shape[1:])

    def describe(self):
        val = f", val {len(self.val)}" if self.val is not None else ""
        return (f"{self.source}: train {len(self.train)}{val}, test {len(self.test)}, "
                f"{len(self.classes)} classes, images {self.image_shape}")


# --- loading -----------------------------------------------------------------------------

def load(source, *, cache_dir=None, val_split=0, image_size=(32, 32)):
    """Load ``source`` (see module docstring) as a ``Dataset``.

    ``val_split`` images are carved from the training split (the same number from every
    class, the last ones in file order), so tuning never touches the test split.
    """
    cache_dir = cache_dir or default_cache_dir()
    kind = check_source(source)
    if kind == "tfds":
        data = _load_tfds_cifar10(cache_dir)
    elif kind == "archive":
        data = _load_archive(source, cache_dir, image_size)
    else:
        data = _load_folder(source, cache_dir, image_size)
    if kind == "tfds" and tuple(image_size) != data.image_shape[:2]:
        data.train, data.test = (resize_split(s, image_size) for s in (data.train, data.test))
    if val_split:
        data.train, data.val = split_validation(data.train, val_split, len(data.classes))
    return data


def parse_image_size(text):
    """``--image_size``: ``96`` -> (96, 96), ``96,128`` (height, width) -> (96, 128);
    ValueError if it is not one or two positive integers."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"{text!r} is not an image size: one side (96) or height,width (96,128)")
    sizes = [int(p) for p in parts]
    return (sizes[0], sizes[-1])


MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 8, 1024


def check_image_size(size, flag="--image_size"):
    if not all(MIN_IMAGE_SIDE <= side <= MAX_IMAGE_SIDE for side in size):
        raise UserError(f"{flag} {size[0]},{size[1]} is out of range: each side from "
                        f"{MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} pixels")
    return size


def image_size_flag(text):
    """A command's ``--image_size`` value as (height, width), None when not given; a
    malformed or out-of-range one is a one-line UserError."""
    if not text:
        return None
    try:
        return check_image_size(parse_image_size(text))
    except ValueError as e:
        raise UserError(f"--image_size {e}") from None


def resize_split(split, image_size):
    """``split`` with every image brought to ``image_size`` by the one resize rule."""
    from PIL import Image


    images = np.stack([np.asarray(fit_image(Image.fromarray(im), *image_size), np.uint8)
                       for im in split.images])
    return Split(images, split.labels)


RESIZE_RULE = ("resized (bilinear) so the shorter side fits, then center-cropped; images "
               "already at the size are untouched")


def check_source(source):
    """What kind of source ``source`` is ('tfds', 'archive', 'folder'); UserError if none.

    Cheap (no decoding), so a CLI can reject a bad ``--data`` before it loads TensorFlow.
    """
    if source == "cifar10":
        return "tfds"
    if not os.path.exists(source):
        raise UserError(f"dataset {source!r} does not exist: pass --data cifar10, an image-folder "
                        f"tree or its .tar.gz (e.g. ../shared/data/cifar10-jpeg.tar.gz)")
    if os.path.isfile(source) and source.lower().endswith(ARCHIVE_EXTENSIONS):
        return "archive"
    if os.path.isdir(source):
        return "folder"
    raise UserError(f"cannot read dataset {source!r}: expected 'cifar10', a directory with "
                    f"train/ and test/ class folders, or a {'/'.join(ARCHIVE_EXTENSIONS)} of one")


def split_validation(train, count, num_classes):
    """(rest, val): ``count`` images, the last of each class in file order, stratified."""
    if not 0 < count < len(train):
        raise UserError(f"--val_split {count} must be between 0 and the {len(train)} training "
                        f"images")
    val_idx = []
    for c in range(num_classes):
        idx = np.flatnonzero(train.labels == c)
        n = count // num_classes + (1 if c < count % num_classes else 0)
        val_idx.extend(idx[len(idx) - n:])
    mask = np.zeros(len(train), bool)
    mask[val_idx] = True
    return train.take(np.flatnonzero(~mask)), train.take(np.flatnonzero(mask))


def _load_tfds_cifar10(cache_dir):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise UserError(f"--data cifar10 needs tensorflow-datasets ({e}): pip install "
                        f"tensorflow-datasets, or pass an image-folder archive") from None
    try:
        (xtr, ytr), (xte, yte) = tfds.as_numpy(tfds.load(
            "cifar10", split=["train", "test"], batch_size=-1, as_supervised=True,
            data_dir=os.path.join(cache_dir, "tfds")))
    except Exception as e:  # noqa: BLE001  (tfds raises many types for "no network")
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"tensorflow-datasets could not load cifar10 ({first}): without "
                        f"internet pass --data ../shared/data/cifar10-jpeg.tar.gz") from None
    return Dataset(Split(xtr.astype(np.uint8), ytr.astype(np.int32)),
                   Split(xte.astype(np.uint8), yte.astype(np.int32)),
                   CIFAR10_CLASSES, "cifar10 (tensorflow-datasets)")


def _load_archive(path, cache_dir, image_size):
    digest = fileio.sha256_file(path)
    arrays = _cached_arrays(cache_dir, digest, image_size)
    if arrays is not None:
        return _dataset_from_arrays(arrays, f"{os.path.basename(path)} (sha256 {digest[:12]})")
    root = _extract(path, digest, cache_dir)
    data = _decode_tree(_find_tree_root(root, path), image_size)
    _save_arrays(cache_dir, digest, image_size, data)
    data.source = f"{os.path.basename(path)} (sha256 {digest[:12]})"
    return data


def _load_folder(path, cache_dir, image_size):
    root = _find_tree_root(path, path)
    listing = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            st = os.stat(os.path.join(dirpath, name))
            listing.update(f"{os.path.relpath(dirpath, root)}/{name}:{st.st_size}:"
                           f"{st.st_mtime_ns}\n".encode())
    key = "tree-" + listing.hexdigest()
    arrays = _cached_arrays(cache_dir, key, image_size)
    if arrays is not None:
        return _dataset_from_arrays(arrays, os.path.abspath(path))
    data = _decode_tree(root, image_size)
    _save_arrays(cache_dir, key, image_size, data)
    data.source = os.path.abspath(path)
    return data


def _extract(path, digest, cache_dir):
    """Extract the archive once into ``cache_dir/extracted/<sha256>``; reuse it afterwards.
    Its listing is checked first (``check_archive``), so a bomb leaves nothing behind."""
    target = os.path.join(cache_dir, "extracted", digest[:24])
    if os.path.isfile(os.path.join(target, ".complete")):
        return target
    try:
        check_archive(path, cache_dir)
        print(f"extracting {path} to {target} (once)", file=sys.stderr)
        with fileio.atomic_dir(target) as tmp:
            if path.lower().endswith(".zip"):
                with zipfile.ZipFile(path) as z:
                    z.extractall(tmp)
            else:
                with tarfile.open(path) as t:
                    t.extractall(tmp, filter="data")
            fileio.write_text(os.path.join(tmp, ".complete"), digest + "\n")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
        raise UserError(f"dataset archive {path!r} is corrupt or unreadable ({e}): download "
                        f"or copy it again") from None
    return target


def _free_bytes(directory):
    while not os.path.isdir(directory):  # the cache may not exist yet: its nearest parent
        directory = os.path.dirname(directory) or "."
    return shutil.disk_usage(directory).free


def _members(path):
    """(name, size, kind) of every member from the headers alone; kind is 'file', 'dir',
    'symlink', 'hardlink' or 'device or fifo'."""
    if path.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                mode = stat.S_IFMT(info.external_attr >> 16)
                kind = ("dir" if info.is_dir() else "file" if mode in (0, stat.S_IFREG)
                        else "symlink" if mode == stat.S_IFLNK else "device or fifo")
                yield info.filename, info.file_size, kind
        return
    with tarfile.open(path, "r|*") as t:  # a stream: headers are read as it goes
        for member in t:
            kind = ("file" if member.isreg() else "dir" if member.isdir() else
                    "symlink" if member.issym() else "hardlink" if member.islnk() else
                    "device or fifo")
            yield member.name, member.size, kind
            t.members.clear()  # keep memory flat however many members it lists


def check_archive(path, cache_dir, what="dataset archive"):
    """Refuse, before anything is extracted, an archive whose listing declares more than the
    free space in ``cache_dir`` or ``MAX_EXPANSION`` times its own size, more than
    ``MAX_ARCHIVE_MEMBERS`` entries, a link, a special file or a path outside its folder.
    ``what`` names the archive in the messages (``tools/park.py`` checks its archives too)."""
    size = os.path.getsize(path)
    free = _free_bytes(cache_dir) - FREE_SPACE_RESERVE
    limits = [(free, f"the {max(free, 0) / 2**30:.1f} GiB free in the cache {cache_dir} "
                     f"(free space there, or pass --cache_dir on a larger disk)"),
              (MAX_EXPANSION * size, f"{MAX_EXPANSION}x the archive's own size (a "
                                     f"decompression bomb?)")]
    limit, why = min(limits, key=lambda item: item[0])
    total = count = 0
    for name, member_size, kind in _members(path):
        count += 1
        total += member_size
        if kind not in ("file", "dir"):
            raise UserError(f"{what} {path!r} holds a {kind} ({name!r}): a {what} holds only "
                            f"files and folders; refusing to extract it")
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
            raise UserError(f"{what} {path!r} holds an unsafe entry {name!r} (a path outside "
                            f"its folder): refusing to extract it")
        if total > limit:
            raise UserError(f"{what} {path!r} declares over {total / 2**30:.2f} GiB "
                            f"of files, more than {why}: refusing to extract it")
        if count > MAX_ARCHIVE_MEMBERS:
            raise UserError(f"{what} {path!r} holds over {MAX_ARCHIVE_MEMBERS:,} entries, "
                            f"the limit for a {what}: refusing to extract it")
    return total, count


def _find_tree_root(path, shown):
    """The folder holding train/ and test/: ``path`` itself or its single subfolder."""
    candidates = [path] + [os.path.join(path, d) for d in sorted(os.listdir(path))
                           if os.path.isdir(os.path.join(path, d)) and not d.startswith(".")]
    for c in candidates:
        if os.path.isdir(os.path.join(c, "train")) and os.path.isdir(os.path.join(c, "test")):
            return c
    raise UserError(f"dataset {shown!r} has no train/ and test/ folders: expected "
                    f"train/<class>/*.jpg and test/<class>/*.jpg")


def _decode_tree(root, image_size):
    from PIL import Image


    classes = tuple(sorted(d for d in os.listdir(os.path.join(root, "train"))
                           if os.path.isdir(os.path.join(root, "train", d))))
    test_classes = tuple(sorted(d for d in os.listdir(os.path.join(root, "test"))
                                if os.path.isdir(os.path.join(root, "test", d))))
    if not classes:
        raise UserError(f"dataset {root!r}: train/ has no class folders")
    if len(classes) < 2:
        raise UserError(f"dataset {root!r} has one class ({classes[0]}): a classifier needs at "
                        f"least two class folders in train/ and test/")
    if classes != test_classes:
        missing = sorted(set(classes) ^ set(test_classes))
        raise UserError(f"dataset {root!r}: train/ and test/ have different class folders "
                        f"({', '.join(missing)}): every class needs a folder in both")
    splits, skipped = {}, []
    for split in ("train", "test"):
        images, labels = [], []
        for label, cls in enumerate(classes):
            folder = os.path.join(root, split, cls)
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
            for name in names:
                try:
                    with Image.open(os.path.join(folder, name)) as im:  # header only
                        if im.width * im.height > MAX_IMAGE_PIXELS:
                            raise ValueError("more pixels than MAX_IMAGE_PIXELS")
                        images.append(np.asarray(fit_image(im, *image_size), np.uint8))
                        labels.append(label)
                except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                    skipped.append(os.path.join(split, cls, name))
            if not any(lbl == label for lbl in labels):
                raise UserError(f"dataset {root!r}: {split}/{cls} has no readable images")
        splits[split] = Split(np.stack(images), np.asarray(labels, np.int32))
    if skipped:
        print(f"warning: skipped {count(len(skipped), 'unreadable image')} in {root} "
              f"(first: {skipped[0]})", file=sys.stderr)
    return Dataset(splits["train"], splits["test"], classes, root, skipped=len(skipped))


def _cache_path(cache_dir, key, image_size):
    return os.path.join(cache_dir, "arrays", f"{key[:40]}-{image_size[0]}x{image_size[1]}"
                                             f"-v{CACHE_VERSION}.npz")


def _cached_arrays(cache_dir, key, image_size):
    path = _cache_path(cache_dir, key, image_size)
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        print(f"warning: decoded-image cache {path} is unreadable; decoding again",
              file=sys.stderr)
        return None


def _save_arrays(cache_dir, key, image_size, data):
    with fileio.atomic_path(_cache_path(cache_dir, key, image_size)) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, x_train=data.train.images, y_train=data.train.labels,
                     x_test=data.test.images, y_test=data.test.labels,
                     classes=np.asarray(data.classes), skipped=np.asarray(data.skipped))


def _dataset_from_arrays(a, source):
    return Dataset(Split(a["x_train"], a["y_train"]), Split(a["x_test"], a["y_test"]),
                   tuple(str(c) for c in a["classes"]), source, skipped=int(a["skipped"]))


# --- augmentation and batching -------------------------------------------------------------

CROP_MODES = {"zeros": "constant", "reflect": "reflect"}  # --crop_mode -> numpy's pad mode


def augment_batch(images, rng, pad=4, flip=True, cutout=0, pad_mode="zeros"):
    """Standard CIFAR augmentation on a uint8 batch: pad-and-crop (``pad_mode`` zeros, or
    reflect as airbench translates), horizontal flip, cutout.

    Vectorised numpy (one fancy-indexing gather for the crops), so a whole epoch costs well
    under a second on one core.
    """
    n, h, w, _ = images.shape
    out = images
    if pad:
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                        mode=CROP_MODES[pad_mode])
        oy = rng.integers(0, 2 * pad + 1, n)
        ox = rng.integers(0, 2 * pad + 1, n)
        rows = (oy[:, None] + np.arange(h))[:, :, None]
        cols = (ox[:, None] + np.arange(w))[:, None, :]
        out = padded[np.arange(n)[:, None, None], rows, cols]
    if flip:
        flips = rng.random(n) < 0.5
        out = out.copy() if out is images else out
        out[flips] = out[flips, :, ::-1]
    if cutout:
        cy = rng.integers(0, h, n)[:, None, None]
        cx = rng.integers(0, w, n)[:, None, None]
        yy = np.arange(h)[None, :, None]
        xx = np.arange(w)[None, None, :]
        hole = (np.abs(yy - cy) <= cutout // 2) & (np.abs(xx - cx) <= cutout // 2)
        out = out.copy() if out is images else out
        out[hole] = 0
    return out


def epoch_order(n, seed, epoch):
    """The shuffled order of epoch ``epoch``: a function of (seed, epoch) alone, so a resumed
    run sees the same batches an uninterrupted one would."""
    return np.random.default_rng([seed, epoch, 0]).permutation(n)


REFERENCE_SIDE = 32  # --crop_pad and --cutout are in pixels of a 32x32 image


def scaled_to(pixels, image_shape):
    """A length given at 32x32 (``--crop_pad``, ``--cutout``) at this image size: scaled with
    the shorter side, so 4 pixels of padding at 32 are 12 at 96."""
    return int(round(pixels * min(image_shape[:2]) / REFERENCE_SIDE))


def epoch_batches(split, batch_size, *, seed, epoch, augment=True, cutout=0, crop_pad=4,
                  crop_mode="zeros"):
    """Yield the (images uint8, labels int32) batches of one training epoch. ``cutout`` and
    ``crop_pad`` are pixels at 32x32, scaled to the images' size (``scaled_to``)."""
    shape = split.images.shape[1:3]
    cutout, crop_pad = scaled_to(cutout, shape), scaled_to(crop_pad, shape)
    order = epoch_order(len(split), seed, epoch)
    rng = np.random.default_rng([seed, epoch, 1])
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        images = split.images[idx]
        if augment:
            images = augment_batch(images, rng, pad=crop_pad, cutout=cutout,
                                   pad_mode=crop_mode)
        yield images, split.labels[idx]


def representative_dataset(split, num_samples=500, seed=0):
    """A calibration generator for the TFLite converter over ``split`` (use the training split,
    never test): ``num_samples`` images, one per yield, as float32 raw pixels."""
    count = min(num_samples, len(split))
    idx = np.random.default_rng(seed).choice(len(split), count, replace=False)

    def generate():
        for i in idx:
            yield [split.images[i:i + 1].astype(np.float32)]

    return generate
