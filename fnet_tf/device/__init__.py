"""What runs on the device: single-file scripts that need only numpy, LiteRT and Pillow.

``run_tflite.py`` (classify, benchmark, compare outputs; the ``fnet-run`` command) and
``regroup.py`` (faster grouped convs for the CPU at hand; ``fnet-regroup``) import nothing from
fnet_tf, so each can be copied to a Raspberry Pi or an Android phone (Termux) on its own. The
checkout also has them as ``export/run_tflite.py`` and ``export/regroup.py`` (links to these).
"""
