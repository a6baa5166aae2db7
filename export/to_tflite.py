"""Export a trained model to a verified fully-integer .tflite: ``python export/to_tflite.py
RUN_DIR_OR_MODEL [flags]`` from a checkout. The exporter is ``fnet_tf.to_tflite`` (installed as
``fnet-export``); this file only lets the checkout run it without installing."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fnet_tf.to_tflite import console  # noqa: E402

if __name__ == "__main__":
    console()
