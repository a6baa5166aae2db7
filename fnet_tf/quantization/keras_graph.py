"""Who reads whom in a functional Keras model: what the repairs need to find layer pairs."""
from fnet_tf.core import backend


def consumers(model):
    """{layer name: [layers reading its output]} of a functional model."""
    found = {layer.name: [] for layer in model.layers}
    for layer in model.layers:
        for node in layer.inbound_nodes:
            inbound = node.inbound_layers
            for source in (inbound if isinstance(inbound, (list, tuple)) else [inbound]):
                if source.name in found:
                    found[source.name].append(layer)
    return found


def only_consumer(graph, layer):
    """The one layer reading ``layer``'s output (``graph`` from ``consumers``), or None."""
    readers = graph.get(layer.name, [])
    return readers[0] if len(readers) == 1 else None


def batch_norm_after(graph, layer):
    """The BatchNormalization that alone reads ``layer`` (what TFLite folds into it), or None."""
    nxt = only_consumer(graph, layer)
    return nxt if isinstance(nxt, backend.keras.layers.BatchNormalization) else None


def outputs_of(model, tensors, images, batch_size=256):
    """The values of ``tensors`` (symbolic tensors of ``model``) on ``images``, as numpy."""
    probe = backend.keras.Model(model.inputs, list(tensors))
    values = probe.predict(images, batch_size=batch_size, verbose=0)
    return values if isinstance(values, list) else [values]
