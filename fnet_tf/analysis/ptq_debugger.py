"""Per-op quantization error of a post-training-quantized model, by TF's own debugger.

``tf.lite.experimental.QuantizationDebugger`` converts the float model in debug mode, where
every quantized op's output is compared with the float op fed the same (dequantized) input,
so each row is the error that op adds by itself. It refuses QAT models ("Please check if the
quantized model is in debug mode"), which is why ``layerwise`` reads int8 intermediates with
``experimental_preserve_all_tensors`` for those; for PTQ this debugger is the reference tool.
"""
import csv
import io
import warnings

from fnet_tf.core import backend, fileio


def debug_ptq(float_model, representative, path):
    """Write the debugger's layer statistics CSV to ``path``; return its rows."""
    tf = backend.tf

    converter = tf.lite.TFLiteConverter.from_keras_model(float_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it runs the deprecated tf.lite.Interpreter inside
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                             debug_dataset=representative)
        debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    fileio.write_text(path, buf.getvalue())
    return list(csv.DictReader(io.StringIO(buf.getvalue())))
