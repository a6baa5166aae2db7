#!/usr/bin/env python3
"""Run a .tflite image classifier on a device: numpy, the LiteRT interpreter and Pillow only.

    python run_tflite.py model_int8.tflite cat.jpg dog.png      # top-5 classes per image
    python run_tflite.py model_int8.tflite --benchmark 500 --threads 4
    python run_tflite.py model_int8.tflite --batch batch.npz --dump-logits here.npy
    python run_tflite.py model_int8.tflite --batch batch.npz --compare-with x86.npy

A batch (``.npz`` with ``images`` uint8 [N, H, W, 3] and optional ``labels``, or a ``.npy`` of
images) is run image by image; ``--dump-logits`` saves the raw output tensors ([N, classes],
int8 for fnet_tf's models) and ``--compare-with`` checks them against another machine's dump:
top-1 agreement, the largest difference in output steps (LSB) and the share of bit-exact
outputs. That is how an arm64 board is checked against x86 (tools/arm64_check.py).

Copy this one file and the model to a Raspberry Pi or Android (Termux) and
``pip install ai-edge-litert numpy Pillow`` (or use ``tflite_runtime`` where that is what
the device has). Images of any size are resized (shorter side) and center-cropped to the
model's input (``fit_image``: the rule training used too); the input quantization (scale, zero point) is read from the model, so raw
pixels become ``pixel / scale + zero_point`` (``pixel - 128`` for fnet_tf's int8 models).
Class names come from the ``labels.txt`` that fnet_tf's exporter appends to the file (a zip
after the flatbuffer), from ``--labels FILE``, or are shown as indices.
"""
import argparse
import contextlib
import os
import sys
import tempfile
import time
import zipfile

import numpy as np

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # devices with the older standalone runtime
    from tflite_runtime.interpreter import Interpreter


MAX_LABELS_BYTES = 1 << 20   # an embedded or --labels class list: 1 MB ...
MAX_LABELS = 100_000         # ... and at most this many names
DEFAULT_MAX_BATCH_MB = 256   # a --batch / --compare-with array, checked before it is read
MAX_IMAGE_PIXELS = 40_000_000  # an image file's declared size, checked before it is decoded


class RunError(Exception):
    """A mistake to report as one line (exit code 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake on the command line is one ``error:`` line and exit code 2, as
    every other mistake (argparse prints its usage and the error on two lines)."""

    def error(self, message):
        self.exit(2, f"error: {' '.join(message.split())} (see --help)\n")


XNNPACK_NOTICE = "Created TensorFlow Lite XNNPACK delegate for CPU"  # LiteRT's, on every load


@contextlib.contextmanager
def stderr_filtered(known_lines):
    """Capture file descriptor 2 (C++ libraries write there directly, past Python's
    sys.stderr) into a temporary file, then write back every captured line that contains none
    of ``known_lines``. For the known harmless notices of TensorFlow and LiteRT only: a crash
    inside the block loses its message, so keep blocks short."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not any(known in line for known in known_lines):
                    sys.stderr.write(line)
            sys.stderr.flush()


def load_interpreter(path, threads, xnnpack=True):
    if not os.path.isfile(path):
        raise RunError(f"model {path!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise RunError(f"{path!r} is not a .tflite file (no TFL3 identifier)")
    options = {}
    if not xnnpack:  # TFLite's builtin kernels, as on builds without the XNNPACK delegate
        try:
            from ai_edge_litert.interpreter import OpResolverType
        except ImportError:
            from tflite_runtime.interpreter import OpResolverType
        options["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        with stderr_filtered([XNNPACK_NOTICE]):  # LiteRT's INFO line between the results
            interpreter = Interpreter(model_path=path, num_threads=threads, **options)
            interpreter.allocate_tensors()
        details = interpreter.get_input_details()  # names of a damaged file may not decode
        interpreter.get_output_details()
    except (ValueError, RuntimeError) as e:  # UnicodeDecodeError is a ValueError
        first = (str(e).strip().splitlines() or ["unreadable"])[0][:160]
        raise RunError(f"{path!r} is a corrupt .tflite model ({first}): copy or export it again")
    if len(details) != 1 or len(details[0]["shape"]) != 4 or details[0]["shape"][-1] != 3:
        raise RunError(f"{path!r} does not take one image (its input is "
                       f"{[list(d['shape']) for d in details]}): this runner feeds NHWC RGB images")
    return interpreter


def _check_labels(names, shown):
    if len(names) > MAX_LABELS:
        raise RunError(f"{shown} lists {len(names):,} class names, over the limit of "
                       f"{MAX_LABELS:,}: pass a real labels file with --labels")
    return names


def read_labels(path, labels_file=None):
    """Class names from ``labels_file`` or the ``labels.txt`` zip appended to the model, read
    with their size checked before anything is decompressed (a file from someone else may be
    a decompression bomb); None when the model carries none."""
    if labels_file:
        if not os.path.isfile(labels_file):
            raise RunError(f"labels file {labels_file!r} does not exist")
        if os.path.getsize(labels_file) > MAX_LABELS_BYTES:
            raise RunError(f"labels file {labels_file!r} is over the {MAX_LABELS_BYTES >> 20} MB "
                           f"limit for a class list")
        with open(labels_file, encoding="utf-8", errors="replace") as f:
            names = [line.strip() for line in f if line.strip()]
        return _check_labels(names, f"labels file {labels_file!r}")
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("labels.txt")
            if info.file_size > MAX_LABELS_BYTES:
                raise RunError(f"{path!r} embeds a labels.txt that declares "
                               f"{info.file_size / 2**20:.0f} MB, over the "
                               f"{MAX_LABELS_BYTES >> 20} MB limit: refusing to decompress it "
                               f"(pass --labels FILE)")
            with z.open(info) as f:
                text = f.read(MAX_LABELS_BYTES + 1)  # the declared size may lie
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError):
        return None
    if len(text) > MAX_LABELS_BYTES:
        raise RunError(f"{path!r} embeds a labels.txt over the {MAX_LABELS_BYTES >> 20} MB limit")
    return _check_labels(text.decode("utf-8", errors="replace").split(),
                         f"the labels.txt embedded in {path!r}")


def fit_image(im, height, width):
    """THE resize rule of fnet_tf, on a PIL image: RGB, then resized (bilinear) so its shorter
    side fits the model's input, then center-cropped to ``height`` x ``width``; an image of the
    right size is untouched. Training data, calibration, evaluation (``fnet_tf.data.datasets``)
    and this runner all use it, so a model meets on the device the pixels it was trained on."""
    from PIL import Image

    im = im.convert("RGB")
    if im.size == (width, height):
        return im
    scale = max(height / im.height, width / im.width)
    size = (max(width, round(im.width * scale)), max(height, round(im.height * scale)))
    im = im.resize(size, Image.BILINEAR)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return im.crop((left, top, left + width, top + height))


def load_image(path, height, width):
    from PIL import Image, UnidentifiedImageError

    if os.path.isdir(path):
        raise RunError(f"image {path!r} is a folder: pass the image files in it, e.g. "
                       f"{os.path.join(path, '*.jpg')}")
    if not os.path.isfile(path):
        raise RunError(f"image {path!r} does not exist")
    try:
        with Image.open(path) as im:  # reads the header only
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise RunError(f"image {path!r} declares {im.width}x{im.height} pixels, over the "
                               f"limit of {MAX_IMAGE_PIXELS:,}: refusing to decode it")
            return np.asarray(fit_image(im, height, width), np.float32)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as e:
        raise RunError(f"{path!r} is not a readable image ({e.__class__.__name__})")


def to_input(pixels, detail):
    """Raw pixels (0..255) -> the input tensor, using the model's own quantization."""
    if detail["dtype"] == np.float32:
        return pixels[None].astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(pixels / scale + zero), info.min, info.max)[None].astype(detail["dtype"])


def scores_of(interpreter):
    out = interpreter.get_output_details()[0]
    raw = interpreter.get_tensor(out["index"])[0].astype(np.float32)
    scale, zero = out["quantization"]
    values = (raw - zero) * scale if scale else raw
    if values.min() >= 0 and abs(values.sum() - 1) < 0.05:  # already probabilities (softmax)
        return values
    exp = np.exp(values - values.max())
    return exp / exp.sum()


def check_label_count(interpreter, labels, labels_file):
    """A --labels file must name every output of the model, no more and no fewer."""
    classes = int(interpreter.get_output_details()[0]["shape"][-1])
    if labels_file and labels is not None and len(labels) != classes:
        raise RunError(f"labels file {labels_file!r} has {len(labels)} names but the model has "
                       f"{classes} outputs: pass a file with one name a line for each of them")
    return labels


def classify(interpreter, images, labels, top):
    """Print the ``top`` classes of each image (every class when the model has fewer)."""
    inp = interpreter.get_input_details()[0]
    _, height, width, _ = inp["shape"]
    for path in images:
        interpreter.set_tensor(inp["index"], to_input(load_image(path, height, width), inp))
        interpreter.invoke()
        scores = scores_of(interpreter)
        best = np.argsort(-scores)[:top]
        shown = ", ".join(f"{labels[i] if labels and i < len(labels) else i} {scores[i]:.3f}"
                          for i in best)
        print(f"{path}: {shown}")


def _array_header(f):
    """(shape, dtype) of the .npy stream ``f`` from its header alone."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return shape, dtype


def array_headers(path):
    """[(name, shape, dtype)] of a .npy file or of each array in a .npz, read from the headers
    alone (nothing is decompressed beyond them)."""
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                return [("", *_array_header(f))]
        headers = []
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.filename.endswith(".npy"):
                    with z.open(info) as f:
                        headers.append((info.filename[:-4], *_array_header(f)))
        return headers
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError,
            RuntimeError) as e:
        raise RunError(f"{path!r} is not a readable .npz/.npy file ({e.__class__.__name__})")


def declared_bytes(shape, dtype):
    return int(np.prod(shape, dtype=np.float64)) * dtype.itemsize


def check_array_sizes(path, max_mb):
    """Refuse a .npy/.npz whose arrays would take more than ``max_mb`` MB once read, from the
    headers alone, or that holds Python objects."""
    total = 0
    for name, shape, dtype in array_headers(path):
        if dtype.hasobject:
            raise RunError(f"{path!r}: array {name or 'in it'!r} holds Python objects; a batch "
                           f"holds numbers only")
        total += declared_bytes(shape, dtype)
        if total > max_mb << 20:
            raise RunError(f"{path!r} declares {total / 2**20:,.0f} MB of arrays, over the "
                           f"--max_batch_mb limit of {max_mb:,} MB: refusing to decompress it "
                           f"(pass a smaller batch, or raise --max_batch_mb)")
    return total


def load_batch(path, height, width, max_mb=DEFAULT_MAX_BATCH_MB):
    """(images [N, H, W, 3], labels or None) from a .npz (images, labels) or .npy file, its
    array sizes checked against ``max_mb`` before anything is read."""
    if not os.path.isfile(path):
        raise RunError(f"batch {path!r} does not exist")
    check_array_sizes(path, max_mb)
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise RunError(f"{path!r} is not a readable .npz/.npy batch ({e.__class__.__name__})")
    if isinstance(data, np.ndarray):
        images, labels = data, None
    else:  # an .npz archive
        with data:
            if "images" not in data.files:
                raise RunError(f"batch {path!r} has no 'images' array (it has {data.files})")
            try:
                images = data["images"]
                labels = data["labels"] if "labels" in data.files else None
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
                raise RunError(f"{path!r} is a damaged .npz batch ({e.__class__.__name__})")
    if images.ndim == 4 and not len(images):
        raise RunError(f"batch {path!r} holds no images")
    if images.ndim != 4 or tuple(images.shape[1:]) != (height, width, 3):
        raise RunError(f"batch {path!r} holds images of shape {list(images.shape)}, but the model "
                       f"takes [N, {height}, {width}, 3]")
    if labels is not None and len(labels) != len(images):
        raise RunError(f"batch {path!r} has {len(images)} images but {len(labels)} labels")
    if not np.issubdtype(images.dtype, np.number):
        raise RunError(f"batch {path!r} holds {images.dtype} images: pass uint8 pixels")
    return images, labels  # converted to float image by image (a float32 copy is 4x larger)


def raw_outputs(interpreter, images):
    """The output tensor of every image as the model gives it (int8 for an int8 model)."""
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    rows = []
    for pixels in images:
        interpreter.set_tensor(inp["index"], to_input(pixels.astype(np.float32), inp))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(rows)


def compare_outputs(mine, reference):
    """How closely two machines' raw outputs agree: top-1, largest difference, bit-exactness."""
    if mine.shape != reference.shape:
        raise RunError(f"the reference outputs have shape {list(reference.shape)}, these "
                       f"{list(mine.shape)}: dump both from the same model and batch")
    diff = np.abs(mine.astype(np.int64) - reference.astype(np.int64))
    return {"images": int(len(mine)),
            "top1_agreement": float(np.mean(mine.argmax(1) == reference.argmax(1))),
            "max_diff_lsb": int(diff.max()) if diff.size else 0,
            "bit_exact_outputs": float(np.mean(diff == 0)),
            "bit_exact_images": float(np.mean(diff.max(1) == 0))}


def describe_comparison(c):
    return (f"top-1 agreement {100 * c['top1_agreement']:.2f}% on {c['images']} images, max diff "
            f"{c['max_diff_lsb']} LSB, bit-exact {100 * c['bit_exact_outputs']:.2f}% of outputs "
            f"({100 * c['bit_exact_images']:.2f}% of images)")


def run_batch(interpreter, batch, dump, reference, max_mb=DEFAULT_MAX_BATCH_MB):
    _, height, width, _ = interpreter.get_input_details()[0]["shape"]
    images, labels = load_batch(batch, height, width, max_mb)
    if reference is not None and not os.path.isfile(reference):
        raise RunError(f"reference outputs {reference!r} do not exist")
    outputs = raw_outputs(interpreter, images)
    line = f"{len(images)} images"
    if labels is not None:
        line += f": top-1 accuracy {100 * np.mean(outputs.argmax(1) == labels):.2f}%"
    print(line)
    if dump:
        tmp = f"{dump}.partial.npy"  # written whole, then renamed: never a half-written dump
        np.save(tmp, outputs)
        os.replace(tmp, dump)
        print(f"raw outputs {list(outputs.shape)} {outputs.dtype} written to {dump}")
    if reference is not None:
        check_array_sizes(reference, max_mb)
        try:
            ref = np.load(reference, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise RunError(f"{reference!r} is not a readable .npy file ({e.__class__.__name__})")
        if not isinstance(ref, np.ndarray):
            raise RunError(f"{reference!r} is not a .npy array of outputs: pass a --dump-logits file")
        print("compared with the reference: " + describe_comparison(compare_outputs(outputs, ref)))


def benchmark(interpreter, runs, warmup=20):
    inp = interpreter.get_input_details()[0]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, inp["shape"][1:]).astype(np.float32)
    interpreter.set_tensor(inp["index"], to_input(pixels, inp))
    for _ in range(warmup):
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1e3)
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {"p50": p50, "p90": p90, "p99": p99, "mean": float(np.mean(times)), "runs": runs}


def main(argv=None):
    parser = OneLineParser(description=__doc__.split("\n\n")[0], add_help=False)
    parser.add_argument("-h", "--help", "--helpshort", action="help",
                        help="show this help message and exit")
    parser.add_argument("model", help="the .tflite file")
    parser.add_argument("images", nargs="*", help="image files to classify")
    parser.add_argument("--top", type=int, default=5,
                        help="classes shown per image (all of them when the model has fewer)")
    parser.add_argument("--labels", help="a labels file, one class a line (default: embedded)")
    parser.add_argument("--benchmark", type=int, default=0, metavar="N",
                        help="time N invokes after a warm-up and print latency percentiles")
    parser.add_argument("--threads", type=int, default=1,
                        help="interpreter threads (0: all cores)")
    parser.add_argument("--no-xnnpack", action="store_true",
                        help="run TFLite's builtin kernels, not the default XNNPACK delegate")
    parser.add_argument("--batch", help="a .npz (images, labels) or .npy of images to run")
    parser.add_argument("--dump-logits", metavar="FILE",
                        help="save the raw outputs of --batch as a .npy file")
    parser.add_argument("--compare-with", metavar="FILE",
                        help="compare the outputs of --batch with another machine's dump")
    parser.add_argument("--max_batch_mb", "--max-batch-mb", type=int,
                        default=DEFAULT_MAX_BATCH_MB, metavar="MB",
                        help="refuse a --batch or --compare-with file whose arrays declare more "
                             "than this many MB (checked before anything is decompressed)")
    args = parser.parse_intermixed_args(argv)  # options anywhere: model --top 3 a.jpg b.jpg
    try:
        if args.threads < 0:
            raise RunError(f"--threads must be 0 (all cores) or a positive count, "
                           f"got {args.threads}")
        args.threads = args.threads or os.cpu_count() or 1
        if args.top < 1:
            raise RunError(f"--top must be 1 or more, got {args.top}")
        if args.max_batch_mb < 1:
            raise RunError(f"--max_batch_mb must be 1 or more, got {args.max_batch_mb}")
        if (args.dump_logits or args.compare_with) and not args.batch:
            raise RunError("--dump-logits and --compare-with work on a --batch file: pass one")
        if not args.images and not args.benchmark and not args.batch:
            raise RunError("give image files to classify, --batch FILE, or --benchmark N")
        interpreter = load_interpreter(args.model, args.threads, xnnpack=not args.no_xnnpack)
        labels = check_label_count(interpreter, read_labels(args.model, args.labels),
                                   args.labels)
        classify(interpreter, args.images, labels, args.top)
        if args.batch:
            run_batch(interpreter, args.batch, args.dump_logits, args.compare_with,
                      args.max_batch_mb)
        if args.benchmark:
            r = benchmark(interpreter, args.benchmark)
            threads = f"{args.threads} thread" + ("" if args.threads == 1 else "s")
            print(f"latency over {r['runs']} invokes, {threads}: p50 {r['p50']:.3f} ms, p90 "
                  f"{r['p90']:.3f} ms, p99 {r['p99']:.3f} ms, mean {r['mean']:.3f} ms")
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
