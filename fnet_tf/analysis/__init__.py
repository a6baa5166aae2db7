"""Layer-wise analysis: weight and activation distributions, per-layer quantization error,
and the plots that show them (see ``fnet_tf.analyze`` for the command)."""
