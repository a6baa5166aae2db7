"""Atomic writes and checksums: a crash never leaves a half-written file that looks whole.

Every artifact is written to a temporary name in its final directory and renamed into place
(``os.replace`` is atomic on POSIX within one file system).
"""
import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile

CRASH_ENV = "FNET_TF_CRASH_AT"
_UMASK = os.umask(0)
os.umask(_UMASK)
_crash_counts = {}


def crash_point(kind, path):
    """Fault injection for the reliability tests: with ``FNET_TF_CRASH_AT=POINT:N`` in the
    environment, the Nth time the process reaches ``POINT`` it kills itself with SIGKILL (as a
    power cut or the OOM killer would). A no-op otherwise.

    POINT is ``atomic-file`` or ``atomic-dir`` (any artifact fully written under its temporary
    name, not yet renamed into place), or ``atomic-file/<name>`` for one file name.
    """
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    target, _, count = spec.rpartition(":") if ":" in spec else (spec, "", "1")
    if target not in (kind, f"{kind}/{os.path.basename(path)}"):
        return
    _crash_counts[target] = _crash_counts.get(target, 0) + 1
    if _crash_counts[target] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    For writers that want a file name (``model.save``, ``plt.savefig``). On error the
    temporary file is removed and ``path`` is left as it was.
    """
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Keep the whole suffix (".weights.h5", ".tar.gz"): writers such as Keras pick the file
    # format from the name's ending.
    root, dot, suffixes = name.lstrip(".").partition(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{root}.", suffix=f".tmp{dot}{suffixes}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual mode
        crash_point("atomic-file", path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path, data):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def read_json(path):
    """The JSON in ``path``; a missing or corrupt file is a UserError naming it."""
    from fnet_tf.errors import UserError

    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable or corrupt ({e}): delete it, or the directory "
                        f"holding it, and run again") from None


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory beside ``path``; on success rename it to ``path``.

    An existing ``path`` is replaced. A crash leaves only a ``.tmp`` directory, which
    readers ignore and the next write removes.
    """
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    try:
        yield tmp
        crash_point("atomic-dir", path)
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
            os.replace(path, os.path.join(old, name))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
