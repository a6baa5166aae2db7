"""Atomic writes and checksums: a crash never leaves a half-written file that looks whole.

Every artifact is written to a temporary name in its final directory and renamed into place
(``os.replace`` is atomic on POSIX within one file system).
"""
import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import tempfile

from fnet_tf.core.errors import UserError

CRASH_ENV = "FNET_TF_CRASH_AT"
CRASH_ONCE_ENV = "FNET_TF_CRASH_ONCE"  # a marker file: crash only while it does not exist
JSON_LIMIT = 16 << 20  # bytes: far above any JSON we write (run.json, metrics, meta.json)
CSV_LIMIT = 64 << 20  # bytes: line files (history.csv, layers.csv, sweep.csv, *.jsonl)
_UMASK = os.umask(0)
os.umask(_UMASK)
_crash_counts = {}


def crash_point(kind, path):
    """Fault injection for the reliability tests: with ``FNET_TF_CRASH_AT=POINT:N`` in the
    environment, the Nth time the process reaches ``POINT`` it kills itself with SIGKILL (as a
    power cut or the OOM killer would). A no-op otherwise.

    POINT is ``atomic-file`` or ``atomic-dir`` (any artifact fully written under its temporary
    name, not yet renamed into place), or ``atomic-file/<name>`` for one file name. With
    ``FNET_TF_CRASH_ONCE=MARKER`` too, only the first process to get there crashes (it creates
    MARKER first), so a retried or resumed process runs on (the executor tests).
    """
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    target, _, count = spec.rpartition(":") if ":" in spec else (spec, "", "1")
    if target not in (kind, f"{kind}/{os.path.basename(path)}"):
        return
    _crash_counts[target] = _crash_counts.get(target, 0) + 1
    if _crash_counts[target] == int(count or 1):
        marker = os.environ.get(CRASH_ONCE_ENV)
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
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


def _unreadable(path, why):
    return UserError(f"{path} {why}: delete it, or the directory holding it, and run again")


def _size(nbytes):
    return f"{nbytes / 2**20:g} MB" if nbytes >= 1 << 20 else f"{nbytes:,} bytes"


def read_text(path, limit):
    """The UTF-8 text of ``path``, read without ever holding more than ``limit + 1`` bytes.

    For files a user may hand over (a run directory from someone else): a file over the limit,
    one that is not a regular file (a FIFO, ``/dev/zero``), or one that is not UTF-8 is a
    one-line UserError naming it, before anything parses it.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise _unreadable(path, "is not a regular file")
        if info.st_size > limit:
            raise _unreadable(path, f"is {info.st_size:,} bytes, over the {_size(limit)} limit "
                                    f"for this kind of file (made or altered by someone else?)")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}): check that it exists and is "
                        f"readable") from None
    if len(data) > limit:  # it grew while we looked
        raise _unreadable(path, f"is over the {_size(limit)} limit for this kind of file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _unreadable(path, f"is not UTF-8 text (invalid byte at offset {e.start})") from None


def read_json(path, limit=JSON_LIMIT):
    """The JSON in ``path``, read with a size bound (``JSON_LIMIT``); a missing, oversized,
    corrupt or absurdly nested file is a UserError naming it. The caller checks the shape."""
    text = read_text(path, limit)
    try:
        return json.loads(text)
    except ValueError as e:  # JSONDecodeError; also an integer of over 4300 digits
        raise _unreadable(path, f"is corrupt JSON ({str(e).splitlines()[0][:120]})") from None
    except RecursionError:
        raise _unreadable(path, "is JSON nested too deeply to be ours") from None


def read_csv(path, limit=CSV_LIMIT):
    """The rows of the CSV file ``path`` as dicts (``csv.DictReader``), read with a size bound
    (``CSV_LIMIT``). A row with more or fewer fields than the header, like an oversized or
    undecodable file, is a UserError naming the file and the line."""
    text = read_text(path, limit)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            if None in row or None in row.values():
                raise _unreadable(path, f"is malformed: line {reader.line_num} has "
                                        f"{'more' if None in row else 'fewer'} fields than the "
                                        f"header")
            rows.append(row)
    except csv.Error as e:
        raise _unreadable(path, f"is not valid CSV (line {reader.line_num}: "
                                f"{str(e).splitlines()[0][:120]})") from None
    return rows


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
