"""Measuring .tflite models with the LiteRT interpreter: accuracy on a labelled split.

(Latency, size, MACs and the op histogram join this module with the analyzer.)
"""
import sys
import time

import numpy as np

from fnet_tf import export


def evaluate_tflite(content, split, limit=None, num_threads=1, progress=True):
    """Top-1/top-5 accuracy of a flatbuffer on ``split`` (raw pixels; the model's own input
    quantization is applied), one invoke per image."""
    it = export.interpreter(content, delegates=True, num_threads=num_threads)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    count = len(split) if limit is None else min(limit, len(split))
    top1 = top5 = 0
    started = time.time()
    for i in range(count):
        it.set_tensor(inp["index"], export.quantize_input(split.images[i:i + 1], inp))
        it.invoke()
        scores = it.get_tensor(out["index"])[0]
        label = split.labels[i]
        top1 += int(np.argmax(scores) == label)
        top5 += int(label in np.argsort(-scores.astype(np.float32))[:5])
        if progress and (i + 1) % 2000 == 0:
            print(f"  evaluated {i + 1}/{count} images ({time.time() - started:.0f}s)",
                  file=sys.stderr, flush=True)
    return {"accuracy_top1": top1 / count, "accuracy_top5": top5 / count, "num_images": count,
            "seconds": time.time() - started}
